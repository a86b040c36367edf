//! The Huntress REST client: Basic auth, pacing through the shared rate budget,
//! bounded retries, and typed errors that say what to do.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::RequestBuilder;
use serde_json::Value;

use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::base::http::{backoff, excerpt, short_reqwest, Answer, Deadline, HttpClient, HttpFailure, HttpSettings, MAX_HUNTRESS_BODY};
use crate::huntress::ratelimit::{RateBudget, MAX_LIMIT};
use crate::json::cost::tree_cost;
use crate::base::redact::Redactor;

const MAX_ATTEMPTS: u32 = 4;
/// The largest tree a REST answer may be parsed into (see `json::cost`): with
/// the body itself (at most `MAX_HUNTRESS_BODY`), one answer stays well within
/// 100 MB, whatever its shape. A page of 500 items costs a few MiB.
pub const MAX_REST_TREE: u64 = 48 << 20;
const LIMIT_HEADER: &str = "x-huntress-api-call-limit";
const REMAINING_HEADER: &str = "x-huntress-api-call-remaining";

/// Which part of the check a request serves, for the per-feature request count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    Siem,
    Incidents,
    Agents,
    Orgs,
    Escalations,
    Signals,
}

impl Feature {
    pub fn tag(self) -> &'static str {
        match self {
            Feature::Siem => "siem",
            Feature::Incidents => "incidents",
            Feature::Agents => "agents",
            Feature::Orgs => "orgs",
            Feature::Escalations => "escalations",
            Feature::Signals => "signals",
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
    /// Requests that got an answer (any status), and requests that got none in time.
    pub answered: u64,
    pub timed_out: u64,
    /// Requests not sent because the rate budget had no slot before the deadline.
    pub out_of_budget: u64,
}

/// Which Huntress account to reach, and how.
#[derive(Clone, PartialEq)]
pub struct HuntressSettings {
    pub base_url: String,
    pub api_key: String,
    pub secret_key: String,
    pub http: HttpSettings,
}

pub struct HuntressClient {
    http: HttpClient,
    base_url: String,
    auth: HeaderValue,
    budget: RateBudget,
    request_timeout: Duration,
    redactor: Redactor,
    pub stats: ApiStats,
}

impl HuntressClient {
    pub fn new(settings: &HuntressSettings, budget: RateBudget, redactor: Redactor) -> Result<Self> {
        let credentials = format!("{}:{}", settings.api_key, settings.secret_key);
        let mut auth = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
        .map_err(|_| HuntressError::config("huntress_api_key", "contains characters that cannot go in an HTTP header"))?;
        auth.set_sensitive(true);
        Ok(HuntressClient {
            http: HttpClient::new(&settings.http)?,
            base_url: settings.base_url.clone(),
            auth,
            budget,
            request_timeout: settings.http.request_timeout,
            redactor,
            stats: ApiStats::default(),
        })
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

    /// GETs a JSON document. One whose tree would cost more than
    /// `MAX_REST_TREE` (millions of tiny values under the body cap) is refused
    /// as a malformed response before any of it is built.
    pub fn get_json(&mut self, feature: Feature, path: &str, query: &[(&str, String)], deadline: &Deadline) -> Result<Value> {
        let url = format!("{}{}", self.base_url, path);
        self.send(feature, path, deadline, |http| http.get(&url).query(query), |bytes| {
            let cost = tree_cost(bytes);
            if cost > MAX_REST_TREE {
                return Err(Unparsed::Refused(format!(
                    "the response holds too many values to read (about {} MiB as a tree, {} MiB allowed); it was not parsed",
                    cost >> 20,
                    MAX_REST_TREE >> 20
                )));
            }
            serde_json::from_slice(bytes).map_err(Unparsed::Invalid)
        })
    }

    fn send<T>(
        &mut self,
        feature: Feature,
        path: &str,
        deadline: &Deadline,
        build: impl Fn(&HttpClient) -> RequestBuilder,
        parse: impl Fn(&Bytes) -> std::result::Result<T, Unparsed>,
    ) -> Result<T> {
        let mut attempt = 0;
        // A timeout of the previous attempt: what to report when the deadline ends the retries.
        let mut last_timeout: Option<HuntressError> = None;
        loop {
            let waited = match self.budget.acquire(deadline.0) {
                Ok(waited) => waited,
                Err(e) => {
                    self.stats.out_of_budget += 1;
                    let why = format!("the rate limit asks to wait {:.1}s, past the end of this run", e.wait.as_secs_f64());
                    return Err(self.stopped_by_deadline(path, last_timeout, why));
                }
            };
            self.stats.throttle_wait += waited;
            *self.stats.requests.entry(feature).or_default() += 1;
            // request_timeout bounds each request, body included; near the end of
            // the run, the deadline bounds it instead.
            let timeout = self.request_timeout.min(deadline.remaining()).max(Duration::from_millis(100));
            let request = build(&self.http).header(AUTHORIZATION, self.auth.clone()).header("accept", "application/json");
            let (error, wait) = match self.http.execute(request, timeout, MAX_HUNTRESS_BODY) {
                Ok(answer) => match self.read(answer, path, attempt, &parse) {
                    Ok(value) => return Ok(value),
                    Err(Failure::Fatal(error)) => return Err(error),
                    Err(Failure::Retry(error, wait)) => (error, wait),
                },
                Err(HttpFailure::TimedOut) => {
                    self.stats.timed_out += 1;
                    if timeout < self.request_timeout && deadline.expired() {
                        let why = format!("{path}: the run deadline ended a request in flight");
                        return Err(self.stopped_by_deadline(path, last_timeout, why));
                    }
                    (no_answer(path, timeout), None)
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
            last_timeout = (error.kind() == ErrorKind::Timeout).then_some(error);
        }
    }

    /// The run deadline stopped a request (cut it, or kept it from starting).
    /// When the attempt before timed out, or Huntress answered nothing in this
    /// whole run but let requests time out, that timeout is the fault to report;
    /// otherwise the run simply ran out of time and the next one resumes.
    fn stopped_by_deadline(&self, path: &str, last_timeout: Option<HuntressError>, why: String) -> HuntressError {
        if let Some(error) = last_timeout {
            return error;
        }
        if self.stats.answered == 0 && self.stats.timed_out > 0 {
            return HuntressError::api(
                ErrorKind::Timeout,
                format!("{path}: Huntress sent no answer in this run within request_timeout or the run deadline"),
            );
        }
        HuntressError::Deadline(why)
    }

    fn read<T>(
        &mut self,
        answer: Answer,
        path: &str,
        attempt: u32,
        parse: &impl Fn(&Bytes) -> std::result::Result<T, Unparsed>,
    ) -> std::result::Result<T, Failure> {
        self.stats.answered += 1;
        self.observe_headers(&answer.headers);
        let Answer { status, body, oversized, .. } = answer;
        if oversized && (200..300).contains(&status) {
            return Err(Failure::Fatal(HuntressError::api(
                ErrorKind::MalformedResponse,
                format!("{path}: the response body is larger than {} MiB; it was not read", MAX_HUNTRESS_BODY >> 20),
            )));
        }
        if (200..300).contains(&status) {
            return parse(&body).map_err(|e| match e {
                Unparsed::Invalid(e) => Failure::Retry(
                    HuntressError::api(ErrorKind::MalformedResponse, format!("{path}: the response is not valid JSON ({e})")),
                    None,
                ),
                Unparsed::Refused(why) => Failure::Fatal(HuntressError::api(ErrorKind::MalformedResponse, format!("{path}: {why}"))),
            });
        }
        Err(self.classify(status, path, &body, attempt))
    }

    fn classify(&mut self, status: u16, path: &str, body: &[u8], attempt: u32) -> Failure {
        let detail = excerpt(body, 200, &self.redactor);
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

    /// Takes the rate headers as the server sends them, within reason: a value
    /// that is not a whole number in `0..=u32::MAX` is ignored. The gauges show
    /// the values as sent; the pacing clamps the limit to `MAX_LIMIT` (Huntress
    /// documents 60) and `remaining` to the limit.
    fn observe_headers(&mut self, headers: &HeaderMap) {
        let number = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u32>().ok());
        let (limit, remaining) = (number(LIMIT_HEADER), number(REMAINING_HEADER));
        if limit.is_some() {
            self.stats.call_limit = limit;
        }
        if remaining.is_some() {
            self.stats.call_remaining = remaining;
        }
        let limit = limit.map(|l| l.min(MAX_LIMIT));
        self.budget.observe(limit, remaining.map(|r| r.min(limit.unwrap_or(MAX_LIMIT))));
    }
}

/// Why a 2xx body was not parsed: not JSON (retried: it may have been cut),
/// or refused as it stands (not retried).
enum Unparsed {
    Invalid(serde_json::Error),
    Refused(String),
}

enum Failure {
    Retry(HuntressError, Option<Duration>),
    Fatal(HuntressError),
}

fn no_answer(path: &str, timeout: Duration) -> HuntressError {
    HuntressError::api(ErrorKind::Timeout, format!("{path}: no complete answer within {:.1}s (request_timeout)", timeout.as_secs_f64()))
}

fn transport_error(error: &reqwest::Error, path: &str) -> HuntressError {
    if error.is_timeout() {
        HuntressError::api(ErrorKind::Timeout, format!("{path}: no answer within request_timeout"))
    } else {
        HuntressError::api(ErrorKind::Network, format!("{path}: connection failed ({})", short_reqwest(error)))
    }
}
