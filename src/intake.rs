//! Forwards prepared logs to the Datadog Logs intake (v2): batches within the
//! intake's limits, gzip bodies, retries what may succeed later, splits what the
//! intake refuses as too large or malformed.

use std::ops::Range;

use flate2::{Compress, Compression, FlushCompress, Status};
use bytes::Bytes;
use reqwest::header::HeaderValue;

use crate::config::Config;
use crate::error::{ErrorKind, HuntressError, Result};
use crate::http::{backoff, excerpt, Deadline, HttpClient, HttpFailure};
use crate::huntress::short_reqwest;
use crate::transform::PreparedLog;

pub const MAX_BATCH_LOGS: usize = 1000;
/// The intake takes 5 MB uncompressed per request; stay clear of the edge.
pub const MAX_BATCH_BYTES: usize = 4_800_000;
const MAX_ATTEMPTS: u32 = 5;

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
    gzip: BatchGzip,
    pub stats: IntakeStats,
}

enum BatchOutcome {
    Accepted,
    Split,
    Rejected(String),
}

impl IntakeClient {
    pub fn new(config: &Config) -> Result<Self> {
        let mut api_key = HeaderValue::from_str(&config.dd_api_key)
            .map_err(|_| HuntressError::config("dd_api_key", "contains characters that cannot go in an HTTP header"))?;
        api_key.set_sensitive(true);
        Ok(IntakeClient {
            http: HttpClient::new(config)?,
            url: config.intake_url.clone(),
            api_key,
            gzip: BatchGzip::new(),
            stats: IntakeStats::default(),
        })
    }

    pub fn reset_stats(&mut self) {
        self.stats = IntakeStats::default();
    }

    /// Sends `logs` in order and stops at the first batch that cannot be delivered.
    pub fn send(&mut self, logs: &[PreparedLog], deadline: &Deadline) -> Delivery {
        for range in batches(logs) {
            if let Err((accepted_prefix, error)) = self.send_range(logs, range, deadline) {
                return Delivery { accepted_prefix, error: Some(error) };
            }
        }
        Delivery { accepted_prefix: logs.len(), error: None }
    }

