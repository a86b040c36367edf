//! Collects one SIEM query: plans windows, pages through `POST /v1/siem/query`
//! one page at a time, forwards the logs of consecutive pages together (up to
//! one intake batch), and saves the state after each batch the intake accepted.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::base::cache::Cache;
use crate::feeds::siem::page::{malformed, parse_page, MAX_PAGE_ROWS, QUERY_PATH};
use crate::feeds::siem::state::{Cursor, IdHasher, QueryState};
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
/// (unknown: 0), on whole seconds, between one second and `max_window`.
pub fn planned_length(capacity: u64, events_per_second: f64, max_window: ChronoDuration) -> ChronoDuration {
    length_for(capacity, PLANNED_FILL, events_per_second, max_window)
}

fn length_for(capacity: u64, fill: f64, events_per_second: f64, max_window: ChronoDuration) -> ChronoDuration {
    if events_per_second <= 0.0 {
        return max_window;
    }
    let rows = capacity as f64 * MAX_PAGE_ROWS as f64 * fill;
    let seconds = (rows / events_per_second).floor().clamp(1.0, max_window.num_seconds().max(1) as f64);
    ChronoDuration::seconds(seconds as i64).min(max_window)
}

/// Ends the cursor's range earlier when, at `events_per_second`, it holds
/// more rows than half of `capacity` pages read: a pass over a range must fit in
/// one run, since its page tokens may not live until the next. False when it
/// already fits.
pub fn fit(cursor: &mut Cursor, capacity: u64, events_per_second: f64) -> bool {
    let length = cursor.range_end - cursor.range_start;
    let planned = length_for(capacity, REPLANNED_FILL, events_per_second, length);
    if planned >= length {
        return false;
    }
    // At least one second long, so whole_second never empties the range.
    cursor.range_end = whole_second(cursor.range_start + planned.max(ChronoDuration::seconds(1)));
    true
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

pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
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
    /// The saved position while a refused old range is probed from the look-back.
    pub probe: Option<(DateTime<Utc>, Option<Cursor>)>,
    pub probed: bool,
    /// Requests sent for this query, and when the first went: the pace so far.
    pub requests: u64,
    pub started: Option<Instant>,
    pub error: Option<HuntressError>,
    /// Malformed pages in a row, for the bounded refetch.
    pub malformed_streak: u32,
    /// Non-fatal errors to count, by kind.
    pub recovered: BTreeMap<ErrorKind, u64>,
    /// Logs dropped by a processing rule, by rule name: handled, never sent.
    pub excluded: BTreeMap<String, u64>,
}

/// Logs of fetched pages not yet sent: they go to the intake together, up to
/// a full batch, instead of one request per page.
#[derive(Default)]
struct Pending {
    logs: LogBuffer,
    /// Their ids, so that a row repeated on a later page is not sent twice.
    ids: HashSet<u64, BuildHasherDefault<IdHasher>>,
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
    fn is_full(&self) -> bool {
        self.logs.len() + MAX_PAGE_ROWS > MAX_BATCH_LOGS || self.logs.bytes_len() >= MAX_BATCH_BYTES / 2
    }

