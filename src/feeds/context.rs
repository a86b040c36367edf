//! What every REST feed that forwards logs (incidents, escalations, signals)
//! is given for one run besides its page source, and the steps they share on
//! it: the checkpoint in the cache, the log template, and the forwarding of
//! logs through the processing rules to the intake.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::checkpoint::Cache;
use crate::config::StalePolicy;
use crate::datadog::intake::Delivery;
use crate::datadog::processing::ProcessingRules;
use crate::datadog::report::Report;
use crate::datadog::transform::{LogTemplate, PreparedLog};
use crate::feeds::orgs::OrgDirectory;
use crate::feeds::scope::Scope;
use crate::feeds::versioned::{forward_items, LogSink, VersionedState};
use crate::http::Deadline;
use crate::huntress::Feature;

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

#[cfg(test)]
pub mod tests {
    use super::*;
    use chrono::TimeZone;

    /// The time the feed tests run at.
    pub const NOW: i64 = 1_780_000_000;

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
}
