//! One check instance: owns the clients and runs every configured query once
//! per Agent run, returning a `Report`.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::{Map, Value};

use crate::checkpoint::{cache_id, query_key, seen_key, Cache, DedupSet, QueryState};
use crate::config::{AgentContext, Config, LogQuery};
use crate::error::{ErrorKind, HuntressError, Result};
use crate::http::Deadline;
use crate::huntress::HuntressClient;
use crate::intake::IntakeClient;
use crate::ratelimit::RateBudget;
use crate::report::{with_tag, Level, Report, Status};
use crate::siem::{QueryOutcome, QueryRun};
use crate::transform::{Enrichment, LogTemplate};

pub const SIEM_SERVICE_CHECK: &str = "huntress.siem.can_connect";

pub struct Collector {
    config: Config,
    cache_id: String,
    huntress: HuntressClient,
    intake: IntakeClient,
    /// Queries already warned about rows without `KEEP` in this process.
    warned_keep: HashSet<String>,
}

impl Collector {
    pub fn new(instance: &Value, agent: &AgentContext) -> Result<Self> {
        let config = Config::parse(instance, agent)?;
        let cache_id = cache_id(&config.base_url, &config.api_key);
        let budget = RateBudget::shared(&cache_id);
        Ok(Collector {
            huntress: HuntressClient::new(&config, budget)?,
            intake: IntakeClient::new(&config)?,
            cache_id,
            config,
            warned_keep: HashSet::new(),
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
        let mut report = Report::default();
        let mut errors: BTreeMap<(ErrorKind, Option<String>), u64> = BTreeMap::new();
        self.huntress.reset_stats();
        self.intake.reset_stats();

        let mut failures = 0;
        for query in self.config.queries.clone() {
            let outcome = self.collect_query(&query, cache, deadline, &mut report);
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
        self.report_run(started, &errors, &mut report);
        report.redact(&[self.config.api_key.clone(), self.config.secret_key.clone(), self.config.dd_api_key.clone()]);
        report
    }

    fn collect_query(&mut self, query: &LogQuery, cache: &mut dyn Cache, deadline: Deadline, report: &mut Report) -> QueryOutcome {
        let now = Utc::now();
        let key = query_key(&query.name);
        let ids_key = seen_key(&query.name);
        let mut state = match self.load_state(cache, &key, &ids_key, now, report) {
            Ok(state) => state,
            Err(error) => {
                return QueryOutcome { error: Some(error), ..QueryOutcome::default() };
            }
        };
        let template = self.template(query);
        let enrich = |_: &Map<String, Value>| Enrichment::default();
        let mut run = QueryRun {
            huntress: &mut self.huntress,
            intake: &mut self.intake,
            cache,
            deadline,
            now,
            esql: &query.esql,
            cache_key: &key,
            seen_key: &ids_key,
            template: &template,
            enrich: &enrich,
            max_pages: self.config.max_pages_per_run,
            delay: to_chrono(self.config.collection_delay),
            max_window: to_chrono(self.config.max_window),
        };
        let outcome = run.collect(&mut state);
        let tags = self.query_tags(query);
        let lag = (Utc::now() - state.checkpoint).num_milliseconds() as f64 / 1000.0;
        report.gauge("huntress.siem.checkpoint_lag_seconds", lag.max(0.0), &tags);
        report.gauge("huntress.siem.window_in_progress", f64::from(u8::from(state.cursor.is_some())), &tags);
        outcome
    }

    /// The saved state, or a fresh one `initial_lookback_seconds` back (a new
    /// instance, or one moved to a node without its cache). A position that cannot
    /// be read is reported and replaced, never silently.
    fn load_state(
        &self,
        cache: &mut dyn Cache,
        key: &str,
        ids_key: &str,
        now: chrono::DateTime<Utc>,
        report: &mut Report,
    ) -> Result<QueryState> {
        let read = |cache: &mut dyn Cache, k: &str| cache.read(k).map_err(|e| HuntressError::Cache(format!("cannot read the checkpoint ({e})")));
        let capacity = self.config.dedup_cache_size;
        let seen = QueryState::decode_seen(&read(cache, ids_key)?, capacity).unwrap_or_else(|error| {
            report.log(Level::Warning, format!("{error}; continuing without the ids of recently forwarded events"));
            DedupSet::new(capacity)
        });
        let fresh_checkpoint = now - to_chrono(self.config.initial_lookback);
        match QueryState::decode_position(&read(cache, key)?) {
            Ok(Some((checkpoint, cursor))) => Ok(QueryState { checkpoint, cursor, seen }),
            Ok(None) => Ok(QueryState { seen, ..QueryState::new(fresh_checkpoint, capacity) }),
            Err(error) => {
                cache.write(key, &QueryState::new(fresh_checkpoint, capacity).encode_position()).map_err(HuntressError::Cache)?;
                Err(HuntressError::Cache(format!("{error}; starting again from initial_lookback_seconds")))
            }
        }
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
        report.count("huntress.siem.logs_deduplicated", outcome.deduplicated as f64, &tags);
        report.count("huntress.siem.logs_truncated", outcome.truncated as f64, &tags);
        report.count("huntress.siem.pages_fetched", outcome.pages as f64, &tags);
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
            let message = format!("query {name:?}: {error}");
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
        if outcome.token_restarts > 0 {
            warnings.push(format!("query {name:?}: an expired page token restarted the window {} time(s)", outcome.token_restarts));
        }
        if let Some(reason) = &self.intake.stats.last_rejection {
            let rejected = self.intake.stats.rejected;
            warnings.push(format!("{rejected} logs were refused by the intake even alone, and dropped: {reason}"));
        }
        if outcome.stopped_by_deadline {
            report.log(Level::Info, format!("query {name:?}: run deadline reached; the next run resumes from the saved cursor"));
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

    fn report_run(&self, started: Instant, errors: &BTreeMap<(ErrorKind, Option<String>), u64>, report: &mut Report) {
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
        for (feature, count) in &stats.requests {
            report.count("huntress.api.requests", *count as f64, &with_tag(tags, format!("feature:{}", feature.tag())));
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
        let summary = stats.requests.iter().map(|(f, n)| format!("{}={n}", f.tag())).collect::<Vec<_>>().join(" ");
        report.log(
            Level::Info,
            format!(
                "run finished in {:.2}s; Huntress requests: {}; intake requests: {}, logs accepted: {}",
                started.elapsed().as_secs_f64(),
                if summary.is_empty() { "none".to_string() } else { summary },
                self.intake.stats.requests,
                self.intake.stats.accepted
            ),
        );
    }
}

fn to_chrono(duration: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(duration).unwrap_or(ChronoDuration::MAX)
}
