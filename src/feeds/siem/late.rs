//! Late arrivals: events that Huntress makes visible after the window holding
//! their `@timestamp` was read. Once a query has caught up, the time behind its
//! checkpoint, back to `late_arrival_window_seconds`, is checked in tiers by
//! age: recent time every run, older time rarely.
//!
//! - With counts: `STATS COUNT(*) BY BUCKET(@timestamp, ..)` over a tier is
//!   compared with what the id memory holds for each bucket. Buckets that grew
//!   are counted again in finer buckets until their rows fit a page or two,
//!   then read again (a WHERE on their ranges), deduplicated by id.
//! - When the API refuses those queries: each tier is read again whole, in
//!   slices, on the same schedule, and counts are tried again hours later.
//!
//! Late checks use only the rate budget that new events left, and never move
//! the checkpoint: what they find is delivered and remembered like any event.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::base::cache::decode_entry;
use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::datadog::transform;
use crate::feeds::siem::page::{parse_page, MAX_PAGE_ROWS};
use crate::feeds::siem::run::{format_time, Pending, QueryOutcome, QueryRun};
use crate::feeds::siem::state::{Cursor, QueryState};

const STATE_VERSION: u32 = 1;
/// Each tier: (newest age, oldest age, seconds between its checks).
const TIERS: [(i64, i64, i64); 3] = [(0, 600, 0), (600, 3_600, 300), (3_600, i64::MAX, 1_800)];
/// Buckets per count at most: one page of STATS rows.
const BUCKETS_PER_COUNT: i64 = 180;
/// Grown buckets that hold at most this many pages of rows are read again at
/// once; more are counted again in finer buckets first.
const READ_PAGES_AT_ONCE: u64 = 2;
/// Finer counts per tier and run at most.
const MAX_REFINES: u32 = 4;
/// Time ranges per WHERE of a count or a read.
const RANGES_PER_QUERY: usize = 48;
/// Pages of one count answer at most (it should fit one).
const MAX_COUNT_PAGES: u32 = 3;
/// A refused count or filtered read is tried again this long after.
const RETRY_REFUSED_SECONDS: i64 = 6 * 3_600;
/// The share of the rate limit (1/n) that late checks leave free for the
/// other feeds and the next run's new events.
const RESERVED_SHARE: u32 = 4;
/// Late-check requests per query and run at most.
const MAX_REQUESTS: u32 = 24;
/// Rows per slice of a tier read whole, at the density seen.
const SLICE_ROWS: f64 = 600.0;
/// Seconds of Huntress rows without a distinct id (rows sent twice) remembered.
const MAX_EXTRA: usize = 4_096;

/// The cache key of a query's late-check state.
pub fn late_key(query_key: &str) -> String {
    format!("{query_key}_late")
}

/// What late checks keep between runs, per query.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct LateState {
    #[serde(default)]
    v: u32,
    /// When the API last refused a count or a filtered read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_at: Option<DateTime<Utc>>,
    /// Per tier: when its last check finished.
    #[serde(default)]
    pub checked: Vec<Option<DateTime<Utc>>>,
    /// Per tier, while it is read whole: the event time read so far.
    #[serde(default)]
    pub swept_until: Vec<Option<DateTime<Utc>>>,
    /// Rows Huntress counts beyond the distinct ids it serves, by the second
    /// of their bucket: counted as known, so they are not read again and again.
    #[serde(default)]
    pub extra: BTreeMap<i64, u64>,
}

impl LateState {
    /// An empty entry is a new query; one that cannot be read is replaced (the
    /// cost is a check of every tier, never an event).
    pub fn decode(text: &str) -> std::result::Result<LateState, String> {
        let mut state = decode_entry(text, "late-arrival state", STATE_VERSION, |s: &LateState| s.v)?.unwrap_or_default();
        state.v = STATE_VERSION;
        state.checked.resize(TIERS.len(), None);
        state.swept_until.resize(TIERS.len(), None);
        Ok(state)
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("late state serializes")
    }

    /// `interval`: the time between runs. A tier due before the next run is
    /// closer to now than to that run is checked now: otherwise runs a few
    /// milliseconds early would stretch every period by one interval. Never
    /// sooner than half its period, however long the interval (a manual run
    /// between the Agent's does not check every tier again).
    fn due(&self, tier: usize, now: DateTime<Utc>, interval: ChronoDuration) -> bool {
        let every = ChronoDuration::seconds(TIERS[tier].2);
        let early = (interval / 2).min(every / 2);
        self.swept_until[tier].is_some() || self.checked[tier].is_none_or(|at| at > now || now - at + early >= every)
    }

