//! The machinery of feeds whose items change over time and are forwarded once
//! per version: incident reports and escalations. A feed describes itself with
//! `VersionedFeed` (its `FeedNames`: path, cache key...; how an item becomes a
//! log and an event); `VersionedRun` does the rest, with the run's
//! `FeedContext`:
//!
//! * pages the list newest change first (`sort_field=updated_at`,
//!   `sort_direction=desc`) down to the checkpoint;
//! * a version is `id + updated_at + status`; the last version forwarded per
//!   item is kept in the persistent cache (the 5,000 most recently changed
//!   items), so no version is forwarded twice, and an item seen before comes
//!   back as `updated` or `status_changed` rather than `new`;
//! * items outside the organization scope are dropped (and counted);
//! * the checkpoint (newest `updated_at` read) moves only after the intake
//!   accepted the logs, and only when the scan reached it (or hit the page cap,
//!   with a warning that older changes were skipped);
//! * events are only emitted for logs the intake accepted, so a retry never
//!   doubles them;
//! * gauges by severity are read each run with the API's `status` filter.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::base::cache::{decode_entry, Cache};
use crate::datadog::intake::{Delivery, IntakeClient, LogBuffer};
use crate::datadog::processing::{ProcessingRules, Verdict};
use crate::datadog::report::{with_tag, Event, Report, Status};
use crate::datadog::transform::{self, LogTemplate, PreparedLog};
use crate::feeds::orgs::{id_text, OrgDirectory};
use crate::feeds::paging::{list_pages, End, Health, Listing, PageSource};
use crate::feeds::scope::{OrgRef, Scope};
use crate::base::http::Deadline;
use crate::huntress::client::Feature;
use crate::feeds::agents::MAX_ORGS_TAGGED;
use crate::feeds::forwarding::FeedContext;
use crate::base::tags::{self, cap_values, MAX_TAG_VALUES};

pub const SEVERITIES: [&str; 3] = ["low", "high", "critical"];
/// Items whose last forwarded version is remembered.
pub const KNOWN_ITEMS: usize = 5_000;
/// Datadog keeps 4,000 characters of event text and 100 of a title.
pub const MAX_EVENT_TEXT: usize = 4_000;
pub const MAX_EVENT_TITLE: usize = 100;
const STATE_VERSION: u32 = 1;

/// How an item version relates to what was forwarded before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    StatusChanged,
    Updated,
    /// This version (or a newer one) was already forwarded.
    Seen,
}

impl Change {
    pub fn tag(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::StatusChanged => "status_changed",
            Change::Updated => "updated",
            Change::Seen => "seen",
        }
    }
}

/// One version of one item, as hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub report: u64,
    /// `updated_at` in epoch ms, `i64::MIN` when unreadable.
    pub updated_ms: i64,
    pub status: u32,
    /// `updated_at` text and status together.
    pub version: u32,
}

fn hash(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    u64::from_le_bytes(hasher.finalize()[..8].try_into().expect("sha256 has 32 bytes"))
}

pub fn text<'a>(item: &'a Map<String, Value>, key: &str) -> &'a str {
    item.get(key).and_then(Value::as_str).map(str::trim).unwrap_or_default()
}

pub fn timestamp(item: &Map<String, Value>, key: &str) -> Option<DateTime<Utc>> {
    item.get(key).and_then(transform::parse_timestamp_ms).and_then(DateTime::from_timestamp_millis)
}

pub fn updated_at(item: &Map<String, Value>) -> Option<DateTime<Utc>> {
    timestamp(item, "updated_at")
}

pub fn item_id(item: &Map<String, Value>) -> String {
    item.get("id").and_then(id_text).unwrap_or_else(|| serde_json::to_string(item).unwrap_or_default())
}

impl Version {
    pub fn of(item: &Map<String, Value>) -> Version {
        let updated = item.get("updated_at").map(Value::to_string).unwrap_or_default();
        let status = text(item, "status").to_lowercase();
        Version {
            report: hash(&["report", &item_id(item)]),
            updated_ms: updated_at(item).map_or(i64::MIN, |t| t.timestamp_millis()),
            status: hash(&["status", &status]) as u32,
            version: hash(&["version", &updated, &status]) as u32,
        }
    }

    /// A version that only the id makes: once forwarded, an item is `Seen`.
    pub fn of_id(item: &Map<String, Value>) -> Version {
        Version { report: hash(&["report", &item_id(item)]), updated_ms: i64::MIN, status: 0, version: 0 }
    }
}

