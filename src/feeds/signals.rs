//! Signals (`signals.enabled`): the detections the Huntress SOC investigated,
//! read from `GET /v1/signals` incrementally with `investigated_at_min` set to
//! the checkpoint (the newest `investigated_at` delivered), oldest id first.
//!
//! * Each signal becomes one log (`service:huntress-signals`) with its type,
//!   status (as `signal_status`), entity and organization.
//! * Signals are deduplicated by id (the 5,000 most recent are remembered): the
//!   filter is inclusive, so the signals at the checkpoint are read again.
//! * The checkpoint moves only after the intake accepted the logs, and only
//!   when every page since it was read; otherwise the next run reads again.
//! * Signals outside the organization scope are dropped and counted.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::datadog::intake::Delivery;
use crate::datadog::report::{with_tag, Report, Status};
use crate::datadog::transform::{LogTemplate, PreparedLog};
use crate::feeds::orgs::{enrich_row, OrgDirectory};
use crate::feeds::paging::{list_pages, End, Health, PageSource};
use crate::feeds::feed::{Feed, ListSettings, Slot};
use crate::feeds::forwarding::FeedContext;
use crate::feeds::item::{join_present, shaped_log, text, timestamp, LogShape};
use crate::feeds::known::{Change, Version, VersionedState};
use crate::feeds::scope::OrgRef;
use crate::huntress::client::Feature;
use crate::base::tags::{self, cap_values, MAX_TAG_VALUES};

pub const SIGNALS_PATH: &str = "/v1/signals";
pub const SERVICE: &str = "huntress-signals";
/// Signals forwarded, by `signal_type`.
pub const COLLECTED_METRIC: &str = "huntress.signals.collected";
const CHECKPOINT: &str = "signal checkpoint";
/// The signal checkpoint (`investigated_at`) and the ids already forwarded.
pub const SIGNALS_KEY: &str = "signals_state";

fn entity_field<'a>(signal: &'a Map<String, Value>, key: &str) -> &'a str {
    signal.get("entity").and_then(|e| e.get(key)).and_then(Value::as_str).map(str::trim).unwrap_or_default()
}

/// The signal's organization: `organization: {id, name}`, or a flat
/// `organization_id`, resolved by the scope like every other feed's.
fn organization(signal: &Map<String, Value>) -> OrgRef {
    OrgRef::of_fields(signal)
}

/// The log for one signal: its fields at the top level, `status` moved to
/// `signal_status`, `type` copied to `signal_type`, the message from its name,
/// and the organization attributes and tags.
pub fn log_for(signal: &Map<String, Value>, directory: Option<&OrgDirectory>, template: &LogTemplate, now_ms: i64) -> Option<PreparedLog> {
    let (status, kind) = (text(signal, "status"), text(signal, "type"));
    let shape = LogShape {
        status_aside: "signal_status",
        level: if status.eq_ignore_ascii_case("reported") { "warning" } else { "info" },
        timestamp: signal.get("investigated_at").or_else(|| signal.get("updated_at")),
        message: join_present(&[text(signal, "name"), text(signal, "investigation_context")], " · "),
        extra: vec![("signal_type", Value::String(kind.to_string()))],
        tags: vec![tags::tag("signal_type", kind), tags::tag("signal_status", status), tags::tag("entity_type", entity_field(signal, "type"))],
    };
    shaped_log(signal, shape, enrich_row(directory, signal).into_owned(), template, now_ms)
}

/// Signals as a feed: after the SIEM queries, when the budget has room.
pub struct Signals(pub ListSettings);

impl Feed for Signals {
    fn feature(&self) -> Feature {
        Feature::Signals
    }
    fn slot(&self) -> Slot {
        Slot::Spare
    }
    fn max_pages(&self) -> u32 {
        self.0.max_pages
    }
    fn run(&mut self, source: &mut dyn PageSource, ctx: FeedContext<'_>, report: &mut Report) -> (Option<Health>, u32) {
        SignalRun { ctx }.run(source, report)
    }
}

