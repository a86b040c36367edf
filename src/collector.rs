//! One check instance: builds each part from its settings, and runs every feed
//! once per Agent run, returning a `Report`.
//!
//! Order within a run, which is also the priority on the shared rate budget:
//!
//! 1. the organization directory comes from the cache (fetched first only when
//!    the cache is empty);
//! 2. the feeds of the SOC slot (incident reports, escalations), within a
//!    bounded share of the budget (`paging::soc_share`: a fifth of the
//!    per-minute limit), so a new incident reaches Datadog in the first run
//!    after it appears even while a SIEM backlog drains;
//! 3. the SIEM queries, with the rest of the budget;
//! 4. the feeds of the spare slot (signals, agent inventory), then a due
//!    refresh of the organization directory, each only when the budget's free
//!    slots cover its estimate plus a reserve for the next run's SIEM queries
//!    (`paging::budget_allows`); otherwise it is deferred to a later run, and
//!    the log says so.
//!
//! The organization scope (`feeds::scope`) applies to every feed; what it
//! dropped is reported once per run.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use serde_json::Value;

use crate::base::boundary::{self, PanicPoint};
use crate::base::cache::{cache_id, Cache, SuffixedKeys};
use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::base::http::Deadline;
use crate::base::redact::Redactor;
use crate::config::{AgentContext, Config};
use crate::datadog::intake::IntakeClient;
use crate::datadog::report::{with_tag, Level, Report, Status};
use crate::feeds::feed::{Feed, Slot};
use crate::feeds::forwarding::FeedContext;
use crate::feeds::item::id_text;
use crate::feeds::orgs::Orgs;
use crate::feeds::paging::{api_status, budget_allows, soc_share, ClientSource, Health, Pacing};
use crate::feeds::scope::Scope;
use crate::feeds::siem::{ErrorCounts, Siem, SiemContext};
use crate::huntress::client::{Feature, HuntressClient};
use crate::huntress::ratelimit::RateBudget;

pub const API_SERVICE_CHECK: &str = "huntress.api.can_connect";

/// What a run reports of itself, on the instance's tags.
mod metric {
    /// Errors of every part, by `error_type` (and `query_name` for SIEM queries).
    pub const ERRORS: &str = "huntress.siem.errors";
    pub const RUN_DURATION: &str = "huntress.siem.run_duration_seconds";
    pub const API_CALL_LIMIT: &str = "huntress.siem.api_call_limit";
    pub const API_CALL_REMAINING: &str = "huntress.siem.api_call_remaining";
    pub const THROTTLE_WAIT: &str = "huntress.api.throttle_wait_seconds";
    /// Huntress requests, by `feature`.
    pub const API_REQUESTS: &str = "huntress.api.requests";
    /// The organizations of the account within the scope.
    pub const ORGANIZATIONS: &str = "huntress.organizations.count";
}

/// What the REST feeds and the organization directory did in one run.
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
    siem: Siem,
    /// The REST feeds this instance turns on, in their order.
    feeds: Vec<Box<dyn Feed>>,
    orgs: Orgs,
    /// Pages each REST feed read when it last ran: its next budget estimate.
    last_pages: BTreeMap<Feature, u32>,
    redactor: Redactor,
    /// The organization scope, with what it dropped in this run.
    scope: Scope,
    /// Said in the Agent log at the first run: the settings the check could not follow as given.
    startup_notes: Vec<String>,
}

impl Collector {
    /// Every error of building the collector is scrubbed of the secrets the
    /// instance and the Agent gave, whatever part raised it.
    pub fn new(instance: &Value, agent: &AgentContext) -> Result<Self> {
        Self::build(instance, agent).map_err(|e| e.redacted(&crate::config::raw_redactor(instance, agent)))
    }

    fn build(instance: &Value, agent: &AgentContext) -> Result<Self> {
        boundary::panic_if_injected(PanicPoint::New);
        let config = Config::parse(instance, agent)?;
        let cache_id = cache_id(&config.huntress.base_url, &config.huntress.api_key);
        let redactor = config.redactor();
        let budget = RateBudget::shared(&cache_id);
        Ok(Collector {
            huntress: HuntressClient::new(&config.huntress, budget, redactor.clone())?,
            intake: IntakeClient::new(&config.intake, redactor.clone())?,
            siem: Siem::new(config.siem.clone()),
            feeds: crate::feeds::enabled(&config.feeds),
            orgs: Orgs::new(config.org_cache_ttl),
            scope: Scope::new(config.scope.clone()),
            startup_notes: config.encoding_note.iter().cloned().collect(),
            last_pages: BTreeMap::new(),
            cache_id,
            redactor,
            config,
        })
    }

    /// Stable per Huntress account and base URL; see `cache::cache_id`.
    pub fn cache_id(&self) -> &str {
        &self.cache_id
    }

