//! Incident reports (`incidents.enabled`): pages `GET /v1/incident_reports`
//! newest change first (`sort_field=updated_at`, `sort_direction=desc`) down to
//! the checkpoint, and forwards each new version of a report as a log
//! (`service:huntress-incidents`) and as a Datadog event.
//!
//! The rules shared with escalations (versions, deduplication, the checkpoint
//! that moves only after the intake accepted, events only for accepted logs)
//! live in `versioned`; this module says what a report looks like in Datadog.
//!
//! * `huntress.incidents.open` counts reports whose status is `sent` (delivered,
//!   neither closed nor dismissed), read each run with the API's `status`
//!   filter; other statuses (e.g. `auto_remediating`) are not counted.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::base::tags;
use crate::datadog::report::Event;
use crate::datadog::transform::{LogTemplate, PreparedLog};
use crate::feeds::item::{id_text, join_present, shaped_log, text, LogShape};
use crate::feeds::known::Change;
use crate::feeds::orgs::{enrich_row, OrgDirectory};
use crate::feeds::scope::OrgRef;
use crate::feeds::versioned::{self, push_org_tags, version_event, EventParts, FeedNames, VersionedFeed};
use crate::huntress::client::Feature;

pub const INCIDENTS_PATH: &str = "/v1/incident_reports";
pub const SERVICE: &str = "huntress-incidents";
/// The incident report checkpoint and the versions already forwarded.
pub const INCIDENTS_KEY: &str = "incidents_state";
/// The status of a report that is open: sent to the partner, not closed or dismissed.
pub const OPEN_STATUS: &str = "sent";

/// Incident reports as a versioned feed.
pub struct Incidents;

static NAMES: FeedNames = FeedNames {
    feature: Feature::Incidents,
    path: INCIDENTS_PATH,
    plural: "incident_reports",
    cache_key: INCIDENTS_KEY,
    what: "incident reports",
    max_pages_option: "incidents.max_pages",
    metric_prefix: "huntress.incidents",
    event_title: "Huntress incident report",
    aggregation_prefix: "huntress-incident",
    service: SERVICE,
};

impl VersionedFeed for Incidents {
    fn names(&self) -> &'static FeedNames {
        &NAMES
    }
    fn organizations(&self, item: &Map<String, Value>) -> Vec<OrgRef> {
        vec![OrgRef::of_fields(item)]
    }
    fn log_for(&self, item: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, template: &LogTemplate, now_ms: i64) -> Option<PreparedLog> {
        log_for(item, change, directory, template, now_ms)
    }
    fn event_for(&self, item: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, base: &[String], now: DateTime<Utc>) -> Event {
        event_for(item, change, directory, base, now)
    }
    fn status_gauges(&self) -> &'static [(&'static str, &'static str)] {
        &[("open", OPEN_STATUS)]
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "closed" | "dismissed" | "partner_dismissed")
}

/// The event's alert type: `critical`/`high` → `error`, `low` → `warning`;
/// a report closed or dismissed → `success`; anything else → `info`.
pub fn alert_type(severity: &str, status: &str) -> &'static str {
    versioned::alert_type(severity, is_final(&status.to_lowercase()))
}

/// The log's `status` (level), on the same rule as `alert_type`.
pub fn log_status(severity: &str, status: &str) -> &'static str {
    versioned::log_status(severity, is_final(&status.to_lowercase()))
}

/// Plain text from the HTML of a report body: tags dropped, block ends as line
/// breaks, common entities decoded, blank runs collapsed.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[start + 1..start + end].trim_start_matches('/').to_ascii_lowercase();
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        if matches!(name.as_str(), "p" | "br" | "div" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "ul" | "ol" | "table") {
            out.push('\n');
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let lines: Vec<String> = decoded.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|l| !l.is_empty()).collect();
    lines.join("\n")
}

fn org_label(report: &Map<String, Value>, directory: Option<&OrgDirectory>) -> (Option<String>, Option<String>) {
    let id = report.get("organization_id").and_then(id_text);
    let name = id.as_deref().and_then(|id| directory.and_then(|d| d.get(id))).map(|o| o.name.clone()).filter(|n| !n.is_empty());
    (id, name)
}

