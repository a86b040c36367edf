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
//!   items, more while a walk is under way), so no version is forwarded twice,
//!   and an item seen before comes back as `updated` or `status_changed`
//!   rather than `new`;
//! * items outside the organization scope are dropped (and counted);
//! * changes deeper than a run's pages are walked over several runs: the
//!   listing's position (its page token, the newest change read...) is saved
//!   with the checkpoint and the next run goes on from it; a token the API
//!   refuses starts the walk again from the first page (versions already sent
//!   are not sent again);
//! * the checkpoint (newest `updated_at` read) moves only after the intake
//!   accepted the logs, and only when the walk reached it (or the listing's end);
//! * events are only emitted for logs the intake accepted, so a retry never
//!   doubles them;
//! * gauges by severity are read each run with the API's `status` filter.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::base::tags::{self, cap_values, MAX_ORGS_TAGGED, MAX_TAG_VALUES};
use crate::datadog::intake::Delivery;
use crate::datadog::report::{with_tag, Event, Report, Status};
use crate::datadog::transform::{LogTemplate, PreparedLog};
use crate::feeds::feed::{Feed, ListSettings, Slot};
use crate::feeds::forwarding::FeedContext;
use crate::feeds::item::{text, truncate, updated_at};
use crate::base::error::ErrorKind;
use crate::feeds::known::{Change, KnownVersions, Version, VersionedState, Walk, KNOWN_ITEMS, MAX_KNOWN_ITEMS};
use crate::feeds::orgs::OrgDirectory;
use crate::feeds::paging::{list_pages, list_pages_from, End, Health, Listing, PageSource, PAGE_LIMIT};
use crate::feeds::scope::{OrgRef, Scope};
use crate::huntress::client::Feature;

pub const SEVERITIES: [&str; 3] = ["low", "high", "critical"];
/// Datadog keeps 4,000 characters of event text and 100 of a title.
pub const MAX_EVENT_TEXT: usize = 4_000;
pub const MAX_EVENT_TITLE: usize = 100;
/// Items changed at or after the checkpoint, newest first.
#[derive(Debug)]
pub struct Scan {
    pub reports: Vec<Map<String, Value>>,
    /// The newest `updated_at` read that is not after `now`: a time from the
    /// future never moves the checkpoint past the changes still to come.
    pub newest: Option<DateTime<Utc>>,
    /// The `updated_at` of the last item read.
    pub last: Option<DateTime<Utc>>,
    pub listing: Listing,
    /// Whether every item came in the order asked for (newest change first),
    /// these and those of the walk before them.
    pub ordered: bool,
}

/// Where a scan begins: the first page, or where a walk stopped.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub token: Option<&'a str>,
    /// The `updated_at` of the last item read before this page.
    pub last: Option<DateTime<Utc>>,
    pub ordered: bool,
}

impl Start<'_> {
    pub const FIRST_PAGE: Start<'static> = Start { token: None, last: None, ordered: true };
}

impl<'a> Start<'a> {
    pub fn of(walk: &'a Walk) -> Self {
        Start { token: walk.token.as_deref(), last: walk.last, ordered: walk.ordered }
    }
}

/// Pages newest change first (the API has no `updated_at` filter) and keeps
/// the items changed at or after `checkpoint`; `extra` filters the listing
/// (the scope's `organization_id`). The order is checked, not trusted: the scan
/// stops after a page only when every item so far came newest first and that
/// page reached below the checkpoint; a listing out of order is read to its end.
#[allow(clippy::too_many_arguments)]
pub fn scan_changes(
    source: &mut dyn PageSource,
    path: &str,
    plural: &str,
    extra: &[(&str, String)],
    checkpoint: DateTime<Utc>,
    now: DateTime<Utc>,
    max_pages: u32,
    start: Start<'_>,
) -> Scan {
    let mut reports = Vec::new();
    let mut newest: Option<DateTime<Utc>> = None;
    let mut previous: Option<DateTime<Utc>> = start.last;
    let mut ordered = start.ordered;
    let mut filters = vec![("sort_field", "updated_at".to_string()), ("sort_direction", "desc".to_string())];
    filters.extend_from_slice(extra);
    let token = start.token.map(str::to_string);
    let listing = list_pages_from(source, path, plural, &filters, max_pages, token, |page| {
        let mut reached = false;
        for report in page {
            if let Some(t) = updated_at(&report) {
                if previous.is_some_and(|p| t > p) {
                    ordered = false;
                }
                previous = Some(t);
                if t < checkpoint {
                    reached = true;
                    continue;
                }
                if t <= now {
                    newest = Some(newest.map_or(t, |n| n.max(t)));
                }
            }
            reports.push(report);
        }
        !(reached && ordered)
    });
    Scan { reports, newest, last: previous, listing, ordered }
}