/// The last version forwarded per item, oldest change evicted first.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownVersions {
    order: VecDeque<u64>,
    last: HashMap<u64, Version>,
    capacity: usize,
}

impl KnownVersions {
    pub fn new(capacity: usize) -> Self {
        KnownVersions { order: VecDeque::new(), last: HashMap::new(), capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    pub fn classify(&self, v: &Version) -> Change {
        let Some(old) = self.last.get(&v.report) else { return Change::New };
        let older = old.updated_ms != i64::MIN && v.updated_ms != i64::MIN && v.updated_ms < old.updated_ms;
        if old.version == v.version || older {
            Change::Seen
        } else if old.status != v.status {
            Change::StatusChanged
        } else {
            Change::Updated
        }
    }

    pub fn record(&mut self, v: Version) {
        if self.last.insert(v.report, v).is_some() {
            self.order.retain(|r| *r != v.report);
        }
        self.order.push_back(v.report);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.last.remove(&oldest);
            }
        }
    }

    fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(self.order.len() * 24);
        for report in &self.order {
            let v = &self.last[report];
            bytes.extend_from_slice(&v.report.to_le_bytes());
            bytes.extend_from_slice(&v.updated_ms.to_le_bytes());
            bytes.extend_from_slice(&v.status.to_le_bytes());
            bytes.extend_from_slice(&v.version.to_le_bytes());
        }
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
    }

    fn decode(text: &str, capacity: usize) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(text).map_err(|e| format!("unreadable versions ({e})"))?;
        let mut known = KnownVersions::new(capacity);
        for c in bytes.chunks_exact(24) {
            known.record(Version {
                report: u64::from_le_bytes(c[0..8].try_into().expect("8 bytes")),
                updated_ms: i64::from_le_bytes(c[8..16].try_into().expect("8 bytes")),
                status: u32::from_le_bytes(c[16..20].try_into().expect("4 bytes")),
                version: u32::from_le_bytes(c[20..24].try_into().expect("4 bytes")),
            });
        }
        Ok(known)
    }
}

/// A checkpoint and the versions already forwarded, as kept in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedState {
    /// The newest time delivered; the next scan stops below it.
    pub checkpoint: DateTime<Utc>,
    pub known: KnownVersions,
}

#[derive(Serialize, Deserialize)]
struct StoredState {
    v: u32,
    checkpoint: String,
    known: String,
}

impl VersionedState {
    pub fn new(checkpoint: DateTime<Utc>) -> Self {
        VersionedState { checkpoint, known: KnownVersions::new(KNOWN_ITEMS) }
    }

    pub fn encode(&self) -> String {
        let stored = StoredState {
            v: STATE_VERSION,
            checkpoint: self.checkpoint.to_rfc3339_opts(SecondsFormat::Millis, true),
            known: self.known.encode(),
        };
        serde_json::to_string(&stored).expect("state serializes")
    }

    /// `what` names the entry in messages, e.g. "incident checkpoint".
    pub fn decode(text: &str, what: &str) -> Result<Option<Self>, String> {
        let Some(stored) = decode_entry(text, what, STATE_VERSION, |s: &StoredState| s.v)? else {
            return Ok(None);
        };
        let checkpoint = DateTime::parse_from_rfc3339(&stored.checkpoint).map_err(|e| format!("unreadable {what} ({e})"))?;
        let known = KnownVersions::decode(&stored.known, KNOWN_ITEMS).map_err(|e| format!("{what}: {e}"))?;
        Ok(Some(VersionedState { checkpoint: checkpoint.with_timezone(&Utc), known }))
    }

    /// The saved state, or a fresh one `lookback` before `now`; an unreadable
    /// entry is reported in `warnings` and replaced.
    pub fn load(cache: &mut dyn Cache, key: &str, what: &str, now: DateTime<Utc>, lookback: Duration, warnings: &mut Vec<String>) -> Self {
        let fresh = || VersionedState::new(now - chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::zero()));
        match cache.read(key).map_err(|e| format!("cannot read the {what} ({e})")).and_then(|t| VersionedState::decode(&t, what)) {
            Ok(Some(state)) if state.checkpoint > now => {
                // Nothing changes after now: from a future checkpoint every scan would stop at
                // once. The look-back is read again; the known versions drop what was sent.
                let fresh = fresh();
                warnings.push(format!(
                    "the {what} {} is in the future (a clock step, or a restored or edited cache); items are read again from {}",
                    state.checkpoint.to_rfc3339(),
                    fresh.checkpoint.to_rfc3339()
                ));
                VersionedState { checkpoint: fresh.checkpoint, ..state }
            }
            Ok(Some(state)) => state,
            Ok(None) => fresh(),
            Err(message) => {
                warnings.push(format!("{message}; starting again from initial_lookback_seconds"));
                fresh()
            }
        }
    }
}

