//! One check instance: owns the clients and runs every configured query once
//! per Agent run, returning a `Report`.
//!
//! Order within a run, which is also the priority for the shared rate budget:
//!
//! 1. the organization directory comes from the cache (fetched first only when
//!    the cache is empty);
//! 2. the SOC feeds: incident-report changes, then escalations, within a bounded
//!    share of the budget (`rest::soc_share`: a fifth of the per-minute limit),
//!    so a new incident reaches Datadog in the first run after it appears even
//!    while a SIEM backlog drains;
//! 3. the SIEM queries, with the rest of the budget;
//! 4. signals, agent metrics and a due refresh of the organization directory,
//!    each only when the budget's free slots cover its estimate plus a reserve
//!    for the next run's SIEM queries (`rest::budget_allows`); otherwise it is
//!    deferred to a later run, and the log says so.
//!
//! The organization scope (`feeds::scope`) applies to every feed; what it
//! dropped is reported once per run.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::Value;

use crate::base::boundary::PanicPoint;
use crate::base::cache::{cache_id, Cache};
use crate::feeds::siem::state::{chunk_count, query_key, seen_chunk_key, DedupSet, QueryState, Reach};
use crate::config::{AgentContext, Config, IncidentsConfig, LogQuery, StalePolicy};
use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::base::http::Deadline;
use crate::huntress::client::{Feature, HuntressClient};
use crate::feeds::forwarding::FeedContext;
use crate::feeds::escalations::Escalations;
use crate::feeds::incidents::Incidents;
use crate::feeds::orgs::id_text;
use crate::feeds::scope::Scope;
use crate::feeds::signals::SignalRun;
use crate::feeds::versioned::{VersionedFeed, VersionedRun};
use crate::datadog::intake::IntakeClient;
use crate::feeds::orgs::{Enricher, OrgDirectory, Orgs};
use crate::huntress::ratelimit::RateBudget;
use crate::base::redact::Redactor;
use crate::datadog::report::{with_tag, Level, Report, Status};
use crate::feeds::paging::{api_status, budget_allows, soc_share, ClientSource, Health, Pacing};
use crate::feeds::siem::run::{QueryOutcome, QueryRun};
use crate::datadog::transform::LogTemplate;

pub const SIEM_SERVICE_CHECK: &str = "huntress.siem.can_connect";
/// A checkpoint older than this moves forward under `stale_log_policy: skip`:
/// the intake's 18 h limit.
const STALE_REACH_SECONDS: i64 = 18 * 3600;
/// ... and under `rewrite_date`: the longest `initial_lookback_seconds` allowed.
const MAX_BACKLOG_SECONDS: i64 = 7 * 24 * 3600;
pub const API_SERVICE_CHECK: &str = "huntress.api.can_connect";

/// What the REST features (orgs, incidents, agents) did in one run.
#[derive(Default)]
struct RestRun {
    healths: Vec<Health>,
    deferred: Vec<Feature>,
    orgs_refreshed: bool,
}

pub struct Collector {
    config: Config,
    cache_id: String,
    huntress: HuntressClient,
    intake: IntakeClient,
    /// Queries already warned about rows without `KEEP` in this process.
    warned_keep: HashSet<String>,
    orgs: Orgs,
    /// Pages each REST feature read when it last ran: its next budget estimate.
    last_pages: BTreeMap<Feature, u32>,
    redactor: Redactor,
    /// The organization scope, with what it dropped in this run.
    scope: Scope,
    /// Said in the Agent log at the first run: the settings the check could not follow as given.
    startup_notes: Vec<String>,
}

impl Collector {
    pub fn new(instance: &Value, agent: &AgentContext) -> Result<Self> {
        crate::base::boundary::panic_if_injected(PanicPoint::New);
        let config = Config::parse(instance, agent)?;
        let cache_id = cache_id(&config.base_url, &config.api_key);
        let budget = RateBudget::shared(&cache_id);
        let startup_notes = config.encoding_note.iter().cloned().collect();
        Ok(Collector {
            huntress: HuntressClient::new(&config, budget)?,
            intake: IntakeClient::new(&config)?,
            cache_id,
            redactor: Redactor::for_config(&config),
            orgs: Orgs::new(config.org_cache_ttl),
            scope: Scope::new(config.scope.clone()),
            config,
            warned_keep: HashSet::new(),
            last_pages: BTreeMap::new(),
            startup_notes,
        })
    }