    fn counts_refused(&self, now: DateTime<Utc>) -> bool {
        self.refused_at.is_some_and(|at| at <= now && now - at < ChronoDuration::seconds(RETRY_REFUSED_SECONDS))
    }

    /// Drops what lies beyond the reach, and the oldest past the bound.
    fn prune(&mut self, oldest: i64) {
        self.extra.retain(|second, _| *second >= oldest);
        while self.extra.len() > MAX_EXTRA {
            self.extra.pop_first();
        }
    }
}

/// A stretch of event time, in whole seconds, and the rows Huntress counts in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub end: i64,
    pub rows: u64,
}

/// The bucket span for counting `seconds` of time in at most
/// `BUCKETS_PER_COUNT` buckets: a power of two, so that finer spans nest in
/// coarser ones.
pub fn span_for(seconds: i64) -> i64 {
    let wanted = (seconds.max(1) + BUCKETS_PER_COUNT - 1) / BUCKETS_PER_COUNT;
    (wanted.max(1) as u64).next_power_of_two() as i64
}

/// The ES|QL of a count of `esql`'s rows per bucket of `span` seconds.
pub fn count_esql(esql: &str, ranges: Option<&[Bucket]>, span: i64) -> String {
    let unit = if span == 1 { "second" } else { "seconds" };
    format!("{} | STATS rows = COUNT(*) BY bucket = BUCKET(@timestamp, {span} {unit})", filtered_esql(esql, ranges))
}

/// `esql` restricted to the time ranges, when given.
pub fn filtered_esql(esql: &str, ranges: Option<&[Bucket]>) -> String {
    let Some(ranges) = ranges else { return esql.to_string() };
    let time = |second: i64| DateTime::from_timestamp(second, 0).map(format_time).unwrap_or_default();
    let clauses: Vec<String> = ranges
        .iter()
        .map(|r| format!("(@timestamp >= TO_DATETIME(\"{}\") AND @timestamp < TO_DATETIME(\"{}\"))", time(r.start), time(r.end)))
        .collect();
    format!("{esql} | WHERE {}", clauses.join(" OR "))
}

/// The buckets whose Huntress count is above what was read of them.
pub fn grown(counted: &[(i64, u64)], read: &BTreeMap<i64, u64>, extra: &BTreeMap<i64, u64>, span: i64) -> Vec<Bucket> {
    counted
        .iter()
        .filter_map(|&(start, rows)| {
            let known = read.get(&start).copied().unwrap_or(0) + extra.range(start..start + span).map(|(_, n)| n).sum::<u64>();
            (rows > known).then_some(Bucket { start, end: start + span, rows })
        })
        .collect()
}

/// Adjacent buckets as one range.
pub fn merged(buckets: &[Bucket]) -> Vec<Bucket> {
    let mut ranges: Vec<Bucket> = Vec::new();
    for bucket in buckets {
        match ranges.last_mut() {
            Some(last) if last.end == bucket.start => {
                last.end = bucket.end;
                last.rows += bucket.rows;
            }
            _ => ranges.push(*bucket),
        }
    }
    ranges
}

/// The rows of a count answer: (bucket start second, rows).
fn count_rows(body: &[u8]) -> Result<(Vec<(i64, u64)>, Option<String>)> {
    let page = parse_page(body)?;
    let mut rows = Vec::with_capacity(page.rows.len());
    for row in &page.rows {
        let rows_in = row.get("rows").and_then(|raw| serde_json::from_str::<Value>(raw).ok()).and_then(|v| v.as_u64());
        let start = row
            .get("bucket")
            .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
            .and_then(|v| transform::parse_timestamp_ms(&v))
            .map(|ms| ms.div_euclid(1000));
        match (start, rows_in) {
            (Some(start), Some(count)) => rows.push((start, count)),
            // The null bucket of rows without a time has nothing to compare with.
            (None, Some(_)) if row.get("bucket") == Some("null") => {}
            _ => return Err(refusal("its answer to a count has no `rows` and `bucket` columns".into())),
        }
    }
    Ok((rows, page.next_page_token))
}