/// The Datadog event for one report version.
pub fn event_for(report: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, base: &[String], now: DateTime<Utc>) -> Event {
    let id = report.get("id").and_then(id_text).unwrap_or_else(|| "unknown".into());
    let (severity, status, platform) = (text(report, "severity"), text(report, "status"), text(report, "platform"));
    let subject = match text(report, "subject") {
        "" => format!("#{id} ({severity})"),
        s => s.to_string(),
    };
    let (org_id, org_name) = org_label(report, directory);
    let indicators: Vec<&str> = report.get("indicator_types").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let organization = match (&org_name, &org_id) {
        (Some(name), Some(id)) => format!("{name} ({id})"),
        (None, Some(id)) => id.clone(),
        _ => "unknown".into(),
    };
    let mut text_parts = vec![format!(
        "Severity: {severity} · Status: {status} · Organization: {organization} · Platform: {platform} · Indicators: {} · Report {id}",
        if indicators.is_empty() { "none".to_string() } else { indicators.join(", ") }
    )];
    for part in [text(report, "summary").to_string(), html_to_text(text(report, "body"))] {
        if !part.is_empty() {
            text_parts.push(part);
        }
    }
    let mut tags = base.to_vec();
    push_org_tags(&mut tags, org_id.as_deref(), org_name.as_deref());
    tags.push(tags::tag("severity", severity));
    tags.push(tags::tag("incident_status", status));
    tags.push(tags::tag("platform", platform));
    for indicator in &indicators {
        tags.push(tags::tag("indicator_type", indicator));
    }
    let alert_type = alert_type(severity, status);
    let parts = EventParts { id, subject, status: status.to_string(), text: text_parts.join("\n\n"), alert_type, tags };
    version_event(&NAMES, report, change, parts, now)
}