    pub fn run(&mut self, agent_cache: &mut dyn Cache) -> Report {
        // Each scope keeps its own state within the account's keys.
        let suffix = self.config.scope.state_suffix();
        let cache: &mut dyn Cache = &mut SuffixedKeys { inner: agent_cache, suffix: &suffix };
        let started = Instant::now();
        let deadline = Deadline::after(self.config.run_deadline);
        boundary::panic_if_injected(PanicPoint::Run);
        let mut report = Report::default();
        let mut errors = ErrorCounts::new();
        self.huntress.reset_stats();
        self.intake.reset_stats();
        for note in self.startup_notes.drain(..) {
            report.log(Level::Info, note);
        }
        let mut rest = RestRun::default();
        if self.wants_orgs() {
            self.load_orgs(cache, deadline, &mut rest);
        }
        self.run_soc_feeds(cache, deadline, &mut rest, &mut report);
        self.run_siem(cache, deadline, &mut errors, &mut report);
        self.run_spare_feeds(cache, deadline, &mut rest, &mut report);
        self.report_rest(&rest, &mut errors, &mut report);
        self.scope.report(&mut report, &self.config.tags);
        self.report_run(started, &errors, &rest, &mut report);
        self.mask_events(&mut report);
        report.redact(&self.redactor);
        report
    }

    /// The processing rules' masks on what the events carry from Huntress
    /// data: title, text and tags (metric tags are not masked).
    fn mask_events(&self, report: &mut Report) {
        let rules = &self.config.processing_rules;
        if !rules.has_masks() {
            return;
        }
        for event in &mut report.events {
            event.title = rules.mask_text(&event.title);
            event.text = rules.mask_text(&event.text);
            event.tags = event.tags.iter().map(|tag| rules.mask_tag(tag)).collect();
        }
    }

    /// The report of a run that panicked (see `boundary`): CRITICAL on every
    /// query, an `internal` error, and the message, raised by the check.
    pub fn internal_error_report(&self, panic_message: &str) -> Report {
        let message = format!("internal error in the check, the run was stopped: {panic_message}");
        let mut report = Report::default();
        self.siem.report_internal_error(&self.config.tags, &message, &mut report);
        report_internal_error(&self.config.tags, message, &mut report);
        report.redact(&self.redactor);
        report
    }

    fn run_siem(&mut self, cache: &mut dyn Cache, deadline: Deadline, errors: &mut ErrorCounts, report: &mut Report) {
        let mut ctx = SiemContext {
            huntress: &mut self.huntress,
            intake: &mut self.intake,
            cache,
            deadline,
            rules: &self.config.processing_rules,
            directory: self.orgs.directory(),
            scope: &self.scope,
            base_tags: &self.config.tags,
        };
        let checks_before = report.service_checks.len();
        if self.siem.run(&mut ctx, errors, report) {
            // Every query failed: the run fails with each query's reason, said once.
            let mut reasons: Vec<String> = Vec::new();
            for message in report.service_checks[checks_before..].iter().filter_map(|c| c.message.clone()) {
                if !reasons.contains(&message) {
                    reasons.push(message);
                }
            }
            report.fatal = (!reasons.is_empty()).then(|| reasons.join("; "));
        }
    }