/// Items changed at or after the checkpoint, newest first.
#[derive(Debug)]
pub struct Scan {
    pub reports: Vec<Map<String, Value>>,
    pub newest: Option<DateTime<Utc>>,
    pub listing: Listing,
}

/// Pages newest change first and stops at the first item older than `checkpoint`.
pub fn scan_changes(source: &mut dyn PageSource, path: &str, plural: &str, checkpoint: DateTime<Utc>, max_pages: u32) -> Scan {
    scan_changes_where(source, path, plural, &[], checkpoint, max_pages)
}

/// `scan_changes` with more filters (the scope's `organization_id`).
pub fn scan_changes_where(
    source: &mut dyn PageSource,
    path: &str,
    plural: &str,
    extra: &[(&str, String)],
    checkpoint: DateTime<Utc>,
    max_pages: u32,
) -> Scan {
    let mut reports = Vec::new();
    let mut newest: Option<DateTime<Utc>> = None;
    let mut filters = vec![("sort_field", "updated_at".to_string()), ("sort_direction", "desc".to_string())];
    filters.extend_from_slice(extra);
    let listing = list_pages(source, path, plural, &filters, max_pages, |page| {
        for report in page {
            match updated_at(&report) {
                Some(t) if t < checkpoint => return false,
                Some(t) => newest = Some(newest.map_or(t, |n| n.max(t))),
                None => {}
            }
            reports.push(report);
        }
        true
    });
    Scan { reports, newest, listing }
}

/// The versions not forwarded yet, oldest change first, with how each changed.
pub fn new_versions(reports: Vec<Map<String, Value>>, known: &KnownVersions) -> Vec<(Map<String, Value>, Version, Change)> {
    let mut seen_now = HashSet::new();
    let mut out: Vec<_> = reports
        .into_iter()
        .filter_map(|report| {
            let version = Version::of(&report);
            // Newest first: a second copy of an item in one scan is older.
            if !seen_now.insert(version.report) {
                return None;
            }
            let change = known.classify(&version);
            (change != Change::Seen).then_some((report, version, change))
        })
        .collect();
    out.reverse();
    out
}

pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The event's alert type: `critical`/`high` → `error`, `low` → `warning`;
/// a resolved item → `success`; anything else → `info`.
pub fn alert_type(severity: &str, resolved: bool) -> &'static str {
    if resolved {
        return "success";
    }
    match severity.to_lowercase().as_str() {
        "critical" | "high" => "error",
        "low" => "warning",
        _ => "info",
    }
}