/// The log for one report version: the report's fields at the top level, its
/// `status` moved to `incident_status` (`status` is the log level in Datadog),
/// `message` from subject and summary, `huntress.incident_change`, and the
/// organization attributes and tags.
pub fn log_for(report: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, template: &LogTemplate, now_ms: i64) -> Option<PreparedLog> {
    let (severity, status) = (text(report, "severity"), text(report, "status"));
    let shape = LogShape {
        status_aside: "incident_status",
        level: log_status(severity, status),
        timestamp: report.get("updated_at"),
        message: join_present(&[text(report, "subject"), text(report, "summary")], "\n\n"),
        extra: vec![("huntress.incident_change", Value::from(change.tag()))],
        tags: vec![tags::tag("severity", severity), tags::tag("incident_status", status)],
    };
    shaped_log(report, shape, enrich_row(directory, report).into_owned(), template, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadog::processing::ProcessingRules;
    use crate::datadog::transform::StalePolicy;
    use crate::datadog::report::{Report, Status};
    use crate::feeds::paging::{End, Health};
    use crate::test_support::{context, iso, TestSink, NOW};
    use crate::test_support::FakeSource;
    use chrono::TimeZone;
    use serde_json::json;
    use crate::test_support::MemoryCache;
    use crate::feeds::known::{KnownVersions, Version, VersionedState};
    use crate::feeds::scope::Scope;
    use crate::feeds::versioned::{VersionedRun, MAX_EVENT_TEXT};

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn incident(id: u64, updated: i64, status: &str, severity: &str) -> Map<String, Value> {
        json!({
            "id": id, "organization_id": 101, "severity": severity, "status": status, "platform": "windows",
            "indicator_types": ["footholds", "process_detections"], "subject": format!("{} - Incident on WS-{id} (Acme)", severity.to_uppercase()),
            "summary": "A persistent foothold was found.", "body": "<p>Remove <b>the task</b> &amp; the file.</p><p>Then reboot.</p>",
            "updated_at": iso(updated), "sent_at": iso(updated - 600),
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn page(reports: &[Map<String, Value>], token: Option<&str>) -> crate::base::error::Result<Value> {
        Ok(json!({"incident_reports": reports, "pagination": token.map_or(json!({}), |t| json!({"next_page_token": t}))}))
    }

    #[test]
    fn versions_are_deduplicated_and_status_changes_are_new_events() {
        let mut known = KnownVersions::new(10);
        let first = Version::of(&incident(1, NOW, "sent", "high"));
        assert_eq!(known.classify(&first), Change::New);
        known.record(first);
        assert_eq!(known.classify(&Version::of(&incident(1, NOW, "sent", "high"))), Change::Seen);
        assert_eq!(known.classify(&Version::of(&incident(1, NOW + 5, "sent", "high"))), Change::Updated);
        assert_eq!(known.classify(&Version::of(&incident(1, NOW + 5, "closed", "high"))), Change::StatusChanged);
        assert_eq!(known.classify(&Version::of(&incident(1, NOW, "closed", "high"))), Change::StatusChanged, "status alone makes a version");
        assert_eq!(known.classify(&Version::of(&incident(1, NOW - 60, "sent", "high"))), Change::Seen, "an older copy of what was sent");
        assert_eq!(known.classify(&Version::of(&incident(1, NOW - 60, "dismissed", "high"))), Change::StatusChanged, "a changed status is new whatever its time");
        assert_eq!(known.classify(&Version::of(&incident(1, NOW - 60, "sent", "critical"))), Change::Updated, "so is a changed severity");
        assert_eq!(known.classify(&Version::of(&incident(2, NOW, "sent", "high"))), Change::New);
    }

    #[test]
    fn known_versions_are_bounded_and_round_trip() {
        let mut known = KnownVersions::new(3);
        for id in 1..=4 {
            known.record(Version::of(&incident(id, NOW, "sent", "low")));
        }
        known.record(Version::of(&incident(2, NOW + 1, "closed", "low")));
        assert_eq!(known.len(), 3);
        assert_eq!(known.classify(&Version::of(&incident(1, NOW, "sent", "low"))), Change::New, "the oldest change was evicted");
        let mut state = VersionedState::new(at(NOW));
        state.known = known.clone();
        let decoded = VersionedState::decode(&state.encode(), "incident checkpoint").unwrap().unwrap();
        assert_eq!(decoded.checkpoint, at(NOW));
        assert_eq!(decoded.known.classify(&Version::of(&incident(2, NOW + 1, "closed", "low"))), Change::Seen);
        assert!(VersionedState::decode("", "incident checkpoint").unwrap().is_none());
        assert!(VersionedState::decode("{", "incident checkpoint").is_err());
    }

    #[test]
    fn alert_types_follow_severity_and_resolution() {
        assert_eq!(alert_type("critical", "sent"), "error");
        assert_eq!(alert_type("high", "sent"), "error");
        assert_eq!(alert_type("low", "sent"), "warning");
        assert_eq!(alert_type("LOW", "auto_remediating"), "warning");
        assert_eq!(alert_type("weird", "sent"), "info");
        assert_eq!(alert_type("critical", "closed"), "success");
        assert_eq!(alert_type("high", "dismissed"), "success");
        assert_eq!(log_status("critical", "sent"), "critical");
        assert_eq!(log_status("high", "sent"), "error");
        assert_eq!(log_status("low", "sent"), "warning");
        assert_eq!(log_status("critical", "closed"), "ok");
    }

    #[test]
    fn scans_stop_once_past_the_checkpoint() {
        let newest: Vec<_> = (0..3).map(|i| incident(10 + i, NOW - i as i64 * 10, "sent", "low")).collect();
        let older: Vec<_> = (0..3).map(|i| incident(20 + i, NOW - 100 - i as i64 * 10, "sent", "low")).collect();
        let mut source = FakeSource::new(vec![page(&newest, Some("a")), page(&older, Some("b")), page(&newest, None)]);
        let scan = versioned::scan_changes(&mut source, INCIDENTS_PATH, "incident_reports", &[], at(NOW - 110), at(NOW), 10, versioned::Start::FIRST_PAGE);
        assert_eq!(scan.reports.len(), 5, "three newest and the two at or after the checkpoint");
        assert_eq!(scan.newest, Some(at(NOW)));
        assert!(matches!(scan.listing.end, End::Enough));
        assert_eq!(source.requests.len(), 2);
        let query = &source.requests[0].1;
        assert!(query.contains(&("sort_field".into(), "updated_at".into())) && query.contains(&("sort_direction".into(), "desc".into())));
    }

    #[test]
    fn a_listing_that_ignores_the_sort_order_is_read_to_its_end() {
        // Oldest first, whatever was asked: the first item is older than the checkpoint.
        let mut ascending: Vec<_> = (0..4).map(|i| incident(30 + i, NOW - 300 + i as i64 * 10, "sent", "low")).collect();
        ascending.push(incident(99, NOW - 5, "sent", "critical"));
        let mut future = incident(98, NOW + 3_000_000_000, "sent", "low");
        future.insert("updated_at".into(), json!("2099-01-01T00:00:00Z"));
        let mut source = FakeSource::new(vec![page(&ascending[..2], Some("a")), page(&ascending[2..], Some("b")), page(&[future], None)]);
        let scan = versioned::scan_changes(&mut source, INCIDENTS_PATH, "incident_reports", &[], at(NOW - 110), at(NOW), 10, versioned::Start::FIRST_PAGE);
        assert!(!scan.ordered);
        assert!(matches!(scan.listing.end, End::Complete));
        let ids: Vec<_> = scan.reports.iter().map(|r| r["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, vec![99, 98], "the new critical item is found, the old ones are left out");
        assert_eq!(scan.newest, Some(at(NOW - 5)), "a time in the future does not move the checkpoint");
    }

    #[test]
    fn events_carry_tags_text_and_aggregation_key() {
        let directory = OrgDirectory::from_api(at(0), Some(json!({"id": 5}).as_object().unwrap()), &[json!({"id": 101, "name": "Acme Dental"}).as_object().unwrap().clone()], true);
        let mut report = incident(7, NOW, "sent", "critical");
        report.insert("body".into(), Value::String(format!("<p>{}</p>", "word ".repeat(3_000))));
        let event = event_for(&report, Change::New, Some(&directory), &["team:sec".into()], at(NOW));
        assert_eq!(event.alert_type, "error");
        assert_eq!(event.aggregation_key, "huntress-incident-7");
        assert_eq!(event.timestamp, NOW);
        assert!(event.title.starts_with("Huntress incident report: CRITICAL - Incident on WS-7"));
        assert!(event.text.chars().count() <= MAX_EVENT_TEXT && event.text.ends_with('…'));
        assert!(event.text.starts_with("Severity: critical · Status: sent · Organization: Acme Dental (101)"));
        for tag in ["team:sec", "huntress_org_id:101", "huntress_org_name:acme_dental", "severity:critical", "incident_status:sent", "platform:windows", "indicator_type:footholds", "indicator_type:process_detections"] {
            assert!(event.tags.contains(&tag.to_string()), "{tag} in {:?}", event.tags);
        }
        let closed = event_for(&incident(7, NOW, "closed", "critical"), Change::StatusChanged, None, &[], at(NOW));
        assert_eq!(closed.alert_type, "success");
        assert!(closed.title.starts_with("Huntress incident report closed:"));
    }

    #[test]
    fn html_bodies_become_plain_text() {
        assert_eq!(html_to_text("<p>Remove <b>the task</b> &amp; the file.</p><p>Then   reboot.</p>"), "Remove the task & the file.\nThen reboot.");
        assert_eq!(html_to_text("no tags"), "no tags");
        assert_eq!(html_to_text("cut <b"), "cut");
    }

    #[test]
    fn logs_keep_the_report_and_move_status_aside() {
        let template = LogTemplate { service: SERVICE.into(), ddtags: "team:sec".into(), stale_policy: StalePolicy::RewriteDate };
        let log = log_for(&incident(9, NOW, "sent", "high"), Change::New, None, &template, NOW * 1000).unwrap();
        let log: Map<String, Value> = serde_json::from_slice(&log.json).unwrap();
        assert_eq!(log["service"], SERVICE);
        assert_eq!(log["ddsource"], "huntress");
        assert_eq!(log["status"], "error");
        assert_eq!(log["incident_status"], "sent");
        assert_eq!(log["severity"], "high");
        assert_eq!(log["id"], 9);
        assert_eq!(log["date"], NOW * 1000);
        assert_eq!(log["huntress.incident_change"], "new");
        assert_eq!(log["huntress_org_id"], 101);
        assert_eq!(log["ddtags"], "team:sec,huntress_org_id:101,severity:high,incident_status:sent");
        assert!(log["message"].as_str().unwrap().starts_with("HIGH - Incident on WS-9"));
    }

    fn run_once(reports: &[Map<String, Value>], open: &[Map<String, Value>], sink: &mut TestSink, cache: &mut MemoryCache) -> (Report, Health) {
        run_with_rules(reports, open, sink, cache, &ProcessingRules::default())
    }

    fn run_with_rules(
        reports: &[Map<String, Value>],
        open: &[Map<String, Value>],
        sink: &mut TestSink,
        cache: &mut MemoryCache,
        rules: &ProcessingRules,
    ) -> (Report, Health) {
        let mut source = FakeSource::new(vec![page(reports, None), page(open, None)]);
        let mut report = Report::default();
        let scope = Scope::default();
        let mut run = VersionedRun { feed: &Incidents, ctx: context(sink, rules, cache, &scope) };
        let (health, _) = run.run(&mut source, &mut report);
        (report, health.unwrap())
    }

    #[test]
    fn the_checkpoint_moves_only_after_the_intake_accepted() {
        let mut cache = MemoryCache::default();
        let reports = vec![incident(2, NOW - 60, "sent", "critical"), incident(1, NOW - 120, "sent", "low")];
        let (report, health) = run_once(&reports, &reports[..1], &mut TestSink::refusing(), &mut cache);
        assert_eq!(health.status, Status::Warning);
        assert!(report.events.is_empty(), "no event for a log the intake did not take");
        let state = VersionedState::decode(&cache.0[INCIDENTS_KEY], "incident checkpoint").unwrap().unwrap();
        assert_eq!(state.checkpoint, at(NOW - 3600));

        let mut sink = TestSink::accepting();
        let (report, health) = run_once(&reports, &reports[..1], &mut sink, &mut cache);
        assert_eq!(health.status, Status::Ok);
        assert_eq!(report.events.len(), 2);
        assert_eq!(report.events[0].aggregation_key, "huntress-incident-1", "oldest change first");
        let open: Vec<_> = report.metrics.iter().filter(|m| m.name == "huntress.incidents.open").map(|m| (m.tags[0].clone(), m.value)).collect();
        assert_eq!(open, vec![("severity:critical".into(), 1.0), ("severity:high".into(), 0.0), ("severity:low".into(), 0.0)]);
        assert_eq!(VersionedState::decode(&cache.0[INCIDENTS_KEY], "incident checkpoint").unwrap().unwrap().checkpoint, at(NOW - 60));

        let (report, _) = run_once(&reports, &[], &mut sink, &mut cache);
        assert!(report.events.is_empty(), "a second run sends nothing again");
        assert_eq!(sink.logs.len(), 2);
        let closed = vec![incident(2, NOW - 30, "closed", "critical"), incident(2, NOW - 60, "sent", "critical")];
        let (report, _) = run_once(&closed, &[], &mut sink, &mut cache);
        assert_eq!(report.events.len(), 1);
        assert_eq!(report.events[0].alert_type, "success");
    }

    #[test]
    fn a_checkpoint_in_the_future_is_read_again_from_the_lookback() {
        let mut cache = MemoryCache::default();
        cache.0.insert(INCIDENTS_KEY.into(), VersionedState::new(at(NOW + 86_400 * 365)).encode());
        let reports = vec![incident(3, NOW - 60, "sent", "high")];
        let mut sink = TestSink::accepting();
        let (report, health) = run_once(&reports, &[], &mut sink, &mut cache);
        assert_eq!(health.status, Status::Warning);
        assert!(health.message.unwrap().contains("in the future"));
        assert_eq!(report.events.len(), 1, "the report changed before the bad checkpoint is forwarded");
        assert_eq!(VersionedState::decode(&cache.0[INCIDENTS_KEY], "incident checkpoint").unwrap().unwrap().checkpoint, at(NOW - 60));
    }

    #[test]
    fn processing_rules_drop_and_mask_incident_logs_and_dropped_ones_are_handled() {
        let rules = ProcessingRules::parse(
            &json!([{"type": "exclude_at_match", "name": "no_low", "pattern": "^LOW -"}]),
            &json!([{"type": "mask_sequences", "name": "hosts", "replace_placeholder": "WS-[host]", "pattern": r"WS-\d+"}]),
        )
        .unwrap();
        let reports = vec![incident(3, NOW - 30, "sent", "high"), incident(2, NOW - 60, "sent", "low"), incident(1, NOW - 90, "sent", "critical")];
        let mut cache = MemoryCache::default();
        let mut sink = TestSink::accepting();
        let (report, health) = run_with_rules(&reports, &[], &mut sink, &mut cache, &rules);
        assert_eq!(health.status, Status::Ok);
        assert_eq!(sink.logs.len(), 2, "the excluded log is not sent");
        assert_eq!(report.events.len(), 3, "rules apply to logs; every change still has its event");
        let excluded: Vec<_> = report.metrics.iter().filter(|m| m.name == "huntress.siem.logs_excluded").map(|m| (m.tags.clone(), m.value)).collect();
        assert_eq!(excluded, vec![(vec!["rule:no_low".to_string(), "feature:incidents".to_string()], 1.0)]);
        assert_eq!(VersionedState::decode(&cache.0[INCIDENTS_KEY], "incident checkpoint").unwrap().unwrap().checkpoint, at(NOW - 30));
        let (report, _) = run_with_rules(&reports, &[], &mut sink, &mut cache, &rules);
        assert!(report.events.is_empty() && sink.logs.len() == 2, "handled changes are not sent again");
    }

    /// One run with `max_pages` pages and these responses (changes, then the open count).
    fn run_pages(responses: Vec<crate::base::error::Result<Value>>, max_pages: u32, now: i64, sink: &mut TestSink, cache: &mut MemoryCache) -> (Report, Health, FakeSource) {
        let mut source = FakeSource::new(responses);
        let mut report = Report::default();
        let (scope, rules) = (Scope::default(), ProcessingRules::default());
        let mut ctx = context(sink, &rules, cache, &scope);
        ctx.max_pages = max_pages;
        ctx.now = at(now);
        let (health, _) = VersionedRun { feed: &Incidents, ctx }.run(&mut source, &mut report);
        (report, health.unwrap(), source)
    }

    fn stored(cache: &MemoryCache) -> VersionedState {
        VersionedState::decode(&cache.0[INCIDENTS_KEY], "incident checkpoint").unwrap().unwrap()
    }

    fn token_of(source: &FakeSource, request: usize) -> Option<String> {
        source.requests[request].1.iter().find(|(k, _)| k == "page_token").map(|(_, v)| v.clone())
    }

    /// Six reports a page, newest change first: page `n` holds ids `100 - 6n` and below.
    fn backlog_page(n: i64) -> Vec<Map<String, Value>> {
        (0..6).map(|i| incident((100 - 6 * n - i) as u64, NOW - 60 - (6 * n + i) * 10, "sent", "low")).collect()
    }

    fn ids(sink: &TestSink) -> Vec<u64> {
        let mut ids: Vec<u64> = sink.logs.iter().map(|log| log["id"].as_u64().unwrap()).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_backlog_deeper_than_a_run_is_walked_over_runs_and_the_checkpoint_moves_at_its_end() {
        let mut cache = MemoryCache::default();
        let mut sink = TestSink::accepting();
        let first = vec![page(&backlog_page(0), Some("p1")), page(&backlog_page(1), Some("p2")), page(&[], None)];
        let (_, health, _) = run_pages(first, 2, NOW, &mut sink, &mut cache);
        assert_eq!(health.status, Status::Warning);
        assert!(health.message.unwrap().contains("the next run goes on from there"));
        let state = stored(&cache);
        assert_eq!(state.checkpoint, at(NOW - 3600), "the checkpoint stays while the walk is under way");
        let walk = state.walk.unwrap();
        assert_eq!((walk.token.as_deref(), walk.newest, walk.forwarded), (Some("p2"), Some(at(NOW - 60)), 12));

        let second = vec![page(&backlog_page(2), Some("p3")), page(&backlog_page(3), None), page(&[], None)];
        let (_, health, source) = run_pages(second, 2, NOW + 30, &mut sink, &mut cache);
        assert_eq!(health.status, Status::Ok);
        assert_eq!(token_of(&source, 0).as_deref(), Some("p2"), "the walk goes on from the saved token");
        assert_eq!(ids(&sink), (77..=100).collect::<Vec<_>>(), "every report once");
        let state = stored(&cache);
        assert_eq!((state.checkpoint, state.walk), (at(NOW - 60), None), "the newest change the walk read, once complete");
    }

    #[test]
    fn a_refused_token_starts_the_walk_again_without_sending_twice() {
        let mut cache = MemoryCache::default();
        let mut sink = TestSink::accepting();
        let first = vec![page(&backlog_page(0), Some("p1")), page(&backlog_page(1), Some("p2")), page(&[], None)];
        run_pages(first, 2, NOW, &mut sink, &mut cache);
        let expired = Err(crate::base::error::HuntressError::api(crate::base::error::ErrorKind::QueryInvalid, "400: page_token expired"));
        // Read again from the first page, sending nothing, then on past where the walk was.
        let again = vec![expired, page(&backlog_page(0), Some("q1")), page(&backlog_page(1), Some("q2")), page(&backlog_page(2), None), page(&[], None)];
        let (_, health, source) = run_pages(again, 2, NOW + 30, &mut sink, &mut cache);
        assert_eq!(token_of(&source, 0).as_deref(), Some("p2"));
        assert_eq!(token_of(&source, 1), None, "read again from the first page");
        assert_eq!(token_of(&source, 3).as_deref(), Some("q2"), "and past the pages the walk had read");
        assert_eq!(health.status, Status::Warning);
        assert_eq!(health.errors, vec![crate::base::error::ErrorKind::TokenExpired]);
        assert!(health.message.unwrap().contains("refused the saved page token"));
        assert_eq!(ids(&sink), (83..=100).collect::<Vec<_>>(), "each once");
        assert!(stored(&cache).walk.is_none(), "the walk is complete");
        assert_eq!(stored(&cache).checkpoint, at(NOW - 60));
    }

    #[test]
    fn an_unreadable_walk_is_dropped_with_a_cache_error_and_nothing_is_sent_twice() {
        let mut cache = MemoryCache::default();
        let mut sink = TestSink::accepting();
        let first = vec![page(&backlog_page(0), Some("p1")), page(&backlog_page(1), Some("p2")), page(&[], None)];
        run_pages(first, 2, NOW, &mut sink, &mut cache);
        for damage in [json!({"token": 5}), json!("nonsense"), json!({"token": "p2", "started": "yesterday", "ordered": true, "forwarded": 1})] {
            let mut entry: Value = serde_json::from_str(&cache.0[INCIDENTS_KEY]).unwrap();
            entry["walk"] = damage;
            cache.0.insert(INCIDENTS_KEY.into(), entry.to_string());
            let again = vec![page(&backlog_page(0), Some("p1")), page(&backlog_page(1), Some("p2")), page(&[], None)];
            let (_, health, source) = run_pages(again, 2, NOW + 30, &mut sink, &mut cache);
            assert_eq!(token_of(&source, 0), None, "a fresh walk");
            assert_eq!(health.status, Status::Warning);
            assert_eq!(health.errors, vec![crate::base::error::ErrorKind::Cache]);
            assert!(health.message.unwrap().contains("saved position"));
            assert_eq!(sink.logs.len(), 12, "the versions sent are still known");
            assert_eq!(stored(&cache).walk.unwrap().token.as_deref(), Some("p2"));
        }
    }

    #[test]
    fn an_unsorted_listing_is_read_to_its_end_over_runs_and_the_checkpoint_stops_at_the_walk_start() {
        // Oldest first, whatever was asked; the last page holds a change made while the walk went on.
        let ascending = |from: i64| -> Vec<Map<String, Value>> { (0..6).map(|i| incident((from + i) as u64, NOW - 900 + (from + i) * 10, "sent", "low")).collect() };
        let mut cache = MemoryCache::default();
        let mut sink = TestSink::accepting();
        let first = vec![page(&ascending(0), Some("p1")), page(&ascending(6), Some("p2")), page(&[], None)];
        let (_, health, _) = run_pages(first, 2, NOW - 300, &mut sink, &mut cache);
        assert!(health.message.unwrap().contains("not sorted by updated_at"));
        assert!(!stored(&cache).walk.unwrap().ordered);
        let mut last = ascending(12);
        last.push(incident(50, NOW - 100, "sent", "high"));
        let (_, health, _) = run_pages(vec![page(&last, None), page(&[], None)], 2, NOW, &mut sink, &mut cache);
        assert_eq!(health.status, Status::Ok);
        assert_eq!(sink.logs.len(), 19);
        let state = stored(&cache);
        assert_eq!((state.checkpoint, state.walk), (at(NOW - 301), None), "no further than the second before the walk began");
    }

    #[test]
    fn a_refused_delivery_keeps_the_walk_where_it_was() {
        let mut cache = MemoryCache::default();
        let mut sink = TestSink::accepting();
        let first = vec![page(&backlog_page(0), Some("p1")), page(&backlog_page(1), Some("p2")), page(&[], None)];
        run_pages(first, 2, NOW, &mut sink, &mut cache);
        let second = vec![page(&backlog_page(2), None), page(&[], None)];
        let (_, health, _) = run_pages(second, 2, NOW + 30, &mut TestSink::refusing(), &mut cache);
        assert_eq!(health.status, Status::Warning);
        let state = stored(&cache);
        assert_eq!((state.checkpoint, state.walk.unwrap().token.as_deref()), (at(NOW - 3600), Some("p2")));
    }
}