/// The API does not do what a late check asks (not an outage).
fn refusal(message: String) -> HuntressError {
    HuntressError::api(ErrorKind::QueryInvalid, message)
}

fn is_refusal(error: &HuntressError) -> bool {
    error.kind() == ErrorKind::QueryInvalid
}

/// How a tier's check ended.
enum Tier {
    Done,
    OutOfBudget,
    Refused(String),
}

/// The late checks of one query in one run.
pub struct LateCheck<'r, 'a> {
    pub run: &'r mut QueryRun<'a>,
    pub reach: ChronoDuration,
    /// `min_collection_interval`.
    pub interval: ChronoDuration,
    pub requests_left: u32,
}

impl QueryRun<'_> {
    /// Requests the late checks may send in this run: what the rate budget
    /// has free now, less a reserve, within `MAX_REQUESTS`.
    pub fn late_budget(&self) -> u32 {
        let reserve = self.huntress.rate_limit().div_ceil(RESERVED_SHARE);
        self.huntress.free_slots().saturating_sub(reserve).min(MAX_REQUESTS)
    }
}

impl LateCheck<'_, '_> {
    pub fn check(&mut self, state: &mut QueryState, late: &mut LateState, outcome: &mut QueryOutcome) {
        if self.reach <= ChronoDuration::zero() {
            return;
        }
        if outcome.error.is_some() || state.cursor.is_some() || outcome.limit.is_some() || outcome.stopped_by_deadline {
            outcome.late.skipped = Some("backlog");
            return;
        }
        if outcome.lacks_keep {
            // Rows without `@timestamp` cannot be placed in buckets.
            outcome.late.skipped = Some("rows without @timestamp");
            return;
        }
        if self.requests_left == 0 {
            outcome.late.skipped = Some("rate budget");
            return;
        }
        let now = self.run.now;
        let oldest = (now - self.reach).timestamp().max(i64::from(state.seen.forgotten_until()) + 1);
        let newest = state.checkpoint.timestamp();
        outcome.late.reach_seconds = (now.timestamp() - oldest).max(0) as f64;
        outcome.late.checked = true;
        late.prune(oldest);
        let forwarded_before = outcome.forwarded;
        self.run.rereading = true;
        for tier in 0..TIERS.len() {
            if !late.due(tier, now, self.interval) {
                continue;
            }
            let (young, old, _) = TIERS[tier];
            let start = now.timestamp().saturating_sub(old).max(oldest);
            let end = now.timestamp().saturating_sub(young).min(newest);
            let whole = late.counts_refused(now);
            let ended = if start >= end {
                Ok(Tier::Done)
            } else if whole {
                outcome.late.reading_whole = late.refused_at;
                self.read_whole(tier, start, end, state, late, outcome)
            } else {
                match self.count(start, end, state, late, outcome) {
                    Err(error) if is_refusal(&error) => Ok(Tier::Refused(error.to_string())),
                    ended => ended,
                }
            };
            match ended {
                Ok(Tier::Done) => {
                    late.checked[tier] = Some(now);
                    late.swept_until[tier] = None;
                }
                Ok(Tier::OutOfBudget) => break,
                Ok(Tier::Refused(message)) => {
                    late.refused_at = Some(now);
                    outcome.late.refused_now = Some(message);
                    outcome.late.reading_whole = Some(now);
                    // This tier again, read whole.
                    match self.read_whole(tier, start, end, state, late, outcome) {
                        Ok(Tier::Done) => late.checked[tier] = Some(now),
                        Ok(_) => break,
                        Err(error) => {
                            outcome.late.error = Some(error);
                            break;
                        }
                    }
                }
                Err(error) => {
                    outcome.late.error = Some(error);
                    break;
                }
            }
        }
        self.run.rereading = false;
        outcome.late.recovered += outcome.forwarded - forwarded_before;
    }