    /// On failure, returns how many logs from the start of `logs` were delivered.
    fn send_range(&mut self, logs: &[PreparedLog], range: Range<usize>, deadline: &Deadline) -> std::result::Result<(), (usize, HuntressError)> {
        match self.post_batch(&logs[range.clone()], deadline) {
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
                self.send_range(logs, range.start..middle, deadline)?;
                self.send_range(logs, middle..range.end, deadline)
            }
            Err(error) => Err((range.start, error)),
        }
    }

    fn post_batch(&mut self, logs: &[PreparedLog], deadline: &Deadline) -> Result<BatchOutcome> {
        let body = Bytes::from(self.gzip.json_array(logs));
        let mut attempt = 0;
        loop {
            self.stats.requests += 1;
            let request = self
                .http
                .post(&self.url)
                .header("DD-API-KEY", self.api_key.clone())
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                // No deadline clamp here: a send cut short cannot tell whether the
                // intake kept the batch, and a resend could duplicate it.
                .body(body.clone());
            let error = match self.http.execute(request) {
                Ok(answer) => {
                    let detail = excerpt(&answer.body, 200);
                    match classify(answer.status, logs.len(), &detail) {
                        Verdict::Done(outcome) => return Ok(outcome),
                        Verdict::Fatal(error) => return Err(error),
                        Verdict::Retry(error) => error,
                    }
                }
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

enum Verdict {
    Done(BatchOutcome),
    Retry(HuntressError),
    Fatal(HuntressError),
}

fn classify(status: u16, batch_len: usize, detail: &str) -> Verdict {
    match status {
        200..=299 => Verdict::Done(BatchOutcome::Accepted),
        400 | 413 if batch_len > 1 => Verdict::Done(BatchOutcome::Split),
        400 | 413 => Verdict::Done(BatchOutcome::Rejected(format!("intake refused a log with {status} ({detail})"))),
        401 | 403 => Verdict::Fatal(HuntressError::intake(
            ErrorKind::IntakeAuth,
            format!("the intake refused the API key ({status}): check `api_key` in datadog.yaml or `dd_api_key`"),
        )),
        408 | 429 | 500..=599 => {
            Verdict::Retry(HuntressError::intake(ErrorKind::IntakeUnavailable, format!("the intake answered {status} ({detail})")))
        }
        300..=399 => Verdict::Fatal(HuntressError::intake(
            ErrorKind::IntakeRejected,
            format!("the intake answered a redirect ({status}); redirects are not followed: check logs_intake_url"),
        )),
        _ => Verdict::Fatal(HuntressError::intake(ErrorKind::IntakeRejected, format!("unexpected intake status {status} ({detail})"))),
    }
}

/// Consecutive ranges of at most `MAX_BATCH_LOGS` logs and `MAX_BATCH_BYTES` bytes.
pub fn batches(logs: &[PreparedLog]) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 2;
    for (index, log) in logs.iter().enumerate() {
        let size = log.json.len() + 1;
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

/// Gzips batches as JSON arrays, with one deflate state reused across batches
/// (a fresh state means allocating and zeroing some 300 KB per batch). Logs are
/// gathered into a staging buffer and compressed 64 KB at a time: one deflate
/// call per log costs more than the copy.
struct BatchGzip {
    deflate: Compress,
    staging: Vec<u8>,
}

const STAGING_BYTES: usize = 64 * 1024;

impl BatchGzip {
    fn new() -> Self {
        // Level 1: the intake cares about bytes on the wire far less than the Agent host cares about CPU.
        BatchGzip { deflate: Compress::new_gzip(Compression::fast(), 15), staging: Vec::with_capacity(STAGING_BYTES) }
    }

    fn json_array(&mut self, logs: &[PreparedLog]) -> Vec<u8> {
        let raw_len: usize = logs.iter().map(|l| l.json.len() + 1).sum::<usize>() + 1;
        let mut out = Vec::with_capacity(raw_len / 3 + 64);
        self.deflate.reset();
        self.staging.clear();
        self.staging.push(b'[');
        for (i, log) in logs.iter().enumerate() {
            if i > 0 {
                self.staging.push(b',');
            }
            if self.staging.len() + log.json.len() > STAGING_BYTES {
                self.compress_staged(&mut out);
            }
            if log.json.len() > STAGING_BYTES {
                feed(&mut self.deflate, &mut out, &log.json, FlushCompress::None);
            } else {
                self.staging.extend_from_slice(&log.json);
            }
        }
        self.staging.push(b']');
        feed(&mut self.deflate, &mut out, &self.staging, FlushCompress::Finish);
        out
    }

    fn compress_staged(&mut self, out: &mut Vec<u8>) {
        feed(&mut self.deflate, out, &self.staging, FlushCompress::None);
        self.staging.clear();
    }
}

fn feed(deflate: &mut Compress, out: &mut Vec<u8>, mut input: &[u8], flush: FlushCompress) {
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(16 * 1024));
        }
        let before = deflate.total_in();
        let status = deflate.compress_vec(input, out, flush).expect("deflating into a Vec cannot fail");
        input = &input[(deflate.total_in() - before) as usize..];
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => input.is_empty(),
        };
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn log(size: usize) -> PreparedLog {
        let json = format!("{{\"m\":\"{}\"}}", "a".repeat(size.saturating_sub(8)));
        PreparedLog { id: 0, json: json.into_bytes(), stale: false, truncated: false }
    }

    #[test]
    fn batches_respect_count_limit() {
        let logs: Vec<_> = (0..2500).map(|_| log(100)).collect();
        let ranges = batches(&logs);
        assert_eq!(ranges, vec![0..1000, 1000..2000, 2000..2500]);
    }

    #[test]
    fn batches_respect_byte_limit() {
        let logs: Vec<_> = (0..12).map(|_| log(900_000)).collect();
        let ranges = batches(&logs);
        for range in &ranges {
            let bytes: usize = logs[range.clone()].iter().map(|l| l.json.len() + 1).sum::<usize>() + 2;
            assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        }
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 12);
        assert_eq!(ranges.len(), 3);
    }

    #[test]
    fn empty_input_has_no_batches() {
        assert!(batches(&[]).is_empty());
    }

    fn gunzip(body: &[u8]) -> Vec<serde_json::Value> {
        let mut raw = String::new();
        flate2::read::GzDecoder::new(body).read_to_string(&mut raw).unwrap();
        serde_json::from_str(&raw).unwrap()
    }

    #[test]
    fn bodies_are_gzipped_json_arrays_across_reuses() {
        let mut gzip = BatchGzip::new();
        let first = vec![log(20), log(30)];
        let second: Vec<_> = (0..300).map(|i| log(100 + i)).collect();
        assert_eq!(gunzip(&gzip.json_array(&first)).len(), 2);
        let parsed = gunzip(&gzip.json_array(&second));
        assert_eq!(parsed.len(), 300);
        assert_eq!(parsed[299]["m"].as_str().unwrap().len(), 399 - 8);
        assert_eq!(gunzip(&gzip.json_array(&[])).len(), 0);
        // Incompressible text makes the output outgrow every reservation.
        let mut seed = 7u64;
        let noise: String = (0..2_000_000)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                char::from(b'a' + (seed >> 59) as u8 % 26)
            })
            .collect();
        let big = PreparedLog { id: 0, json: format!("{{\"m\":\"{noise}\"}}").into_bytes(), stale: false, truncated: false };
        assert_eq!(gunzip(&gzip.json_array(&[big]))[0]["m"].as_str().unwrap(), noise);
    }

    #[test]
    fn retry_decisions_follow_the_intake_contract() {
        for status in [408, 429, 500, 502, 503] {
            assert!(matches!(classify(status, 10, ""), Verdict::Retry(_)), "{status}");
        }
        for status in [400, 413] {
            assert!(matches!(classify(status, 10, ""), Verdict::Done(BatchOutcome::Split)), "{status}");
            assert!(matches!(classify(status, 1, ""), Verdict::Done(BatchOutcome::Rejected(_))), "{status}");
        }
        for status in [401, 403, 307] {
            assert!(matches!(classify(status, 10, ""), Verdict::Fatal(_)), "{status}");
        }
        assert!(matches!(classify(202, 10, ""), Verdict::Done(BatchOutcome::Accepted)));
    }
}