/// One run of the signals feed.
pub struct SignalRun<'a> {
    pub ctx: FeedContext<'a>,
}

impl SignalRun<'_> {
    /// Forwards the signals investigated since the checkpoint. `None` when the
    /// budget left no room to send anything. The page count is for the next estimate.
    pub fn run(&mut self, source: &mut dyn PageSource, report: &mut Report) -> (Option<Health>, u32) {
        if !source.may_send() {
            return (None, 0);
        }
        let mut warnings = Vec::new();
        let mut state = self.ctx.load_state(SIGNALS_KEY, CHECKPOINT, &mut warnings);
        let mut filters = vec![
            ("investigated_at_min", state.checkpoint.to_rfc3339_opts(SecondsFormat::Secs, true)),
            ("sort_field", "id".to_string()),
            ("sort_direction", "asc".to_string()),
        ];
        filters.extend(self.ctx.scope.api_filter(self.ctx.directory));
        let mut signals = Vec::new();
        let mut newest: Option<DateTime<Utc>> = None;
        let listing = list_pages(source, SIGNALS_PATH, "signals", &filters, self.ctx.max_pages, |page| {
            for signal in page {
                if let Some(at) = timestamp(&signal, "investigated_at") {
                    newest = Some(newest.map_or(at, |n| n.max(at)));
                }
                signals.push(signal);
            }
            true
        });
        if let End::Failed(error) = &listing.end {
            if signals.is_empty() {
                let health = Health::failed(Feature::Signals, Status::Critical, format!("cannot read signals: {error}"), error);
                return (Some(health), listing.pages);
            }
        }
        let fresh = self.fresh(signals, &state);
        let delivery = self.deliver(&fresh, &mut state, report);
        match &listing.end {
            End::Complete | End::Enough if delivery.error.is_none() => state.checkpoint = state.checkpoint.max(newest.unwrap_or(state.checkpoint)),
            End::Failed(error) => warnings.push(format!("reading signals failed part way ({error}); the next run reads them again")),
            end => {
                if let Some(why) = end.shortfall("signals", self.ctx.max_pages, "signals.max_pages") {
                    warnings.push(format!("{why}; the next run reads from the same checkpoint"));
                }
            }
        }
        self.ctx.save_state(SIGNALS_KEY, CHECKPOINT, &state, &mut warnings);
        if let Some(error) = &delivery.error {
            warnings.push(format!("signals could not be forwarded; the checkpoint stays: {error}"));
            return (Some(Health::failed(Feature::Signals, Status::Warning, warnings.join("; "), error)), listing.pages);
        }
        let health = if warnings.is_empty() { Health::ok(Feature::Signals) } else { Health::warning(Feature::Signals, warnings.join("; ")) };
        (Some(health), listing.pages)
    }

    /// Signals in scope not forwarded before, each once.
    fn fresh(&self, signals: Vec<Map<String, Value>>, state: &VersionedState) -> Vec<(Map<String, Value>, Version)> {
        let mut seen_now = HashSet::new();
        signals
            .into_iter()
            .filter_map(|signal| {
                let version = Version::of_id(&signal);
                let new = seen_now.insert(version.report) && state.known.classify(&version) == Change::New;
                (new && self.ctx.scope.admits(Feature::Signals.tag(), &organization(&signal), self.ctx.directory)).then_some((signal, version))
            })
            .collect()
    }

    fn deliver(&mut self, fresh: &[(Map<String, Value>, Version)], state: &mut VersionedState, report: &mut Report) -> Delivery {
        let template = self.ctx.template(SERVICE);
        let (directory, now_ms) = (self.ctx.directory, self.ctx.now.timestamp_millis());
        let logs = fresh.iter().map(|(signal, _)| log_for(signal, directory, &template, now_ms));
        let delivery = self.ctx.forward(logs, Feature::Signals, report);
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        for (signal, version) in fresh.iter().take(delivery.accepted_prefix) {
            state.known.record(*version);
            *by_type.entry(tags::value_or(Some(text(signal, "type")), tags::UNKNOWN)).or_default() += 1;
        }
        for (kind, count) in cap_values(by_type, MAX_TAG_VALUES) {
            report.count(COLLECTED_METRIC, count as f64, &with_tag(self.ctx.base_tags, format!("signal_type:{kind}")));
        }
        delivery
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::MemoryCache;
    use crate::datadog::processing::ProcessingRules;
    use crate::test_support::{context, iso, TestSink, NOW};
    use crate::test_support::FakeSource;
    use crate::feeds::scope::{parse, Scope};
    use serde_json::json;

    fn signal(id: u64, investigated: i64, org: u64) -> Map<String, Value> {
        json!({
            "id": id, "name": "Firewall Disabled via Netsh", "type": "Process Insights", "status": "closed",
            "entity": {"id": 72183, "name": "Laptop 52", "type": "agent"}, "organization": {"id": org, "name": format!("Org {org}")},
            "investigated_at": iso(investigated), "investigation_context": "False Positive", "created_at": iso(investigated - 60),
            "updated_at": iso(investigated),
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn run_once(signals: &[Map<String, Value>], sink: &mut TestSink, cache: &mut MemoryCache, scope: &Scope) -> (Health, FakeSource) {
        let mut source = FakeSource::new(vec![Ok(json!({"signals": signals, "pagination": {}}))]);
        let mut report = Report::default();
        let rules = ProcessingRules::default();
        let mut run = SignalRun { ctx: context(sink, &rules, cache, scope) };
        let (health, _) = run.run(&mut source, &mut report);
        (health.unwrap(), source)
    }

    fn min_filter(source: &FakeSource) -> String {
        source.requests[0].1.iter().find(|(k, _)| k == "investigated_at_min").unwrap().1.clone()
    }

    #[test]
    fn signals_are_incremental_deduplicated_and_wait_for_the_intake() {
        let mut cache = MemoryCache::default();
        let scope = Scope::default();
        let signals = vec![signal(1, NOW - 300, 101), signal(2, NOW - 100, 101)];
        let mut refusing = TestSink::refusing();
        let (health, source) = run_once(&signals, &mut refusing, &mut cache, &scope);
        assert_eq!(health.status, Status::Warning);
        assert_eq!(min_filter(&source), iso(NOW - 3600));

        let mut sink = TestSink::accepting();
        let (health, source) = run_once(&signals, &mut sink, &mut cache, &scope);
        assert_eq!(health.status, Status::Ok);
        assert_eq!(min_filter(&source), iso(NOW - 3600), "the refused run left the checkpoint");
        assert_eq!(sink.logs.len(), 2);
        let (_, source) = run_once(&signals[1..], &mut sink, &mut cache, &scope);
        assert_eq!(min_filter(&source), iso(NOW - 100));
        assert_eq!(sink.logs.len(), 2, "the signal at the checkpoint is not sent again");
        let log = &sink.logs[0];
        assert_eq!(log["service"], SERVICE);
        assert_eq!(log["signal_type"], "Process Insights");
        assert_eq!(log["signal_status"], "closed");
        assert_eq!(log["entity"]["name"], "Laptop 52");
        assert_eq!(log["huntress_org_id"], 101);
        for tag in ["signal_type:process_insights", "signal_status:closed", "entity_type:agent", "huntress_org_id:101"] {
            assert!(log["ddtags"].as_str().unwrap().split(',').any(|t| t == tag), "{tag} in {}", log["ddtags"]);
        }
    }

    #[test]
    fn signals_of_other_organizations_stay_out() {
        let mut cache = MemoryCache::default();
        let scope = Scope::new(parse(json!({"organizations": {"exclude": ["Org 202"]}}).as_object().unwrap()).unwrap());
        let mut sink = TestSink::accepting();
        run_once(&[signal(1, NOW - 300, 101), signal(2, NOW - 200, 202)], &mut sink, &mut cache, &scope);
        assert_eq!(sink.logs.iter().map(|l| l["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1]);
    }
}
