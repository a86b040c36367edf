//! Collects one SIEM query: plans windows, pages through `POST /v1/siem/query`
//! one page at a time, forwards the logs of consecutive pages together (up to
//! one intake batch), and saves the state after each batch the intake accepted.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::base::cache::Cache;
use crate::feeds::siem::page::{malformed, parse_page, MAX_PAGE_ROWS, QUERY_PATH};
use crate::feeds::siem::state::{event_second, Cursor, IdHasher, QueryState};
use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::base::http::{backoff, Deadline};
use crate::huntress::client::{Feature, HuntressClient};
use crate::datadog::intake::{IntakeClient, LogBuffer, MAX_BATCH_BYTES, MAX_BATCH_LOGS};
use crate::feeds::orgs::{row_org_id, row_org_name, Enricher, OrgDirectory};
use crate::feeds::scope::{OrgRef, Scope};
use crate::datadog::processing::{ProcessingRules, Verdict};
use crate::json::row::Row;
use crate::datadog::transform::{self, LogTemplate, Written};

/// A window that times out or exhausts Huntress's memory is halved, down to this.
const MIN_WINDOW_SECONDS: i64 = 10;
/// Expired page tokens restart a range at most this often per run.
const MAX_RESTARTS_PER_RUN: u32 = 3;
/// A 200 whose body has the wrong shape is fetched again this often.
const MAX_SHAPE_RETRIES: u32 = 2;
/// The share of a run's page capacity a window is planned to fill: densities
/// vary within a window, and a window that does not fit costs a replay.
const PLANNED_FILL: f64 = 0.75;
/// The share a range is cut to after a pass over it could not finish: that pass
/// saw only a lower bound of its rows.
const REPLANNED_FILL: f64 = 0.5;
/// The shortest range a query is narrowed to: ECS timestamps carry milliseconds.
const MIN_RANGE_MS: i64 = 1;
/// A window read whole in its first page makes the next one up to this many
/// times longer (past `max_window_seconds`): quiet time costs a few requests.
const EMPTY_GROWTH: i64 = 16;
/// A range refused twice is given up only up to the oldest start the API still
/// serves, searched in at most this many requests...
const BOUNDARY_STEPS: u32 = 12;
/// ... down to this many seconds.
const BOUNDARY_PRECISION_SECONDS: i64 = 60;
/// Searches for that start per run: one more when the first start found has
/// aged out of the API's reach before its range was read.
const BOUNDARY_SEARCHES_PER_RUN: u32 = 2;

/// The next range to query: from the checkpoint to `now - delay`, at most
/// `max_window` long, on whole seconds. `None` when caught up.
pub fn next_window(
    checkpoint: DateTime<Utc>,
    now: DateTime<Utc>,
    delay: ChronoDuration,
    max_window: ChronoDuration,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let limit = whole_second(now - delay);
    if limit <= checkpoint {
        return None;
    }
    Some((checkpoint, checkpoint.checked_add_signed(max_window).map_or(limit, |end| end.min(limit))))
}

/// The window length that `capacity` pages can read at `events_per_second`
/// (unknown: 0), on whole milliseconds, between one millisecond and `max_window`.
pub fn planned_length(capacity: u64, events_per_second: f64, max_window: ChronoDuration) -> ChronoDuration {
    length_for(capacity, PLANNED_FILL, events_per_second, max_window)
}

fn length_for(capacity: u64, fill: f64, events_per_second: f64, max_window: ChronoDuration) -> ChronoDuration {
    if events_per_second <= 0.0 {
        return max_window;
    }
    let rows = capacity as f64 * MAX_PAGE_ROWS as f64 * fill;
    let longest = max_window.num_milliseconds().max(MIN_RANGE_MS) as f64;
    let ms = (rows / events_per_second * 1000.0).floor().clamp(MIN_RANGE_MS as f64, longest);
    ChronoDuration::milliseconds(ms as i64).min(max_window)
}

/// The length of the window after one of `last` length read whole in its first
/// page with `rows` rows: `EMPTY_GROWTH` times longer when it was empty, less
/// when it had rows (at its density, the next one fills `PLANNED_FILL` of
/// `capacity` pages at most), and shorter than a window the API could not
/// answer in this run.
pub fn grown_length(last: ChronoDuration, rows: u64, capacity: u64, too_long: Option<ChronoDuration>) -> ChronoDuration {
    let fits = (capacity as f64 * MAX_PAGE_ROWS as f64 * PLANNED_FILL / rows.max(1) as f64).floor() as i64;
    let factor = if rows == 0 { EMPTY_GROWTH } else { fits.clamp(1, EMPTY_GROWTH) };
    let grown = ChronoDuration::try_milliseconds(last.num_milliseconds().saturating_mul(factor)).unwrap_or(ChronoDuration::MAX);
    match too_long {
        Some(failed) => grown.min(failed / 2),
        None => grown,
    }
}

/// What a pass over a range that could not finish showed: the density of its
/// rows where they lie (`rows_span`), and the earliest of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassSeen {
    pub events_per_second: f64,
    pub first_row: Option<DateTime<Utc>>,
    /// The range was cut after an earlier pass and still could not be read:
    /// its rows crowd somewhere the estimate cannot see, so it is cut harder.
    pub failed_again: bool,
}

