//! The Managed SIEM feed: each configured ES|QL query collects the events that
//! appeared since its checkpoint and forwards them as logs.
//!
//! - this file: the feed's settings, and one run of every query (its saved
//!   state loaded and checked, collected, reported);
//! - `run`: one query's windows and pages, up to the intake;
//! - `state`: a query's checkpoint, window in progress and recent ids in the cache;
//! - `page`: reading one page of `POST /v1/siem/query`.

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
use run::{QueryOutcome, QueryRun};
use state::{chunk_count, query_key, seen_chunk_key, DedupSet, QueryState, Reach};

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
}

impl Siem {
    pub fn new(settings: SiemSettings) -> Self {
        Siem { settings, warned_keep: HashSet::new() }
    }

    pub fn settings(&self) -> &SiemSettings {
        &self.settings
    }

    /// Runs every query once, each behind its own panic boundary, and reports
    /// it. `true` when every query failed.
    pub fn run(&mut self, ctx: &mut SiemContext, errors: &mut ErrorCounts, report: &mut Report) -> bool {
        let mut failures = 0;
        for query in self.settings.queries.clone() {
            let outcome = boundary::catch(|| {
                boundary::panic_if_injected(PanicPoint::Query);
                self.collect(&query, ctx, report)
            })
            .unwrap_or_else(|message| QueryOutcome { error: Some(HuntressError::Internal(message)), ..QueryOutcome::default() });
            failures += usize::from(outcome.error.is_some());
            for (kind, count) in &outcome.recovered {
                *errors.entry((*kind, Some(query.name.clone()))).or_default() += count;
            }
            if let Some(error) = &outcome.error {
                *errors.entry((error.kind(), Some(query.name.clone()))).or_default() += 1;
            }
            self.report_query(&query, &outcome, ctx, report);
        }
        failures == self.settings.queries.len()
    }

    /// CRITICAL on every query, for a run that could not go on.
    pub fn report_internal_error(&self, base_tags: &[String], message: &str, report: &mut Report) {
        for query in &self.settings.queries {
            report.service_check(SERVICE_CHECK, Status::Critical, &query_tags(base_tags, query), Some(message.to_string()));
        }
    }

    fn collect(&mut self, query: &LogQuery, ctx: &mut SiemContext, report: &mut Report) -> QueryOutcome {
        let now = Utc::now();
        let key = query_key(&query.name);
        let chunk_keys: Vec<String> =
            (0..chunk_count(self.settings.dedup_cache_size)).map(|index| seen_chunk_key(&query.name, index)).collect();
        let mut state = match self.load_state(ctx.cache, &key, &chunk_keys, now, report) {
            Ok(state) => state,
            Err(error) => {
                return QueryOutcome { error: Some(error), ..QueryOutcome::default() };
            }
        };
        let repairs = self.repair_state(&mut state, now);
        if !repairs.is_empty() {
            if let Err(error) = ctx.cache.write(&key, &state.encode_position()) {
                return QueryOutcome { error: Some(HuntressError::Cache(format!("cannot save the repaired checkpoint ({error})"))), ..QueryOutcome::default() };
            }
        }
        let template = self.template(ctx.base_tags, query);
        let settings = &self.settings;
        let mut run = QueryRun {
            huntress: &mut *ctx.huntress,
            intake: &mut *ctx.intake,
            cache: &mut *ctx.cache,
            deadline: ctx.deadline,
            now,
            esql: &query.esql,
            cache_key: &key,
            chunk_keys: &chunk_keys,
            template: &template,
            rules: ctx.rules,
            enricher: Enricher::new(ctx.directory, settings.enrich_with_org_tags),
            scope: ctx.scope,
            directory: ctx.directory,
            max_pages: settings.max_pages_per_run,
            delay: to_chrono(settings.collection_delay),
            max_window: to_chrono(settings.max_window),
            lookback: to_chrono(settings.initial_lookback),
        };
        let mut outcome = run.collect(&mut state);
        if !repairs.is_empty() {
            *outcome.recovered.entry(ErrorKind::Cache).or_default() += repairs.len() as u64;
            outcome.repairs = repairs;
        }
        let tags = query_tags(ctx.base_tags, query);
        let lag = (Utc::now() - state.checkpoint).num_milliseconds() as f64 / 1000.0;
        report.gauge(metric::CHECKPOINT_LAG, lag.max(0.0), &tags);
        report.gauge(metric::WINDOW_IN_PROGRESS, f64::from(u8::from(state.cursor.is_some())), &tags);
        outcome
    }

    /// The saved state, or a fresh one `initial_lookback_seconds` back (a new
    /// instance, or one moved to a node without its cache). A position that cannot
    /// be read is reported and replaced, never silently; an unreadable id chunk is
    /// reported and dropped.
    fn load_state(&self, cache: &mut dyn Cache, key: &str, chunk_keys: &[String], now: DateTime<Utc>, report: &mut Report) -> Result<QueryState> {
        let read = |cache: &mut dyn Cache, k: &str| cache.read(k).map_err(|e| HuntressError::Cache(format!("cannot read the checkpoint ({e})")));
        let capacity = self.settings.dedup_cache_size;
        let mut chunks = Vec::with_capacity(chunk_keys.len());
        for chunk_key in chunk_keys {
            let ids = DedupSet::decode_ids(&read(cache, chunk_key)?).unwrap_or_else(|error| {
                report.log(Level::Warning, format!("{error}; continuing without these ids of recently forwarded events"));
                Vec::new()
            });
            chunks.push(ids);
        }
        let fresh = QueryState::new(now - to_chrono(self.settings.initial_lookback), capacity);
        match QueryState::decode_position(&read(cache, key)?) {
            Ok(Some(position)) => Ok(QueryState::restore(position, chunks, capacity)),
            Ok(None) => Ok(QueryState::restore(fresh.position(), chunks, capacity)),
            Err(error) => {
                cache.write(key, &fresh.encode_position()).map_err(HuntressError::Cache)?;
                Err(HuntressError::Cache(format!("{error}; starting again from initial_lookback_seconds")))
            }
        }
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

    fn report_query(&mut self, query: &LogQuery, outcome: &QueryOutcome, ctx: &SiemContext, report: &mut Report) {
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
        let (status, message) = self.query_status(query, outcome, ctx.intake, report);
        report.service_check(SERVICE_CHECK, status, &tags, message);
    }

    fn query_status(&mut self, query: &LogQuery, outcome: &QueryOutcome, intake: &IntakeClient, report: &mut Report) -> (Status, Option<String>) {
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
        if outcome.stopped_by_budget {
            report.log(Level::Info, format!("query {name:?}: this run's pages, rate budget or time cannot read another window; the next run continues"));
        }
        if outcome.stopped_by_deadline {
            report.log(Level::Info, format!("query {name:?}: run deadline reached; the next run resumes from the saved cursor"));
            if outcome.pages == 0 {
                warnings.push(format!("query {name:?}: the run deadline was reached before a page could be read"));
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

/// The tags of a query's metrics and service check.
fn query_tags(base_tags: &[String], query: &LogQuery) -> Vec<String> {
    with_tag(base_tags, format!("query_name:{}", query.name))
}

fn to_chrono(duration: Duration) -> ChronoDuration {
    ChronoDuration::from_std(duration).unwrap_or(ChronoDuration::MAX)
}
