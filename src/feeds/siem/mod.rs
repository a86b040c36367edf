//! The Managed SIEM feed: each configured ES|QL query collects the events that
//! appeared since its checkpoint and forwards them as logs.
//!
//! - this file: the feed's settings, and one run of every query (its saved
//!   state loaded and checked, collected, reported);
//! - `run`: one query's windows and pages, up to the intake;
//! - `state`: a query's checkpoint, window in progress and recent ids in the cache;
//! - `page`: reading one page of `POST /v1/siem/query`.

pub mod late;
mod page;
pub mod run;
pub mod state;

pub use page::parse_page;
#[cfg(test)]
pub use page::Pagination;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use crate::base::boundary::{self, PanicPoint};
use crate::base::cache::Cache;
use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::base::http::Deadline;
use crate::datadog::intake::IntakeClient;
use crate::datadog::processing::ProcessingRules;
use crate::datadog::report::{with_tag, Level, Report, Status};
use crate::datadog::transform::{LogTemplate, StalePolicy};
use crate::feeds::orgs::{Enricher, OrgDirectory};
use crate::feeds::scope::Scope;
use crate::huntress::client::HuntressClient;
use late::{LateCheck, LateState};
use run::{LateOutcome, Limit, QueryOutcome, QueryRun};
use state::{chunk_count, id_capacity, query_key, seen_chunk_key, DedupSet, QueryState, Reach};

pub const SERVICE_CHECK: &str = "huntress.siem.can_connect";
/// The feed's metrics, by query (`query_name`).
pub mod metric {
    pub const LOGS_COLLECTED: &str = "huntress.siem.logs_collected";
    pub const LOGS_FORWARDED: &str = "huntress.siem.logs_forwarded";
    pub const LOGS_REFUSED: &str = "huntress.siem.logs_refused";
    pub const LOGS_DEDUPLICATED: &str = "huntress.siem.logs_deduplicated";
    pub const LOGS_TRUNCATED: &str = "huntress.siem.logs_truncated";
    pub use crate::datadog::processing::EXCLUDED_METRIC as LOGS_EXCLUDED;
    pub const LOGS_STALE: &str = "huntress.siem.logs_stale";
    pub const PAGES_FETCHED: &str = "huntress.siem.pages_fetched";
    pub const CHECKPOINT_LAG: &str = "huntress.siem.checkpoint_lag_seconds";
    pub const WINDOW_IN_PROGRESS: &str = "huntress.siem.window_in_progress";
    /// Ranges given up, by `reason`: `retention` (refused as too old, with
    /// proof), `dense` (one millisecond held more rows than a run could read).
    pub const RANGES_GIVEN_UP: &str = "huntress.siem.ranges_given_up";
    /// Events indexed after their window was read, found by the late checks.
    pub const LOGS_LATE: &str = "huntress.siem.logs_late";
    /// Requests of the late checks, by `kind`: `count` or `read`.
    pub const LATE_REQUESTS: &str = "huntress.siem.late_check_requests";
    /// Buckets whose Huntress count was above what had been read.
    pub const BUCKETS_GROWN: &str = "huntress.siem.late_buckets_grown";
    /// How far back late events are found (the reach, or less when the id memory is short).
    pub const LATE_REACH: &str = "huntress.siem.late_reach_seconds";
    /// Seconds from `@timestamp` to the intake's acceptance, for the run's events.
    pub const DELIVERY_AGE_P50: &str = "huntress.siem.delivery_age_p50_seconds";
    pub const DELIVERY_AGE_P99: &str = "huntress.siem.delivery_age_p99_seconds";
    /// The estimated time until the query has caught up (0 when it has).
    pub const CATCH_UP: &str = "huntress.siem.catch_up_seconds";
}
/// A checkpoint older than this moves forward under `stale_log_policy: skip`:
/// the intake's 18 h limit.
const STALE_REACH_SECONDS: i64 = 18 * 3600;
/// ... and under `rewrite_date`: the longest `initial_lookback_seconds` allowed.
const MAX_BACKLOG_SECONDS: i64 = 7 * 24 * 3600;