/// The log's `status` (level), on the same rule as `alert_type`.
pub fn log_status(severity: &str, resolved: bool) -> &'static str {
    if resolved {
        return "ok";
    }
    match severity.to_lowercase().as_str() {
        "critical" => "critical",
        "high" => "error",
        "low" => "warning",
        _ => "info",
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

/// Where a versioned feed's items live, and its names in the cache, in
/// messages, options and metrics.
pub struct FeedNames {
    pub feature: Feature,
    pub path: &'static str,
    /// The list's key in the response, e.g. `incident_reports`.
    pub plural: &'static str,
    pub cache_key: &'static str,
    /// For messages, e.g. "incident reports".
    pub what: &'static str,
    pub max_pages_option: &'static str,
    /// The prefix of its metrics, e.g. `huntress.incidents`.
    pub metric_prefix: &'static str,
    pub service: &'static str,
}

/// What a versioned feed is: its names and how one item becomes a log and an event.
pub trait VersionedFeed {
    fn names(&self) -> &'static FeedNames;
    /// The organizations an item belongs to, for the scope.
    fn organizations(&self, item: &Map<String, Value>) -> Vec<OrgRef>;
    fn log_for(&self, item: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, template: &LogTemplate, now_ms: i64) -> Option<PreparedLog>;
    fn event_for(&self, item: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, base: &[String], now: DateTime<Utc>) -> Event;
    /// Gauges by severity, each read with a `status` filter: `(metric suffix, status)`.
    fn status_gauges(&self) -> &'static [(&'static str, &'static str)];
}

/// Items of one status: by severity, and by organization and severity.
#[derive(Debug, Default)]
pub struct StatusCounts {
    pub by_severity: BTreeMap<String, u64>,
    /// `(organization id, severity)`; an item of several organizations counts for each.
    pub by_org: BTreeMap<(String, String), u64>,
}

/// Items of `status` within the scope; `None` unless every page was read.
pub fn count_by_status(
    source: &mut dyn PageSource,
    feed: &dyn VersionedFeed,
    status: &str,
    max_pages: u32,
    scope: &Scope,
    directory: Option<&OrgDirectory>,
) -> (Option<StatusCounts>, Listing) {
    let mut counts = StatusCounts { by_severity: SEVERITIES.iter().map(|s| (s.to_string(), 0)).collect(), by_org: BTreeMap::new() };
    let mut filters = vec![("status", status.to_string())];
    filters.extend(scope.api_filter());
    let names = feed.names();
    let listing = list_pages(source, names.path, names.plural, &filters, max_pages, |page| {
        for item in page.iter().filter(|item| in_scope(feed, scope, item, directory, false)) {
            let severity = tags::value_or_unknown(Some(text(item, "severity")));
            for org in feed.organizations(item) {
                let id = org.id.unwrap_or_else(|| tags::UNKNOWN.to_string());
                *counts.by_org.entry((id, severity.clone())).or_default() += 1;
            }
            *counts.by_severity.entry(severity).or_default() += 1;
        }
        true
    });
    counts.by_severity = cap_values(counts.by_severity, MAX_TAG_VALUES);
    (listing.end.is_complete().then_some(counts), listing)
}

/// `<prefix>.open_by_organization`: the organizations with most open items
/// (500 at most, the rest as `other`), by severity.
fn report_by_org(metric: &str, by_org: &BTreeMap<(String, String), u64>, directory: Option<&OrgDirectory>, base: &[String], report: &mut Report) {
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for ((org, _), count) in by_org {
        *totals.entry(org.clone()).or_default() += count;
    }
    let kept = cap_values(totals, MAX_ORGS_TAGGED);
    let mut folded: BTreeMap<(String, String), u64> = BTreeMap::new();
    for ((org, severity), count) in by_org {
        let org = if kept.contains_key(org) { org.clone() } else { tags::OTHER.to_string() };
        *folded.entry((org, severity.clone())).or_default() += count;
    }
    for ((org, severity), count) in folded {
        let name = match directory.and_then(|d| d.get(&org)) {
            Some(known) if !known.name.trim().is_empty() => known.name.clone(),
            _ if org == tags::OTHER => tags::OTHER.to_string(),
            _ => tags::UNKNOWN.to_string(),
        };
        let mut tags = with_tag(base, tags::tag("huntress_org_id", &org));
        tags.push(tags::tag("huntress_org_name", &name));
        tags.push(format!("severity:{severity}"));
        report.gauge(metric, count as f64, &tags);
    }
}

/// Whether an item is in scope; `counted` decides whether a drop is counted
/// (the gauges read the same items again and must not count them twice).
fn in_scope(feed: &dyn VersionedFeed, scope: &Scope, item: &Map<String, Value>, directory: Option<&OrgDirectory>, counted: bool) -> bool {
    if !scope.is_active() {
        return true;
    }
    let orgs = feed.organizations(item);
    if counted {
        scope.admits_any(feed.names().feature.tag(), &orgs, directory)
    } else {
        scope.would_admit_any(&orgs, directory)
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
        report.count("huntress.siem.logs_excluded", count as f64, &tags);
    }
    Delivery { accepted_prefix: handled, error: delivery.error }
}

/// One run of a versioned feed: the feed and what its run is given.
pub struct VersionedRun<'a> {
    pub feed: &'a dyn VersionedFeed,
    pub ctx: FeedContext<'a>,
}