impl PassSeen {
    pub fn of(cursor: &Cursor, learned_events_per_second: f64) -> PassSeen {
        let spread = cursor.rows_span.map(|(first, last)| (last - first).num_milliseconds().max(MIN_RANGE_MS) as f64 / 1000.0);
        let seconds = spread.unwrap_or(cursor.length_seconds()).min(cursor.length_seconds());
        let here = if seconds > 0.0 { cursor.rows as f64 / seconds } else { 0.0 };
        PassSeen {
            events_per_second: here.max(learned_events_per_second),
            first_row: cursor.rows_span.map(|(first, _)| first),
            failed_again: cursor.restarts > 0,
        }
    }
}

/// Ends the cursor's range earlier when, at the density the failed pass saw, it
/// holds more rows than half of `capacity` pages read: a pass over a range must
/// fit in one run, since its page tokens may not live until the next. Where
/// those rows start later in the range, the time before them is read on its
/// own first. Ranges end on whole milliseconds, one at least. False when it
/// already fits.
pub fn fit(cursor: &mut Cursor, capacity: u64, seen: PassSeen) -> bool {
    let length = cursor.range_end - cursor.range_start;
    let mut planned = length_for(capacity, REPLANNED_FILL, seen.events_per_second, length);
    if seen.failed_again {
        planned = planned.min(length / EMPTY_GROWTH as i32);
    }
    if planned >= length {
        return false;
    }
    let mut end = cursor.range_start + planned.max(ChronoDuration::milliseconds(MIN_RANGE_MS));
    if let Some(first) = seen.first_row.map(whole_ms).filter(|first| *first > end && *first < cursor.range_end) {
        end = first;
    }
    // At least a millisecond after the start: cut to whole milliseconds, never empty.
    let end = whole_ms(end);
    if end >= cursor.range_end {
        return false;
    }
    cursor.range_end = end;
    true
}

/// True when the range is as short as a range can be.
fn is_finest(cursor: &Cursor) -> bool {
    (cursor.range_end - cursor.range_start).num_milliseconds() <= MIN_RANGE_MS
}

/// Halves the cursor's range, down to `MIN_WINDOW_SECONDS`; false when it cannot.
fn shrink(cursor: &mut Cursor) -> bool {
    let length = cursor.range_end - cursor.range_start;
    if length.num_seconds() < 2 * MIN_WINDOW_SECONDS {
        return false;
    }
    cursor.range_end = whole_second(cursor.range_start + length / 2);
    true
}

fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

fn whole_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// A row's `@timestamp`, when it has one the check can read.
fn row_time(row: &Row) -> Option<DateTime<Utc>> {
    let raw = row.get("@timestamp")?;
    let value = serde_json::from_str::<Value>(raw).ok()?;
    transform::parse_timestamp_ms(&value).and_then(DateTime::from_timestamp_millis)
}

pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// What the late checks of a query did in a run.
#[derive(Debug, Default)]
pub struct LateOutcome {
    pub checked: bool,
    /// Why they did not run: the query has a backlog, or no budget is left.
    pub skipped: Option<&'static str>,
    pub count_requests: u64,
    pub read_requests: u64,
    pub buckets_grown: u64,
    /// Events found late and forwarded.
    pub recovered: u64,
    /// Tiers were read whole: the API refuses counts (since when).
    pub reading_whole: Option<DateTime<Utc>>,
    /// The API refused counts in this run, with its answer.
    pub refused_now: Option<String>,
    /// How far back late events are found, in seconds.
    pub reach_seconds: f64,
    /// An error that stopped the checks (counted; the next run checks again).
    pub error: Option<HuntressError>,
}

/// What one query did in one run.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    pub collected: u64,
    pub forwarded: u64,
    pub deduplicated: u64,
    pub truncated: u64,
    pub stale: u64,
    pub rejected: u64,
    pub pages: u64,
    pub lacks_keep: bool,
    pub stopped_by_deadline: bool,
    pub token_restarts: u64,
    pub window_shrinks: u64,
    /// What was wrong with the saved state and was repaired before the run.
    pub repairs: Vec<String>,
    /// Windows stopped because the API handed out a page token twice.
    pub repeated_tokens: u64,
    /// This run's budget (pages, rate limit, time) could not read another window.
    pub stopped_by_budget: bool,
    /// A refused first page was asked again; cleared by the next page served.
    pub refusal_retried: bool,
    /// Searches this run for the oldest range start the API still serves.
    pub boundary_searches: u32,
    /// Ranges given up, by reason (`retention`, `dense`): counted, and warned about in `repairs`.
    pub given_up: BTreeMap<&'static str, u64>,
    /// The length and rows of the last window when its first page held it
    /// whole: the next one grows.
    pub light_window: Option<(ChronoDuration, u64)>,
    /// The shortest window the API could not answer in time in this run.
    pub too_long: Option<ChronoDuration>,
    /// Requests sent for this query, and when the first went: the pace so far.
    pub requests: u64,
    pub started: Option<Instant>,
    pub error: Option<HuntressError>,
    /// Malformed pages in a row, for the bounded refetch.
    pub malformed_streak: u32,
    /// Non-fatal errors to count, by kind.
    pub recovered: BTreeMap<ErrorKind, u64>,
    /// The limit that ended this run's reading before the query caught up.
    pub limit: Option<Limit>,
    /// Seconds from each forwarded event's `@timestamp` to its acceptance by
    /// the intake (the first `MAX_AGES`).
    pub ages: Vec<u32>,
    /// What the late-arrival checks did.
    pub late: LateOutcome,
    /// Logs dropped by a processing rule, by rule name: handled, never sent.
    pub excluded: BTreeMap<String, u64>,
}

