//! Forwards prepared logs to the Datadog Logs intake (v2): batches within the
//! intake's limits, compresses bodies (`compression::Encoding`), retries what
//! may succeed later, splits what the intake refuses as too large or malformed.

use std::ops::Range;

use bytes::Bytes;
use reqwest::header::HeaderValue;

use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::base::http::{backoff, excerpt, short_reqwest, Deadline, HttpClient, HttpFailure, HttpSettings, MAX_INTAKE_BODY};
use crate::base::redact::Redactor;
use crate::datadog::compression::Encoding;
use crate::datadog::transform::PreparedLog;

pub const MAX_BATCH_LOGS: usize = 1000;
/// The intake takes 5 MB uncompressed per request; stay clear of the edge.
pub const MAX_BATCH_BYTES: usize = 4_800_000;
const MAX_ATTEMPTS: u32 = 5;

/// Where and how logs are sent.
#[derive(Clone, PartialEq)]
pub struct IntakeSettings {
    pub url: String,
    pub dd_api_key: String,
    pub encoding: Encoding,
    /// Its own TLS options (`intake_tls_*`): the intake receives the Datadog API
    /// key, so `tls_verify: false` for the Huntress API leaves it verified.
    pub http: HttpSettings,
}

#[derive(Debug, Default, Clone)]
pub struct IntakeStats {
    pub requests: u64,
    pub accepted: u64,
    /// Single logs the intake refused (400/413) even alone: dropped and counted.
    pub rejected: u64,
    pub retried: u64,
    pub last_rejection: Option<String>,
}

/// How far a send got: `logs[..accepted_prefix]` are accepted or counted as rejected.
#[derive(Debug)]
pub struct Delivery {
    pub accepted_prefix: usize,
    pub error: Option<HuntressError>,
}

pub struct IntakeClient {
    http: HttpClient,
    url: String,
    api_key: HeaderValue,
    request_timeout: std::time::Duration,
    redactor: Redactor,
    encoding: Encoding,
    pub stats: IntakeStats,
}

enum BatchOutcome {
    Accepted,
    Split,
    Rejected(String),
}

impl IntakeClient {
    pub fn new(settings: &IntakeSettings, redactor: Redactor) -> Result<Self> {
        let mut api_key = HeaderValue::from_str(&settings.dd_api_key)
            .map_err(|_| HuntressError::config("dd_api_key", "contains characters that cannot go in an HTTP header"))?;
        api_key.set_sensitive(true);
        Ok(IntakeClient {
            http: HttpClient::new(&settings.http)?,
            url: settings.url.clone(),
            api_key,
            request_timeout: settings.http.request_timeout,
            redactor,
            encoding: settings.encoding,
            stats: IntakeStats::default(),
        })
    }

    pub fn reset_stats(&mut self) {
        self.stats = IntakeStats::default();
    }

    /// Sends `logs` in order and stops at the first batch that cannot be delivered.
    /// The first request always goes (its logs were fetched already); every
    /// later one (next batch, split half, retry) only before the run deadline, so
    /// a send ends at most one `request_timeout` past it. What is not sent stays
    /// for the next run.
    pub fn send(&mut self, logs: &LogBuffer, deadline: &Deadline) -> Delivery {
        let first_request = self.stats.requests;
        for range in batches(logs) {
            if let Err((accepted_prefix, error)) = self.send_range(logs, range, deadline, first_request) {
                return Delivery { accepted_prefix, error: Some(error) };
            }
        }
        Delivery { accepted_prefix: logs.len(), error: None }
    }

    /// On failure, returns how many logs from the start of `logs` were delivered.
    fn send_range(
        &mut self,
        logs: &LogBuffer,
        range: Range<usize>,
        deadline: &Deadline,
        first_request: u64,
    ) -> std::result::Result<(), (usize, HuntressError)> {
        if self.stats.requests > first_request && deadline.expired() {
            let error = HuntressError::Deadline(format!("{} logs not sent to the intake yet; the next run sends them", logs.len() - range.start));
            return Err((range.start, error));
        }
        match self.post_batch(logs, range.clone(), deadline) {
            Ok(BatchOutcome::Accepted) => {
                self.stats.accepted += range.len() as u64;
                Ok(())
            }
            Ok(BatchOutcome::Rejected(reason)) => {
                self.stats.rejected += range.len() as u64;
                self.stats.last_rejection = Some(reason);
                Ok(())
            }
            Ok(BatchOutcome::Split) => {
                let middle = range.start + range.len() / 2;
                self.send_range(logs, range.start..middle, deadline, first_request)?;
                self.send_range(logs, middle..range.end, deadline, first_request)
            }
            Err(error) => Err((range.start, error)),
        }
    }

