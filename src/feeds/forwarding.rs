//! What every REST feed that forwards logs (incidents, escalations, signals)
//! is given for one run besides its page source, and the steps they share on
//! it: the checkpoint in the cache, the log template, the forwarding of logs
//! through the processing rules to the intake, and how an item becomes a log.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::base::cache::Cache;
use crate::config::StalePolicy;
use crate::datadog::intake::Delivery;
use crate::datadog::processing::ProcessingRules;
use crate::datadog::report::Report;
use crate::datadog::transform::{self, Enrichment, LogTemplate, Prepared, PreparedLog};
use crate::feeds::orgs::OrgDirectory;
use crate::feeds::scope::Scope;
use crate::feeds::versioned::{forward_items, LogSink, VersionedState};
use crate::base::http::Deadline;
use crate::huntress::client::Feature;

/// Everything one run of a log-forwarding feed needs besides the page source.
pub struct FeedContext<'a> {
    pub sink: &'a mut dyn LogSink,
    /// The Agent's processing rules, applied to these logs as to every log source.
    pub rules: &'a ProcessingRules,
    pub cache: &'a mut dyn Cache,
    pub deadline: Deadline,
    pub directory: Option<&'a OrgDirectory>,
    pub scope: &'a Scope,
    pub base_tags: &'a [String],
    pub max_pages: u32,
    pub initial_lookback: Duration,
    pub now: DateTime<Utc>,
}

impl FeedContext<'_> {
    /// The state saved under `key`, or a fresh one `initial_lookback` back;
    /// `what` names it in `warnings`.
    pub fn load_state(&mut self, key: &str, what: &str, warnings: &mut Vec<String>) -> VersionedState {
        VersionedState::load(self.cache, key, what, self.now, self.initial_lookback, warnings)
    }

    /// Saves `state` under `key`; a failure is a warning naming `what`.
    pub fn save_state(&mut self, key: &str, what: &str, state: &VersionedState, warnings: &mut Vec<String>) {
        if let Err(e) = self.cache.write(key, &state.encode()) {
            warnings.push(format!("cannot save the {what} ({e})"));
        }
    }

    /// The template of the feed's logs: its service and the instance tags; an
    /// item older than the intake accepts is sent with the send time as `date`.
    pub fn template(&self, service: &str) -> LogTemplate {
        LogTemplate { service: service.into(), ddtags: self.base_tags.join(","), stale_policy: StalePolicy::RewriteDate }
    }

    /// `forward_items` with this run's sink, rules, deadline and tags.
    pub fn forward(&mut self, logs: impl Iterator<Item = Option<PreparedLog>>, feature: Feature, report: &mut Report) -> Delivery {
        forward_items(self.sink, self.rules, &self.deadline, logs, feature, self.base_tags, report)
    }
}

/// The item's `status` moved to `aside`, and `status` set to the log level
/// (`status` is the level in Datadog).
pub fn set_level(row: &mut Map<String, Value>, aside: &str, level: &str) {
    if let Some(value) = row.remove("status") {
        row.insert(aside.into(), value);
    }
    row.insert("status".into(), Value::from(level));
}

/// The parts that are not empty, joined by `separator`.
pub fn join_present(parts: &[&str], separator: &str) -> String {
    parts.iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(separator)
}

/// The log of one item: `row` with the organization's attributes, its tags
/// and then `tags`; `None` when the template skips it as stale.
pub fn prepare_log(row: Map<String, Value>, org: Enrichment, tags: &[String], template: &LogTemplate, now_ms: i64) -> Option<PreparedLog> {
    let all: Vec<&str> = std::iter::once(org.tags.as_str()).filter(|t| !t.is_empty()).chain(tags.iter().map(String::as_str)).collect();
    let enrichment = Enrichment::new(org.attributes, all.join(","));
    match transform::prepare_value(row, template, &enrichment, now_ms) {
        Prepared::Log(log) => Some(log),
        Prepared::SkippedStale { .. } => None,
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::base::error::{ErrorKind, HuntressError};
    use chrono::{SecondsFormat, TimeZone};

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

    #[test]
    fn logs_carry_the_level_the_present_parts_and_the_organization_tags_first() {
        let template = LogTemplate { service: "huntress-test".into(), ddtags: "team:sec".into(), stale_policy: StalePolicy::RewriteDate };
        let mut row = serde_json::json!({"id": 1, "status": "open"}).as_object().unwrap().clone();
        set_level(&mut row, "item_status", "warning");
        row.insert("message".into(), Value::from(join_present(&["", "Subject", "", "Summary"], ": ")));
        let tags = ["severity:low".to_string()];
        let parse = |log: Option<PreparedLog>| serde_json::from_slice::<Map<String, Value>>(&log.unwrap().json).unwrap();
        let org = Enrichment::new(vec![("huntress_org_id".into(), Value::from(7))], "huntress_org_id:7".into());
        let log = parse(prepare_log(row.clone(), org, &tags, &template, NOW * 1000));
        assert_eq!((&log["status"], &log["item_status"], &log["message"]), (&Value::from("warning"), &Value::from("open"), &Value::from("Subject: Summary")));
        assert_eq!(log["huntress_org_id"], 7);
        assert_eq!(log["ddtags"], "team:sec,huntress_org_id:7,severity:low");
        let log = parse(prepare_log(row, Enrichment::new(Vec::new(), String::new()), &tags, &template, NOW * 1000));
        assert_eq!(log["ddtags"], "team:sec,severity:low", "no empty tag without an organization");
    }
}