    /// Counts a tier, then counts the grown buckets finer until their rows fit
    /// `READ_PAGES_AT_ONCE` pages, and reads them again.
    fn count(&mut self, start: i64, end: i64, state: &mut QueryState, late: &mut LateState, outcome: &mut QueryOutcome) -> Result<Tier> {
        let mut span = span_for(end - start);
        // Whole buckets only: a bucket cut by the range would count less than the memory holds.
        let start = start + (span - start.rem_euclid(span)) % span;
        let end = end - end.rem_euclid(span);
        if start >= end {
            return Ok(Tier::Done);
        }
        let whole = [Bucket { start, end, rows: 0 }];
        let mut ranges: Vec<Bucket> = whole.to_vec();
        let mut filtered = false;
        for refines in 0..=MAX_REFINES {
            let counted = match self.count_buckets(&ranges, filtered, span, outcome)? {
                Some(counted) => counted,
                None => return Ok(Tier::OutOfBudget),
            };
            let read = state.seen.counts_within(&ranges, span);
            let buckets = grown(&counted, &read, &late.extra, span);
            if refines == 0 {
                outcome.late.buckets_grown += buckets.len() as u64;
            }
            if buckets.is_empty() {
                return Ok(Tier::Done);
            }
            let rows: u64 = buckets.iter().map(|b| b.rows).sum();
            let finer = span_for(buckets.len() as i64 * span);
            if rows.div_ceil(MAX_PAGE_ROWS as u64) <= READ_PAGES_AT_ONCE || span == 1 || finer >= span || refines == MAX_REFINES {
                return self.read_grown(&buckets, span, state, late, outcome);
            }
            ranges = merged(&buckets);
            filtered = true;
            span = finer;
        }
        Ok(Tier::Done)
    }

    /// One count over `ranges` (filtered by a WHERE on them, or not); `None`
    /// when the budget ran out first. A refusal is asked once more before it
    /// counts as one.
    fn count_buckets(&mut self, ranges: &[Bucket], filtered: bool, span: i64, outcome: &mut QueryOutcome) -> Result<Option<Vec<(i64, u64)>>> {
        let mut counted = Vec::new();
        for group in ranges.chunks(RANGES_PER_QUERY) {
            let esql = count_esql(self.run.esql, filtered.then_some(group), span);
            let (first, last) = (group[0].start, group[group.len() - 1].end);
            let mut cursor = Cursor::new(to_time(first), to_time(last));
            for _ in 0..MAX_COUNT_PAGES {
                let Some(body) = self.fetch(&esql, &cursor, true, outcome)? else { return Ok(None) };
                let (rows, next) = count_rows(&body)?;
                counted.extend(rows);
                match next {
                    Some(token) => cursor.page_token = Some(token),
                    None => break,
                }
            }
        }
        counted.sort_unstable();
        Ok(Some(counted))
    }

    /// Reads the grown buckets again; what Huntress still counts beyond the
    /// ids it served once every row was handled is remembered as `extra`.
    fn read_grown(&mut self, buckets: &[Bucket], span: i64, state: &mut QueryState, late: &mut LateState, outcome: &mut QueryOutcome) -> Result<Tier> {
        let ranges = merged(buckets);
        for group in ranges.chunks(RANGES_PER_QUERY) {
            let esql = filtered_esql(self.run.esql, Some(group));
            match self.read(&esql, group[0].start, group[group.len() - 1].end, state, outcome)? {
                Tier::Done => {}
                other => return Ok(other),
            }
        }
        let read = state.seen.counts_within(&ranges, span);
        for bucket in buckets {
            let known = read.get(&bucket.start).copied().unwrap_or(0) + late.extra.range(bucket.start..bucket.end).map(|(_, n)| n).sum::<u64>();
            if bucket.rows > known {
                *late.extra.entry(bucket.start).or_default() += bucket.rows - known;
            }
        }
        Ok(Tier::Done)
    }

    /// Reads a tier again whole, in slices of about `SLICE_ROWS` rows at the
    /// density seen, from where the last run stopped.
    fn read_whole(&mut self, tier: usize, start: i64, end: i64, state: &mut QueryState, late: &mut LateState, outcome: &mut QueryOutcome) -> Result<Tier> {
        let slice = match state.learned.events_per_second {
            density if density > 0.0 => ((SLICE_ROWS / density).ceil() as i64).max(1),
            _ => end - start,
        };
        let mut from = late.swept_until[tier].map(|t| t.timestamp()).filter(|t| *t > start && *t < end).unwrap_or(start);
        while from < end {
            let to = from.saturating_add(slice).min(end);
            let esql = self.run.esql;
            match self.read(esql, from, to, state, outcome)? {
                Tier::Done => {}
                other => return Ok(other),
            }
            from = to;
            late.swept_until[tier] = Some(to_time(from));
        }
        late.swept_until[tier] = None;
        Ok(Tier::Done)
    }

