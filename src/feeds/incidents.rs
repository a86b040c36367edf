//! Incident reports (`incidents.enabled`): pages `GET /v1/incident_reports`
//! newest change first (`sort_field=updated_at`, `sort_direction=desc`) down to
//! the checkpoint, and forwards each new version of a report as a log
//! (`service:huntress-incidents`) and as a Datadog event.
//!
//! * A version is `id + updated_at + status`. The last version forwarded per
//!   report is kept in the persistent cache (the 5,000 most recently changed
//!   reports), so no version is forwarded twice, and a report seen before comes
//!   back as `updated` or `status_changed` rather than `new`.
//! * The checkpoint (newest `updated_at` read) moves only after the intake
//!   accepted the logs, and only when the scan reached it (or hit the page cap,
//!   with a warning that older changes were skipped).
//! * Events are only emitted for logs the intake accepted, so a retry never
//!   doubles them.
//! * `huntress.incidents.open` counts reports whose status is `sent` (delivered,
//!   neither closed nor dismissed), read each run with the API's `status`
//!   filter; other statuses (e.g. `auto_remediating`) are not counted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::checkpoint::{decode_entry, Cache, INCIDENTS_KEY};
use crate::config::StalePolicy;
use crate::http::Deadline;
use crate::huntress::Feature;
use crate::datadog::intake::{Delivery, IntakeClient, LogBuffer};
use crate::datadog::processing::{ProcessingRules, Verdict};
use crate::feeds::orgs::{enrich_row, id_text, OrgDirectory};
use crate::datadog::report::{with_tag, Event, Report, Status};
use crate::feeds::rest::{list_pages, End, Health, Listing, PageSource};
use crate::tags::{self, cap_values, MAX_TAG_VALUES};
use crate::datadog::transform::{self, Enrichment, LogTemplate, Prepared, PreparedLog};

pub const INCIDENTS_PATH: &str = "/v1/incident_reports";
pub const SERVICE: &str = "huntress-incidents";
/// The status of a report that is open: sent to the partner, not closed or dismissed.
pub const OPEN_STATUS: &str = "sent";
pub const SEVERITIES: [&str; 3] = ["low", "high", "critical"];
/// Reports whose last forwarded version is remembered.
pub const KNOWN_REPORTS: usize = 5_000;
/// Datadog keeps 4,000 characters of event text and 100 of a title.
pub const MAX_EVENT_TEXT: usize = 4_000;
pub const MAX_EVENT_TITLE: usize = 100;
const STATE_VERSION: u32 = 1;

/// How a report version relates to what was forwarded before.
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

/// One version of one report, as hashes.
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

fn text<'a>(report: &'a Map<String, Value>, key: &str) -> &'a str {
    report.get(key).and_then(Value::as_str).map(str::trim).unwrap_or_default()
}

fn updated_at(report: &Map<String, Value>) -> Option<DateTime<Utc>> {
    report.get("updated_at").and_then(transform::parse_timestamp_ms).and_then(DateTime::from_timestamp_millis)
}

impl Version {
    pub fn of(report: &Map<String, Value>) -> Version {
        let id = report.get("id").and_then(id_text).unwrap_or_else(|| serde_json::to_string(report).unwrap_or_default());
        let updated = report.get("updated_at").map(Value::to_string).unwrap_or_default();
        let status = text(report, "status").to_lowercase();
        Version {
            report: hash(&["report", &id]),
            updated_ms: updated_at(report).map_or(i64::MIN, |t| t.timestamp_millis()),
            status: hash(&["status", &status]) as u32,
            version: hash(&["version", &updated, &status]) as u32,
        }
    }
}

/// The last version forwarded per report, oldest change evicted first.
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
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(text).map_err(|e| format!("unreadable report versions ({e})"))?;
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

#[derive(Debug, Clone, PartialEq)]
pub struct IncidentState {
    /// The newest `updated_at` delivered; the next scan stops below it.
    pub checkpoint: DateTime<Utc>,
    pub known: KnownVersions,
}

#[derive(Serialize, Deserialize)]
struct StoredState {
    v: u32,
    checkpoint: String,
    known: String,
}

impl IncidentState {
    pub fn new(checkpoint: DateTime<Utc>) -> Self {
        IncidentState { checkpoint, known: KnownVersions::new(KNOWN_REPORTS) }
    }

