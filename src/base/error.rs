//! The one error type of the core. Every variant maps to a typed Python exception
//! (see `python.rs`) and to an `error_type` tag value (see `ErrorKind::tag`).

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    Auth,
    Forbidden,
    NotFound,
    QueryInvalid,
    QueryTooLarge,
    QueryTimeout,
    RateLimited,
    ServerError,
    Network,
    Timeout,
    MalformedResponse,
    TokenExpired,
    IntakeRejected,
    IntakeAuth,
    IntakeUnavailable,
    Cache,
    Deadline,
    Config,
    /// A bug in the check itself (a panic caught in a run or at the Python boundary).
    Internal,
}

impl ErrorKind {
    /// The value of the `error_type` tag on `huntress.siem.errors`.
    pub fn tag(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::QueryInvalid => "query_invalid",
            ErrorKind::QueryTooLarge => "query_too_large",
            ErrorKind::QueryTimeout => "query_timeout",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MalformedResponse => "malformed_response",
            ErrorKind::TokenExpired => "token_expired",
            ErrorKind::IntakeRejected => "intake_rejected",
            ErrorKind::IntakeAuth => "intake_auth",
            ErrorKind::IntakeUnavailable => "intake_unavailable",
            ErrorKind::Cache => "cache",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Config => "config",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, Error, Clone)]
pub enum HuntressError {
    #[error("configuration error in `{key}`: {message}")]
    Config { key: String, message: String },

    #[error("Huntress API: {message}")]
    Api { kind: ErrorKind, message: String },

    #[error("Datadog Logs intake: {message}")]
    Intake { kind: ErrorKind, message: String },

    #[error("persistent cache: {0}")]
    Cache(String),

    #[error("run deadline reached: {0}")]
    Deadline(String),

    /// A panic caught inside a run: one query or feed fails, the others go on.
    #[error("internal error in the check: {0}")]
    Internal(String),
}

impl HuntressError {
    pub fn config(key: &str, message: impl Into<String>) -> Self {
        HuntressError::Config { key: key.to_string(), message: message.into() }
    }

    pub fn api(kind: ErrorKind, message: impl Into<String>) -> Self {
        HuntressError::Api { kind, message: message.into() }
    }

    pub fn intake(kind: ErrorKind, message: impl Into<String>) -> Self {
        HuntressError::Intake { kind, message: message.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            HuntressError::Config { .. } => ErrorKind::Config,
            HuntressError::Api { kind, .. } | HuntressError::Intake { kind, .. } => *kind,
            HuntressError::Cache(_) => ErrorKind::Cache,
            HuntressError::Deadline(_) => ErrorKind::Deadline,
            HuntressError::Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T> = std::result::Result<T, HuntressError>;