    /// Stable per Huntress account and base URL; see `checkpoint::cache_id`.
    pub fn cache_id(&self) -> &str {
        &self.cache_id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn run(&mut self, cache: &mut dyn Cache) -> Report {
        let started = Instant::now();
        let deadline = Deadline::after(self.config.run_deadline);
        crate::base::boundary::panic_if_injected(PanicPoint::Run);
        let mut report = Report::default();
        let mut errors: BTreeMap<(ErrorKind, Option<String>), u64> = BTreeMap::new();
        self.huntress.reset_stats();
        self.intake.reset_stats();
        for note in self.startup_notes.drain(..) {
            report.log(Level::Info, note);
        }
        let mut rest = RestRun::default();
        if self.wants_orgs() {
            self.prepare_orgs(cache, deadline, &mut rest);
        }
        self.run_soc_feeds(cache, deadline, &mut rest, &mut report);

        let mut failures = 0;
        for query in self.config.queries.clone() {
            let outcome = crate::base::boundary::catch(|| {
                crate::base::boundary::panic_if_injected(PanicPoint::Query);
                self.collect_query(&query, cache, deadline, &mut report)
            })
            .unwrap_or_else(|message| QueryOutcome { error: Some(HuntressError::Internal(message)), ..QueryOutcome::default() });
            failures += usize::from(outcome.error.is_some());
            for (kind, count) in &outcome.recovered {
                *errors.entry((*kind, Some(query.name.clone()))).or_default() += count;
            }
            if let Some(error) = &outcome.error {
                *errors.entry((error.kind(), Some(query.name.clone()))).or_default() += 1;
            }
            self.report_query(&query, &outcome, &mut report);
        }
        if failures == self.config.queries.len() {
            report.fatal = report.service_checks.iter().rev().find_map(|c| c.message.clone());
        }
        self.run_rest_features(cache, deadline, &mut rest, &mut report);
        self.report_rest(&rest, &mut errors, &mut report);
        self.scope.report(&mut report, &self.config.tags);
        self.report_run(started, &errors, &rest, &mut report);
        report.redact(&self.redactor);
        report
    }

    /// The report of a run that panicked (see `boundary`): CRITICAL on every
    /// query, an `internal` error, and the message, raised by the check.
    pub fn internal_error_report(&self, panic_message: &str) -> Report {
        let message = format!("internal error in the check, the run was stopped: {panic_message}");
        let mut report = Report::default();
        for query in &self.config.queries {
            report.service_check(SIEM_SERVICE_CHECK, Status::Critical, &self.query_tags(query), Some(message.clone()));
        }
        let error_tags = with_tag(&self.config.tags, format!("error_type:{}", ErrorKind::Internal.tag()));
        report.count("huntress.siem.errors", 1.0, &error_tags);
        report.log(Level::Error, message.clone());
        report.fatal = Some(message);
        report.redact(&self.redactor);
        report
    }

    fn collect_query(&mut self, query: &LogQuery, cache: &mut dyn Cache, deadline: Deadline, report: &mut Report) -> QueryOutcome {
        let now = Utc::now();
        let key = query_key(&query.name);
        let chunk_keys: Vec<String> =
            (0..chunk_count(self.config.dedup_cache_size)).map(|index| seen_chunk_key(&query.name, index)).collect();
        let mut state = match self.load_state(cache, &key, &chunk_keys, now, report) {
            Ok(state) => state,
            Err(error) => {
                return QueryOutcome { error: Some(error), ..QueryOutcome::default() };
            }
        };
        let repairs = self.repair_state(&mut state, now);
        if !repairs.is_empty() {
            if let Err(error) = cache.write(&key, &state.encode_position()) {
                return QueryOutcome { error: Some(HuntressError::Cache(format!("cannot save the repaired checkpoint ({error})"))), ..QueryOutcome::default() };
            }
        }
        let template = self.template(query);
        let mut run = QueryRun {
            huntress: &mut self.huntress,
            intake: &mut self.intake,
            cache,
            deadline,
            now,
            esql: &query.esql,
            cache_key: &key,
            chunk_keys: &chunk_keys,
            template: &template,
            rules: &self.config.processing_rules,
            enricher: Enricher::new(self.orgs.directory(), self.config.enrich_with_org_tags),
            scope: &self.scope,
            directory: self.orgs.directory(),
            max_pages: self.config.max_pages_per_run,
            delay: to_chrono(self.config.collection_delay),
            max_window: to_chrono(self.config.max_window),
            lookback: to_chrono(self.config.initial_lookback),
        };
        let mut outcome = run.collect(&mut state);
        if !repairs.is_empty() {
            *outcome.recovered.entry(ErrorKind::Cache).or_default() += repairs.len() as u64;
            outcome.repairs = repairs;
        }
        let tags = self.query_tags(query);
        let lag = (Utc::now() - state.checkpoint).num_milliseconds() as f64 / 1000.0;
        report.gauge("huntress.siem.checkpoint_lag_seconds", lag.max(0.0), &tags);
        report.gauge("huntress.siem.window_in_progress", f64::from(u8::from(state.cursor.is_some())), &tags);
        outcome
    }

    /// The saved state, or a fresh one `initial_lookback_seconds` back (a new
    /// instance, or one moved to a node without its cache). A position that cannot
    /// be read is reported and replaced, never silently; an unreadable id chunk is
    /// reported and dropped.
    fn load_state(
        &self,
        cache: &mut dyn Cache,
        key: &str,
        chunk_keys: &[String],
        now: chrono::DateTime<Utc>,
        report: &mut Report,
    ) -> Result<QueryState> {
        let read = |cache: &mut dyn Cache, k: &str| cache.read(k).map_err(|e| HuntressError::Cache(format!("cannot read the checkpoint ({e})")));
        let capacity = self.config.dedup_cache_size;
        let mut chunks = Vec::with_capacity(chunk_keys.len());
        for chunk_key in chunk_keys {
            let ids = DedupSet::decode_ids(&read(cache, chunk_key)?).unwrap_or_else(|error| {
                report.log(Level::Warning, format!("{error}; continuing without these ids of recently forwarded events"));
                Vec::new()
            });
            chunks.push(ids);
        }
        let fresh = QueryState::new(now - to_chrono(self.config.initial_lookback), capacity);
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
    fn repair_state(&self, state: &mut QueryState, now: chrono::DateTime<Utc>) -> Vec<String> {
        let reach = Reach { now, delay: to_chrono(self.config.collection_delay), oldest: now - ChronoDuration::seconds(self.reach_seconds()) };
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
        let lookback = i64::try_from(self.config.initial_lookback.as_secs()).unwrap_or(i64::MAX);
        let reach = match self.config.stale_policy {
            StalePolicy::Skip => STALE_REACH_SECONDS,
            StalePolicy::RewriteDate => MAX_BACKLOG_SECONDS,
        };
        reach.max(lookback)
    }

    fn template(&self, query: &LogQuery) -> LogTemplate {
        let tags: Vec<String> = self.query_tags(query).into_iter().chain(query.tags.iter().cloned()).collect();
        LogTemplate {
            service: query.service.clone().unwrap_or_else(|| self.config.service.clone()),
            ddtags: tags.join(","),
            stale_policy: self.config.stale_policy,
        }
    }

    fn query_tags(&self, query: &LogQuery) -> Vec<String> {
        with_tag(&self.config.tags, format!("query_name:{}", query.name))
    }

    fn report_query(&mut self, query: &LogQuery, outcome: &QueryOutcome, report: &mut Report) {
        let tags = self.query_tags(query);
        report.count("huntress.siem.logs_collected", outcome.collected as f64, &tags);
        report.count("huntress.siem.logs_forwarded", outcome.forwarded as f64, &tags);
        report.count("huntress.siem.logs_refused", outcome.rejected as f64, &tags);
        report.count("huntress.siem.logs_deduplicated", outcome.deduplicated as f64, &tags);
        report.count("huntress.siem.logs_truncated", outcome.truncated as f64, &tags);
        report.count("huntress.siem.pages_fetched", outcome.pages as f64, &tags);
        for (rule, count) in &outcome.excluded {
            report.count("huntress.siem.logs_excluded", *count as f64, &with_tag(&tags, format!("rule:{rule}")));
        }
        report.count(
            "huntress.siem.logs_stale",
            outcome.stale as f64,
            &with_tag(&tags, format!("policy:{}", self.config.stale_policy.tag())),
        );
        let (status, message) = self.query_status(query, outcome, report);
        report.service_check(SIEM_SERVICE_CHECK, status, &tags, message);
    }

    fn query_status(&mut self, query: &LogQuery, outcome: &QueryOutcome, report: &mut Report) -> (Status, Option<String>) {
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
            if self.warned_keep.insert(name.clone()) {
                report.log(Level::Warning, warning.clone());
            }
            warnings.push(warning);
        }
        if outcome.stale > 0 {
            warnings.push(format!(
                "query {name:?}: {} events were older than the intake's 18 h limit (policy {})",
                outcome.stale,
                self.config.stale_policy.tag()
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
        if let Some(reason) = &self.intake.stats.last_rejection {
            let rejected = self.intake.stats.rejected;
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
        for warning in &warnings {
            report.log(Level::Warning, warning.clone());
        }
        if warnings.is_empty() {
            (Status::Ok, None)
        } else {
            (Status::Warning, Some(warnings.join("; ")))
        }
    }

    fn report_run(&self, started: Instant, errors: &BTreeMap<(ErrorKind, Option<String>), u64>, rest: &RestRun, report: &mut Report) {
        let tags = &self.config.tags;
        let stats = &self.huntress.stats;
        report.gauge("huntress.siem.run_duration_seconds", started.elapsed().as_secs_f64(), tags);
        if let Some(limit) = stats.call_limit {
            report.gauge("huntress.siem.api_call_limit", f64::from(limit), tags);
        }
        if let Some(remaining) = stats.call_remaining {
            report.gauge("huntress.siem.api_call_remaining", f64::from(remaining), tags);
        }
        report.gauge("huntress.api.throttle_wait_seconds", stats.throttle_wait.as_secs_f64(), tags);
        for feature in self.features() {
            let count = stats.requests.get(&feature).copied().unwrap_or(0);
            report.count("huntress.api.requests", count as f64, &with_tag(tags, format!("feature:{}", feature.tag())));
        }
        let mut all_errors = errors.clone();
        for (kind, count) in &stats.retried {
            *all_errors.entry((*kind, None)).or_default() += count;
        }
        if self.intake.stats.retried > 0 {
            *all_errors.entry((ErrorKind::IntakeUnavailable, None)).or_default() += self.intake.stats.retried;
        }
        if self.intake.stats.rejected > 0 {
            *all_errors.entry((ErrorKind::IntakeRejected, None)).or_default() += self.intake.stats.rejected;
        }
        for ((kind, query), count) in all_errors {
            let mut error_tags = with_tag(tags, format!("error_type:{}", kind.tag()));
            if let Some(query) = query {
                error_tags.push(format!("query_name:{query}"));
            }
            report.count("huntress.siem.errors", count as f64, &error_tags);
        }
        let mut all = vec![Feature::Siem, Feature::Incidents, Feature::Agents, Feature::Orgs];
        all.extend(self.config.escalations.enabled.then_some(Feature::Escalations));
        all.extend(self.config.signals.enabled.then_some(Feature::Signals));
        let mut summary = all.iter().map(|f| format!("{}={}", f.tag(), stats.requests.get(f).copied().unwrap_or(0))).collect::<Vec<_>>().join(" ");
        summary.push_str(&format!(" (of {} per minute)", self.huntress.rate_limit()));
        if !rest.deferred.is_empty() {
            summary.push_str(&format!(", deferred: {}", rest.deferred.iter().map(|f| f.tag()).collect::<Vec<_>>().join(" ")));
        }
        report.log(
            Level::Info,
            format!(
                "run finished in {:.2}s; Huntress requests: {summary}; intake requests: {}, logs accepted: {}",
                started.elapsed().as_secs_f64(),
                self.intake.stats.requests,
                self.intake.stats.accepted
            ),
        );
    }

    /// The organization directory is kept when logs are enriched with it, when
    /// agent metrics or SOC events tag by organization name, and when the scope
    /// names organizations.
    fn wants_orgs(&self) -> bool {
        let config = &self.config;
        config.enrich_with_org_tags
            || config.agents.enabled
            || config.incidents.enabled
            || config.escalations.enabled
            || config.signals.enabled
            || self.scope.is_active()
    }

    /// The features this instance uses, for `huntress.api.requests`.
    fn features(&self) -> Vec<Feature> {
        let mut features = vec![Feature::Siem];
        features.extend(self.config.incidents.enabled.then_some(Feature::Incidents));
        features.extend(self.config.escalations.enabled.then_some(Feature::Escalations));
        features.extend(self.config.signals.enabled.then_some(Feature::Signals));
        features.extend(self.config.agents.enabled.then_some(Feature::Agents));
        features.extend(self.wants_orgs().then_some(Feature::Orgs));
        features
    }

    /// Loads the cached directory; with none cached, fetches it before the SIEM
    /// queries (a few requests), so the first logs are tagged too.
    fn prepare_orgs(&mut self, cache: &mut dyn Cache, deadline: Deadline, rest: &mut RestRun) {
        if let Some(warning) = self.orgs.load(cache) {
            // Reported with the REST health: a WARNING on huntress.api.can_connect, counted as a cache error.
            let error = HuntressError::Cache(warning.clone());
            rest.healths.push(Health::failed(Feature::Orgs, Status::Warning, warning, &error));
        }
        if self.orgs.directory().is_none() {
            self.refresh_orgs(cache, deadline, Pacing::Wait, rest);
        }
    }

    fn refresh_orgs(&mut self, cache: &mut dyn Cache, deadline: Deadline, pacing: Pacing, rest: &mut RestRun) {
        let mut source = ClientSource { client: &mut self.huntress, feature: Feature::Orgs, deadline, pacing };
        let health = self.orgs.refresh(&mut source, cache, Utc::now());
        rest.orgs_refreshed = true;
        match health {
            Some(health) => rest.healths.push(health),
            None => rest.deferred.push(Feature::Orgs),
        }
    }

    /// Incident reports, then escalations, ahead of the SIEM queries, within
    /// `soc_share` requests of this run: they wait for the rate budget like the
    /// SIEM queries, and stop (with a warning) once the share is spent.
    fn run_soc_feeds(&mut self, cache: &mut dyn Cache, deadline: Deadline, rest: &mut RestRun, report: &mut Report) {
        let sent: u64 = self.huntress.stats.requests.values().sum();
        let pacing = Pacing::Until { requests: sent + soc_share(self.huntress.rate_limit()) };
        let feeds: [(&dyn VersionedFeed, IncidentsConfig); 2] =
            [(&Incidents, self.config.incidents.clone()), (&Escalations, self.config.escalations.clone())];
        for (feed, settings) in feeds.into_iter().filter(|(_, settings)| settings.enabled) {
            let feature = feed.names().feature;
            let mut source = ClientSource { client: &mut self.huntress, feature, deadline, pacing };
            let ctx = feed_context(&mut self.intake, &self.config, self.orgs.directory(), &self.scope, &mut *cache, deadline, settings.max_pages);
            let mut run = VersionedRun { feed, ctx };
            let (health, pages) = guarded(feature, || run.run(&mut source, report));
            if health.is_none() {
                report.log(Level::Warning, format!("{} deferred to a later run: the SOC share of the rate budget was spent (or the run deadline reached)", feature.tag()));
            }
            self.record(feature, health, pages, rest);
        }
    }

    /// Signals, then agents, then a due organization refresh, each only when
    /// the budget has room for it.
    fn run_rest_features(&mut self, cache: &mut dyn Cache, deadline: Deadline, rest: &mut RestRun, report: &mut Report) {
        if self.config.signals.enabled {
            if let Some(pacing) = self.pacing_for(Feature::Signals, self.estimate(Feature::Signals, 1), deadline, rest, report) {
                let mut source = ClientSource { client: &mut self.huntress, feature: Feature::Signals, deadline, pacing };
                let max_pages = self.config.signals.max_pages;
                let ctx = feed_context(&mut self.intake, &self.config, self.orgs.directory(), &self.scope, &mut *cache, deadline, max_pages);
                let mut run = SignalRun { ctx };
                let (health, pages) = guarded(Feature::Signals, || run.run(&mut source, report));
                self.record(Feature::Signals, health, pages, rest);
            }
        }
        if self.config.agents.enabled {
            let first_guess = self.orgs.directory().and_then(|d| d.agent_pages_estimate()).unwrap_or(1);
            let need = self.estimate(Feature::Agents, first_guess).min(self.config.agents.max_pages);
            if let Some(pacing) = self.pacing_for(Feature::Agents, need, deadline, rest, report) {
                let mut source = ClientSource { client: &mut self.huntress, feature: Feature::Agents, deadline, pacing };
                let (agents, directory, scope, tags) = (&self.config.agents, self.orgs.directory(), &self.scope, &self.config.tags);
                let (health, pages) =
                    guarded(Feature::Agents, || crate::feeds::agents::run(&mut source, agents, Utc::now(), directory, scope, tags, report));
                self.record(Feature::Agents, health, pages, rest);
            }
        }
        if self.wants_orgs() && !rest.orgs_refreshed && self.orgs.due(Utc::now()) {
            if let Some(pacing) = self.pacing_for(Feature::Orgs, self.orgs.refresh_requests(), deadline, rest, report) {
                self.refresh_orgs(cache, deadline, pacing, rest);
            }
        }
    }

    fn estimate(&self, feature: Feature, default: u32) -> u32 {
        self.last_pages.get(&feature).copied().unwrap_or(default).max(1)
    }

    /// The budget rule for a lower-priority feature; `None` (and a log line) when deferred.
    fn pacing_for(&self, feature: Feature, need: u32, deadline: Deadline, rest: &mut RestRun, report: &mut Report) -> Option<Pacing> {
        let verdict = if deadline.expired() {
            Err("the run deadline was reached".to_string())
        } else {
            budget_allows(self.huntress.free_slots(), self.huntress.rate_limit(), need)
        };
        match verdict {
            Ok(pacing) => Some(pacing),
            Err(why) => {
                report.log(Level::Warning, format!("{} deferred to a later run: {why}; SIEM queries have priority on the rate budget", feature.tag()));
                rest.deferred.push(feature);
                None
            }
        }
    }

    fn record(&mut self, feature: Feature, health: Option<Health>, pages: u32, rest: &mut RestRun) {
        if pages > 0 {
            self.last_pages.insert(feature, pages);
        }
        match health {
            Some(health) => rest.healths.push(health),
            None => rest.deferred.push(feature),
        }
    }

    /// `huntress.api.can_connect`, `huntress.organizations.count`, and the REST errors.
    fn report_rest(&self, rest: &RestRun, errors: &mut BTreeMap<(ErrorKind, Option<String>), u64>, report: &mut Report) {
        let tags = &self.config.tags;
        if let Some(directory) = self.orgs.directory().filter(|_| self.wants_orgs()) {
            let in_scope = directory.orgs().iter().filter_map(|org| id_text(&org.id)).filter(|id| self.scope.admits_org_id(id, Some(directory))).count();
            report.gauge("huntress.organizations.count", in_scope as f64, tags);
        }
        for health in &rest.healths {
            if let Some(kind) = health.error {
                *errors.entry((kind, None)).or_default() += 1;
            }
            if let Some(message) = &health.message {
                let level = if health.status == Status::Critical { Level::Error } else { Level::Warning };
                report.log(level, format!("{}: {message}", health.feature.tag()));
            }
        }
        if let Some((status, message)) = api_status(&rest.healths) {
            report.service_check(API_SERVICE_CHECK, status, tags, message);
        }
    }
}

/// What a log-forwarding REST feed is given for one run: built from the
/// collector's fields one by one, so that it can live beside the page source
/// that borrows the Huntress client.
fn feed_context<'a>(
    intake: &'a mut IntakeClient,
    config: &'a Config,
    directory: Option<&'a OrgDirectory>,
    scope: &'a Scope,
    cache: &'a mut dyn Cache,
    deadline: Deadline,
    max_pages: u32,
) -> FeedContext<'a> {
    FeedContext {
        sink: intake,
        rules: &config.processing_rules,
        cache,
        deadline,
        directory,
        scope,
        base_tags: &config.tags,
        max_pages,
        initial_lookback: config.initial_lookback,
        now: Utc::now(),
    }
}

/// Runs one REST feed; a panic in it fails that feed alone, as an `internal`
/// error, and the run goes on with the others.
fn guarded(feature: Feature, work: impl FnOnce() -> (Option<Health>, u32)) -> (Option<Health>, u32) {
    crate::base::boundary::catch(|| {
        crate::base::boundary::panic_if_injected(PanicPoint::Feed);
        work()
    })
    .unwrap_or_else(|message| {
        let error = HuntressError::Internal(message);
        (Some(Health::failed(feature, Status::Critical, error.to_string(), &error)), 0)
    })
}

fn to_chrono(duration: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(duration).unwrap_or(ChronoDuration::MAX)
}
