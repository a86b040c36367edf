//! Pieces every other part uses and that know nothing of Huntress feeds or of
//! Datadog: errors, the panic boundary, secret redaction, tag values, the HTTP
//! client and run deadline, and access to the Agent's persistent cache.

pub mod boundary;
pub mod cache;
pub mod error;
pub mod http;
pub mod redact;
pub mod tags;