/// Delivery ages kept per query and run, for the percentiles.
const MAX_AGES: usize = 100_000;

/// What ends a query's reading in a run before it has caught up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_pages_per_run`.
    Pages,
    /// The account's requests per minute, shared with the other feeds.
    RateBudget,
    /// `run_deadline_seconds`.
    Deadline,
}

impl Limit {
    pub fn describe(self) -> &'static str {
        match self {
            Limit::Pages => "max_pages_per_run",
            Limit::RateBudget => "the Huntress rate budget",
            Limit::Deadline => "the run deadline",
        }
    }

    /// What a user can change about it.
    pub fn advice(self) -> &'static str {
        match self {
            Limit::Pages => "raise max_pages_per_run",
            Limit::RateBudget => "fewer queries or instances on this account, or feeds turned off, leave more of its 60 requests a minute",
            Limit::Deadline => "raise run_deadline_seconds (or min_collection_interval)",
        }
    }
}

impl QueryOutcome {
    pub fn record_age(&mut self, accepted_at: u32, second: u32) {
        if second > 0 && self.ages.len() < MAX_AGES {
            self.ages.push(accepted_at.saturating_sub(second));
        }
    }
}

/// Logs of fetched pages not yet sent: they go to the intake together, up to
/// a full batch, instead of one request per page.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) logs: LogBuffer,
    /// Their ids and event seconds, so that a row repeated on a later page is
    /// not sent twice.
    pub(super) ids: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    pages: Vec<PageMark>,
}

/// Where a page's logs end in `Pending::logs`, and the cursor after that page.
struct PageMark {
    end: usize,
    cursor: Cursor,
}

impl Pending {
    /// The cursor to fetch the next page with, while pages are pending.
    fn cursor(&self) -> Option<&Cursor> {
        self.pages.last().map(|mark| &mark.cursor)
    }

    /// Another full page might not fit in one intake batch.
    pub(super) fn is_full(&self) -> bool {
        self.logs.len() + MAX_PAGE_ROWS > MAX_BATCH_LOGS || self.logs.bytes_len() >= MAX_BATCH_BYTES / 2
    }

    pub(super) fn clear(&mut self) {
        self.logs.clear();
        self.ids.clear();
        self.pages.clear();
    }
}

/// Everything a query run needs besides its own state.
pub struct QueryRun<'a> {
    pub huntress: &'a mut HuntressClient,
    pub intake: &'a mut IntakeClient,
    pub cache: &'a mut dyn Cache,
    pub deadline: Deadline,
    pub now: DateTime<Utc>,
    pub esql: &'a str,
    pub cache_key: &'a str,
    /// The keys of the id chunks, by chunk number.
    pub chunk_keys: &'a [String],
    pub template: &'a LogTemplate,
    /// Applied to each log as it is prepared, before it is buffered.
    pub rules: &'a ProcessingRules,
    pub enricher: Enricher<'a>,
    /// Rows of organizations outside it are dropped here, not in the ES|QL.
    pub scope: &'a Scope,
    pub directory: Option<&'a OrgDirectory>,
    pub max_pages: u32,
    pub delay: ChronoDuration,
    pub max_window: ChronoDuration,
    /// `initial_lookback_seconds`: a range the API refuses twice that starts
    /// before this may lie beyond its retention (see `give_up_beyond_retention`).
    pub lookback: ChronoDuration,
    /// Reading again for late arrivals: rows already handled are expected, not counted as duplicates.
    pub rereading: bool,
}

enum Step {
    Continue,
    Stop,
}

