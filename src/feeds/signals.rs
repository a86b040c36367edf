//! Signals (`signals.enabled`): the detections the Huntress SOC investigated,
//! read from `GET /v1/signals` incrementally with `investigated_at_min` set to
//! the checkpoint (the newest `investigated_at` delivered), oldest id first.
//!
//! * Each signal becomes one log (`service:huntress-signals`) with its type,
//!   status (as `signal_status`), entity and organization.
//! * Signals are deduplicated by id (the 5,000 most recent are remembered): the
//!   filter is inclusive, so the signals at the checkpoint are read again.
//! * The listing is read in windows of `investigated_at`, so that a backlog
//!   larger than a run's pages drains over several runs (see `SignalRun::run`).
//! * The checkpoint moves only after the intake accepted the logs, and only
//!   to the end of a window read to its last page.
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
use crate::base::error::HuntressError;
use crate::feeds::known::{Change, Version, VersionedState, KNOWN_ITEMS};
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

/// `at` without its fraction of a second: the time filters take whole seconds.
fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
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
    ///
    /// The listing is read in windows of `investigated_at` (`_min` and `_max`,
    /// whole seconds), which does not depend on the order the API returns:
    /// a window read to its last page moves the checkpoint to its end, and the
    /// next window (longer, the more so the fewer pages this one took) follows
    /// in the same run while pages remain.
    /// A window that needs more pages than a run has is quartered for the next
    /// run, so any backlog drains over runs however long the Agent was down.
    /// What was read of an unfinished window is forwarded only while the ids
    /// remembered cover reading it again; a single second denser than a run
    /// can read is given up past, with a warning, rather than read forever.
    pub fn run(&mut self, source: &mut dyn PageSource, report: &mut Report) -> (Option<Health>, u32) {
        if !source.may_send() {
            return (None, 0);
        }
        let mut warnings = Vec::new();
        let mut state = self.ctx.load_state(SIGNALS_KEY, CHECKPOINT, &mut warnings);
        let now = self.ctx.now;
        let max_pages = self.ctx.max_pages;
        let mut pages = 0;
        let mut signals = Vec::new();
        // Where the checkpoint goes once the signals read are accepted.
        let mut reached = state.checkpoint;
        let mut failure: Option<HuntressError> = None;
        let mut start = whole_second(state.checkpoint);
        // The span of the last window read to its end in this run.
        let mut last_complete: Option<i64> = None;
        loop {
            // A span too long to add (a corrupt cache entry) reads up to now.
            let end = state.span.and_then(chrono::Duration::try_seconds).and_then(|d| start.checked_add_signed(d)).filter(|e| *e < now);
            let mut filters = vec![
                ("investigated_at_min", start.to_rfc3339_opts(SecondsFormat::Secs, true)),
                ("sort_field", "id".to_string()),
                ("sort_direction", "asc".to_string()),
            ];
            if let Some(end) = end {
                filters.push(("investigated_at_max", end.to_rfc3339_opts(SecondsFormat::Secs, true)));
            }
            filters.extend(self.ctx.scope.api_filter(self.ctx.directory));
            let allowance = max_pages - pages;
            let mut read = Vec::new();
            let mut newest: Option<DateTime<Utc>> = None;
            let listing = list_pages(source, SIGNALS_PATH, "signals", &filters, allowance, |page| {
                for signal in page {
                    if let Some(at) = timestamp(&signal, "investigated_at").filter(|at| *at <= now) {
                        newest = Some(newest.map_or(at, |n| n.max(at)));
                    }
                    read.push(signal);
                }
                true
            });
            pages += listing.pages;
            if listing.end.is_complete() {
                let empty = read.is_empty();
                signals.append(&mut read);
                match end {
                    Some(end) => {
                        reached = reached.max(end);
                        start = end;
                        last_complete = state.span;
                        // Grow while windows come back light, and fast across empty time.
                        let factor = if empty { 64 } else { i64::from((max_pages / listing.pages.max(1)).clamp(1, 8)) };
                        state.span = state.span.map(|s| s.saturating_mul(factor));
                        if pages < max_pages && source.may_send() {
                            continue;
                        }
                    }
                    None => {
                        reached = reached.max(newest.unwrap_or(reached));
                        state.span = None;
                    }
                }
                break;
            }
            let span = end.unwrap_or(now) - start;
            if matches!(listing.end, End::PageCap) && allowance == max_pages {
                // A whole run's pages did not finish this window.
                if span <= chrono::Duration::seconds(1) {
                    warnings.push(format!(
                        "more signals were investigated in the second {} than {max_pages} pages hold; the rest of that second is skipped",
                        start.to_rfc3339_opts(SecondsFormat::Secs, true)
                    ));
                    signals.append(&mut read);
                    reached = reached.max(start + chrono::Duration::seconds(1)).min(now);
                    state.span = Some(1);
                    break;
                }
                state.span = Some((span.num_seconds() / 4).max(1));
                warnings.push(format!(
                    "signals: {max_pages} pages did not reach the end of {}s of signals; the next run reads {}s at a time (raise `signals.max_pages` to catch up faster)",
                    span.num_seconds(),
                    state.span.unwrap_or(1)
                ));
            } else {
                if matches!(listing.end, End::PageCap) {
                    // Grown too far for the pages left: the next run goes on at the span that worked.
                    state.span = last_complete.or(state.span);
                }
                if let Some(why) = listing.end.shortfall("signals", max_pages, "signals.max_pages") {
                    warnings.push(format!("{why}; the next run reads from the same checkpoint"));
                }
            }
            if let End::Failed(error) = listing.end {
                failure = Some(error);
            }
            if read.len() + signals.len() <= KNOWN_ITEMS / 2 {
                signals.append(&mut read);
            }
            break;
        }
        if let Some(error) = &failure {
            if signals.is_empty() && reached == state.checkpoint {
                let health = Health::failed(Feature::Signals, Status::Critical, format!("cannot read signals: {error}"), error);
                return (Some(health), pages);
            }
            warnings.push(format!("reading signals failed part way ({error}); the next run reads them again"));
        }
        // Every id read in this run is remembered, however many pages it read.
        state.known.set_capacity(signals.len() + KNOWN_ITEMS);
        let fresh = self.fresh(signals, &state);
        let delivery = self.deliver(&fresh, &mut state, report);
        if delivery.error.is_none() {
            state.checkpoint = state.checkpoint.max(reached);
        }
        self.ctx.save_state(SIGNALS_KEY, CHECKPOINT, &state, &mut warnings);
        if let Some(error) = &delivery.error {
            warnings.push(format!("signals could not be forwarded; the checkpoint stays: {error}"));
            return (Some(Health::failed(Feature::Signals, Status::Warning, warnings.join("; "), error)), pages);
        }
        let health = if warnings.is_empty() { Health::ok(Feature::Signals) } else { Health::warning(Feature::Signals, warnings.join("; ")) };
        (Some(health), pages)
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

    /// A fake API with a time filter: pages of `per_page` signals in `[min, max]`, by id.
    struct Windowed {
        signals: Vec<Map<String, Value>>,
        per_page: usize,
        requests: Vec<Vec<(String, String)>>,
    }

    impl PageSource for Windowed {
        fn get(&mut self, _path: &str, query: &[(&str, String)]) -> crate::base::error::Result<Value> {
            self.requests.push(query.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
            let param = |k: &str| query.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            let bound = |k: &str| param(k).map(|v| DateTime::parse_from_rfc3339(&v).unwrap().with_timezone(&Utc));
            let (min, max) = (bound("investigated_at_min"), bound("investigated_at_max"));
            let chosen: Vec<_> = self
                .signals
                .iter()
                .filter(|s| {
                    let at = timestamp(s, "investigated_at").unwrap();
                    min.is_none_or(|m| at >= m) && max.is_none_or(|m| at <= m)
                })
                .collect();
            let skip: usize = param("page_token").map_or(0, |t| t.parse().unwrap());
            let page: Vec<_> = chosen.iter().skip(skip).take(self.per_page).collect();
            let next = skip + page.len();
            let pagination = if next < chosen.len() { json!({"next_page_token": next.to_string()}) } else { json!({}) };
            Ok(json!({"signals": page, "pagination": pagination}))
        }
        fn may_send(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_backlog_larger_than_a_run_drains_exactly_once() {
        let mut cache = MemoryCache::default();
        let scope = Scope::default();
        let mut sink = TestSink::accepting();
        // 400 signals over the last 40 minutes: 20 pages of 20, the run may read 3.
        let backlog: Vec<_> = (0..400).map(|i| signal(i, NOW - 2400 + i as i64 * 6, 101)).collect();
        let mut source = Windowed { signals: backlog, per_page: 20, requests: Vec::new() };
        let rules = ProcessingRules::default();
        let mut runs = 0;
        while sink.logs.len() < 400 && runs < 40 {
            let mut report = Report::default();
            let mut ctx = context(&mut sink, &rules, &mut cache, &scope);
            ctx.max_pages = 3;
            ctx.initial_lookback = std::time::Duration::from_secs(3600);
            let (health, pages) = SignalRun { ctx }.run(&mut source, &mut report);
            assert!(pages <= 3 && health.is_some());
            runs += 1;
        }
        let mut ids: Vec<_> = sink.logs.iter().map(|l| l["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), 400, "all delivered within {runs} runs");
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 400, "none twice");
    }

    #[test]
    fn a_second_denser_than_a_run_is_passed_with_a_warning() {
        let mut cache = MemoryCache::default();
        let scope = Scope::default();
        let mut sink = TestSink::accepting();
        let mut dense: Vec<_> = (0..100).map(|i| signal(i, NOW - 600, 101)).collect();
        dense.push(signal(500, NOW - 300, 101));
        let mut source = Windowed { signals: dense, per_page: 10, requests: Vec::new() };
        let rules = ProcessingRules::default();
        let mut warned = false;
        for run in 0..40 {
            if sink.logs.iter().any(|l| l["id"] == 500) {
                assert!(run <= 24, "{run} runs to pass a dense second");
                break;
            }
            let mut report = Report::default();
            let mut ctx = context(&mut sink, &rules, &mut cache, &scope);
            ctx.max_pages = 2;
            let (health, _) = SignalRun { ctx }.run(&mut source, &mut report);
            warned |= health.unwrap().message.unwrap_or_default().contains("the rest of that second is skipped");
        }
        assert!(warned);
        assert!(sink.logs.iter().any(|l| l["id"] == 500), "the signal after the dense second arrives");
        let mut ids: Vec<_> = sink.logs.iter().map(|l| l["id"].as_u64().unwrap()).collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "none twice");
    }

    #[test]
    fn a_corrupt_span_or_an_ancient_checkpoint_reads_up_to_now() {
        let rules = ProcessingRules::default();
        let scope = Scope::default();
        for span in [i64::MAX, 1] {
            let mut cache = MemoryCache::default();
            let mut state = VersionedState::new(DateTime::from_timestamp(-62_000_000_000, 0).unwrap());
            state.span = Some(span);
            crate::base::cache::Cache::write(&mut cache, SIGNALS_KEY, &state.encode()).unwrap();
            let mut sink = TestSink::accepting();
            let mut source = Windowed { signals: vec![signal(1, NOW - 60, 101)], per_page: 10, requests: Vec::new() };
            let mut report = Report::default();
            let (health, pages) = SignalRun { ctx: context(&mut sink, &rules, &mut cache, &scope) }.run(&mut source, &mut report);
            let health = health.unwrap();
            assert_eq!(health.status, Status::Ok, "{:?}", health.message);
            assert!(pages <= 10);
            assert_eq!(sink.logs.len(), 1, "span {span}: the signal a minute ago is read in this run");
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