/// One `log_queries` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct LogQuery {
    pub name: String,
    pub esql: String,
    pub tags: Vec<String>,
    pub service: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SiemSettings {
    pub queries: Vec<LogQuery>,
    /// The `service` of the logs, unless a query sets its own.
    pub service: String,
    pub max_pages_per_run: u32,
    /// Where a new checkpoint starts; the REST feeds start there too.
    pub initial_lookback: Duration,
    pub collection_delay: Duration,
    pub max_window: Duration,
    pub dedup_cache_size: usize,
    pub stale_policy: StalePolicy,
    pub enrich_with_org_tags: bool,
    /// How late an event may be indexed and still be found (0: not checked).
    pub late_reach: Duration,
    /// A query further behind than this after a run that a limit stopped is a WARNING.
    pub lag_warning: Duration,
    /// `min_collection_interval`: for the catch-up estimate.
    pub interval: Duration,
}

/// What a run of the SIEM queries borrows from the collector.
pub struct SiemContext<'a> {
    pub huntress: &'a mut HuntressClient,
    pub intake: &'a mut IntakeClient,
    pub cache: &'a mut dyn Cache,
    pub deadline: Deadline,
    pub rules: &'a ProcessingRules,
    pub directory: Option<&'a OrgDirectory>,
    pub scope: &'a Scope,
    /// The instance's `tags`.
    pub base_tags: &'a [String],
}

/// Errors of a run to count in `huntress.siem.errors`, by kind and query.
pub type ErrorCounts = BTreeMap<(ErrorKind, Option<String>), u64>;

/// The SIEM feed of one instance.
pub struct Siem {
    settings: SiemSettings,
    /// Queries already warned about rows without `KEEP` in this process.
    warned_keep: HashSet<String>,
    /// Queries whose refused counts were already said in this process.
    announced_whole_reads: HashSet<String>,
    /// The run summary's words on each query, from the last run.
    summaries: Vec<String>,
}

impl Siem {
    pub fn new(settings: SiemSettings) -> Self {
        Siem { settings, warned_keep: HashSet::new(), announced_whole_reads: HashSet::new(), summaries: Vec::new() }
    }

    pub fn settings(&self) -> &SiemSettings {
        &self.settings
    }

    /// Runs every query once, each behind its own panic boundary: first every
    /// query's new events, then, with the budget left, their late checks; then
    /// reports each. `true` when every query failed.
    pub fn run(&mut self, ctx: &mut SiemContext, errors: &mut ErrorCounts, report: &mut Report) -> bool {
        let queries = self.settings.queries.clone();
        let mut collected: Vec<Collected> = queries
            .iter()
            .map(|query| {
                boundary::catch(|| {
                    boundary::panic_if_injected(PanicPoint::Query);
                    self.collect(query, ctx, report)
                })
                .unwrap_or_else(|message| Collected::failed(HuntressError::Internal(message)))
            })
            .collect();
        for (query, item) in queries.iter().zip(collected.iter_mut()) {
            if let Err(message) = boundary::catch(|| self.check_late(query, item, ctx, report)) {
                item.outcome.late.error = Some(HuntressError::Internal(message));
            }
        }
        self.summaries.clear();
        let mut failures = 0;
        for (query, item) in queries.iter().zip(&collected) {
            let outcome = &item.outcome;
            failures += usize::from(outcome.error.is_some());
            for (kind, count) in &outcome.recovered {
                *errors.entry((*kind, Some(query.name.clone()))).or_default() += count;
            }
            for error in outcome.error.iter().chain(&outcome.late.error) {
                *errors.entry((error.kind(), Some(query.name.clone()))).or_default() += 1;
            }
            self.report_query(query, item, ctx, report);
        }
        failures == self.settings.queries.len()
    }

    /// What the run summary says of each query, from the last run.
    pub fn summaries(&self) -> &[String] {
        &self.summaries
    }

    /// CRITICAL on every query, for a run that could not go on.
    pub fn report_internal_error(&self, base_tags: &[String], message: &str, report: &mut Report) {
        for query in &self.settings.queries {
            report.service_check(SERVICE_CHECK, Status::Critical, &query_tags(base_tags, query), Some(message.to_string()));
        }
    }