    pub fn encode(&self) -> String {
        let stored = StoredState {
            v: STATE_VERSION,
            checkpoint: self.checkpoint.to_rfc3339_opts(SecondsFormat::Millis, true),
            known: self.known.encode(),
        };
        serde_json::to_string(&stored).expect("state serializes")
    }

    pub fn decode(text: &str) -> Result<Option<Self>, String> {
        let Some(stored) = decode_entry(text, "incident checkpoint", STATE_VERSION, |s: &StoredState| s.v)? else {
            return Ok(None);
        };
        let checkpoint = DateTime::parse_from_rfc3339(&stored.checkpoint).map_err(|e| format!("unreadable incident checkpoint ({e})"))?;
        Ok(Some(IncidentState { checkpoint: checkpoint.with_timezone(&Utc), known: KnownVersions::decode(&stored.known, KNOWN_REPORTS)? }))
    }
}

/// Reports changed at or after the checkpoint, newest first.
#[derive(Debug)]
pub struct Scan {
    pub reports: Vec<Map<String, Value>>,
    pub newest: Option<DateTime<Utc>>,
    pub listing: Listing,
}

/// Pages newest change first and stops at the first report older than `checkpoint`.
pub fn scan_changes(source: &mut dyn PageSource, checkpoint: DateTime<Utc>, max_pages: u32) -> Scan {
    let mut reports = Vec::new();
    let mut newest: Option<DateTime<Utc>> = None;
    let filters = [("sort_field", "updated_at".to_string()), ("sort_direction", "desc".to_string())];
    let listing = list_pages(source, INCIDENTS_PATH, "incident_reports", &filters, max_pages, |page| {
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
            // Newest first: a second copy of a report in one scan is older.
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

fn is_final(status: &str) -> bool {
    matches!(status, "closed" | "dismissed" | "partner_dismissed")
}

/// The event's alert type: `critical`/`high` → `error`, `low` → `warning`;
/// a report closed or dismissed → `success`; anything else → `info`.
pub fn alert_type(severity: &str, status: &str) -> &'static str {
    if is_final(&status.to_lowercase()) {
        return "success";
    }
    match severity.to_lowercase().as_str() {
        "critical" | "high" => "error",
        "low" => "warning",
        _ => "info",
    }
}

/// The log's `status` (level), on the same rule as `alert_type`.
pub fn log_status(severity: &str, status: &str) -> &'static str {
    if is_final(&status.to_lowercase()) {
        return "ok";
    }
    match severity.to_lowercase().as_str() {
        "critical" => "critical",
        "high" => "error",
        "low" => "warning",
        _ => "info",
    }
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

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn org_label(report: &Map<String, Value>, directory: Option<&OrgDirectory>) -> (Option<String>, Option<String>) {
    let id = report.get("organization_id").and_then(id_text);
    let name = id.as_deref().and_then(|id| directory.and_then(|d| d.get(id))).map(|o| o.name.clone()).filter(|n| !n.is_empty());
    (id, name)
}

/// The Datadog event for one report version.
pub fn event_for(report: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, base: &[String], now: DateTime<Utc>) -> Event {
    let id = report.get("id").and_then(id_text).unwrap_or_else(|| "unknown".into());
    let severity = text(report, "severity");
    let status = text(report, "status");
    let platform = text(report, "platform");
    let subject = match text(report, "subject") {
        "" => format!("#{id} ({severity})"),
        s => s.to_string(),
    };
    let title = match change {
        Change::StatusChanged => format!("Huntress incident report {status}: {subject}"),
        Change::Updated => format!("Huntress incident report updated: {subject}"),
        Change::New | Change::Seen => format!("Huntress incident report: {subject}"),
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
    if let Some(id) = &org_id {
        tags.push(tags::tag("huntress_org_id", id));
    }
    if let Some(name) = &org_name {
        tags.push(tags::tag("huntress_org_name", name));
    }
    tags.push(tags::tag("severity", severity));
    tags.push(tags::tag("incident_status", status));
    tags.push(tags::tag("platform", platform));
    for indicator in &indicators {
        tags.push(tags::tag("indicator_type", indicator));
    }
    Event {
        timestamp: updated_at(report).unwrap_or(now).timestamp(),
        title: truncate(&title, MAX_EVENT_TITLE),
        text: truncate(&text_parts.join("\n\n"), MAX_EVENT_TEXT),
        alert_type: alert_type(severity, status).to_string(),
        aggregation_key: format!("huntress-incident-{id}"),
        tags,
    }
}

/// The log for one report version: the report's fields at the top level, its
/// `status` moved to `incident_status` (`status` is the log level in Datadog),
/// `message` from subject and summary, `huntress.incident_change`, and the
/// organization attributes and tags.
pub fn log_for(report: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, template: &LogTemplate, now_ms: i64) -> Option<PreparedLog> {
    let mut row = report.clone();
    let severity = text(report, "severity").to_string();
    let status = text(report, "status").to_string();
    if let Some(value) = row.remove("status") {
        row.insert("incident_status".into(), value);
    }
    row.insert("status".into(), Value::from(log_status(&severity, &status)));
    if let Some(updated) = report.get("updated_at").filter(|v| v.is_string()) {
        row.insert("@timestamp".into(), updated.clone());
    }
    let message = [text(report, "subject"), text(report, "summary")].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("\n\n");
    row.insert("message".into(), Value::String(message));
    row.insert("huntress.incident_change".into(), Value::from(change.tag()));
    let org = enrich_row(directory, report).into_owned();
    let mut extra: Vec<String> = [org.tags.clone()].into_iter().filter(|t| !t.is_empty()).collect();
    extra.push(tags::tag("severity", &severity));
    extra.push(tags::tag("incident_status", &status));
    let enrichment = Enrichment::new(org.attributes, extra.join(","));
    match transform::prepare_value(row, template, &enrichment, now_ms) {
        Prepared::Log(log) => Some(log),
        Prepared::SkippedStale { .. } => None,
    }
}

/// The logs the rules keep, each with the index of its change, and the count
/// of logs each rule dropped.
fn apply_rules(rules: &ProcessingRules, logs: impl Iterator<Item = Option<PreparedLog>>) -> (Vec<(usize, PreparedLog)>, BTreeMap<String, u64>) {
    let mut kept = Vec::new();
    let mut excluded: BTreeMap<String, u64> = BTreeMap::new();
    for (index, log) in logs.enumerate() {
        let Some(mut log) = log else { continue };
        match rules.apply(&mut log.json, 0) {
            Verdict::Keep => kept.push((index, log)),
            Verdict::Excluded(rule) => *excluded.entry(rule.to_string()).or_default() += 1,
        }
    }
    (kept, excluded)
}

/// Where incident logs go: the intake, or a fake in tests.
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

/// Reports whose status is `sent`, by severity; `None` unless every page was read.
pub fn count_open(source: &mut dyn PageSource, max_pages: u32) -> (Option<BTreeMap<String, u64>>, Listing) {
    let mut counts: BTreeMap<String, u64> = SEVERITIES.iter().map(|s| (s.to_string(), 0)).collect();
    let filters = [("status", OPEN_STATUS.to_string())];
    let listing = list_pages(source, INCIDENTS_PATH, "incident_reports", &filters, max_pages, |page| {
        for report in &page {
            *counts.entry(tags::value_or_unknown(Some(text(report, "severity")))).or_default() += 1;
        }
        true
    });
    let complete = listing.end.is_complete();
    (complete.then(|| cap_values(counts, MAX_TAG_VALUES)), listing)
}

/// Everything one incident run needs besides the page source.
pub struct IncidentRun<'a> {
    pub sink: &'a mut dyn LogSink,
    /// The Agent's processing rules, applied to incident logs as to every log source.
    pub rules: &'a ProcessingRules,
    pub cache: &'a mut dyn Cache,
    pub deadline: Deadline,
    pub directory: Option<&'a OrgDirectory>,
    pub base_tags: &'a [String],
    pub max_pages: u32,
    pub initial_lookback: Duration,
    pub now: DateTime<Utc>,
}

impl IncidentRun<'_> {
    /// Forwards new report versions, then counts the open reports. `None` when
    /// the budget left no room to send anything. The page count is for the next estimate.
    pub fn run(&mut self, source: &mut dyn PageSource, report: &mut Report) -> (Option<Health>, u32) {
        if !source.may_send() {
            return (None, 0);
        }
        let mut warnings = Vec::new();
        let mut state = self.load_state(&mut warnings);
        let scan = scan_changes(source, state.checkpoint, self.max_pages);
        let mut pages = scan.listing.pages;
        if let End::Failed(error) = &scan.listing.end {
            if scan.reports.is_empty() {
                let health = Health::failed(Feature::Incidents, Status::Critical, format!("cannot read incident reports: {error}"), error);
                return (Some(health), pages);
            }
        }
        let changes = new_versions(scan.reports, &state.known);
        let now_ms = self.now.timestamp_millis();
        let template = LogTemplate { service: SERVICE.into(), ddtags: self.base_tags.join(","), stale_policy: StalePolicy::RewriteDate };
        let prepared = changes.iter().map(|(r, _, change)| log_for(r, *change, self.directory, &template, now_ms));
        let (kept, excluded) = apply_rules(self.rules, prepared);
        for (rule, count) in excluded {
            let tags = with_tag(&with_tag(self.base_tags, format!("rule:{rule}")), "feature:incidents".to_string());
            report.count("huntress.siem.logs_excluded", count as f64, &tags);
        }
        let (indexes, logs): (Vec<usize>, Vec<PreparedLog>) = kept.into_iter().unzip();
        let delivery = if logs.is_empty() { Delivery { accepted_prefix: 0, error: None } } else { self.sink.send_logs(&logs, &self.deadline) };
        // Changes before the first log not delivered are handled: delivered, or dropped by a rule.
        let handled = indexes.get(delivery.accepted_prefix).map_or(changes.len(), |index| *index);
        let mut collected: BTreeMap<String, u64> = SEVERITIES.iter().map(|s| (s.to_string(), 0)).collect();
        for (r, version, change) in changes.iter().take(handled) {
            state.known.record(*version);
            report.events.push(event_for(r, *change, self.directory, self.base_tags, self.now));
            *collected.entry(tags::value_or_unknown(Some(text(r, "severity")))).or_default() += 1;
        }
        for (severity, count) in cap_values(collected, MAX_TAG_VALUES) {
            report.count("huntress.incidents.collected", count as f64, &with_tag(self.base_tags, format!("severity:{severity}")));
        }
        let delivered = delivery.error.is_none();
        match &scan.listing.end {
            End::Complete | End::Enough if delivered => state.checkpoint = state.checkpoint.max(scan.newest.unwrap_or(state.checkpoint)),
            End::PageCap | End::RepeatedToken if delivered => {
                state.checkpoint = state.checkpoint.max(scan.newest.unwrap_or(state.checkpoint));
                let why = scan.listing.end.shortfall("incident reports", self.max_pages, "incidents.max_pages").unwrap_or_default();
                warnings.push(format!("{why}; older changes since the last run were skipped"));
            }
            End::Budget => warnings.push("the rate budget ran out before the checkpoint was reached; the next run reads these changes again".into()),
            End::Failed(error) => warnings.push(format!("reading incident reports failed part way ({error}); the next run reads them again")),
            _ => {}
        }
        if let Err(e) = self.cache.write(INCIDENTS_KEY, &state.encode()) {
            warnings.push(format!("cannot save the incident checkpoint ({e})"));
        }
        if let Some(error) = &delivery.error {
            let message = format!("incident reports could not be forwarded; the checkpoint stays: {error}");
            warnings.push(message);
            let health = Health::failed(Feature::Incidents, Status::Warning, warnings.join("; "), error);
            return (Some(health), pages);
        }
        let open_pages = self.report_open(source, report, &mut warnings);
        pages += open_pages;
        let health = if warnings.is_empty() { Health::ok(Feature::Incidents) } else { Health::warning(Feature::Incidents, warnings.join("; ")) };
        (Some(health), pages)
    }

    fn report_open(&mut self, source: &mut dyn PageSource, report: &mut Report, warnings: &mut Vec<String>) -> u32 {
        let (counts, listing) = count_open(source, self.max_pages);
        match (counts, &listing.end) {
            (Some(counts), _) => {
                for (severity, count) in counts {
                    report.gauge("huntress.incidents.open", count as f64, &with_tag(self.base_tags, format!("severity:{severity}")));
                }
            }
            (None, End::Failed(error)) => warnings.push(format!("huntress.incidents.open not submitted: {error}")),
            (None, end) => {
                let why = end.shortfall("open incident reports", self.max_pages, "incidents.max_pages").unwrap_or_default();
                warnings.push(format!("huntress.incidents.open not submitted ({why})"));
            }
        }
        listing.pages
    }

    fn load_state(&mut self, warnings: &mut Vec<String>) -> IncidentState {
        let fresh = || IncidentState::new(self.now - chrono::Duration::from_std(self.initial_lookback).unwrap_or(chrono::Duration::zero()));
        match self.cache.read(INCIDENTS_KEY).map_err(|e| format!("cannot read the incident checkpoint ({e})")).and_then(|t| IncidentState::decode(&t)) {
            Ok(Some(state)) => state,
            Ok(None) => fresh(),
            Err(message) => {
                warnings.push(format!("{message}; starting again from initial_lookback_seconds"));
                fresh()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, HuntressError};
    use crate::feeds::rest::tests::FakeSource;
    use chrono::TimeZone;
    use serde_json::json;
    use crate::checkpoint::MemoryCache;

    const NOW: i64 = 1_780_000_000;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn iso(secs: i64) -> String {
        at(secs).to_rfc3339_opts(SecondsFormat::Secs, true)
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

    fn page(reports: &[Map<String, Value>], token: Option<&str>) -> crate::error::Result<Value> {
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
        assert_eq!(known.classify(&Version::of(&incident(1, NOW - 60, "dismissed", "high"))), Change::Seen, "never older than what was sent");
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
        let mut state = IncidentState::new(at(NOW));
        state.known = known.clone();
        let decoded = IncidentState::decode(&state.encode()).unwrap().unwrap();
        assert_eq!(decoded.checkpoint, at(NOW));
        assert_eq!(decoded.known.classify(&Version::of(&incident(2, NOW + 1, "closed", "low"))), Change::Seen);
        assert!(IncidentState::decode("").unwrap().is_none());
        assert!(IncidentState::decode("{").is_err());
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
        let scan = scan_changes(&mut source, at(NOW - 110), 10);
        assert_eq!(scan.reports.len(), 5, "three newest and the two at or after the checkpoint");
        assert_eq!(scan.newest, Some(at(NOW)));
        assert!(matches!(scan.listing.end, End::Enough));
        assert_eq!(source.requests.len(), 2);
        let query = &source.requests[0].1;
        assert!(query.contains(&("sort_field".into(), "updated_at".into())) && query.contains(&("sort_direction".into(), "desc".into())));
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

    struct FakeSink {
        accept: bool,
        sent: usize,
    }

    impl LogSink for FakeSink {
        fn send_logs(&mut self, logs: &[PreparedLog], _: &Deadline) -> Delivery {
            if self.accept {
                self.sent += logs.len();
                Delivery { accepted_prefix: logs.len(), error: None }
            } else {
                Delivery { accepted_prefix: 0, error: Some(HuntressError::intake(ErrorKind::IntakeUnavailable, "503")) }
            }
        }
    }

    fn run_once(reports: &[Map<String, Value>], open: &[Map<String, Value>], sink: &mut FakeSink, cache: &mut MemoryCache) -> (Report, Health) {
        run_with_rules(reports, open, sink, cache, &ProcessingRules::default())
    }

    fn run_with_rules(
        reports: &[Map<String, Value>],
        open: &[Map<String, Value>],
        sink: &mut FakeSink,
        cache: &mut MemoryCache,
        rules: &ProcessingRules,
    ) -> (Report, Health) {
        let mut source = FakeSource::new(vec![page(reports, None), page(open, None)]);
        let mut report = Report::default();
        let mut run = IncidentRun {
            sink,
            rules,
            cache,
            deadline: Deadline::after(Duration::from_secs(30)),
            directory: None,
            base_tags: &[],
            max_pages: 10,
            initial_lookback: Duration::from_secs(3600),
            now: at(NOW),
        };
        let (health, _) = run.run(&mut source, &mut report);
        (report, health.unwrap())
    }

    #[test]
    fn the_checkpoint_moves_only_after_the_intake_accepted() {
        let mut cache = MemoryCache::default();
        let reports = vec![incident(2, NOW - 60, "sent", "critical"), incident(1, NOW - 120, "sent", "low")];
        let (report, health) = run_once(&reports, &reports[..1], &mut FakeSink { accept: false, sent: 0 }, &mut cache);
        assert_eq!(health.status, Status::Warning);
        assert!(report.events.is_empty(), "no event for a log the intake did not take");
        let state = IncidentState::decode(&cache.0[INCIDENTS_KEY]).unwrap().unwrap();
        assert_eq!(state.checkpoint, at(NOW - 3600));

        let mut sink = FakeSink { accept: true, sent: 0 };
        let (report, health) = run_once(&reports, &reports[..1], &mut sink, &mut cache);
        assert_eq!(health.status, Status::Ok);
        assert_eq!(report.events.len(), 2);
        assert_eq!(report.events[0].aggregation_key, "huntress-incident-1", "oldest change first");
        let open: Vec<_> = report.metrics.iter().filter(|m| m.name == "huntress.incidents.open").map(|m| (m.tags[0].clone(), m.value)).collect();
        assert_eq!(open, vec![("severity:critical".into(), 1.0), ("severity:high".into(), 0.0), ("severity:low".into(), 0.0)]);
        assert_eq!(IncidentState::decode(&cache.0[INCIDENTS_KEY]).unwrap().unwrap().checkpoint, at(NOW - 60));

        let (report, _) = run_once(&reports, &[], &mut sink, &mut cache);
        assert!(report.events.is_empty(), "a second run sends nothing again");
        assert_eq!(sink.sent, 2);
        let closed = vec![incident(2, NOW - 30, "closed", "critical"), incident(2, NOW - 60, "sent", "critical")];
        let (report, _) = run_once(&closed, &[], &mut sink, &mut cache);
        assert_eq!(report.events.len(), 1);
        assert_eq!(report.events[0].alert_type, "success");
    }

    #[test]
    fn processing_rules_drop_and_mask_incident_logs_and_dropped_ones_are_handled() {
        let rules = ProcessingRules::parse(
            &json!([{"type": "exclude_at_match", "name": "no_low", "pattern": "^LOW -"}]),
            &json!([{"type": "mask_sequences", "name": "hosts", "replace_placeholder": "WS-[host]", "pattern": r"WS-\d+"}]),
        )
        .unwrap();
        let reports = vec![incident(3, NOW - 30, "sent", "high"), incident(2, NOW - 60, "sent", "low"), incident(1, NOW - 90, "sent", "critical")];
        let template = LogTemplate { service: SERVICE.into(), ddtags: String::new(), stale_policy: StalePolicy::RewriteDate };
        let logs = reports.iter().map(|r| log_for(r, Change::New, None, &template, NOW * 1000));
        let (kept, excluded) = apply_rules(&rules, logs);
        assert_eq!(kept.iter().map(|(index, _)| *index).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(excluded, BTreeMap::from([("no_low".to_string(), 1)]));
        let message: Value = serde_json::from_slice(&kept[0].1.json).unwrap();
        assert!(message["message"].as_str().unwrap().starts_with("HIGH - Incident on WS-[host] (Acme)"), "{message}");

        let mut cache = MemoryCache::default();
        let mut sink = FakeSink { accept: true, sent: 0 };
        let (report, health) = run_with_rules(&reports, &[], &mut sink, &mut cache, &rules);
        assert_eq!(health.status, Status::Ok);
        assert_eq!(sink.sent, 2, "the excluded log is not sent");
        assert_eq!(report.events.len(), 3, "rules apply to logs; every change still has its event");
        let excluded: Vec<_> = report.metrics.iter().filter(|m| m.name == "huntress.siem.logs_excluded").map(|m| (m.tags.clone(), m.value)).collect();
        assert_eq!(excluded, vec![(vec!["rule:no_low".to_string(), "feature:incidents".to_string()], 1.0)]);
        assert_eq!(IncidentState::decode(&cache.0[INCIDENTS_KEY]).unwrap().unwrap().checkpoint, at(NOW - 30));
        let (report, _) = run_with_rules(&reports, &[], &mut sink, &mut cache, &rules);
        assert!(report.events.is_empty() && sink.sent == 2, "handled changes are not sent again");
    }
}