    /// Reads every page of `esql` over `start..end`, forwarding what was not
    /// handled yet. A page token that expires ends the read: the next check
    /// finds what it missed.
    fn read(&mut self, esql: &str, start: i64, end: i64, state: &mut QueryState, outcome: &mut QueryOutcome) -> Result<Tier> {
        let mut cursor = Cursor::new(to_time(start), to_time(end));
        let mut pending = Pending::default();
        let ended = loop {
            let body = match self.fetch(esql, &cursor, false, outcome) {
                Ok(Some(body)) => body,
                Ok(None) => break Ok(Tier::OutOfBudget),
                Err(error) => break Err(error),
            };
            let page = match parse_page(&body) {
                Ok(page) => page,
                Err(error) => break Err(error),
            };
            outcome.collected += page.rows.len() as u64;
            let next = page.next_page_token;
            if !self.run.buffer_page(page.rows, state, &mut pending, outcome) || (pending.is_full() && !self.deliver(state, &mut pending, outcome)) {
                break Ok(Tier::OutOfBudget);
            }
            match next {
                Some(token) => cursor.page_token = Some(token),
                None => break Ok(Tier::Done),
            }
        };
        if !self.deliver(state, &mut pending, outcome) {
            return Ok(Tier::OutOfBudget);
        }
        ended
    }

    fn deliver(&mut self, state: &mut QueryState, pending: &mut Pending, outcome: &mut QueryOutcome) -> bool {
        if pending.logs.len() == 0 {
            self.run.save(state, outcome);
            return outcome.error.is_none();
        }
        let (_, error) = self.run.deliver(state, pending, outcome);
        pending.clear();
        self.run.save(state, outcome);
        self.run.delivered(error, outcome)
    }

    /// A page, within the late checks' budget (`None` past it).
    fn fetch(&mut self, esql: &str, cursor: &Cursor, counting: bool, outcome: &mut QueryOutcome) -> Result<Option<bytes::Bytes>> {
        let mut refusals = 0;
        loop {
            if self.requests_left == 0 || self.run.deadline.expired() {
                return Ok(None);
            }
            self.requests_left -= 1;
            outcome.requests += 1;
            if counting {
                outcome.late.count_requests += 1;
            } else {
                outcome.late.read_requests += 1;
            }
            match self.run.fetch_with(esql, cursor) {
                Ok(body) => return Ok(Some(body)),
                // One refusal proves nothing; a first page refused twice is an answer.
                Err(error) if is_refusal(&error) && cursor.page_token.is_none() && refusals == 0 => refusals += 1,
                Err(error) if error.kind() == ErrorKind::Deadline => return Ok(None),
                Err(error) => return Err(error),
            }
        }
    }
}