    fn collect(&mut self, query: &LogQuery, ctx: &mut SiemContext, report: &mut Report) -> Collected {
        let now = Utc::now();
        let key = query_key(&query.name);
        let (mut state, chunk_keys) = match self.load_state(ctx.cache, &query.name, &key, now, report) {
            Ok(loaded) => loaded,
            Err(error) => return Collected::failed(error),
        };
        let repairs = self.repair_state(&mut state, now);
        if !repairs.is_empty() {
            if let Err(error) = ctx.cache.write(&key, &state.encode_position()) {
                return Collected::failed(HuntressError::Cache(format!("cannot save the repaired checkpoint ({error})")));
            }
        }
        let checkpoint_before = state.checkpoint;
        let template = self.template(ctx.base_tags, query);
        let mut run = self.query_run(ctx, query, now, &key, &chunk_keys, &template);
        let mut outcome = run.collect(&mut state);
        if !repairs.is_empty() {
            *outcome.recovered.entry(ErrorKind::Cache).or_default() += repairs.len() as u64;
            outcome.repairs = repairs;
        }
        Collected { outcome, state: Some(state), key, chunk_keys, checkpoint_before: Some(checkpoint_before), now }
    }

    /// The late-arrival checks of a query that has caught up (see `late`).
    fn check_late(&mut self, query: &LogQuery, item: &mut Collected, ctx: &mut SiemContext, report: &mut Report) {
        let Some(state) = item.state.as_mut() else { return };
        if item.outcome.error.is_some() || self.settings.late_reach.is_zero() {
            return;
        }
        let late_key = late::late_key(&item.key);
        let mut late_state = match ctx.cache.read(&late_key).map_err(|e| format!("cannot be read ({e})")).and_then(|text| LateState::decode(&text)) {
            Ok(late_state) => late_state,
            Err(why) => {
                report.log(Level::Warning, format!("query {:?}: the late-arrival state {why}; every tier is checked again", query.name));
                *item.outcome.recovered.entry(ErrorKind::Cache).or_default() += 1;
                LateState::decode("").unwrap_or_default()
            }
        };
        let template = self.template(ctx.base_tags, query);
        let mut run = self.query_run(ctx, query, item.now, &item.key, &item.chunk_keys, &template);
        let requests_left = run.late_budget();
        let mut check = LateCheck { run: &mut run, reach: to_chrono(self.settings.late_reach), interval: to_chrono(self.settings.interval), requests_left };
        check.check(state, &mut late_state, &mut item.outcome);
        if item.outcome.late.checked {
            if let Err(error) = ctx.cache.write(&late_key, &late_state.encode()) {
                item.outcome.late.error.get_or_insert(HuntressError::Cache(format!("cannot save the late-arrival state ({error})")));
            }
        }
    }

    fn query_run<'c>(&'c self, ctx: &'c mut SiemContext, query: &'c LogQuery, now: DateTime<Utc>, key: &'c str, chunk_keys: &'c [String], template: &'c LogTemplate) -> QueryRun<'c> {
        let settings = &self.settings;
        QueryRun {
            huntress: &mut *ctx.huntress,
            intake: &mut *ctx.intake,
            cache: &mut *ctx.cache,
            deadline: ctx.deadline,
            now,
            esql: &query.esql,
            cache_key: key,
            chunk_keys,
            template,
            rules: ctx.rules,
            enricher: Enricher::new(ctx.directory, settings.enrich_with_org_tags),
            scope: ctx.scope,
            directory: ctx.directory,
            max_pages: settings.max_pages_per_run,
            delay: to_chrono(settings.collection_delay),
            max_window: to_chrono(settings.max_window),
            lookback: to_chrono(settings.initial_lookback),
            rereading: false,
        }
    }

