//! The Huntress REST client: Basic auth, pacing through the shared rate budget,
//! bounded retries, and typed errors that say what to do.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::RequestBuilder;
use serde_json::Value;

use crate::config::Config;
use crate::error::{ErrorKind, HuntressError, Result};
use crate::http::{backoff, excerpt, Answer, Deadline, HttpClient, HttpFailure};
use crate::ratelimit::RateBudget;

const MAX_ATTEMPTS: u32 = 4;
const LIMIT_HEADER: &str = "x-huntress-api-call-limit";
const REMAINING_HEADER: &str = "x-huntress-api-call-remaining";

/// Which part of the check a request serves, for the per-feature request count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    Siem,
    Incidents,
    Agents,
    Orgs,
}

impl Feature {
    pub fn tag(self) -> &'static str {
        match self {
            Feature::Siem => "siem",
            Feature::Incidents => "incidents",
            Feature::Agents => "agents",
            Feature::Orgs => "orgs",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ApiStats {
    pub requests: BTreeMap<Feature, u64>,
    pub call_limit: Option<u32>,
    pub call_remaining: Option<u32>,
    pub throttle_wait: Duration,
    pub rate_limited: u64,
    /// Errors that a retry recovered from, by kind.
    pub retried: BTreeMap<ErrorKind, u64>,
}

pub struct HuntressClient {
    http: HttpClient,
    base_url: String,
    auth: HeaderValue,
    budget: RateBudget,
    pub stats: ApiStats,
}

impl HuntressClient {
    pub fn new(config: &Config, budget: RateBudget) -> Result<Self> {
        let credentials = format!("{}:{}", config.api_key, config.secret_key);
        let mut auth = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
        .map_err(|_| HuntressError::config("huntress_api_key", "contains characters that cannot go in an HTTP header"))?;
        auth.set_sensitive(true);
        Ok(HuntressClient { http: HttpClient::new(config)?, base_url: config.base_url.clone(), auth, budget, stats: ApiStats::default() })
    }

    pub fn reset_stats(&mut self) {
        self.stats = ApiStats::default();
    }

    /// Requests that could be sent now without waiting (see `RateBudget::free_slots`).
    pub fn free_slots(&self) -> u32 {
        self.budget.free_slots()
    }

    /// Requests that could be sent before `until` with no pause longer than
    /// `max_gap` (see `RateBudget::slots_before`).
    pub fn slots_before(&self, until: std::time::Instant, max_gap: Option<Duration>) -> u32 {
        self.budget.slots_before(until, max_gap)
    }

    /// The per-minute limit, as the server last reported it.
    pub fn rate_limit(&self) -> u32 {
        self.budget.limit()
    }

    /// POSTs JSON and returns the raw body of a 2xx answer; the caller parses it
    /// (SIEM pages are parsed without building a tree, see `row`).
    pub fn post_for_bytes(&mut self, feature: Feature, path: &str, body: &Value, deadline: &Deadline) -> Result<Bytes> {
        let url = format!("{}{}", self.base_url, path);
        let payload = Bytes::from(serde_json::to_vec(body).expect("a JSON value serializes"));
        let build = |http: &HttpClient| http.post(&url).header("content-type", "application/json").body(payload.clone());
        self.send(feature, path, deadline, build, |bytes| Ok(bytes.clone()))
    }

    pub fn get_json(&mut self, feature: Feature, path: &str, query: &[(&str, String)], deadline: &Deadline) -> Result<Value> {
        let url = format!("{}{}", self.base_url, path);
        self.send(feature, path, deadline, |http| http.get(&url).query(query), |bytes| serde_json::from_slice(bytes))
    }

    fn send<T>(
        &mut self,
        feature: Feature,
        path: &str,
        deadline: &Deadline,
        build: impl Fn(&HttpClient) -> RequestBuilder,
        parse: impl Fn(&Bytes) -> serde_json::Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            let waited = self.budget.acquire(deadline.0).map_err(|e| {
                HuntressError::Deadline(format!(
                    "the rate limit asks to wait {:.1}s, past the end of this run",
                    e.wait.as_secs_f64()
                ))
            })?;
            self.stats.throttle_wait += waited;
            *self.stats.requests.entry(feature).or_default() += 1;
            let timeout = deadline.remaining().max(Duration::from_millis(100));
            let request = build(&self.http)
                .header(AUTHORIZATION, self.auth.clone())
                .header("accept", "application/json")
                .timeout(timeout);
            let (error, wait) = match self.http.execute(request) {
                Ok(answer) => match self.read(answer, path, attempt, &parse) {
                    Ok(value) => return Ok(value),
                    Err(Failure::Fatal(error)) => return Err(error),
                    Err(Failure::Retry(error, wait)) => (error, wait),
                },
                // A request cut short by the run's own deadline is not a Huntress fault.
                Err(HttpFailure::Send(e) | HttpFailure::Body(e)) if e.is_timeout() && deadline.expired() => {
                    return Err(HuntressError::Deadline(format!("{path}: the run deadline ended a request in flight")))
                }
                Err(HttpFailure::Send(e)) => (transport_error(&e, path), None),
                Err(HttpFailure::Body(e)) => {
                    (HuntressError::api(ErrorKind::Network, format!("{path}: the response body was cut off ({})", short_reqwest(&e))), None)
                }
            };
            attempt += 1;
            if attempt >= MAX_ATTEMPTS {
                return Err(error);
            }
            *self.stats.retried.entry(error.kind()).or_default() += 1;
            if !deadline.sleep(wait.unwrap_or_else(|| backoff(attempt - 1))) {
                return Err(error);
            }
        }
    }

    fn read<T>(
        &mut self,
        answer: Answer,
        path: &str,
        attempt: u32,
        parse: &impl Fn(&Bytes) -> serde_json::Result<T>,
    ) -> std::result::Result<T, Failure> {
        self.observe_headers(&answer.headers);
        let Answer { status, body, .. } = answer;
        if (200..300).contains(&status) {
            return parse(&body).map_err(|e| {
                Failure::Retry(
                    HuntressError::api(ErrorKind::MalformedResponse, format!("{path}: the response is not valid JSON ({e})")),
                    None,
                )
            });
        }
        Err(self.classify(status, path, &body, attempt))
    }

    fn classify(&mut self, status: u16, path: &str, body: &[u8], attempt: u32) -> Failure {
        let detail = excerpt(body, 200);
        let error = |kind, what: &str| HuntressError::api(kind, format!("{path} returned {status}: {what} ({detail})"));
        match status {
            429 => {
                self.stats.rate_limited += 1;
                let wait = self.budget.backoff_after_429(backoff(attempt + 1));
                Failure::Retry(error(ErrorKind::RateLimited, "rate limit exceeded (60 requests/minute per key)"), Some(wait))
            }
            408 => Failure::Retry(error(ErrorKind::QueryTimeout, "the query timed out"), None),
            500..=599 => Failure::Retry(error(ErrorKind::ServerError, "Huntress server error"), None),
            401 => Failure::Fatal(error(ErrorKind::Auth, "credentials rejected: check huntress_api_key and huntress_secret_key")),
            403 => Failure::Fatal(error(ErrorKind::Forbidden, "this API key may not access the resource: check its permissions")),
            404 => Failure::Fatal(error(
                ErrorKind::NotFound,
                "not found: the SIEM query API may not be enabled for this account, or huntress_base_url is wrong",
            )),
            413 => Failure::Fatal(error(ErrorKind::QueryTooLarge, "the query exceeded Huntress's memory limit: narrow it with WHERE/KEEP")),
            400 | 422 => Failure::Fatal(error(ErrorKind::QueryInvalid, "the request was refused: check esql_query")),
            300..=399 => Failure::Fatal(error(ErrorKind::ServerError, "unexpected redirect: check huntress_base_url")),
            _ => Failure::Fatal(error(ErrorKind::ServerError, "unexpected status")),
        }
    }

    fn observe_headers(&mut self, headers: &HeaderMap) {
        let number = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u32>().ok());
        let (limit, remaining) = (number(LIMIT_HEADER), number(REMAINING_HEADER));
        if limit.is_some() {
            self.stats.call_limit = limit;
        }
        if remaining.is_some() {
            self.stats.call_remaining = remaining;
        }
        self.budget.observe(limit, remaining);
    }
}

enum Failure {
    Retry(HuntressError, Option<Duration>),
    Fatal(HuntressError),
}

fn transport_error(error: &reqwest::Error, path: &str) -> HuntressError {
    if error.is_timeout() {
        HuntressError::api(ErrorKind::Timeout, format!("{path}: no answer within request_timeout"))
    } else {
        HuntressError::api(ErrorKind::Network, format!("{path}: connection failed ({})", short_reqwest(error)))
    }
}

/// The error with its causes. URLs in it never hold a secret: credentials go in headers.
pub fn short_reqwest(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
