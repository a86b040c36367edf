//! Collects one SIEM query: plans windows, pages through `POST /v1/siem/query`
//! one page at a time, forwards the logs of consecutive pages together (up to
//! one intake batch), and saves the state after each batch the intake accepted.

use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasherDefault;

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::checkpoint::{Cache, Cursor, IdHasher, QueryState};
use crate::error::{ErrorKind, HuntressError, Result};
use crate::http::{backoff, Deadline};
use crate::huntress::{Feature, HuntressClient};
use crate::datadog::intake::{IntakeClient, LogBuffer, MAX_BATCH_BYTES, MAX_BATCH_LOGS};
use crate::datadog::processing::{ProcessingRules, Verdict};
use crate::feeds::orgs::Enricher;
use crate::row::Row;
use crate::scan::{Kind, ScanError, Scanner};
use crate::datadog::transform::{self, LogTemplate, Written};

pub const QUERY_PATH: &str = "/v1/siem/query";
/// A window that times out or exhausts Huntress's memory is halved, down to this.
const MIN_WINDOW_SECONDS: i64 = 10;
/// Expired page tokens restart a range at most this often per run.
const MAX_RESTARTS_PER_RUN: u32 = 3;
/// A 200 whose body has the wrong shape is fetched again this often.
const MAX_SHAPE_RETRIES: u32 = 2;
/// Huntress returns at most this many rows per page.
const MAX_PAGE_ROWS: usize = 200;

pub struct SiemPage<'a> {
    pub rows: Vec<Row<'a>>,
    pub next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    next_page_token: Option<String>,
}

/// Parses a page body into rows that borrow it, checking the shape the spec
/// promises instead of trusting it.
pub fn parse_page(body: &[u8]) -> Result<SiemPage<'_>> {
    // UTF-8 is checked once for the whole body, not string by string.
    let text = std::str::from_utf8(body).map_err(|e| malformed(format!("the response is not UTF-8 ({e})")))?;
    let mut scanner = Scanner::new(text);
    if scanner.peek_kind() != Some(Kind::Object) {
        return Err(malformed("the response is not a JSON object".into()));
    }
    let (mut rows, mut pagination) = (None, None);
    scanner.begin_object().map_err(not_json)?;
    let mut first = true;
    while let Some(name) = scanner.next_key(first).map_err(not_json)? {
        first = false;
        match name.decode().as_ref() {
            "logs" if rows.is_some() => return Err(bad_shape("`logs` appears twice")),
            "logs" => rows = Some(scan_rows(&mut scanner)?),
            "pagination" if pagination.is_some() => return Err(bad_shape("`pagination` appears twice")),
            "pagination" => pagination = Some(scanner.value().map_err(not_json)?),
            _ => drop(scanner.value().map_err(not_json)?),
        }
    }
    scanner.finish().map_err(not_json)?;
    let next_page_token = match pagination.filter(|raw| *raw != "null") {
        None => None,
        Some(raw) if raw.starts_with('{') => serde_json::from_str::<Pagination>(raw)
            .map_err(|e| bad_shape(&format!("`pagination`: {e}")))?
            .next_page_token,
        Some(_) => return Err(malformed("`pagination` is not an object".into())),
    };
    Ok(SiemPage { rows: rows.flatten().unwrap_or_default(), next_page_token: next_page_token.filter(|t| !t.is_empty()) })
}

fn malformed(what: String) -> HuntressError {
    HuntressError::api(ErrorKind::MalformedResponse, format!("{QUERY_PATH}: {what}"))
}

fn not_json(error: ScanError) -> HuntressError {
    malformed(format!("the response is not valid JSON ({error})"))
}

fn bad_shape(what: &str) -> HuntressError {
    malformed(format!("the page does not have the expected shape ({what})"))
}

/// `logs`: null, or an array of objects.
fn scan_rows<'a>(scanner: &mut Scanner<'a>) -> Result<Option<Vec<Row<'a>>>> {
    match scanner.peek_kind() {
        Some(Kind::Array) => {}
        // Not a value at all: `value` says where the JSON breaks.
        Some(Kind::Null) | None => return scanner.value().map(|_| None).map_err(not_json),
        Some(kind) => return Err(bad_shape(&format!("`logs` is {}, not an array", kind.name()))),
    }
    let mut rows: Vec<Row> = Vec::with_capacity(MAX_PAGE_ROWS);
    scanner.begin_array().map_err(not_json)?;
    while scanner.next_element(rows.is_empty()).map_err(not_json)? {
        match scanner.peek_kind() {
            // Rows of one query have the same columns: the last row sizes the next.
            Some(Kind::Object) | None => {
                let expected_fields = rows.last().map_or(0, |row| row.fields().len());
                rows.push(Row::scan(scanner, expected_fields).map_err(not_json)?);
            }
            Some(kind) => return Err(bad_shape(&format!("`logs[{}]` is {}, not an object", rows.len(), kind.name()))),
        }
    }
    Ok(Some(rows))
}

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
    Some((checkpoint, limit.min(checkpoint + max_window)))
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
    pub max_pages: u32,
    pub delay: ChronoDuration,
    pub max_window: ChronoDuration,
}