    /// The saved state, or a fresh one `initial_lookback_seconds` back (a new
    /// instance, or one moved to a node without its cache), and the keys of its
    /// id chunks: as many as the late-arrival reach needs at the density seen.
    /// A position that cannot be read is reported and replaced, never silently;
    /// an unreadable id chunk is reported and dropped.
    fn load_state(&self, cache: &mut dyn Cache, name: &str, key: &str, now: DateTime<Utc>, report: &mut Report) -> Result<(QueryState, Vec<String>)> {
        let read = |cache: &mut dyn Cache, k: &str| cache.read(k).map_err(|e| HuntressError::Cache(format!("cannot read the checkpoint ({e})")));
        let fresh = QueryState::new(now - to_chrono(self.settings.initial_lookback), self.settings.dedup_cache_size);
        let (position, damaged) = match QueryState::decode_position(&read(cache, key)?) {
            Ok(Some(position)) => (position, None),
            Ok(None) => (fresh.position(), None),
            Err(error) => (fresh.position(), Some(error)),
        };
        let (sized, short) = id_capacity(self.settings.dedup_cache_size, position.learned.events_per_second, self.settings.late_reach.as_secs());
        let capacity = sized.max(position.ids_kept);
        if let Some(needed) = short {
            report.log(Level::Warning, format!(
                "query {name:?}: late_arrival_window_seconds at this volume needs {needed} event ids, more than the {capacity} the check keeps: late events are found only as far back as the ids kept reach (huntress.siem.late_reach_seconds)"
            ));
        }
        let chunk_keys: Vec<String> = (0..chunk_count(capacity)).map(|index| seen_chunk_key(name, index)).collect();
        let mut chunks = Vec::with_capacity(chunk_keys.len());
        let mut legacy = false;
        for chunk_key in &chunk_keys {
            let (ids, old) = DedupSet::decode_ids(&read(cache, chunk_key)?).unwrap_or_else(|error| {
                report.log(Level::Warning, format!("{error}; continuing without these ids of recently forwarded events"));
                (Vec::new(), false)
            });
            legacy |= old;
            chunks.push(ids);
        }
        if let Some(error) = damaged {
            cache.write(key, &fresh.encode_position()).map_err(HuntressError::Cache)?;
            return Err(HuntressError::Cache(format!("{error}; starting again from initial_lookback_seconds")));
        }
        Ok((QueryState::restore(position, chunks, legacy, capacity), chunk_keys))
    }

    /// Checks the loaded position against the clock and the reach of the data
    /// (see `reach_seconds`); what was repaired, for a WARNING.
    fn repair_state(&self, state: &mut QueryState, now: DateTime<Utc>) -> Vec<String> {
        let reach = Reach { now, delay: to_chrono(self.settings.collection_delay), oldest: now - ChronoDuration::seconds(self.reach_seconds()) };
        let mut repairs = state.repair(&reach);
        if let Some(why) = state.unreadable_cursor.take() {
            repairs.push(format!("the saved window in progress was dropped ({why}); its range is read again from the checkpoint"));
        }
        repairs
    }

    /// How far back a checkpoint may lie. With `skip`, events older than the
    /// intake's 18 h are not sent, so reading them only spends the rate budget;
    /// with `rewrite_date` every event is sent, back to the longest allowed
    /// look-back. Never less than `initial_lookback_seconds`.
    fn reach_seconds(&self) -> i64 {
        let lookback = i64::try_from(self.settings.initial_lookback.as_secs()).unwrap_or(i64::MAX);
        let reach = match self.settings.stale_policy {
            StalePolicy::Skip => STALE_REACH_SECONDS,
            StalePolicy::RewriteDate => MAX_BACKLOG_SECONDS,
        };
        reach.max(lookback)
    }

    fn template(&self, base_tags: &[String], query: &LogQuery) -> LogTemplate {
        let tags: Vec<String> = query_tags(base_tags, query).into_iter().chain(query.tags.iter().cloned()).collect();
        LogTemplate {
            service: query.service.clone().unwrap_or_else(|| self.settings.service.clone()),
            ddtags: tags.join(","),
            stale_policy: self.settings.stale_policy,
        }
    }