fn to_time(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(second, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl crate::feeds::siem::state::TimeRange for Bucket {
    fn start(&self) -> i64 {
        self.start
    }

    fn end(&self) -> i64 {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn bucket(start: i64, end: i64, rows: u64) -> Bucket {
        Bucket { start, end, rows }
    }

    #[test]
    fn spans_are_powers_of_two_that_fit_a_page_of_buckets() {
        assert_eq!(span_for(1), 1);
        assert_eq!(span_for(180), 1);
        assert_eq!(span_for(600), 4);
        assert_eq!(span_for(3_000), 32);
        assert_eq!(span_for(18_000), 128);
        for seconds in [1, 7, 181, 599, 601, 9_999, 86_400] {
            let span = span_for(seconds);
            assert!((seconds + span - 1) / span <= BUCKETS_PER_COUNT && (span as u64).is_power_of_two(), "{seconds}: {span}");
        }
    }

    #[test]
    fn counts_and_reads_append_to_the_query() {
        let esql = "FROM logs | WHERE event.provider == \"x\" | KEEP @timestamp, message";
        assert_eq!(count_esql(esql, None, 4), format!("{esql} | STATS rows = COUNT(*) BY bucket = BUCKET(@timestamp, 4 seconds)"));
        assert!(count_esql(esql, None, 1).ends_with("BUCKET(@timestamp, 1 second)"));
        let ranges = [bucket(1_780_000_000, 1_780_000_004, 3), bucket(1_780_000_008, 1_780_000_009, 1)];
        assert_eq!(
            filtered_esql(esql, Some(&ranges)),
            format!("{esql} | WHERE (@timestamp >= TO_DATETIME(\"2026-05-28T20:26:40Z\") AND @timestamp < TO_DATETIME(\"2026-05-28T20:26:44Z\")) OR (@timestamp >= TO_DATETIME(\"2026-05-28T20:26:48Z\") AND @timestamp < TO_DATETIME(\"2026-05-28T20:26:49Z\"))")
        );
    }

    #[test]
    fn buckets_that_grew_are_those_counted_above_what_was_read() {
        let counted = [(100, 5), (104, 3), (108, 2), (112, 7)];
        let read = BTreeMap::from([(100, 5), (104, 2), (108, 3)]);
        let extra = BTreeMap::from([(113, 7)]);
        assert_eq!(grown(&counted, &read, &extra, 4), vec![bucket(104, 108, 3)], "more read than counted, or rows sent twice, are no growth");
        assert_eq!(grown(&counted, &BTreeMap::new(), &BTreeMap::new(), 4).len(), 4);
    }

    #[test]
    fn adjacent_buckets_merge() {
        let buckets = [bucket(0, 4, 1), bucket(4, 8, 2), bucket(12, 16, 3)];
        assert_eq!(merged(&buckets), vec![bucket(0, 8, 3), bucket(12, 16, 3)]);
        assert!(merged(&[]).is_empty());
    }

    #[test]
    fn count_answers_are_checked() {
        let body = br#"{"logs": [{"rows": 3, "bucket": "2026-12-02T18:00:04.000Z"}, {"rows": 1, "bucket": null}], "pagination": {"next_page_token": "n"}}"#;
        let (rows, next) = count_rows(body).unwrap();
        let second = Utc.with_ymd_and_hms(2026, 12, 2, 18, 0, 4).unwrap().timestamp();
        assert_eq!(rows, vec![(second, 3)]);
        assert_eq!(next.as_deref(), Some("n"));
        // An API that ignores STATS answers with log rows: that is a refusal, not a count.
        let ignored = br#"{"logs": [{"uuid": "a", "@timestamp": "2026-12-02T18:00:04Z"}], "pagination": {}}"#;
        assert_eq!(count_rows(ignored).unwrap_err().kind(), ErrorKind::QueryInvalid);
        assert_eq!(count_rows(b"not json").unwrap_err().kind(), ErrorKind::MalformedResponse);
    }

    #[test]
    fn tiers_are_due_on_their_schedule_and_state_survives() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 18, 0, 0).unwrap();
        let mut state = LateState::decode("").unwrap();
        let none = ChronoDuration::zero();
        assert!((0..TIERS.len()).all(|tier| state.due(tier, now, none)), "a new query checks every tier");
        state.checked = vec![Some(now); TIERS.len()];
        assert!(state.due(0, now, none), "the recent tier every run");
        assert!(!state.due(1, now + ChronoDuration::seconds(299), none) && state.due(1, now + ChronoDuration::seconds(300), none));
        let minute = ChronoDuration::seconds(60);
        assert!(state.due(1, now + ChronoDuration::seconds(271), minute), "a run 29 s early still checks");
        assert!(!state.due(1, now + ChronoDuration::seconds(269), minute), "the next run is closer");
        let hour = ChronoDuration::seconds(3600);
        assert!(!state.due(1, now + ChronoDuration::seconds(149), hour), "never sooner than half the period");
        assert!(state.due(1, now + ChronoDuration::seconds(150), hour));
        assert!(state.due(2, now - ChronoDuration::seconds(1), none), "a check dated in the future is due");
        state.swept_until[2] = Some(now);
        assert!(state.due(2, now, none), "a tier read whole in part goes on");
        state.refused_at = Some(now);
        assert!(state.counts_refused(now + ChronoDuration::hours(5)) && !state.counts_refused(now + ChronoDuration::hours(6)));
        let restored = LateState::decode(&state.encode()).unwrap();
        assert_eq!(restored, state);
        assert!(LateState::decode("{\"v\": 99}").is_err());
        assert!(LateState::decode("garbage").is_err());
    }

    #[test]
    fn extra_rows_stay_bounded_and_within_the_reach() {
        let mut state = LateState::default();
        for second in 0..(MAX_EXTRA as i64 + 10) {
            state.extra.insert(second, 1);
        }
        state.prune(5);
        assert_eq!(state.extra.len(), MAX_EXTRA);
        assert!(state.extra.keys().all(|second| *second >= 10));
    }
}