    fn report_run(&self, started: Instant, errors: &ErrorCounts, rest: &RestRun, report: &mut Report) {
        let tags = &self.config.tags;
        let stats = &self.huntress.stats;
        report.gauge(metric::RUN_DURATION, started.elapsed().as_secs_f64(), tags);
        if let Some(limit) = stats.call_limit {
            report.gauge(metric::API_CALL_LIMIT, f64::from(limit), tags);
        }
        if let Some(remaining) = stats.call_remaining {
            report.gauge(metric::API_CALL_REMAINING, f64::from(remaining), tags);
        }
        report.gauge(metric::THROTTLE_WAIT, stats.throttle_wait.as_secs_f64(), tags);
        let features = self.features();
        for feature in &features {
            let count = stats.requests.get(feature).copied().unwrap_or(0);
            report.count(metric::API_REQUESTS, count as f64, &with_tag(tags, format!("feature:{}", feature.tag())));
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
            report.count(metric::ERRORS, count as f64, &error_tags);
        }
        let mut summary = features.iter().map(|f| format!("{}={}", f.tag(), stats.requests.get(f).copied().unwrap_or(0))).collect::<Vec<_>>().join(" ");
        summary.push_str(&format!(" (of {} per minute)", self.huntress.rate_limit()));
        if !rest.deferred.is_empty() {
            summary.push_str(&format!(", deferred: {}", rest.deferred.iter().map(|f| f.tag()).collect::<Vec<_>>().join(" ")));
        }
        if !self.siem.summaries().is_empty() {
            summary.push_str(&format!("; queries: {}", self.siem.summaries().join(", ")));
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
    /// a REST feed runs (they tag by organization name), and when the scope
    /// names organizations.
    fn wants_orgs(&self) -> bool {
        self.siem.settings().enrich_with_org_tags || !self.feeds.is_empty() || self.scope.is_active()
    }

    /// The features this instance uses, in the order of `Feature`: for
    /// `huntress.api.requests` and the run summary.
    fn features(&self) -> Vec<Feature> {
        let mut features: Vec<Feature> = std::iter::once(Feature::Siem).chain(self.feeds.iter().map(|feed| feed.feature())).collect();
        features.extend(self.wants_orgs().then_some(Feature::Orgs));
        features.sort();
        features
    }

    /// Loads the cached directory; with none cached, fetches it before the SIEM
    /// queries (a few requests), so the first logs are tagged too.
    fn load_orgs(&mut self, cache: &mut dyn Cache, deadline: Deadline, rest: &mut RestRun) {
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

    /// The SOC slot, ahead of the SIEM queries, within `soc_share` requests of
    /// this run: its feeds wait for the rate budget like the SIEM queries, and
    /// stop (with a warning) once the share is spent.
    fn run_soc_feeds(&mut self, cache: &mut dyn Cache, deadline: Deadline, rest: &mut RestRun, report: &mut Report) {
        let sent: u64 = self.huntress.stats.requests.values().sum();
        let pacing = Pacing::Until { requests: sent + soc_share(self.huntress.rate_limit()) };
        for index in self.slot_feeds(Slot::Soc) {
            let feature = self.feeds[index].feature();
            let (health, pages) = self.run_feed(index, cache, deadline, pacing, report);
            if health.is_none() {
                report.log(Level::Warning, format!("{} deferred to a later run: the SOC share of the rate budget was spent (or the run deadline reached)", feature.tag()));
            }
            self.record(feature, health, pages, rest);
        }
    }

    /// The spare slot, then a due organization refresh, each only when the
    /// budget has room for it.
    fn run_spare_feeds(&mut self, cache: &mut dyn Cache, deadline: Deadline, rest: &mut RestRun, report: &mut Report) {
        for index in self.slot_feeds(Slot::Spare) {
            let feed = &self.feeds[index];
            let feature = feed.feature();
            let need = self.estimate(feature, feed.first_estimate(self.orgs.directory())).min(feed.max_pages());
            if let Some(pacing) = self.pacing_for(feature, need, deadline, rest, report) {
                let (health, pages) = self.run_feed(index, cache, deadline, pacing, report);
                self.record(feature, health, pages, rest);
            }
        }
        if self.wants_orgs() && !rest.orgs_refreshed && self.orgs.due(Utc::now()) {
            if let Some(pacing) = self.pacing_for(Feature::Orgs, self.orgs.refresh_requests(), deadline, rest, report) {
                self.refresh_orgs(cache, deadline, pacing, rest);
            }
        }
    }

    fn slot_feeds(&self, slot: Slot) -> Vec<usize> {
        (0..self.feeds.len()).filter(|index| self.feeds[*index].slot() == slot).collect()
    }

    /// Runs one REST feed; a panic in it fails that feed alone, as an
    /// `internal` error, and the run goes on with the others.
    fn run_feed(&mut self, index: usize, cache: &mut dyn Cache, deadline: Deadline, pacing: Pacing, report: &mut Report) -> (Option<Health>, u32) {
        let feed = &mut self.feeds[index];
        let feature = feed.feature();
        let mut source = ClientSource { client: &mut self.huntress, feature, deadline, pacing };
        let ctx = FeedContext {
            sink: &mut self.intake,
            rules: &self.config.processing_rules,
            cache,
            deadline,
            directory: self.orgs.directory(),
            scope: &self.scope,
            base_tags: &self.config.tags,
            max_pages: feed.max_pages(),
            initial_lookback: self.config.siem.initial_lookback,
            now: Utc::now(),
        };
        boundary::catch(|| {
            boundary::panic_if_injected(PanicPoint::Feed);
            feed.run(&mut source, ctx, report)
        })
        .unwrap_or_else(|message| {
            let error = HuntressError::Internal(message);
            (Some(Health::failed(feature, Status::Critical, error.to_string(), &error)), 0)
        })
    }

    fn estimate(&self, feature: Feature, default: u32) -> u32 {
        self.last_pages.get(&feature).copied().unwrap_or(default).max(1)
    }

    /// The budget rule for a feed of the spare slot; `None` (and a log line) when deferred.
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
    fn report_rest(&self, rest: &RestRun, errors: &mut ErrorCounts, report: &mut Report) {
        let tags = &self.config.tags;
        if let Some(directory) = self.orgs.directory().filter(|_| self.wants_orgs()) {
            let in_scope = directory.orgs().iter().filter_map(|org| id_text(&org.id)).filter(|id| self.scope.admits_org_id(id, Some(directory))).count();
            report.gauge(metric::ORGANIZATIONS, in_scope as f64, tags);
        }
        for health in &rest.healths {
            for kind in &health.errors {
                *errors.entry((*kind, None)).or_default() += 1;
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

/// The parts of an internal-error report every caller shares: the `internal`
/// error count, the Agent log line, and the message the check raises.
pub fn report_internal_error(base_tags: &[String], message: String, report: &mut Report) {
    report.count(metric::ERRORS, 1.0, &with_tag(base_tags, format!("error_type:{}", ErrorKind::Internal.tag())));
    report.log(Level::Error, message.clone());
    report.fatal = Some(message);
}

