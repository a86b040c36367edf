//! What a REST feed is given for one run besides its page source
//! (`FeedContext`), and the steps the feeds that forward logs share on it: the
//! checkpoint in the cache, the log template, and the forwarding of logs
//! through the Agent's processing rules to the intake (`LogSink`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::base::cache::Cache;
use crate::datadog::transform::StalePolicy;
use crate::datadog::intake::{Delivery, IntakeClient, LogBuffer};
use crate::datadog::processing::{ProcessingRules, Verdict, EXCLUDED_METRIC};
use crate::datadog::report::{with_tag, Report};
use crate::datadog::transform::{LogTemplate, PreparedLog};
use crate::feeds::orgs::OrgDirectory;
use crate::feeds::scope::Scope;
use crate::feeds::known::VersionedState;
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

/// Where logs of the REST feeds go: the intake, or a fake in tests.
pub trait LogSink {
    fn send_logs(&mut self, logs: &[PreparedLog], deadline: &Deadline) -> Delivery;
}

impl LogSink for IntakeClient {
    fn send_logs(&mut self, logs: &[PreparedLog], deadline: &Deadline) -> Delivery {
        let mut buffer = LogBuffer::default();
        logs.iter().for_each(|log| buffer.push(log));
        self.send(&buffer, deadline)
    }
}

/// Applies the processing rules to the logs of consecutive items (`None`: an
/// item without a log), sends the logs they keep, and counts what each rule
/// dropped. The returned prefix counts items, not logs: those handled from the
/// start (delivered, without a log, or dropped by a rule), so that none of them
/// is sent again.
pub fn forward_items(
    sink: &mut dyn LogSink,
    rules: &ProcessingRules,
    deadline: &Deadline,
    logs: impl Iterator<Item = Option<PreparedLog>>,
    feature: Feature,
    base_tags: &[String],
    report: &mut Report,
) -> Delivery {
    let (mut kept, mut excluded, mut items) = (Vec::new(), Vec::new(), 0);
    for (index, log) in logs.enumerate() {
        items = index + 1;
        let Some(mut log) = log else { continue };
        match rules.apply(&mut log.json, 0) {
            Verdict::Keep => kept.push((index, log)),
            Verdict::Cut => {
                log.truncated = true;
                kept.push((index, log));
            }
            Verdict::Excluded(rule) => excluded.push((index, rule.to_string())),
        }
    }
    let (indexes, logs): (Vec<usize>, Vec<PreparedLog>) = kept.into_iter().unzip();
    let delivery = if logs.is_empty() { Delivery { accepted_prefix: 0, error: None } } else { sink.send_logs(&logs, deadline) };
    let handled = indexes.get(delivery.accepted_prefix).map_or(items, |index| *index);
    let mut by_rule: BTreeMap<String, u64> = BTreeMap::new();
    for (_, rule) in excluded.into_iter().filter(|(index, _)| *index < handled) {
        *by_rule.entry(rule).or_default() += 1;
    }
    for (rule, count) in by_rule {
        let tags = with_tag(&with_tag(base_tags, format!("rule:{rule}")), format!("feature:{}", feature.tag()));
        report.count(EXCLUDED_METRIC, count as f64, &tags);
    }
    Delivery { accepted_prefix: handled, error: delivery.error }
}