enum Step {
    Continue,
    Stop,
}

impl QueryRun<'_> {
    pub fn collect(&mut self, state: &mut QueryState) -> QueryOutcome {
        let mut outcome = QueryOutcome::default();
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
                match next_window(state.checkpoint, self.now, self.delay, self.max_window) {
                    Some((range_start, range_end)) => {
                        state.cursor = Some(Cursor { range_start, range_end, page_token: None, pages_done: 0, restarts: 0 })
                    }
                    None => break,
                }
            }
            match self.step(state, &mut pending, &mut outcome) {
                Step::Continue => {}
                Step::Stop => break,
            }
        }
        self.flush(state, &mut pending, &mut outcome);
        outcome
    }

    fn step(&mut self, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) -> Step {
        let cursor = pending.cursor().or(state.cursor.as_ref()).cloned().expect("a window is planned before each step");
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
        self.prepare(page.rows, state, pending, outcome);
        let after = Cursor { page_token: page.next_page_token, pages_done: cursor.pages_done + 1, ..cursor };
        let closes_window = after.page_token.is_none();
        pending.pages.push(PageMark { end: pending.logs.len(), cursor: after });
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
        let delivery = self.intake.send(&pending.logs, &self.deadline);
        for id in pending.logs.ids().take(delivery.accepted_prefix) {
            state.remember(id);
        }
        outcome.forwarded += delivery.accepted_prefix as u64;
        if let Some(mark) = pending.pages.iter().rev().find(|mark| mark.end <= delivery.accepted_prefix) {
            state.cursor = Some(mark.cursor.clone());
            if mark.cursor.page_token.is_none() {
                state.complete_window();
            }
        }
        pending.clear();
        self.save(state, outcome);
        match delivery.error {
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

    /// Errors a query can work around within the same run; others stop it.
    fn recover(&mut self, state: &mut QueryState, outcome: &mut QueryOutcome, error: HuntressError) -> Step {
        let cursor = state.cursor.as_mut().expect("cursor present");
        match error.kind() {
            ErrorKind::QueryInvalid if cursor.page_token.is_some() && outcome.token_restarts < u64::from(MAX_RESTARTS_PER_RUN) => {
                // The token expired (or was refused): replay the range; the dedup set
                // drops what was already sent. A replay that cannot even get back to
                // where it was within this run's page budget would start over every
                // run, so the range is halved until it fits.
                let pages_left = u64::from(self.max_pages).saturating_sub(outcome.pages);
                if u64::from(cursor.pages_done) >= pages_left {
                    shrink(cursor);
                }
                cursor.page_token = None;
                cursor.pages_done = 0;
                cursor.restarts += 1;
                outcome.token_restarts += 1;
                *outcome.recovered.entry(ErrorKind::TokenExpired).or_default() += 1;
                Step::Continue
            }
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

    fn prepare(&mut self, rows: Vec<Row>, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) {
        let now_ms = transform::now_ms();
        for row in rows {
            let id = transform::event_id(&row);
            if state.seen.contains(id) || pending.ids.contains(&id) {
                outcome.deduplicated += 1;
                continue;
            }
            let enrichment = self.enricher.enrich(&row);
            let mut written = Written::SkippedStale;
            let mut excluded_by = None;
            pending.logs.push_with(id, |out| {
                let start = out.len();
                written = transform::prepare_into(&row, self.template, enrichment, now_ms, out);
                if !matches!(written, Written::Log { .. }) {
                    return false;
                }
                if let Verdict::Excluded(rule) = self.rules.apply(out, start) {
                    excluded_by = Some(rule);
                    return false;
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
                    outcome.truncated += u64::from(truncated);
                    pending.ids.insert(id);
                }
                Written::SkippedStale => {
                    outcome.stale += 1;
                    state.remember(id);
                }
            }
        }
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
    fn windows_halve_down_to_a_floor() {
        let mut cursor = Cursor { range_start: t(1_000), range_end: t(1_900), page_token: None, pages_done: 0, restarts: 0 };
        assert!(shrink(&mut cursor));
        assert_eq!(cursor.range_end, t(1_450));
        let mut small = Cursor { range_end: t(1_015), ..cursor.clone() };
        assert!(!shrink(&mut small));
        assert_eq!(small.range_end, t(1_015));
    }

    #[test]
    fn times_are_iso8601_utc() {
        assert_eq!(format_time(t(1_780_000_000)), "2026-05-28T20:26:40Z");
    }
}