    fn report_query(&mut self, query: &LogQuery, item: &Collected, ctx: &SiemContext, report: &mut Report) {
        let outcome = &item.outcome;
        let tags = query_tags(ctx.base_tags, query);
        report.count(metric::LOGS_COLLECTED, outcome.collected as f64, &tags);
        report.count(metric::LOGS_FORWARDED, outcome.forwarded as f64, &tags);
        report.count(metric::LOGS_REFUSED, outcome.rejected as f64, &tags);
        report.count(metric::LOGS_DEDUPLICATED, outcome.deduplicated as f64, &tags);
        report.count(metric::LOGS_TRUNCATED, outcome.truncated as f64, &tags);
        report.count(metric::PAGES_FETCHED, outcome.pages as f64, &tags);
        for (rule, count) in &outcome.excluded {
            report.count(metric::LOGS_EXCLUDED, *count as f64, &with_tag(&tags, format!("rule:{rule}")));
        }
        report.count(metric::LOGS_STALE, outcome.stale as f64, &with_tag(&tags, format!("policy:{}", self.settings.stale_policy.tag())));
        for (reason, count) in &outcome.given_up {
            report.count(metric::RANGES_GIVEN_UP, *count as f64, &with_tag(&tags, format!("reason:{reason}")));
        }
        self.report_freshness(outcome, &tags, report);
        let progress = item.state.as_ref().map(|state| self.progress(item, state));
        if let Some(progress) = &progress {
            report.gauge(metric::CHECKPOINT_LAG, progress.lag, &tags);
            report.gauge(metric::WINDOW_IN_PROGRESS, f64::from(u8::from(progress.in_progress)), &tags);
            if let Some(seconds) = progress.catch_up_gauge() {
                report.gauge(metric::CATCH_UP, seconds, &tags);
            }
            self.summaries.push(progress.summary(&query.name, outcome));
        }
        let (status, message) = self.query_status(query, outcome, progress.as_ref(), ctx.intake, report);
        report.service_check(SERVICE_CHECK, status, &tags, message);
    }

    /// The age of events at delivery, and what the late checks did.
    fn report_freshness(&self, outcome: &QueryOutcome, tags: &[String], report: &mut Report) {
        if let Some((p50, p99)) = percentiles(&outcome.ages) {
            report.gauge(metric::DELIVERY_AGE_P50, p50, tags);
            report.gauge(metric::DELIVERY_AGE_P99, p99, tags);
        }
        if self.settings.late_reach.is_zero() {
            return;
        }
        let late = &outcome.late;
        report.count(metric::LOGS_LATE, late.recovered as f64, tags);
        report.count(metric::BUCKETS_GROWN, late.buckets_grown as f64, tags);
        report.count(metric::LATE_REQUESTS, late.count_requests as f64, &with_tag(tags, "kind:count".to_string()));
        report.count(metric::LATE_REQUESTS, late.read_requests as f64, &with_tag(tags, "kind:read".to_string()));
        if late.checked {
            report.gauge(metric::LATE_REACH, late.reach_seconds, tags);
        }
    }

    /// How far behind the query is after this run, and why.
    fn progress(&self, item: &Collected, state: &QueryState) -> Progress {
        let outcome = &item.outcome;
        let lag = ((Utc::now() - state.checkpoint).num_milliseconds() as f64 / 1000.0).max(0.0);
        let limit = outcome.limit.or(outcome.stopped_by_deadline.then_some(Limit::Deadline));
        let advanced = item.checkpoint_before.map_or(0.0, |before| (state.checkpoint - before).num_milliseconds() as f64 / 1000.0);
        let interval = self.settings.interval.as_secs_f64().max(1.0);
        let behind = (lag - self.settings.collection_delay.as_secs_f64()).max(0.0);
        // Each run reads `advanced` seconds of event time while `interval` seconds pass.
        let catch_up = match limit {
            None => Some(0.0),
            Some(_) if advanced > interval => Some(behind / (advanced - interval) * interval),
            Some(_) => None,
        };
        Progress { lag, limit, catch_up, in_progress: state.cursor.is_some(), lag_warning: self.settings.lag_warning.as_secs_f64() }
    }