    fn post_batch(&mut self, logs: &LogBuffer, range: Range<usize>, deadline: &Deadline) -> Result<BatchOutcome> {
        let body = self.encoding.encode_json_array(logs.joined(range.clone())).map_err(|e| {
            HuntressError::intake(ErrorKind::IntakeUnavailable, format!("cannot compress a batch with {} ({e})", self.encoding.describe()))
        })?;
        let body = Bytes::from(body);
        let mut attempt = 0;
        loop {
            self.stats.requests += 1;
            let mut request = self.http.post(&self.url).header("DD-API-KEY", self.api_key.clone()).header("content-type", "application/json");
            if let Some(content_encoding) = self.encoding.content_encoding() {
                request = request.header("content-encoding", content_encoding);
            }
            let request = request
                // No deadline clamp here: a send cut short cannot tell whether the
                // intake kept the batch, and a resend could duplicate it.
                .body(body.clone());
            // The answer is judged by its status: a body over MAX_INTAKE_BODY is
            // cut (only its start is quoted), so an accepted batch stays accepted.
            let error = match self.http.execute(request, self.request_timeout, MAX_INTAKE_BODY) {
                Ok(answer) => {
                    let detail = excerpt(&answer.body, 200, &self.redactor);
                    match classify(answer.status, range.len(), &detail) {
                        Disposition::Done(outcome) => return Ok(outcome),
                        Disposition::Fatal(error) => return Err(error),
                        Disposition::Retry(error) => error,
                    }
                }
                Err(HttpFailure::TimedOut) => HuntressError::intake(
                    ErrorKind::IntakeUnavailable,
                    format!("no complete answer within {:.1}s (request_timeout)", self.request_timeout.as_secs_f64()),
                ),
                Err(HttpFailure::Send(e) | HttpFailure::Body(e)) => {
                    HuntressError::intake(ErrorKind::IntakeUnavailable, format!("cannot reach the intake ({})", short_reqwest(&e)))
                }
            };
            attempt += 1;
            if attempt >= MAX_ATTEMPTS || !deadline.sleep(backoff(attempt - 1)) {
                return Err(error);
            }
            self.stats.retried += 1;
        }
    }
}

enum Disposition {
    Done(BatchOutcome),
    Retry(HuntressError),
    Fatal(HuntressError),
}

fn classify(status: u16, batch_len: usize, detail: &str) -> Disposition {
    match status {
        200..=299 => Disposition::Done(BatchOutcome::Accepted),
        400 | 413 if batch_len > 1 => Disposition::Done(BatchOutcome::Split),
        400 | 413 => Disposition::Done(BatchOutcome::Rejected(format!("intake refused a log with {status} ({detail})"))),
        401 | 403 => Disposition::Fatal(HuntressError::intake(
            ErrorKind::IntakeAuth,
            format!("the intake refused the API key ({status}): check `api_key` in datadog.yaml or `dd_api_key`"),
        )),
        408 | 429 | 500..=599 => {
            Disposition::Retry(HuntressError::intake(ErrorKind::IntakeUnavailable, format!("the intake answered {status} ({detail})")))
        }
        300..=399 => Disposition::Fatal(HuntressError::intake(
            ErrorKind::IntakeRejected,
            format!("the intake answered a redirect ({status}); redirects are not followed: check logs_intake_url"),
        )),
        _ => Disposition::Fatal(HuntressError::intake(ErrorKind::IntakeRejected, format!("unexpected intake status {status} ({detail})"))),
    }
}

/// Logs serialized back to back in one buffer, each followed by a comma, so
/// that any run of consecutive logs is one slice: a batch body is that slice
/// between brackets, with no copy.
#[derive(Debug, Default)]
pub struct LogBuffer {
    bytes: Vec<u8>,
    logs: Vec<LogEntry>,
}

#[derive(Debug)]
struct LogEntry {
    id: u64,
    start: usize,
}