impl QueryRun<'_> {
    pub fn collect(&mut self, state: &mut QueryState) -> QueryOutcome {
        let mut outcome = QueryOutcome { started: Some(Instant::now()), ..QueryOutcome::default() };
        let refused_for_budget = self.huntress.stats.out_of_budget;
        let mut pending = Pending::default();
        while outcome.error.is_none() {
            if outcome.pages >= u64::from(self.max_pages) {
                outcome.limit = Some(Limit::Pages);
                break;
            }
            if self.deadline.expired() {
                outcome.stopped_by_deadline = true;
                break;
            }
            if state.cursor.is_none() {
                let (capacity, limit) = self.limited_capacity(state, &outcome);
                if capacity == 0 {
                    outcome.stopped_by_budget = true;
                    outcome.limit = Some(limit);
                    break;
                }
                let mut length = planned_length(capacity, state.learned.events_per_second, self.max_window);
                if let Some((last, rows)) = outcome.light_window {
                    length = length.max(grown_length(last, rows, capacity, outcome.too_long));
                }
                match next_window(state.checkpoint, self.now, self.delay, length) {
                    Some((range_start, range_end)) => state.cursor = Some(Cursor::new(range_start, range_end)),
                    None => break,
                }
            }
            match self.step(state, &mut pending, &mut outcome) {
                Step::Continue => {}
                Step::Stop => break,
            }
        }
        self.flush(state, &mut pending, &mut outcome);
        // A request that waited for a rate-limit slot past the deadline was held
        // back by the budget, not by the time the run had.
        if outcome.stopped_by_deadline && outcome.limit.is_none() && self.huntress.stats.out_of_budget > refused_for_budget {
            outcome.limit = Some(Limit::RateBudget);
        }
        outcome
    }

    /// Pages this query can still read in this run, in one pass: within the
    /// page cap, within the rate budget before the deadline (with no pause for a
    /// slot that a page token is known not to outlive), and within the time left
    /// at the pace of this run's requests so far.
    fn page_capacity(&self, state: &QueryState, outcome: &QueryOutcome) -> u64 {
        self.limited_capacity(state, outcome).0
    }

    /// `page_capacity`, and the limit that sets it.
    fn limited_capacity(&self, state: &QueryState, outcome: &QueryOutcome) -> (u64, Limit) {
        let by_cap = u64::from(self.max_pages).saturating_sub(outcome.pages);
        let max_gap = state.learned.token_expired_after.map(|seconds| Duration::from_secs_f64(seconds / 2.0));
        let by_budget = u64::from(self.huntress.slots_before(self.deadline.0, max_gap));
        let by_time = match outcome.started {
            Some(started) if outcome.requests > 0 => {
                let pace = started.elapsed().as_secs_f64() / outcome.requests as f64;
                (self.deadline.remaining().as_secs_f64() / pace.max(1e-3)) as u64
            }
            _ => u64::MAX,
        };
        [(by_cap, Limit::Pages), (by_budget, Limit::RateBudget), (by_time, Limit::Deadline)]
            .into_iter()
            .min_by_key(|(pages, _)| *pages)
            .unwrap_or((0, Limit::Pages))
    }

    fn step(&mut self, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) -> Step {
        let Some(cursor) = pending.cursor().or(state.cursor.as_ref()).cloned() else {
            return Step::Stop;
        };
        outcome.requests += 1;
        let body = match self.fetch(&cursor) {
            Ok(body) => body,
            Err(error) => {
                // Deliver what is ready first: recovery works on the committed cursor.
                if !self.flush(state, pending, outcome) {
                    return Step::Stop;
                }
                return self.recover(state, outcome, error);
            }
        };
        let page = match parse_page(&body) {
            Ok(page) => page,
            Err(error) => return self.refetch_malformed(outcome, error),
        };
        outcome.malformed_streak = 0;
        outcome.refusal_retried = false;
        outcome.pages += 1;
        outcome.collected += page.rows.len() as u64;
        if page.rows.first().is_some_and(transform::lacks_keep) {
            outcome.lacks_keep = true;
        }
        self.token_survived(&cursor, state);
        let rows = page.rows.len() as u64;
        let times: Vec<DateTime<Utc>> = page.rows.iter().filter_map(row_time).collect();
        if !self.buffer_page(page.rows, state, pending, outcome) {
            return Step::Stop;
        }
        let length = cursor.range_end - cursor.range_start;
        let first_page = cursor.pages_done == 0;
        let mut after = Cursor {
            page_token: page.next_page_token,
            pages_done: cursor.pages_done.saturating_add(1),
            rows: cursor.rows.saturating_add(rows),
            token_at: Some(Utc::now()),
            ..cursor
        };
        for at in times {
            after.observe(at);
        }
        let repeated = after.page_token.clone().is_some_and(|token| !after.follow(&token));
        let closes_window = after.page_token.is_none();
        if closes_window {
            outcome.light_window = first_page.then_some((length, rows));
        }
        pending.pages.push(PageMark { end: pending.logs.len(), cursor: after });
        if repeated {
            return self.stop_on_repeated_token(state, pending, outcome);
        }
        if (closes_window || pending.is_full()) && !self.flush(state, pending, outcome) {
            return Step::Stop;
        }
        Step::Continue
    }

    /// Sends the pending logs, remembers the ids the intake accepted, and moves
    /// the cursor past the last page whose logs were all accepted. False when
    /// the intake failed: the pages after that one are fetched again later, and
    /// the remembered ids keep their accepted logs from going out twice.
    fn flush(&mut self, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) -> bool {
        if pending.pages.is_empty() && pending.logs.len() == 0 {
            return true;
        }
        let (accepted_prefix, error) = self.deliver(state, pending, outcome);
        if let Some(mark) = pending.pages.iter().rev().find(|mark| mark.end <= accepted_prefix) {
            state.cursor = Some(mark.cursor.clone());
            if mark.cursor.page_token.is_none() {
                state.complete_window();
            } else {
                state.learned.at_least(mark.cursor.rows, mark.cursor.length_seconds());
            }
        }
        pending.clear();
        self.save(state, outcome);
        self.delivered(error, outcome)
    }

    /// Sends the pending logs and remembers the ids the intake accepted: how
    /// many logs it accepted, in order, and why it stopped there.
    pub(super) fn deliver(&mut self, state: &mut QueryState, pending: &Pending, outcome: &mut QueryOutcome) -> (usize, Option<HuntressError>) {
        let refused_before = self.intake.stats.rejected;
        let delivery = self.intake.send(&pending.logs, &self.deadline);
        let accepted_at = event_second(Utc::now());
        for id in pending.logs.ids().take(delivery.accepted_prefix) {
            let second = pending.ids.get(&id).copied().unwrap_or(0);
            state.remember(id, second);
            outcome.record_age(accepted_at, second);
        }
        // Logs the intake refused even alone are done with, but not forwarded.
        let refused = self.intake.stats.rejected - refused_before;
        outcome.rejected += refused;
        outcome.forwarded += (delivery.accepted_prefix as u64).saturating_sub(refused);
        (delivery.accepted_prefix, delivery.error)
    }

    /// After a delivery: false when the intake failed (the error is kept).
    pub(super) fn delivered(&self, error: Option<HuntressError>, outcome: &mut QueryOutcome) -> bool {
        match error {
            Some(error) if error.kind() == ErrorKind::Deadline => {
                outcome.stopped_by_deadline = true;
                false
            }
            Some(error) => {
                outcome.error.get_or_insert(error);
                false
            }
            None => true,
        }
    }

    /// A page that is not JSON, or not shaped as promised, is fetched again
    /// (the cursor is unchanged), a bounded number of times.
    fn refetch_malformed(&mut self, outcome: &mut QueryOutcome, error: HuntressError) -> Step {
        if outcome.malformed_streak < MAX_SHAPE_RETRIES {
            outcome.malformed_streak += 1;
            *outcome.recovered.entry(ErrorKind::MalformedResponse).or_default() += 1;
            if self.deadline.sleep(backoff(outcome.malformed_streak - 1)) {
                return Step::Continue;
            }
        }
        outcome.error = Some(error);
        Step::Stop
    }

    fn fetch(&mut self, cursor: &Cursor) -> Result<bytes::Bytes> {
        let esql = self.esql;
        self.fetch_with(esql, cursor)
    }

    /// A page of `esql` over the cursor's range.
    pub(super) fn fetch_with(&mut self, esql: &str, cursor: &Cursor) -> Result<bytes::Bytes> {
        let mut body = json!({
            "esql": esql,
            "range_start": format_time(cursor.range_start),
            "range_end": format_time(cursor.range_end),
        });
        if let Some(token) = &cursor.page_token {
            body["page_token"] = Value::String(token.clone());
        }
        self.huntress.post_for_bytes(Feature::Siem, QUERY_PATH, &body, &self.deadline)
    }

    /// The API handed out a page token it had handed out before in this pass:
    /// following it would loop. What was read is delivered; then the window is
    /// halved and read again from its first page by the next run (the ids drop what
    /// was sent), in case the loop belongs to this range. A window too short to
    /// halve is ended at the last new page: its rows past the loop cannot be read.
    fn stop_on_repeated_token(&mut self, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) -> Step {
        outcome.repeated_tokens += 1;
        if !self.flush(state, pending, outcome) {
            return Step::Stop;
        }
        let mut ended = false;
        if let Some(cursor) = state.cursor.as_mut() {
            if shrink(cursor) {
                cursor.restart();
            } else {
                cursor.page_token = None;
                ended = true;
            }
        }
        if ended {
            state.complete_window();
        }
        self.save(state, outcome);
        let what = if ended { "the window was ended at the last new page" } else { "the next run reads the first half of the window again" };
        outcome.error.get_or_insert(malformed(format!("the API handed out the same page token twice within one window; stopped paging to avoid a loop, and {what}")));
        Step::Stop
    }

    /// A token that worked after a pause longer than the age at which one was
    /// found expired: that expiry was not about age.
    fn token_survived(&self, cursor: &Cursor, state: &mut QueryState) {
        let (Some(issued), Some(bound)) = (cursor.token_at, state.learned.token_expired_after) else { return };
        if cursor.page_token.is_some() && (Utc::now() - issued).num_milliseconds() as f64 / 1000.0 > bound {
            state.learned.token_expired_after = None;
        }
    }

    /// Errors a query can work around within the same run; others stop it.
    fn recover(&mut self, state: &mut QueryState, outcome: &mut QueryOutcome, error: HuntressError) -> Step {
        let first_page = state.cursor.as_ref().is_some_and(|c| c.page_token.is_none());
        if error.kind() == ErrorKind::QueryInvalid && first_page {
            // One refusal proves nothing: the same request is sent again once.
            if !outcome.refusal_retried {
                outcome.refusal_retried = true;
                *outcome.recovered.entry(ErrorKind::QueryInvalid).or_default() += 1;
                if self.deadline.sleep(backoff(0)) {
                    return Step::Continue;
                }
            } else if let Some(step) = self.give_up_beyond_retention(state, outcome) {
                return step;
            }
        }
        let resumable = state.cursor.as_ref().is_some_and(|c| c.page_token.is_some());
        if error.kind() == ErrorKind::QueryInvalid && resumable && outcome.token_restarts < u64::from(MAX_RESTARTS_PER_RUN) {
            self.restart_window(state, outcome);
            return Step::Continue;
        }
        let Some(cursor) = state.cursor.as_mut() else {
            outcome.error = Some(error);
            return Step::Stop;
        };
        // No later window of this run grows as long as one the API could not answer.
        let failed = cursor.range_end - cursor.range_start;
        match error.kind() {
            ErrorKind::QueryTooLarge | ErrorKind::QueryTimeout if cursor.page_token.is_none() && shrink(cursor) => {
                outcome.too_long = Some(outcome.too_long.map_or(failed, |known| known.min(failed)));
                outcome.window_shrinks += 1;
                *outcome.recovered.entry(error.kind()).or_default() += 1;
                Step::Continue
            }
            ErrorKind::Deadline => {
                outcome.stopped_by_deadline = true;
                Step::Stop
            }
            _ => {
                outcome.error = Some(error);
                Step::Stop
            }
        }
    }

    /// A first page refused twice for a range older than the look-back may lie
    /// beyond what the API can still read (its retention), and would be refused
    /// in every run. Proof is sought before anything is given up: a range from
    /// now minus the look-back must be served (else the query itself is refused,
    /// and the error stands with the saved position), then the oldest start the
    /// API still serves is searched between the two. Only the time before it is
    /// given up: counted, and a WARNING. `None` when this does not apply, or when
    /// the search could not finish (the position stays).
    fn give_up_beyond_retention(&mut self, state: &mut QueryState, outcome: &mut QueryOutcome) -> Option<Step> {
        let recent = whole_second(self.now - self.lookback);
        let refused = state.cursor.as_ref().map(|c| c.range_start).filter(|start| *start < recent)?;
        if outcome.boundary_searches >= BOUNDARY_SEARCHES_PER_RUN {
            return None;
        }
        outcome.boundary_searches += 1;
        let (mut old, mut served) = (refused, recent);
        match self.serves(outcome, served) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(error) => return Some(self.stop_with(outcome, error)),
        }
        for _ in 0..BOUNDARY_STEPS {
            if (served - old).num_seconds() <= BOUNDARY_PRECISION_SECONDS {
                break;
            }
            let middle = whole_second(old + (served - old) / 2);
            match self.serves(outcome, middle) {
                Ok(true) => served = middle,
                Ok(false) => old = middle,
                Err(error) => return Some(self.stop_with(outcome, error)),
            }
        }
        outcome.repairs.push(format!(
            "the API refused the range from {} twice and serves the range from {}: the events between are beyond its reach and are given up; collection resumes from {}",
            format_time(refused),
            format_time(served),
            format_time(served)
        ));
        *outcome.given_up.entry("retention").or_default() += 1;
        state.cursor = None;
        state.checkpoint = served;
        outcome.refusal_retried = false;
        self.save(state, outcome);
        Some(Step::Continue)
    }

    /// Whether the API serves a first page from `start` (one second of range):
    /// `Ok(false)` when it refuses it, an error when it does not answer.
    fn serves(&mut self, outcome: &mut QueryOutcome, start: DateTime<Utc>) -> Result<bool> {
        outcome.requests += 1;
        match self.fetch(&Cursor::new(start, start + ChronoDuration::seconds(1))) {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == ErrorKind::QueryInvalid => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn stop_with(&mut self, outcome: &mut QueryOutcome, error: HuntressError) -> Step {
        if error.kind() == ErrorKind::Deadline {
            outcome.stopped_by_deadline = true;
        } else {
            outcome.error.get_or_insert(error);
        }
        Step::Stop
    }

    /// The page token expired (or was refused): the range is read again from its
    /// first page, and the ids drop what was already sent. What the pass so far
    /// showed (rows, the token's age) is learned first, and the range ends early
    /// when this run cannot read it whole: a pass that cannot finish within one
    /// run would start over in every run.
    fn restart_window(&mut self, state: &mut QueryState, outcome: &mut QueryOutcome) {
        let Some(cursor) = state.cursor.as_mut() else { return };
        if let Some(issued) = cursor.token_at {
            state.learned.token_expired_at_age((Utc::now() - issued).num_milliseconds() as f64 / 1000.0);
        }
        outcome.token_restarts += 1;
        *outcome.recovered.entry(ErrorKind::TokenExpired).or_default() += 1;
        if is_finest(cursor) && cursor.rows > 0 {
            self.give_up_dense_range(state, outcome);
            return;
        }
        state.learned.at_least(cursor.rows, cursor.length_seconds());
        let seen = PassSeen::of(cursor, state.learned.events_per_second);
        cursor.restart();
        let capacity = self.page_capacity(state, outcome);
        if let Some(cursor) = state.cursor.as_mut() {
            if fit(cursor, capacity, seen) {
                outcome.window_shrinks += 1;
            }
        }
    }

    /// A range as short as a range can be holds more rows than one pass can
    /// read before its page tokens expire: what was read is kept, the rest is
    /// given up (counted, and a WARNING), and the query moves past it.
    fn give_up_dense_range(&mut self, state: &mut QueryState, outcome: &mut QueryOutcome) {
        let Some(cursor) = state.cursor.as_mut() else { return };
        outcome.repairs.push(format!(
            "more events share the millisecond from {} than one run can read before the API's page tokens expire: {} of them were read, the rest of that millisecond is given up",
            format_time(cursor.range_start),
            cursor.rows
        ));
        *outcome.given_up.entry("dense").or_default() += 1;
        // Past it, without learning its density: that millisecond is not the query's pace.
        state.checkpoint = state.checkpoint.max(cursor.range_end);
        state.cursor = None;
        self.save(state, outcome);
    }

    /// Buffers a page's logs, sending them whenever they fill an intake batch,
    /// so that a page of large logs (or of logs a mask made larger) is never
    /// held whole: false when a send failed. What is sent before the page's end
    /// leaves the cursor before the page: the ids drop it if the page is read again.
    pub(super) fn buffer_page(&mut self, rows: Vec<Row>, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) -> bool {
        let mut rows = rows.into_iter();
        while self.buffer_rows(&mut rows, state, pending, outcome) {
            if !self.flush(state, pending, outcome) {
                return false;
            }
        }
        true
    }

    /// Buffers the rows' logs until they fill an intake batch: true when rows
    /// are left, to buffer after the pending logs are sent.
    fn buffer_rows(&mut self, rows: &mut std::vec::IntoIter<Row>, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) -> bool {
        let now_ms = transform::now_ms();
        while pending.logs.bytes_len() < MAX_BATCH_BYTES {
            let Some(row) = rows.next() else { return false };
            let id = transform::event_id(&row);
            let second = row_time(&row).map(event_second).unwrap_or(0);
            if state.seen.contains(id) || pending.ids.contains_key(&id) {
                if state.seen.second_of(id) == Some(0) {
                    state.remember(id, second);
                }
                outcome.deduplicated += u64::from(!self.rereading);
                continue;
            }
            if !self.in_scope(&row) {
                state.remember(id, second);
                continue;
            }
            let enrichment = self.enricher.enrich(&row);
            let mut written = Written::SkippedStale;
            let mut excluded_by = None;
            let mut cut_by_rules = false;
            pending.logs.push_with(id, |out| {
                let start = out.len();
                written = transform::write_log(&row, self.template, enrichment, now_ms, out);
                if !matches!(written, Written::Log { .. }) {
                    return false;
                }
                match self.rules.apply(out, start) {
                    Verdict::Excluded(rule) => {
                        excluded_by = Some(rule);
                        return false;
                    }
                    Verdict::Cut => cut_by_rules = true,
                    Verdict::Keep => {}
                }
                true
            });
            if let Some(rule) = excluded_by {
                // Handled: remembered like a sent log, so a replayed page drops it again without a send.
                *outcome.excluded.entry(rule.to_string()).or_default() += 1;
                state.remember(id, second);
                continue;
            }
            match written {
                Written::Log { stale, truncated } => {
                    outcome.stale += u64::from(stale);
                    outcome.truncated += u64::from(truncated || cut_by_rules);
                    pending.ids.insert(id, second);
                }
                Written::SkippedStale => {
                    outcome.stale += 1;
                    state.remember(id, second);
                }
            }
        }
        rows.len() > 0
    }

    fn in_scope(&self, row: &Row) -> bool {
        if !self.scope.is_active() {
            return true;
        }
        let org = OrgRef::new(row_org_id(row).map(|(_, id)| id), row_org_name(row));
        self.scope.admits(Feature::Siem.tag(), &org, self.directory)
    }

    /// Ids first, position second: see `checkpoint`.
    pub(super) fn save(&mut self, state: &mut QueryState, outcome: &mut QueryOutcome) {
        let written = self.cache.write(&self.chunk_keys[state.chunk], &state.encode_open_chunk()).and_then(|_| {
            state.rotate_full_chunk(self.chunk_keys.len());
            self.cache.write(self.cache_key, &state.encode_position())
        });
        if let Err(message) = written {
            let error = HuntressError::Cache(format!("cannot save the checkpoint ({message})"));
            outcome.error.get_or_insert(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn windows_end_behind_now_and_are_capped() {
        let delay = ChronoDuration::seconds(300);
        let cap = ChronoDuration::seconds(900);
        let now = Utc.timestamp_opt(10_000, 700_000_000).unwrap();
        assert_eq!(next_window(t(9_500), now, delay, cap), Some((t(9_500), t(9_700))));
        assert_eq!(next_window(t(1_000), now, delay, cap), Some((t(1_000), t(1_900))));
        assert_eq!(next_window(t(9_700), now, delay, cap), None);
        assert_eq!(next_window(t(9_800), now, delay, cap), None);
    }

    #[test]
    fn pages_are_parsed_defensively() {
        let body = json!({"logs": [{"uuid": "a"}], "pagination": {"next_page_token": "x"}}).to_string();
        let page = parse_page(body.as_bytes()).unwrap();
        assert_eq!(page.rows.len(), 1);
        assert_eq!(page.next_page_token.as_deref(), Some("x"));
        let last = parse_page(br#"{"logs": [], "pagination": {}}"#).unwrap();
        assert!(last.next_page_token.is_none());
        let bad = [json!([]), json!({"logs": "oops"}), json!({"logs": [1]}), json!({"logs": [], "pagination": []}), json!({"logs": [], "pagination": {"next_page_token": 5}})];
        for body in bad.iter().map(|b| b.to_string()).chain(["{\"logs\": [".to_string(), "not json".to_string()]) {
            let Err(error) = parse_page(body.as_bytes()) else { panic!("{body} parsed") };
            assert_eq!(error.kind(), ErrorKind::MalformedResponse, "{body}");
        }
    }

    #[test]
    fn lone_surrogates_make_a_malformed_page() {
        let bodies = [
            r#"{"\ud800": 1, "logs": []}"#,
            r#"{"logs": [{"\udc00": 1}]}"#,
            r#"{"logs": [{"uuid": "\ud800"}]}"#,
            r#"{"logs": [], "pagination": {"next_page_token": "\udbff\u0041"}}"#,
        ];
        for body in bodies {
            let Err(error) = parse_page(body.as_bytes()) else { panic!("{body} parsed") };
            assert_eq!(error.kind(), ErrorKind::MalformedResponse, "{body}");
        }
    }

    #[test]
    fn windows_halve_down_to_a_floor() {
        let mut cursor = Cursor::new(t(1_000), t(1_900));
        assert!(shrink(&mut cursor));
        assert_eq!(cursor.range_end, t(1_450));
        let mut small = Cursor { range_end: t(1_015), ..cursor.clone() };
        assert!(!shrink(&mut small));
        assert_eq!(small.range_end, t(1_015));
    }

    fn ms(millis: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(millis).unwrap()
    }

    fn seen(events_per_second: f64) -> PassSeen {
        PassSeen { events_per_second, first_row: None, failed_again: false }
    }

    #[test]
    fn windows_are_planned_to_fit_the_pages_a_run_can_read() {
        let cap = ChronoDuration::seconds(900);
        assert_eq!(planned_length(58, 0.0, cap), cap, "unknown density: the longest window");
        // 14,000 events in 15 minutes, 58 pages left: 58 * 200 * 0.75 rows.
        let density = 14_000.0 / 900.0;
        let planned = planned_length(58, density, cap).num_seconds();
        assert!(planned * 14_000 / 900 <= 58 * 200 && planned > 400, "{planned}");
        assert_eq!(planned_length(0, density, cap), ChronoDuration::milliseconds(1), "never shorter than a millisecond");
        assert_eq!(planned_length(1_000, 0.001, cap), cap);
        // 1,500 events in a second, 5 pages: 750 rows take half a second.
        assert_eq!(planned_length(5, 1_500.0, cap), ChronoDuration::milliseconds(500));
    }

    #[test]
    fn a_window_larger_than_a_run_ends_earlier() {
        let mut cursor = Cursor::new(t(1_000), t(1_900));
        assert!(!fit(&mut cursor, 140, seen(14_000.0 / 900.0)), "70 pages fit in half of 140");
        assert!(fit(&mut cursor, 58, seen(14_000.0 / 900.0)));
        assert!(cursor.range_end < t(1_900) && cursor.range_end > t(1_300), "{:?}", cursor.range_end);
        let mut dense = Cursor::new(t(1_000), t(1_900));
        assert!(fit(&mut dense, 0, seen(1e9)));
        assert_eq!(dense.range_end, ms(1_000_001), "down to one millisecond, never empty");
        let mut finest = Cursor::new(t(1_000), ms(1_000_001));
        assert!(!fit(&mut finest, 0, seen(1e9)), "a millisecond cannot be cut");
        assert!(is_finest(&finest) && !is_finest(&Cursor::new(t(1_000), ms(1_000_002))));
    }

    #[test]
    fn a_dense_second_is_cut_below_a_second() {
        // A pass read 1,000 rows spread over the second from 1,500 and stopped.
        let mut cursor = Cursor { rows: 1_000, pages_done: 5, ..Cursor::new(t(1_500), t(1_501)) };
        cursor.observe(ms(1_500_000));
        cursor.observe(ms(1_500_999));
        let seen = PassSeen::of(&cursor, 0.0);
        assert!((seen.events_per_second - 1_000.0 / 0.999).abs() < 1e-6, "{seen:?}");
        assert!(fit(&mut cursor, 5, seen));
        assert_eq!(cursor.range_end, ms(1_500_499));
        // A start off the millisecond still gets a range that is not empty.
        let mut odd = Cursor::new(Utc.timestamp_opt(1_500, 123_456).unwrap(), t(1_501));
        assert!(fit(&mut odd, 0, PassSeen { events_per_second: 1e9, first_row: None, failed_again: false }));
        assert!(odd.range_end > odd.range_start && odd.range_end == ms(1_500_001));
    }

    #[test]
    fn rows_that_start_late_in_a_range_leave_the_time_before_them_to_a_range_of_its_own() {
        // 1,000 rows read, all within the millisecond at 1,600.5: the 600 s before them come first.
        let mut cursor = Cursor { rows: 1_000, pages_done: 5, ..Cursor::new(t(1_000), t(1_900)) };
        cursor.observe(ms(1_600_500));
        let seen = PassSeen::of(&cursor, 0.0);
        assert_eq!(seen.events_per_second, 1_000_000.0);
        assert!(fit(&mut cursor, 5, seen));
        assert_eq!(cursor.range_end, ms(1_600_500));
        // Spread over the whole range: cut by density alone.
        let mut spread = Cursor { rows: 1_000, pages_done: 5, ..Cursor::new(t(1_000), t(1_900)) };
        spread.observe(t(1_000));
        spread.observe(t(1_899));
        let seen = PassSeen::of(&spread, 0.0);
        assert!(fit(&mut spread, 5, seen));
        assert!(spread.range_end > t(1_400) && spread.range_end < t(1_500), "{:?}", spread.range_end);
        // The same range failing again after a cut: a sixteenth of it, whatever the estimate.
        let mut again = Cursor { rows: 1_000, pages_done: 5, restarts: 1, ..Cursor::new(t(1_000), t(1_800)) };
        let seen = PassSeen::of(&again, 0.0);
        assert!(seen.failed_again);
        assert!(fit(&mut again, 5, seen));
        assert_eq!(again.range_end, t(1_050));
    }

    #[test]
    fn an_empty_window_makes_the_next_one_longer_within_what_timed_out() {
        let empty = ChronoDuration::seconds(900);
        assert_eq!(grown_length(empty, 0, 5, None), ChronoDuration::seconds(14_400));
        assert_eq!(grown_length(empty, 0, 5, Some(ChronoDuration::seconds(3_600))), ChronoDuration::seconds(1_800));
        assert_eq!(grown_length(ChronoDuration::MAX, 0, 5, None), ChronoDuration::MAX, "saturates");
        // 150 rows in 900 s, 5 pages left: 750 rows fit in five times as long.
        assert_eq!(grown_length(empty, 150, 5, None), ChronoDuration::seconds(4_500));
        assert_eq!(grown_length(empty, 199, 1, None), empty, "never shorter");
        // Four requests cross seven empty days from a 900 s window.
        let (mut covered, mut window) = (ChronoDuration::zero(), empty);
        for _ in 0..4 {
            covered += window;
            window = grown_length(window, 0, 5, None);
        }
        assert!(covered >= ChronoDuration::days(7), "{covered:?}");
    }

    #[test]
    fn times_are_iso8601_utc() {
        assert_eq!(format_time(t(1_780_000_000)), "2026-05-28T20:26:40Z");
    }
}