    fn query_status(&mut self, query: &LogQuery, outcome: &QueryOutcome, progress: Option<&Progress>, intake: &IntakeClient, report: &mut Report) -> (Status, Option<String>) {
        let name = &query.name;
        if let Some(error) = &outcome.error {
            let message = std::iter::once(format!("query {name:?}: {error}")).chain(outcome.repairs.iter().cloned()).collect::<Vec<_>>().join("; ");
            report.log(Level::Error, message.clone());
            return (Status::Critical, Some(message));
        }
        let mut warnings = Vec::new();
        if outcome.lacks_keep {
            let warning = format!(
                "query {name:?} returns rows with only uuid and organization_id: add a `| KEEP @timestamp, message, ...` clause to esql_query"
            );
            // In the Agent log once per process; on the service check every run.
            if self.warned_keep.insert(name.clone()) {
                report.log(Level::Warning, warning.clone());
            }
            warnings.push(warning);
        }
        let logged_already = warnings.len();
        if outcome.stale > 0 {
            warnings.push(format!(
                "query {name:?}: {} events were older than the intake's 18 h limit (policy {})",
                outcome.stale,
                self.settings.stale_policy.tag()
            ));
        }
        if outcome.truncated > 0 {
            warnings.push(format!("query {name:?}: {} logs over 1 MB were truncated", outcome.truncated));
        }
        for repair in &outcome.repairs {
            warnings.push(format!("query {name:?}: {repair}"));
        }
        if outcome.token_restarts > 0 {
            warnings.push(format!("query {name:?}: an expired page token restarted the window {} time(s)", outcome.token_restarts));
        }
        if let Some(reason) = &intake.stats.last_rejection {
            let rejected = intake.stats.rejected;
            warnings.push(format!("{rejected} logs were refused by the intake even alone, and dropped: {reason}"));
        }
        if let Some(progress) = progress.filter(|p| p.is_behind()) {
            warnings.push(progress.warning(name));
        }
        self.late_notes(name, &outcome.late, report, &mut warnings);
        if outcome.stopped_by_budget {
            let limit = outcome.limit.map_or("this run's pages, rate budget or time", Limit::describe);
            report.log(Level::Info, format!("query {name:?}: {limit} cannot read another window in this run; the next run continues"));
        }
        if outcome.stopped_by_deadline {
            let limit = outcome.limit.unwrap_or(Limit::Deadline).describe();
            report.log(Level::Info, format!("query {name:?}: {limit} ended this run; the next run resumes from the saved cursor"));
            if outcome.pages == 0 {
                warnings.push(format!("query {name:?}: {limit} ended this run before a page could be read"));
            }
        }
        for warning in &warnings[logged_already..] {
            report.log(Level::Warning, warning.clone());
        }
        if warnings.is_empty() {
            (Status::Ok, None)
        } else {
            (Status::Warning, Some(warnings.join("; ")))
        }
    }
}

impl Siem {
    /// What the late checks need said: a refusal of counts once in the Agent
    /// log (then on the service check while the tiers are read whole), and an
    /// error that stopped them.
    fn late_notes(&mut self, name: &str, late: &LateOutcome, report: &mut Report, warnings: &mut Vec<String>) {
        if let Some(answer) = &late.refused_now {
            if self.announced_whole_reads.insert(name.to_string()) {
                report.log(Level::Warning, format!(
                    "query {name:?}: the Huntress API refused the count of events per time bucket ({answer}); late events are found by reading recent time again on a schedule instead, which costs more requests; counts are tried again in 6 h"
                ));
            }
        }
        if let Some(error) = &late.error {
            warnings.push(format!("query {name:?}: the late-arrival check stopped: {error}; the next run checks again"));
        }
    }
}

