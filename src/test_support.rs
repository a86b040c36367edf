//! What the unit tests of the feeds share: an in-memory cache, a scripted page
//! source, an intake that accepts or refuses, and the context they run in.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{json, Map, Value};

use crate::base::cache::Cache;
use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::base::http::Deadline;
use crate::datadog::intake::Delivery;
use crate::datadog::processing::ProcessingRules;
use crate::datadog::transform::PreparedLog;
use crate::feeds::forwarding::{FeedContext, LogSink};
use crate::feeds::paging::PageSource;
use crate::feeds::scope::Scope;

/// An in-memory `Cache`, for unit tests.
#[derive(Default)]
pub struct MemoryCache(pub std::collections::HashMap<String, String>);

impl Cache for MemoryCache {
    fn read(&mut self, key: &str) -> std::result::Result<String, String> {
        Ok(self.0.get(key).cloned().unwrap_or_default())
    }

    fn write(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        self.0.insert(key.into(), value.into());
        Ok(())
    }
}


/// Answers from a script of responses and records the queries it was sent.
pub struct FakeSource {
    pub responses: VecDeque<Result<Value>>,
    pub requests: Vec<(String, Vec<(String, String)>)>,
    pub budget: u32,
}

impl FakeSource {
    pub fn new(responses: Vec<Result<Value>>) -> Self {
        FakeSource { responses: responses.into(), requests: Vec::new(), budget: u32::MAX }
    }
}

impl PageSource for FakeSource {
    fn get(&mut self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.budget = self.budget.saturating_sub(1);
        self.requests.push((path.to_string(), query.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()));
        self.responses.pop_front().unwrap_or_else(|| Ok(json!({"items": [], "pagination": {}})))
    }

    fn may_send(&self) -> bool {
        self.budget > 0
    }
}

pub fn page(plural: &str, ids: std::ops::Range<u32>, token: Option<&str>) -> Result<Value> {
    let items: Vec<Value> = ids.map(|id| json!({"id": id})).collect();
    let pagination = match token {
        Some(t) => json!({"next_page_token": t}),
        None => json!({}),
    };
    Ok(json!({plural: items, "pagination": pagination}))
}


/// The time the feed tests run at.
pub const NOW: i64 = 1_780_000_000;

/// `secs` as the API writes times.
pub fn iso(secs: i64) -> String {
    Utc.timestamp_opt(secs, 0).unwrap().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An intake that accepts every log (and keeps it, parsed) or refuses every batch.
pub struct TestSink {
    pub accept: bool,
    pub logs: Vec<Map<String, Value>>,
}

impl TestSink {
    pub fn accepting() -> Self {
        TestSink { accept: true, logs: Vec::new() }
    }

    pub fn refusing() -> Self {
        TestSink { accept: false, logs: Vec::new() }
    }
}

impl LogSink for TestSink {
    fn send_logs(&mut self, logs: &[PreparedLog], _: &Deadline) -> Delivery {
        if !self.accept {
            return Delivery { accepted_prefix: 0, error: Some(HuntressError::intake(ErrorKind::IntakeUnavailable, "503")) };
        }
        self.logs.extend(logs.iter().map(|l| serde_json::from_slice::<Map<String, Value>>(&l.json).unwrap()));
        Delivery { accepted_prefix: logs.len(), error: None }
    }
}

/// A context as the feed tests use it: no organization directory, no tags,
/// 10 pages, an hour of look-back, at `NOW`.
pub fn context<'a>(sink: &'a mut dyn LogSink, rules: &'a ProcessingRules, cache: &'a mut dyn Cache, scope: &'a Scope) -> FeedContext<'a> {
    FeedContext {
        sink,
        rules,
        cache,
        deadline: Deadline::after(Duration::from_secs(30)),
        directory: None,
        scope,
        base_tags: &[],
        max_pages: 10,
        initial_lookback: Duration::from_secs(3600),
        now: Utc.timestamp_opt(NOW, 0).unwrap(),
    }
}