impl VersionedRun<'_> {
    fn checkpoint_name(&self) -> String {
        format!("{} checkpoint", self.feed.names().feature.tag().trim_end_matches('s'))
    }

    /// Forwards new versions, then reads the status gauges. `None` when the
    /// budget left no room to send anything. The page count is for the next estimate.
    pub fn run(&mut self, source: &mut dyn PageSource, report: &mut Report) -> (Option<Health>, u32) {
        if !source.may_send() {
            return (None, 0);
        }
        let names = self.feed.names();
        let (feature, what) = (names.feature, names.what);
        let mut warnings = Vec::new();
        let name = self.checkpoint_name();
        let mut state = self.ctx.load_state(names.cache_key, &name, &mut warnings);
        let extra: Vec<_> = self.ctx.scope.api_filter().into_iter().collect();
        let scan = scan_changes_where(source, names.path, names.plural, &extra, state.checkpoint, self.ctx.max_pages);
        let mut pages = scan.listing.pages;
        if let End::Failed(error) = &scan.listing.end {
            if scan.reports.is_empty() {
                let health = Health::failed(feature, Status::Critical, format!("cannot read {what}: {error}"), error);
                return (Some(health), pages);
            }
        }
        let in_scope: Vec<_> = scan.reports.into_iter().filter(|item| in_scope(self.feed, self.ctx.scope, item, self.ctx.directory, true)).collect();
        let changes = new_versions(in_scope, &state.known);
        let delivery = self.deliver(&changes, &mut state, report);
        match &scan.listing.end {
            End::Complete | End::Enough if delivery.error.is_none() => state.checkpoint = state.checkpoint.max(scan.newest.unwrap_or(state.checkpoint)),
            End::PageCap | End::RepeatedToken if delivery.error.is_none() => {
                state.checkpoint = state.checkpoint.max(scan.newest.unwrap_or(state.checkpoint));
                let why = scan.listing.end.shortfall(what, self.ctx.max_pages, names.max_pages_option).unwrap_or_default();
                warnings.push(format!("{why}; older changes since the last run were skipped"));
            }
            End::Budget => warnings.push("the rate budget ran out before the checkpoint was reached; the next run reads these changes again".into()),
            End::Failed(error) => warnings.push(format!("reading {what} failed part way ({error}); the next run reads them again")),
            _ => {}
        }
        self.ctx.save_state(names.cache_key, &name, &state, &mut warnings);
        if let Some(error) = &delivery.error {
            warnings.push(format!("{what} could not be forwarded; the checkpoint stays: {error}"));
            let health = Health::failed(feature, Status::Warning, warnings.join("; "), error);
            return (Some(health), pages);
        }
        for (suffix, status) in self.feed.status_gauges() {
            pages += self.report_status(source, suffix, status, report, &mut warnings);
        }
        let health = if warnings.is_empty() { Health::ok(feature) } else { Health::warning(feature, warnings.join("; ")) };
        (Some(health), pages)
    }

    /// Sends the logs; records the versions and emits the events of the accepted prefix.
    fn deliver(&mut self, changes: &[(Map<String, Value>, Version, Change)], state: &mut VersionedState, report: &mut Report) -> Delivery {
        let now_ms = self.ctx.now.timestamp_millis();
        let template = self.ctx.template(self.feed.names().service);
        let (feed, directory) = (self.feed, self.ctx.directory);
        let logs = changes.iter().map(|(item, _, change)| feed.log_for(item, *change, directory, &template, now_ms));
        let delivery = self.ctx.forward(logs, feed.names().feature, report);
        let mut collected: BTreeMap<String, u64> = SEVERITIES.iter().map(|s| (s.to_string(), 0)).collect();
        for (item, version, change) in changes.iter().take(delivery.accepted_prefix) {
            state.known.record(*version);
            report.events.push(self.feed.event_for(item, *change, self.ctx.directory, self.ctx.base_tags, self.ctx.now));
            *collected.entry(tags::value_or_unknown(Some(text(item, "severity")))).or_default() += 1;
        }
        let metric = format!("{}.collected", self.feed.names().metric_prefix);
        for (severity, count) in cap_values(collected, MAX_TAG_VALUES) {
            report.count(&metric, count as f64, &with_tag(self.ctx.base_tags, format!("severity:{severity}")));
        }
        delivery
    }

    fn report_status(&mut self, source: &mut dyn PageSource, suffix: &str, status: &str, report: &mut Report, warnings: &mut Vec<String>) -> u32 {
        let names = self.feed.names();
        let metric = format!("{}.{suffix}", names.metric_prefix);
        let ctx = &self.ctx;
        let (counts, listing) = count_by_status(source, self.feed, status, ctx.max_pages, ctx.scope, ctx.directory);
        match (counts, &listing.end) {
            (Some(counts), _) => {
                for (severity, count) in counts.by_severity {
                    report.gauge(&metric, count as f64, &with_tag(ctx.base_tags, format!("severity:{severity}")));
                }
                if suffix == "open" {
                    let by_org_metric = format!("{}.open_by_organization", names.metric_prefix);
                    report_by_org(&by_org_metric, &counts.by_org, ctx.directory, ctx.base_tags, report);
                }
            }
            (None, End::Failed(error)) => warnings.push(format!("{metric} not submitted: {error}")),
            (None, end) => {
                let why = end.shortfall(&format!("{} ({status})", names.what), ctx.max_pages, names.max_pages_option).unwrap_or_default();
                warnings.push(format!("{metric} not submitted ({why})"));
            }
        }
        listing.pages
    }
}