/// Whether a listing that began at a saved token failed on that first page
/// because the API refused the token (it expired, or the query changed).
pub fn token_refused(start: Start<'_>, listing: &Listing) -> bool {
    start.token.is_some() && listing.pages == 0 && matches!(&listing.end, End::Failed(error) if error.kind() == ErrorKind::QueryInvalid)
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
    /// How its events' titles start, e.g. "Huntress incident report".
    pub event_title: &'static str,
    /// Its events' aggregation key, before the item id.
    pub aggregation_prefix: &'static str,
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

/// What differs between the events of two versioned feeds.
pub struct EventParts {
    /// The item's id, for the aggregation key and fallbacks.
    pub id: String,
    pub subject: String,
    pub status: String,
    pub text: String,
    pub alert_type: &'static str,
    pub tags: Vec<String>,
}

/// The Datadog event of one version: its title says what changed.
pub fn version_event(names: &FeedNames, item: &Map<String, Value>, change: Change, parts: EventParts, now: DateTime<Utc>) -> Event {
    let (kind, subject, status) = (names.event_title, &parts.subject, &parts.status);
    let title = match change {
        Change::StatusChanged => format!("{kind} {status}: {subject}"),
        Change::Updated => format!("{kind} updated: {subject}"),
        Change::New | Change::Seen => format!("{kind}: {subject}"),
    };
    Event {
        timestamp: updated_at(item).unwrap_or(now).timestamp(),
        title: truncate(&title, MAX_EVENT_TITLE),
        text: truncate(&parts.text, MAX_EVENT_TEXT),
        alert_type: parts.alert_type.to_string(),
        aggregation_key: format!("{}-{}", names.aggregation_prefix, parts.id),
        tags: parts.tags,
    }
}

/// An organization's tags on an event, each when known.
pub fn push_org_tags(tags: &mut Vec<String>, id: Option<&str>, name: Option<&str>) {
    if let Some(id) = id {
        tags.push(tags::tag("huntress_org_id", id));
    }
    if let Some(name) = name {
        tags.push(tags::tag("huntress_org_name", name));
    }
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
    filters.extend(scope.api_filter(directory));
    let names = feed.names();
    let listing = list_pages(source, names.path, names.plural, &filters, max_pages, |page| {
        for item in page.iter().filter(|item| in_scope(feed, scope, item, directory, false)) {
            let severity = tags::value_or(Some(text(item, "severity")), tags::UNKNOWN);
            for org in feed.organizations(item) {
                let id = crate::feeds::orgs::resolve(directory, &org).id.unwrap_or_else(|| tags::UNKNOWN.to_string());
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

/// A walk is complete: the checkpoint moves to the newest change it read, but
/// not past the second before it began (a change made since may sit on a page
/// it had already read, and the API gives times in whole seconds), and the
/// memory of versions shrinks back to its bound, keeping the changes a scan
/// from the new checkpoint reads again.
fn finish_walk(walk: Walk, state: &mut VersionedState) {
    if let Some(newest) = walk.newest {
        let before_start = walk.started - chrono::Duration::seconds(1);
        state.checkpoint = state.checkpoint.max(newest.min(before_start));
    }
    state.known.shrink_keeping(KNOWN_ITEMS, state.checkpoint.timestamp_millis());
}

/// Why this run's walk stopped short, and that the next run goes on from there.
fn walk_warning(what: &str, option: &str, max_pages: u32, scan: &Scan) -> String {
    let goes_on = "the next run goes on from there, and the checkpoint moves once the walk is complete";
    match &scan.listing.end {
        End::Failed(error) => format!("reading {what} failed part way ({error}); {goes_on}"),
        End::Budget => format!("the rate budget ran out before {what} were read down to the checkpoint; {goes_on}"),
        _ if !scan.ordered => format!(
            "{what}: the listing is not sorted by updated_at, so it is read to its end, {max_pages} pages of {PAGE_LIMIT} a run; {goes_on} (raise `{option}` to catch up faster)"
        ),
        _ => format!("{what}: {max_pages} pages of {PAGE_LIMIT} did not reach the changes already read; {goes_on} (raise `{option}` to catch up faster)"),
    }
}

/// A versioned feed with its settings, as a feed of the collector: before the
/// SIEM queries, within the SOC share of the budget.
pub struct Versioned<F> {
    pub feed: F,
    pub settings: ListSettings,
}

impl<F: VersionedFeed + Send + Sync> Feed for Versioned<F> {
    fn feature(&self) -> Feature {
        self.feed.names().feature
    }
    fn slot(&self) -> Slot {
        Slot::Soc
    }
    fn max_pages(&self) -> u32 {
        self.settings.max_pages
    }
    fn run(&mut self, source: &mut dyn PageSource, ctx: FeedContext<'_>, report: &mut Report) -> (Option<Health>, u32) {
        VersionedRun { feed: &self.feed, ctx }.run(source, report)
    }
}

/// One run of a versioned feed: the feed and what its run is given.
pub struct VersionedRun<'f, 'a> {
    pub feed: &'f dyn VersionedFeed,
    pub ctx: FeedContext<'a>,
}

impl VersionedRun<'_, '_> {
    fn checkpoint_name(&self) -> String {
        format!("{} checkpoint", self.feed.names().feature.tag().trim_end_matches('s'))
    }

    /// Forwards new versions, then reads the status gauges. `None` when the
    /// budget left no room to send anything. The page count is for the next
    /// estimate. A backlog deeper than a run's pages is walked over several
    /// runs (see `advance`).
    pub fn run(&mut self, source: &mut dyn PageSource, report: &mut Report) -> (Option<Health>, u32) {
        if !source.may_send() {
            return (None, 0);
        }
        let names = self.feed.names();
        let (feature, what) = (names.feature, names.what);
        let mut warnings = Vec::new();
        let mut recovered = Vec::new();
        let name = self.checkpoint_name();
        let mut state = self.ctx.load_state(names.cache_key, &name, &mut warnings);
        if state.damaged {
            recovered.push(ErrorKind::Cache);
        }
        let mut scan = self.scan(source, &mut state, &mut warnings, &mut recovered);
        let mut pages = scan.listing.pages;
        if let End::Failed(error) = &scan.listing.end {
            if scan.reports.is_empty() {
                self.ctx.save_state(names.cache_key, &name, &state, &mut warnings);
                warnings.insert(0, format!("cannot read {what}: {error}"));
                let health = Health::failed(feature, Status::Critical, warnings.join("; "), error);
                return (Some(health.with_recovered(&recovered)), pages);
            }
        }
        let reports = std::mem::take(&mut scan.reports);
        let in_scope: Vec<_> = reports.into_iter().filter(|item| in_scope(self.feed, self.ctx.scope, item, self.ctx.directory, true)).collect();
        let changes = new_versions(in_scope, &state.known);
        let walked = state.walk.as_ref().map_or(0, |walk| walk.forwarded);
        state.known.grow_to((KNOWN_ITEMS + walked + changes.len()).min(MAX_KNOWN_ITEMS));
        let delivery = self.deliver(&changes, &mut state, report);
        if delivery.error.is_none() {
            self.advance(&scan, delivery.accepted_prefix, &mut state, &mut warnings);
        }
        self.ctx.save_state(names.cache_key, &name, &state, &mut warnings);
        if let Some(error) = &delivery.error {
            warnings.push(format!("{what} could not be forwarded; the checkpoint stays: {error}"));
            let health = Health::failed(feature, Status::Warning, warnings.join("; "), error);
            return (Some(health.with_recovered(&recovered)), pages);
        }
        for (suffix, status) in self.feed.status_gauges() {
            pages += self.report_status(source, suffix, status, report, &mut warnings);
        }
        let health = if warnings.is_empty() { Health::ok(feature) } else { Health::warning(feature, warnings.join("; ")) };
        (Some(health.with_recovered(&recovered)), pages)
    }

    /// Reads this run's pages of changes: from where the walk under way
    /// stopped, or from the first page. A saved token the API refuses (it
    /// expired) starts the walk again from the first page, within this run.
    fn scan(&self, source: &mut dyn PageSource, state: &mut VersionedState, warnings: &mut Vec<String>, recovered: &mut Vec<ErrorKind>) -> Scan {
        let names = self.feed.names();
        let extra: Vec<_> = self.ctx.scope.api_filter(self.ctx.directory).into_iter().collect();
        let (checkpoint, now, max_pages) = (state.checkpoint, self.ctx.now, self.ctx.max_pages);
        let read = |source: &mut dyn PageSource, start: Start<'_>, pages: u32| scan_changes(source, names.path, names.plural, &extra, checkpoint, now, pages, start);
        let start = state.walk.as_ref().map_or(Start::FIRST_PAGE, Start::of);
        let scan = read(source, start, max_pages);
        if !token_refused(start, &scan.listing) {
            return scan;
        }
        let Some(walk) = state.walk.as_mut() else { return scan };
        recovered.push(ErrorKind::TokenExpired);
        warnings.push(format!(
            "the API refused the saved page token of the {} listing (expired); the listing is read again from its newest change, and what was sent is not sent again",
            names.what
        ));
        walk.token = None;
        walk.last = None;
        // Past the pages already read, to where this run would have gone on from its token.
        let depth = std::mem::take(&mut walk.pages).saturating_add(max_pages);
        read(source, Start { token: None, last: None, ordered: walk.ordered }, depth)
    }

    /// After a delivery the intake accepted whole: a listing read down to the
    /// checkpoint (or to its end) completes the walk and moves the checkpoint;
    /// one that stopped short saves where it stopped, and the next run goes on
    /// from there with the checkpoint unchanged.
    fn advance(&self, scan: &Scan, forwarded: usize, state: &mut VersionedState, warnings: &mut Vec<String>) {
        let names = self.feed.names();
        let (what, max_pages, option) = (names.what, self.ctx.max_pages, names.max_pages_option);
        let mut walk = state.walk.take().unwrap_or_else(|| Walk::new(self.ctx.now));
        walk.newest = walk.newest.max(scan.newest);
        walk.forwarded += forwarded;
        walk.pages = walk.pages.saturating_add(scan.listing.pages);
        let end = &scan.listing.end;
        match end {
            End::Complete | End::Enough => finish_walk(walk, state),
            End::RepeatedToken if scan.ordered => {
                finish_walk(walk, state);
                let why = end.shortfall(what, max_pages, option).unwrap_or_default();
                warnings.push(format!("{why}; older changes since the last run were skipped"));
            }
            End::RepeatedToken => {
                let why = end.shortfall(what, max_pages, option).unwrap_or_default();
                warnings.push(format!("{why}; the listing was not sorted by updated_at, so the checkpoint stays and the next run reads it again"));
            }
            End::PageCap | End::Budget | End::Failed(_) => {
                warnings.push(walk_warning(what, option, max_pages, scan));
                walk.token = scan.listing.next.clone();
                walk.last = scan.last;
                walk.ordered = scan.ordered;
                state.walk = Some(walk);
            }
        }
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
            *collected.entry(tags::value_or(Some(text(item, "severity")), tags::UNKNOWN)).or_default() += 1;
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