    fn clear(&mut self) {
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
    /// `initial_lookback_seconds`: a range the API refuses that starts before
    /// this is tried again from here once (see `probe_recent`).
    pub lookback: ChronoDuration,
}

enum Step {
    Continue,
    Stop,
}

impl QueryRun<'_> {
    pub fn collect(&mut self, state: &mut QueryState) -> QueryOutcome {
        let mut outcome = QueryOutcome { started: Some(Instant::now()), ..QueryOutcome::default() };
        let mut pending = Pending::default();
        while outcome.error.is_none() {
            if outcome.pages >= u64::from(self.max_pages) {
                break;
            }
            if self.deadline.expired() {
                outcome.stopped_by_deadline = true;
                break;
            }
            if state.cursor.is_none() {
                let capacity = self.page_capacity(state, &outcome);
                if capacity == 0 {
                    outcome.stopped_by_budget = true;
                    break;
                }
                let length = planned_length(capacity, state.learned.events_per_second, self.max_window);
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
        if let Some((checkpoint, cursor)) = outcome.probe.take() {
            // No page of the recent range came back: nothing is proven, the saved position stays.
            state.checkpoint = checkpoint;
            state.cursor = cursor;
        }
        self.flush(state, &mut pending, &mut outcome);
        outcome
    }

    /// Pages this query can still read in this run, in one pass: within the
    /// page cap, within the rate budget before the deadline (with no pause for a
    /// slot that a page token is known not to outlive), and within the time left
    /// at the pace of this run's requests so far.
    fn page_capacity(&self, state: &QueryState, outcome: &QueryOutcome) -> u64 {
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
        by_cap.min(by_budget).min(by_time)
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
        outcome.pages += 1;
        outcome.collected += page.rows.len() as u64;
        if page.rows.first().is_some_and(transform::lacks_keep) {
            outcome.lacks_keep = true;
        }
        self.token_survived(&cursor, state);
        if let Some((refused_from, _)) = outcome.probe.take() {
            outcome.repairs.push(format!(
                "the API refused the range from {} while it reads the last initial_lookback_seconds: that range is beyond its reach, and collection resumes from {}",
                format_time(refused_from),
                format_time(state.checkpoint)
            ));
            *outcome.recovered.entry(ErrorKind::QueryInvalid).or_default() += 1;
        }
        let rows = page.rows.len() as u64;
        self.buffer_rows(page.rows, state, pending, outcome);
        let mut after = Cursor {
            page_token: page.next_page_token,
            pages_done: cursor.pages_done.saturating_add(1),
            rows: cursor.rows.saturating_add(rows),
            token_at: Some(Utc::now()),
            ..cursor
        };
        let repeated = after.page_token.clone().is_some_and(|token| !after.follow(&token));
        let closes_window = after.page_token.is_none();
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
        if pending.pages.is_empty() {
            return true;
        }
        let refused_before = self.intake.stats.rejected;
        let delivery = self.intake.send(&pending.logs, &self.deadline);
        for id in pending.logs.ids().take(delivery.accepted_prefix) {
            state.remember(id);
        }
        // Logs the intake refused even alone are done with, but not forwarded.
        let refused = self.intake.stats.rejected - refused_before;
        outcome.rejected += refused;
        outcome.forwarded += (delivery.accepted_prefix as u64).saturating_sub(refused);
        if let Some(mark) = pending.pages.iter().rev().find(|mark| mark.end <= delivery.accepted_prefix) {
            state.cursor = Some(mark.cursor.clone());
            if mark.cursor.page_token.is_none() {
                state.complete_window();
            } else {
                state.learned.at_least(mark.cursor.rows, mark.cursor.length_seconds());
            }
        }
        pending.clear();
        self.save(state, outcome);
        match delivery.error {
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
        let mut body = json!({
            "esql": self.esql,
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
        if let Some((checkpoint, cursor)) = outcome.probe.take() {
            // The recent range failed too: the refusal was not about age. Keep the saved position.
            state.checkpoint = checkpoint;
            state.cursor = cursor;
        } else if self.probe_recent(state, outcome, &error) {
            return Step::Continue;
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
        match error.kind() {
            ErrorKind::QueryTooLarge | ErrorKind::QueryTimeout if cursor.page_token.is_none() && shrink(cursor) => {
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

    /// A first page refused (400) for a range older than the look-back may lie
    /// beyond what the API can still read (its retention), and would be refused in
    /// every run. Once per run, the query is tried from now minus the look-back
    /// instead: when that page is served, the old range is given up (a WARNING);
    /// when it is refused too, the saved position stays and the error stands.
    fn probe_recent(&mut self, state: &mut QueryState, outcome: &mut QueryOutcome, error: &HuntressError) -> bool {
        let recent = self.now - self.lookback;
        let refused_old_range = error.kind() == ErrorKind::QueryInvalid
            && state.cursor.as_ref().is_some_and(|c| c.page_token.is_none() && c.range_start < recent);
        if outcome.probed || !refused_old_range {
            return false;
        }
        outcome.probed = true;
        outcome.probe = Some((state.checkpoint, state.cursor.take()));
        state.checkpoint = recent;
        true
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
        state.learned.at_least(cursor.rows, cursor.length_seconds());
        cursor.restart();
        let capacity = self.page_capacity(state, outcome);
        if let Some(cursor) = state.cursor.as_mut() {
            if fit(cursor, capacity, state.learned.events_per_second) {
                outcome.window_shrinks += 1;
            }
        }
        outcome.token_restarts += 1;
        *outcome.recovered.entry(ErrorKind::TokenExpired).or_default() += 1;
    }

    fn buffer_rows(&mut self, rows: Vec<Row>, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) {
        let now_ms = transform::now_ms();
        for row in rows {
            let id = transform::event_id(&row);
            if state.seen.contains(id) || pending.ids.contains(&id) {
                outcome.deduplicated += 1;
                continue;
            }
            if !self.in_scope(&row) {
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
                state.remember(id);
                continue;
            }
            match written {
                Written::Log { stale, truncated } => {
                    outcome.stale += u64::from(stale);
                    outcome.truncated += u64::from(truncated || cut_by_rules);
                    pending.ids.insert(id);
                }
                Written::SkippedStale => {
                    outcome.stale += 1;
                    state.remember(id);
                }
            }
        }
    }

    fn in_scope(&self, row: &Row) -> bool {
        if !self.scope.is_active() {
            return true;
        }
        let org = OrgRef::new(row_org_id(row).map(|(_, id)| id), row_org_name(row));
        self.scope.admits(Feature::Siem.tag(), &org, self.directory)
    }

    /// Ids first, position second: see `checkpoint`.
    fn save(&mut self, state: &mut QueryState, outcome: &mut QueryOutcome) {
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

    #[test]
    fn windows_are_planned_to_fit_the_pages_a_run_can_read() {
        let cap = ChronoDuration::seconds(900);
        assert_eq!(planned_length(58, 0.0, cap), cap, "unknown density: the longest window");
        // 14,000 events in 15 minutes, 58 pages left: 58 * 200 * 0.75 rows.
        let density = 14_000.0 / 900.0;
        let planned = planned_length(58, density, cap).num_seconds();
        assert!(planned * 14_000 / 900 <= 58 * 200 && planned > 400, "{planned}");
        assert_eq!(planned_length(0, density, cap), ChronoDuration::seconds(1), "never shorter than a second");
        assert_eq!(planned_length(1_000, 0.001, cap), cap);
    }

    #[test]
    fn a_window_larger_than_a_run_ends_earlier() {
        let mut cursor = Cursor::new(t(1_000), t(1_900));
        assert!(!fit(&mut cursor, 140, 14_000.0 / 900.0), "70 pages fit in half of 140");
        assert!(fit(&mut cursor, 58, 14_000.0 / 900.0));
        assert!(cursor.range_end < t(1_900) && cursor.range_end > t(1_300), "{:?}", cursor.range_end);
        let mut dense = Cursor::new(t(1_000), t(1_900));
        assert!(fit(&mut dense, 0, 1e9));
        assert_eq!(dense.range_end, t(1_001), "down to one second, never empty");
    }

    #[test]
    fn times_are_iso8601_utc() {
        assert_eq!(format_time(t(1_780_000_000)), "2026-05-28T20:26:40Z");
    }
}