impl LogBuffer {
    /// Appends one log that `write` serializes at the end of the given buffer;
    /// `write` returns false (and may leave bytes) when there is no log after all.
    pub fn push_with(&mut self, id: u64, write: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let start = self.bytes.len();
        if !write(&mut self.bytes) {
            self.bytes.truncate(start);
            return false;
        }
        self.bytes.push(b',');
        self.logs.push(LogEntry { id, start });
        true
    }

    pub fn push(&mut self, log: &PreparedLog) {
        self.push_with(log.id, |out| {
            out.extend_from_slice(&log.json);
            true
        });
    }

    pub fn len(&self) -> usize {
        self.logs.len()
    }

    /// All bytes held, the separators included.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.logs.iter().map(|log| log.id)
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.logs.clear();
    }

    fn end(&self, index: usize) -> usize {
        self.logs.get(index + 1).map_or(self.bytes.len(), |next| next.start) - 1
    }

    /// The serialized size of one log.
    fn size(&self, index: usize) -> usize {
        self.end(index) - self.logs[index].start
    }

    /// The logs of `range`, comma-separated.
    fn joined(&self, range: Range<usize>) -> &[u8] {
        match range.is_empty() {
            true => &[],
            false => &self.bytes[self.logs[range.start].start..self.end(range.end - 1)],
        }
    }
}