/// A query between its new events and its late checks.
struct Collected {
    outcome: QueryOutcome,
    /// `None` when the state could not be loaded.
    state: Option<QueryState>,
    key: String,
    chunk_keys: Vec<String>,
    checkpoint_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl Collected {
    fn failed(error: HuntressError) -> Collected {
        Collected {
            outcome: QueryOutcome { error: Some(error), ..QueryOutcome::default() },
            state: None,
            key: String::new(),
            chunk_keys: Vec::new(),
            checkpoint_before: None,
            now: Utc::now(),
        }
    }
}

/// How far behind a query is after a run.
struct Progress {
    /// Seconds from the checkpoint to now.
    lag: f64,
    /// The limit that stopped the run before it caught up.
    limit: Option<Limit>,
    /// Seconds until it catches up at this run's pace; `None`: it does not.
    catch_up: Option<f64>,
    in_progress: bool,
    lag_warning: f64,
}

impl Progress {
    fn is_behind(&self) -> bool {
        self.limit.is_some() && self.lag > self.lag_warning
    }

    fn warning(&self, name: &str) -> String {
        let limit = self.limit.unwrap_or(Limit::Pages);
        format!(
            "query {name:?} is {} behind (more than lag_warning_seconds), held back by {}: {}; {}",
            human(self.lag),
            limit.describe(),
            self.eta(),
            limit.advice()
        )
    }

    /// The checkpoint moves only when a window completes: while one is read
    /// over several runs, the pace is not known yet.
    fn pace_unknown(&self) -> bool {
        self.catch_up.is_none() && self.in_progress
    }

    fn eta(&self) -> String {
        match self.catch_up {
            Some(seconds) => format!("it catches up in about {} at this pace", human(seconds)),
            None if self.pace_unknown() => "its pace is known once the window being read completes".to_string(),
            None => "it does not catch up at this pace".to_string(),
        }
    }

    /// 0 when up to date, -1 when it does not catch up, none while unknown.
    fn catch_up_gauge(&self) -> Option<f64> {
        match self.catch_up {
            Some(seconds) => Some(seconds),
            None if self.pace_unknown() => None,
            None => Some(if self.limit.is_some() { -1.0 } else { 0.0 }),
        }
    }

    fn summary(&self, name: &str, outcome: &QueryOutcome) -> String {
        let late = &outcome.late;
        let found = if late.recovered > 0 { format!(", {} found late", late.recovered) } else { String::new() };
        match self.limit {
            None => format!("{name:?} up to date ({} forwarded{found})", outcome.forwarded),
            Some(limit) => format!("{name:?} {} behind, stopped by {} ({})", human(self.lag), limit.describe(), self.eta()),
        }
    }
}

/// Seconds as a person reads them.
fn human(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7_199 => format!("{} min", seconds / 60),
        _ => format!("{:.1} h", seconds as f64 / 3600.0),
    }
}

/// The 50th and 99th percentiles.
fn percentiles(ages: &[u32]) -> Option<(f64, f64)> {
    if ages.is_empty() {
        return None;
    }
    let mut sorted = ages.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| f64::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize]);
    Some((at(0.5), at(0.99)))
}

/// The tags of a query's metrics and service check.
fn query_tags(base_tags: &[String], query: &LogQuery) -> Vec<String> {
    with_tag(base_tags, format!("query_name:{}", query.name))
}

fn to_chrono(duration: Duration) -> ChronoDuration {
    ChronoDuration::from_std(duration).unwrap_or(ChronoDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(catch_up: Option<f64>, in_progress: bool) -> Progress {
        Progress { lag: 3_600.0, limit: Some(Limit::RateBudget), catch_up, in_progress, lag_warning: 900.0 }
    }

    #[test]
    fn a_window_read_over_several_runs_has_no_pace_yet() {
        let reading = progress(None, true);
        assert!(reading.warning("all").contains("its pace is known once the window being read completes"));
        assert_eq!(reading.catch_up_gauge(), None);
    }

    #[test]
    fn a_query_whose_checkpoint_does_not_keep_up_does_not_catch_up() {
        let stuck = progress(None, false);
        assert!(stuck.warning("all").contains("it does not catch up at this pace"));
        assert_eq!(stuck.catch_up_gauge(), Some(-1.0));
        assert_eq!(progress(Some(120.0), true).catch_up_gauge(), Some(120.0));
    }
}