/// Consecutive ranges of at most `MAX_BATCH_LOGS` logs and `MAX_BATCH_BYTES` bytes.
pub fn batches(logs: &LogBuffer) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 2;
    for index in 0..logs.len() {
        let size = logs.size(index) + 1;
        let count = index - start;
        if count > 0 && (count == MAX_BATCH_LOGS || bytes + size > MAX_BATCH_BYTES) {
            ranges.push(start..index);
            start = index;
            bytes = 2;
        }
        bytes += size;
    }
    if start < logs.len() {
        ranges.push(start..logs.len());
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use crate::datadog::compression::FALLBACK_GZIP_LEVEL;

    fn log(size: usize) -> PreparedLog {
        let json = format!("{{\"m\":\"{}\"}}", "a".repeat(size.saturating_sub(8)));
        PreparedLog { id: size as u64, json: json.into_bytes(), stale: false, truncated: false }
    }

    fn buffer(logs: &[PreparedLog]) -> LogBuffer {
        let mut buffer = LogBuffer::default();
        logs.iter().for_each(|log| buffer.push(log));
        buffer
    }

    #[test]
    fn batches_respect_count_limit() {
        let logs = buffer(&(0..2500).map(|_| log(100)).collect::<Vec<_>>());
        let ranges = batches(&logs);
        assert_eq!(ranges, vec![0..1000, 1000..2000, 2000..2500]);
    }

    #[test]
    fn batches_respect_byte_limit() {
        let logs = buffer(&(0..12).map(|_| log(900_000)).collect::<Vec<_>>());
        let ranges = batches(&logs);
        for range in &ranges {
            let bytes = logs.joined(range.clone()).len() + 2;
            assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        }
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 12);
        assert_eq!(ranges.len(), 3);
    }

    #[test]
    fn empty_input_has_no_batches() {
        assert!(batches(&LogBuffer::default()).is_empty());
    }

    fn gzip_json_array_ok(joined: &[u8]) -> Vec<u8> {
        Encoding::Gzip(FALLBACK_GZIP_LEVEL).encode_json_array(joined).expect("gzip into memory")
    }

    fn gunzip(body: &[u8]) -> Vec<serde_json::Value> {
        let mut raw = String::new();
        flate2::read::GzDecoder::new(body).read_to_string(&mut raw).unwrap();
        serde_json::from_str(&raw).unwrap()
    }

    #[test]
    fn any_range_of_the_buffer_is_a_json_array() {
        let logs = buffer(&(0..10).map(|i| log(10 + i)).collect::<Vec<_>>());
        for range in [0..10, 0..1, 3..7, 9..10, 4..4] {
            let body = [b"[", logs.joined(range.clone()), b"]"].concat();
            let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            let sizes: Vec<usize> = parsed.iter().map(|v| v["m"].as_str().unwrap().len() + 8).collect();
            assert_eq!(sizes, range.clone().map(|i| 10 + i).collect::<Vec<_>>(), "{range:?}");
        }
        assert_eq!(logs.ids().collect::<Vec<_>>(), (10..20).collect::<Vec<_>>());
        let mut skipped = LogBuffer::default();
        assert!(!skipped.push_with(1, |out| {
            out.extend_from_slice(b"partial");
            false
        }));
        assert!(skipped.len() == 0 && skipped.bytes_len() == 0);
    }

    #[test]
    fn bodies_are_gzipped_json_arrays() {
        let first = buffer(&[log(20), log(30)]);
        let second = buffer(&(0..300).map(|i| log(100 + i)).collect::<Vec<_>>());
        assert_eq!(gunzip(&gzip_json_array_ok(first.joined(0..2))).len(), 2);
        let parsed = gunzip(&gzip_json_array_ok(second.joined(0..300)));
        assert_eq!(parsed.len(), 300);
        assert_eq!(parsed[299]["m"].as_str().unwrap().len(), 399 - 8);
        assert_eq!(gunzip(&gzip_json_array_ok(&[])).len(), 0);
        // Incompressible text makes the output outgrow every reservation.
        let mut seed = 7u64;
        let noise: String = (0..2_000_000)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                char::from(b'a' + (seed >> 59) as u8 % 26)
            })
            .collect();
        let big = PreparedLog { id: 0, json: format!("{{\"m\":\"{noise}\"}}").into_bytes(), stale: false, truncated: false };
        assert_eq!(gunzip(&gzip_json_array_ok(buffer(&[big]).joined(0..1)))[0]["m"].as_str().unwrap(), noise);
    }

    /// A local intake that refuses every batch with 400, over keep-alive
    /// connections; returns its URL and the count of requests it answered.
    fn refusing_intake() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v2/logs", listener.local_addr().unwrap());
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = answered.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(socket.try_clone().unwrap());
                    let mut socket = socket;
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                            line.clear();
                        }
                        let mut body = vec![0u8; length];
                        if line != "\r\n" || reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if socket.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, answered)
    }

    fn client_for(url: &str) -> IntakeClient {
        let tls = crate::base::http::TlsSettings { verify: true, ca_cert: None, ca_cert_key: "intake_tls_ca_cert" };
        let http = HttpSettings { request_timeout: std::time::Duration::from_secs(30), proxy: None, tls };
        let settings = IntakeSettings { url: url.to_string(), dd_api_key: "d".into(), encoding: Encoding::Gzip(FALLBACK_GZIP_LEVEL), http };
        IntakeClient::new(&settings, Redactor::default()).unwrap()
    }

    #[test]
    fn splitting_a_refused_batch_stops_at_the_deadline() {
        let (url, answered) = refusing_intake();
        let mut client = client_for(&url);
        let logs = buffer(&(0..64).map(|i| log(20 + i)).collect::<Vec<_>>());

        // Before the deadline: every log is tried alone, 2n - 1 requests, all refused.
        let delivery = client.send(&logs, &Deadline::after(std::time::Duration::from_secs(60)));
        assert!(delivery.error.is_none());
        assert_eq!(delivery.accepted_prefix, 64);
        assert_eq!((client.stats.requests, client.stats.rejected, client.stats.accepted), (127, 64, 0));

        // Past the deadline: the first request goes, no split follows, nothing is marked done.
        client.reset_stats();
        let delivery = client.send(&logs, &Deadline::after(std::time::Duration::ZERO));
        assert_eq!(client.stats.requests, 1);
        assert_eq!(delivery.accepted_prefix, 0);
        assert_eq!(delivery.error.map(|e| e.kind()), Some(ErrorKind::Deadline));
        assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 128);
    }

    #[test]
    fn retry_decisions_follow_the_intake_contract() {
        for status in [408, 429, 500, 502, 503] {
            assert!(matches!(classify(status, 10, ""), Disposition::Retry(_)), "{status}");
        }
        for status in [400, 413] {
            assert!(matches!(classify(status, 10, ""), Disposition::Done(BatchOutcome::Split)), "{status}");
            assert!(matches!(classify(status, 1, ""), Disposition::Done(BatchOutcome::Rejected(_))), "{status}");
        }
        for status in [401, 403, 307] {
            assert!(matches!(classify(status, 10, ""), Disposition::Fatal(_)), "{status}");
        }
        assert!(matches!(classify(202, 10, ""), Disposition::Done(BatchOutcome::Accepted)));
    }
}
