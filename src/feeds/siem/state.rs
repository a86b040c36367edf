//! Per-query collection state in the Agent's persistent cache: the position (the
//! checkpoint, before which everything is delivered, and the resumable cursor of
//! the window in progress) under one key, and the bounded set of ids of recently
//! forwarded events in rotating chunks of `IDS_PER_CHUNK` ids, so that a page
//! rewrites one small chunk, not the whole set. The ids are written first, as
//! soon as the intake accepts a page, and the position after them: an Agent
//! killed in between replays the page on restart, and the ids drop it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::cache::{decode_entry, short_hash};
use crate::base::error::{HuntressError, Result};

const STATE_VERSION: u32 = 1;
/// Ids per chunk key: five pages of 200 rows.
pub const IDS_PER_CHUNK: usize = 1_000;

/// The second of an event time as the id memory keeps it (0 before 1970).
pub fn event_second(at: DateTime<Utc>) -> u32 {
    u32::try_from(at.timestamp()).unwrap_or(0)
}

/// The last second before `start`: where ids are not known for a query that
/// began reading at `start`, so the late checks stop there.
fn unread_before(start: DateTime<Utc>) -> u32 {
    event_second(start).saturating_sub(1)
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_zero_usize(value: &usize) -> bool {
    *value == 0
}

/// A stretch of event time in whole seconds: `start..end`.
pub trait TimeRange {
    fn start(&self) -> i64;
    fn end(&self) -> i64;
}

/// The most ids the memory of one query keeps, however far the late-arrival
/// reach and however dense the events: 250 chunk keys of about 16 KB.
pub const MAX_IDS: usize = 250_000;

/// Ids to keep for a query: `configured` (`dedup_cache_size`) at least, and
/// enough for `reach_seconds` of events at the density seen (with a margin),
/// up to `MAX_IDS`. The second value: the ids the reach needs, when the memory
/// cannot hold them.
pub fn id_capacity(configured: usize, events_per_second: f64, reach_seconds: u64) -> (usize, Option<usize>) {
    let needed = (events_per_second * reach_seconds as f64 * 1.25).ceil();
    let needed = if needed.is_finite() && needed > 0.0 { needed.min(1e12) as usize } else { 0 };
    let capacity = configured.max(needed.min(MAX_IDS));
    (capacity, (needed > capacity).then_some(needed))
}

/// How many chunk keys hold `capacity` ids.
pub fn chunk_count(capacity: usize) -> usize {
    capacity.div_ceil(IDS_PER_CHUNK).max(1)
}

/// The key of one query's position within the namespace.
pub fn query_key(query_name: &str) -> String {
    format!("siem_{}", short_hash(&["query", query_name]))
}

/// The key of one chunk of a query's forwarded-event ids.
pub fn seen_chunk_key(query_name: &str, index: usize) -> String {
    format!("{}_seen{index}", query_key(query_name))
}

/// A SIEM query window in progress: the range and the token of its next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    pub range_start: DateTime<Utc>,
    pub range_end: DateTime<Utc>,
    pub page_token: Option<String>,
    pub pages_done: u32,
    /// How often the range restarted from its first page (expired tokens).
    #[serde(default)]
    pub restarts: u32,
    /// Rows read in this pass over the range (since its first page).
    #[serde(default)]
    pub rows: u64,
    /// When the API handed out `page_token`: its age tells how long tokens live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_at: Option<DateTime<Utc>>,
    /// Hashes of the page tokens of this pass, to stop on one handed out twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<u64>,
    /// The earliest and latest `@timestamp` among the rows of this pass: where
    /// in the range they lie, to narrow a range that one run cannot read whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_span: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Rows per SIEM page at most.
const MAX_PAGE_ROWS: u64 = 200;
/// A density above this (rows per second of event time) in the cache is not one a run measured.
const MAX_EVENTS_PER_SECOND: f64 = 1e6;
/// A page token longer than this in the cache is not one the API handed out.
pub const MAX_TOKEN_CHARS: usize = 8_192;
/// Token hashes kept per pass; a loop longer than this is caught by the page cap.
pub const MAX_TRACKED_TOKENS: usize = 2_000;

impl Cursor {
    /// A first pass over `range_start..range_end`.
    pub fn new(range_start: DateTime<Utc>, range_end: DateTime<Utc>) -> Self {
        Cursor {
            range_start,
            range_end,
            page_token: None,
            pages_done: 0,
            restarts: 0,
            rows: 0,
            token_at: None,
            tokens: Vec::new(),
            rows_span: None,
        }
    }

    /// Starts the range again from its first page.
    pub fn restart(&mut self) {
        self.page_token = None;
        self.pages_done = 0;
        self.rows = 0;
        self.token_at = None;
        self.tokens.clear();
        self.rows_span = None;
        self.restarts = self.restarts.saturating_add(1);
    }

    /// Widens the span of this pass's rows to `at`.
    pub fn observe(&mut self, at: DateTime<Utc>) {
        self.rows_span = Some(match self.rows_span {
            Some((first, last)) => (first.min(at), last.max(at)),
            None => (at, at),
        });
    }

    /// Records the token of the next page; false when this pass already had it
    /// (the API is looping).
    pub fn follow(&mut self, token: &str) -> bool {
        let hash = token_hash(token);
        if self.tokens.contains(&hash) {
            return false;
        }
        if self.tokens.len() >= MAX_TRACKED_TOKENS {
            self.tokens.remove(0);
        }
        self.tokens.push(hash);
        true
    }

    pub fn length_seconds(&self) -> f64 {
        (self.range_end - self.range_start).num_milliseconds() as f64 / 1000.0
    }

    /// Why this cursor cannot be resumed from `checkpoint`, if it cannot.
    fn defect(&self, checkpoint: DateTime<Utc>, now: DateTime<Utc>) -> Option<&'static str> {
        if self.range_start >= self.range_end {
            Some("its range is inverted or empty")
        } else if self.range_start != checkpoint {
            Some("its range does not start at the checkpoint")
        } else if self.range_end > now {
            Some("its range ends in the future")
        } else if self.page_token.as_ref().is_some_and(|t| t.is_empty() || t.len() > MAX_TOKEN_CHARS) {
            Some("its page token is empty or implausibly long")
        } else if self.rows > u64::from(self.pages_done) * MAX_PAGE_ROWS {
            Some("it counts more rows than its pages can hold")
        } else {
            None
        }
    }
}

fn token_hash(token: &str) -> u64 {
    let digest = Sha256::digest(token.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryState {
    /// Every event with `@timestamp` before this is delivered.
    pub checkpoint: DateTime<Utc>,
    pub cursor: Option<Cursor>,
    pub seen: DedupSet,
    /// The chunk that new ids go to, and the ids it holds.
    pub chunk: usize,
    pub open_chunk: Vec<(u64, u32)>,
    pub learned: Learned,
    /// Why the stored cursor could not be read (it was dropped), for a warning.
    pub unreadable_cursor: Option<String>,
}

/// What earlier runs learned about the query, to size the next windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    /// Rows per second of event time, from recent windows (0: unknown).
    #[serde(default)]
    pub events_per_second: f64,
    /// The youngest age, in seconds, at which a page token was found expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expired_after: Option<f64>,
}

impl Learned {
    /// A finished pass over a whole window: a denser window counts at once, a
    /// sparser one halves the estimate, so one quiet window does not undo a burst.
    pub fn window_read(&mut self, rows: u64, seconds: f64) {
        if seconds > 0.0 {
            self.events_per_second = (rows as f64 / seconds).max(self.events_per_second / 2.0);
        }
    }

    /// A partial pass: the window holds at least `rows` rows.
    pub fn at_least(&mut self, rows: u64, seconds: f64) {
        if seconds > 0.0 {
            self.events_per_second = self.events_per_second.max(rows as f64 / seconds);
        }
    }

    pub fn token_expired_at_age(&mut self, seconds: f64) {
        if seconds.is_finite() && seconds > 0.0 {
            self.token_expired_after = Some(self.token_expired_after.map_or(seconds, |known| known.min(seconds)));
        }
    }

    /// Values a hand-edited cache could hold that mean nothing.
    fn sanitized(self) -> Learned {
        let finite = |v: f64| v.is_finite() && v >= 0.0;
        Learned {
            events_per_second: if finite(self.events_per_second) && self.events_per_second <= MAX_EVENTS_PER_SECOND {
                self.events_per_second
            } else {
                0.0
            },
            token_expired_after: self.token_expired_after.filter(|v| finite(*v) && *v > 0.0),
        }
    }
}

/// The position as stored: `chunk` is the index of the open id chunk.
#[derive(Debug, PartialEq, Serialize)]
pub struct Position {
    v: u32,
    pub checkpoint: DateTime<Utc>,
    pub cursor: Option<Cursor>,
    pub chunk: usize,
    #[serde(flatten)]
    pub learned: Learned,
    /// See `DedupSet::forgotten_until`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forgotten_until: u32,
    /// The ids the memory was sized for: it never shrinks by itself, since ids
    /// dropped from it would let a re-read send their events again.
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub ids_kept: usize,
    /// Why the stored cursor could not be read, when it could not (it is dropped).
    #[serde(skip)]
    pub unreadable_cursor: Option<String>,
}

/// The position as read: the cursor is decoded on its own, so that a damaged
/// cursor costs the window in progress, not the checkpoint.
#[derive(Deserialize)]
struct StoredPosition {
    v: u32,
    checkpoint: DateTime<Utc>,
    #[serde(default)]
    cursor: Option<serde_json::Value>,
    #[serde(default)]
    chunk: usize,
    #[serde(default)]
    events_per_second: Option<serde_json::Value>,
    #[serde(default)]
    token_expired_after: Option<serde_json::Value>,
    #[serde(default)]
    forgotten_until: Option<serde_json::Value>,
    #[serde(default)]
    ids_kept: Option<serde_json::Value>,
}

impl StoredPosition {
    fn into_position(self) -> Position {
        let (cursor, unreadable_cursor) = match self.cursor {
            None | Some(serde_json::Value::Null) => (None, None),
            Some(raw) => match serde_json::from_value::<Cursor>(raw) {
                Ok(cursor) => (Some(cursor), None),
                Err(error) => (None, Some(format!("unreadable cursor ({error})"))),
            },
        };
        let number = |v: Option<serde_json::Value>| v.and_then(|v| v.as_f64());
        let learned = Learned {
            events_per_second: number(self.events_per_second).unwrap_or(0.0),
            token_expired_after: number(self.token_expired_after),
        }
        .sanitized();
        // A position written before the field existed knows nothing behind its checkpoint.
        let forgotten_until = self
            .forgotten_until
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or_else(|| unread_before(self.checkpoint));
        let ids_kept = self.ids_kept.and_then(|v| v.as_u64()).map_or(0, |v| (v as usize).min(MAX_IDS));
        Position { v: self.v, checkpoint: self.checkpoint, cursor, chunk: self.chunk, learned, forgotten_until, ids_kept, unreadable_cursor }
    }
}

/// The oldest and newest checkpoints a query can resume from.
pub struct Reach {
    pub now: DateTime<Utc>,
    /// Windows end this far behind now (`collection_delay_seconds`).
    pub delay: chrono::Duration,
    /// How far back data can still be read and delivered.
    pub oldest: DateTime<Utc>,
}

impl QueryState {
    pub fn new(checkpoint: DateTime<Utc>, dedup_capacity: usize) -> Self {
        let capacity = chunk_count(dedup_capacity) * IDS_PER_CHUNK;
        let mut seen = DedupSet::new(capacity);
        // Nothing before a new checkpoint was read: no late check reaches there.
        seen.forget_until(unread_before(checkpoint));
        QueryState {
            checkpoint,
            cursor: None,
            seen,
            chunk: 0,
            open_chunk: Vec::new(),
            learned: Learned::default(),
            unreadable_cursor: None,
        }
    }

    /// Checks the position against the clock before it is used, and repairs
    /// what no run could get past: a checkpoint in the future (nothing would be
    /// read until the clock caught up) goes back to now minus the delay; one older
    /// than `reach.oldest` goes forward to it; a cursor that cannot be resumed is
    /// dropped, and its window is read again from the checkpoint (the ids of
    /// forwarded events drop what was already sent). Returns what was repaired.
    pub fn repair(&mut self, reach: &Reach) -> Vec<String> {
        let mut repairs = Vec::new();
        let found = self.checkpoint;
        if found > reach.now {
            let newest = reach.now - reach.delay;
            self.checkpoint = DateTime::from_timestamp(newest.timestamp(), 0).unwrap_or(newest);
            repairs.push(format!(
                "the checkpoint {} is in the future (a clock step, or a restored or edited cache); collection resumes from {}",
                found.to_rfc3339(),
                self.checkpoint.to_rfc3339()
            ));
        } else if found < reach.oldest {
            self.checkpoint = reach.oldest;
            self.seen.forget_until(unread_before(reach.oldest));
            repairs.push(format!(
                "the checkpoint {} is older than the data the check can still deliver; collection resumes from {}",
                found.to_rfc3339(),
                self.checkpoint.to_rfc3339()
            ));
        }
        if let Some(defect) = self.cursor.as_ref().and_then(|c| c.defect(self.checkpoint, reach.now)) {
            repairs.push(format!("the saved window in progress was dropped ({defect}); its range is read again from the checkpoint"));
            self.cursor = None;
        }
        repairs
    }

    /// The state from a stored position and the decoded id chunks, indexed by
    /// chunk number (empty for a missing or unreadable chunk).
    /// `legacy`: some chunk was written before chunks held event seconds; what
    /// was read before the checkpoint cannot be counted then.
    pub fn restore(position: Position, mut chunks: Vec<Vec<(u64, u32)>>, legacy: bool, dedup_capacity: usize) -> QueryState {
        let mut state = QueryState::new(position.checkpoint, dedup_capacity);
        state.seen.forgotten_until = position.forgotten_until;
        if legacy {
            state.seen.forget_until(event_second(position.checkpoint));
        }
        state.cursor = position.cursor;
        state.learned = position.learned.sanitized();
        state.unreadable_cursor = position.unreadable_cursor;
        state.chunk = if position.chunk < chunks.len() { position.chunk } else { 0 };
        state.seen.reserve(chunks.iter().map(Vec::len).sum());
        // Oldest chunk first, so that eviction order survives a restart.
        for offset in 1..=chunks.len() {
            for (id, second) in &chunks[(state.chunk + offset) % chunks.len()] {
                state.seen.insert(*id, *second);
            }
        }
        if let Some(open) = chunks.get_mut(state.chunk) {
            state.open_chunk = std::mem::take(open);
        }
        state
    }

    pub fn position(&self) -> Position {
        Position {
            v: STATE_VERSION,
            checkpoint: self.checkpoint,
            cursor: self.cursor.clone(),
            chunk: self.chunk,
            learned: self.learned,
            forgotten_until: self.seen.forgotten_until(),
            ids_kept: self.seen.capacity(),
            unreadable_cursor: None,
        }
    }

    /// The checkpoint and cursor, as stored under `query_key`.
    pub fn encode_position(&self) -> String {
        serde_json::to_string(&self.position()).expect("state serializes")
    }

    /// `None` for an empty position entry; an error for one that cannot be read.
    pub fn decode_position(text: &str) -> Result<Option<Position>> {
        decode_entry(text, "checkpoint", STATE_VERSION, |p: &StoredPosition| p.v)
            .map(|stored| stored.map(StoredPosition::into_position))
            .map_err(HuntressError::Cache)
    }

    /// Records a handled event (forwarded, or deliberately not) and the second
    /// of its `@timestamp` (0: unknown).
    pub fn remember(&mut self, id: u64, second: u32) {
        if self.seen.insert(id, second) {
            self.open_chunk.push((id, second));
        }
    }

    /// The open chunk as stored under `seen_chunk_key(.., self.chunk)`.
    pub fn encode_open_chunk(&self) -> String {
        DedupSet::encode_ids(&self.open_chunk)
    }

    /// After the open chunk is saved: a full chunk closes, and the next one
    /// (the oldest) is reused from empty.
    pub fn rotate_full_chunk(&mut self, chunks: usize) {
        if self.open_chunk.len() >= IDS_PER_CHUNK {
            self.chunk = (self.chunk + 1) % chunks.max(1);
            self.open_chunk.clear();
        }
    }

    /// The window is fully delivered: move the checkpoint to its end.
    pub fn complete_window(&mut self) {
        if let Some(cursor) = self.cursor.take() {
            self.learned.window_read(cursor.rows, cursor.length_seconds());
            self.checkpoint = self.checkpoint.max(cursor.range_end);
        }
    }
}

/// Ids are already uniform (SHA-256 prefixes): hashing them again is wasted work.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

/// Ids of recently handled events, oldest evicted first past `capacity`, each
/// with the second of its `@timestamp` (0: unknown), so that what was read of
/// any stretch of event time can be counted (see `late`).
/// Stored as 64-bit hashes: at 50,000 ids the chance of any collision is ~1e-10.
#[derive(Debug, Clone, PartialEq)]
pub struct DedupSet {
    order: VecDeque<u64>,
    members: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    capacity: usize,
    /// The latest event second among evicted ids: counts up to it are incomplete.
    forgotten_until: u32,
}

/// Marks a chunk that holds an event second beside each id.
const TIMED_CHUNK: &str = "t:";
/// Bytes per id in a timed chunk: the id, then its event second.
const TIMED_RECORD: usize = 12;

impl DedupSet {
    pub fn new(capacity: usize) -> Self {
        DedupSet { order: VecDeque::new(), members: HashMap::default(), capacity: capacity.max(1), forgotten_until: 0 }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    /// True when the id was not there yet. A known id without an event second
    /// takes this one.
    pub fn insert(&mut self, id: u64, second: u32) -> bool {
        if let Some(known) = self.members.get_mut(&id) {
            if *known == 0 {
                *known = second;
            }
            return false;
        }
        self.members.insert(id, second);
        self.order.push_back(id);
        self.evict_to(self.capacity);
        true
    }

    pub fn second_of(&self, id: u64) -> Option<u32> {
        self.members.get(&id).copied()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn forgotten_until(&self) -> u32 {
        self.forgotten_until
    }

    pub fn forget_until(&mut self, second: u32) {
        self.forgotten_until = self.forgotten_until.max(second);
    }

    /// The remembered ids per bucket of `span` seconds (bucket starts on
    /// multiples of `span`, as ES|QL's BUCKET) within `ranges` (sorted, not
    /// overlapping, in seconds, each a whole number of buckets).
    pub fn counts_within<R: TimeRange>(&self, ranges: &[R], span: i64) -> BTreeMap<i64, u64> {
        let span = span.max(1);
        let mut counts = BTreeMap::new();
        for second in self.members.values().map(|s| i64::from(*s)) {
            let after = ranges.partition_point(|r| r.start() <= second);
            if after > 0 && second < ranges[after - 1].end() {
                *counts.entry(second - second.rem_euclid(span)).or_default() += 1;
            }
        }
        counts
    }

    /// Room for `additional` more ids (up to the capacity) without rehashing.
    pub fn reserve(&mut self, additional: usize) {
        let room = additional.min(self.capacity.saturating_sub(self.order.len()));
        self.members.reserve(room);
        self.order.reserve(room);
    }

    fn evict_to(&mut self, count: usize) {
        while self.order.len() > count {
            if let Some(old) = self.order.pop_front() {
                if let Some(second) = self.members.remove(&old) {
                    self.forgotten_until = self.forgotten_until.max(second);
                }
            }
        }
    }

    pub fn encode_ids(ids: &[(u64, u32)]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * TIMED_RECORD);
        for (id, second) in ids {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(&second.to_le_bytes());
        }
        format!("{TIMED_CHUNK}{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes))
    }

    /// The ids of a chunk with their event seconds, and whether it was written
    /// before chunks held seconds (its ids then have second 0).
    pub fn decode_ids(text: &str) -> Result<(Vec<(u64, u32)>, bool)> {
        let text = text.trim();
        let (body, timed) = match text.strip_prefix(TIMED_CHUNK) {
            Some(body) => (body, true),
            None => (text, false),
        };
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|e| HuntressError::Cache(format!("unreadable dedup ids ({e})")))?;
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        let ids = if timed {
            bytes.chunks_exact(TIMED_RECORD).map(|c| (word(&c[..8]), u32::from_le_bytes(c[8..].try_into().unwrap_or_default()))).collect()
        } else {
            bytes.chunks_exact(8).map(|c| (word(c), 0)).collect()
        };
        Ok((ids, !timed && !text.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 123_456_789).unwrap()
    }

    fn decoded(chunks: &[String]) -> Vec<Vec<(u64, u32)>> {
        chunks.iter().map(|c| DedupSet::decode_ids(c).unwrap().0).collect()
    }

    fn save(state: &mut QueryState, chunks: &mut [String]) -> String {
        chunks[state.chunk] = state.encode_open_chunk();
        state.rotate_full_chunk(chunks.len());
        state.encode_position()
    }

    #[test]
    fn state_round_trips_with_nanoseconds_and_ids() {
        let mut state = QueryState::new(at(1_780_000_000), 3_000);
        state.cursor = Some(Cursor { page_token: Some("t".into()), pages_done: 3, ..Cursor::new(at(1), at(2)) });
        let mut chunks = vec![String::new(); chunk_count(3_000)];
        let mut position = String::new();
        for id in 0..2_500u64 {
            state.remember(id * 7919, 1);
            if id % 200 == 199 {
                position = save(&mut state, &mut chunks);
            }
        }
        position = if state.open_chunk.is_empty() { position } else { save(&mut state, &mut chunks) };
        let restored = QueryState::restore(QueryState::decode_position(&position).unwrap().unwrap(), decoded(&chunks), false, 3_000);
        assert_eq!(restored.checkpoint.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(restored.cursor, state.cursor);
        assert_eq!(restored.seen.len(), 2_500);
        assert!(restored.seen.contains(2_499 * 7919) && restored.seen.contains(0));
        assert_eq!(restored.chunk, state.chunk);
        assert_eq!(restored.open_chunk, state.open_chunk);
    }

    #[test]
    fn chunks_keep_event_seconds_and_older_chunks_still_read() {
        let ids = [(1u64, 1_780_000_000u32), (u64::MAX, 0), (7, 12)];
        let (decoded, legacy) = DedupSet::decode_ids(&DedupSet::encode_ids(&ids)).unwrap();
        assert_eq!((decoded.as_slice(), legacy), (ids.as_slice(), false));
        let old = base64::engine::general_purpose::STANDARD_NO_PAD.encode([5u64.to_le_bytes(), 9u64.to_le_bytes()].concat());
        assert_eq!(DedupSet::decode_ids(&old).unwrap(), (vec![(5, 0), (9, 0)], true));
        assert_eq!(DedupSet::decode_ids("").unwrap(), (vec![], false));
        // Restored from an older chunk, nothing before the checkpoint can be counted.
        let state = QueryState::new(at(1_780_000_000), 2_000);
        let restored = QueryState::restore(state.position(), vec![vec![(5, 0)]], true, 2_000);
        assert_eq!(restored.seen.forgotten_until(), 1_780_000_000);
    }

    #[test]
    fn late_checks_never_reach_behind_where_collection_started() {
        let fresh = QueryState::new(at(1_780_000_000), 2_000);
        assert_eq!(fresh.seen.forgotten_until(), 1_779_999_999, "a new query read nothing before its start");
        // A restored state keeps its own floor, older than its checkpoint.
        let mut moved = fresh.position();
        moved.checkpoint = at(1_780_003_600);
        let restored = QueryState::restore(moved, vec![], false, 2_000);
        assert_eq!(restored.seen.forgotten_until(), 1_779_999_999);
        // A position saved before the floor was kept knows nothing behind its checkpoint.
        let text = r#"{"v":1,"checkpoint":"2026-06-01T00:00:00Z","cursor":null,"chunk":0}"#;
        let older = QueryState::decode_position(text).unwrap().unwrap();
        assert_eq!(i64::from(older.forgotten_until), 1_780_272_000 - 1);
    }

    struct Span(i64, i64);

    impl TimeRange for Span {
        fn start(&self) -> i64 {
            self.0
        }

        fn end(&self) -> i64 {
            self.1
        }
    }

    #[test]
    fn ids_are_counted_per_bucket_and_eviction_marks_what_is_incomplete() {
        let mut seen = DedupSet::new(4);
        for (id, second) in [(1, 100), (2, 101), (3, 103), (4, 110)] {
            assert!(seen.insert(id, second));
        }
        assert!(!seen.insert(2, 500), "known ids keep their second");
        assert_eq!(seen.counts_within(&[Span(100, 110)], 2), BTreeMap::from([(100, 2), (102, 1)]));
        assert_eq!(seen.counts_within(&[Span(0, 200)], 10), BTreeMap::from([(100, 3), (110, 1)]));
        assert_eq!(seen.counts_within(&[Span(100, 102), Span(110, 112)], 2), BTreeMap::from([(100, 2), (110, 1)]));
        seen.insert(5, 120);
        assert_eq!(seen.forgotten_until(), 100, "the evicted id's second");
        let mut unknown = DedupSet::new(4);
        unknown.insert(9, 0);
        unknown.insert(9, 42);
        assert_eq!(unknown.second_of(9), Some(42), "an id without a second takes the next one seen");
    }

    #[test]
    fn the_id_memory_grows_with_the_reach_up_to_a_bound() {
        assert_eq!(id_capacity(50_000, 0.0, 21_600), (50_000, None));
        assert_eq!(id_capacity(50_000, 5.0, 21_600), (135_000, None));
        assert_eq!(id_capacity(1_000, 100.0, 21_600), (MAX_IDS, Some(2_700_000)));
        assert_eq!(id_capacity(1_000, f64::NAN, 21_600), (1_000, None));
    }

    #[test]
    fn a_page_rewrites_one_small_chunk() {
        let mut state = QueryState::new(at(0), 50_000);
        for id in 0..40_000 {
            state.remember(id, 1);
            state.rotate_full_chunk(chunk_count(50_000));
        }
        assert!(state.encode_open_chunk().len() <= IDS_PER_CHUNK * TIMED_RECORD * 4 / 3 + 6);
    }

    #[test]
    fn full_chunks_rotate_and_the_oldest_is_overwritten() {
        let capacity = 2 * IDS_PER_CHUNK;
        let mut state = QueryState::new(at(0), capacity);
        let mut chunks = vec![String::new(); chunk_count(capacity)];
        let mut position = String::new();
        for id in 0..(3 * IDS_PER_CHUNK as u64) {
            state.remember(id, 1);
            position = save(&mut state, &mut chunks);
        }
        let restored = QueryState::restore(QueryState::decode_position(&position).unwrap().unwrap(), decoded(&chunks), false, capacity);
        assert!(!restored.seen.contains(0), "the oldest chunk was reused");
        assert!(restored.seen.contains(3 * IDS_PER_CHUNK as u64 - 1));
        assert_eq!(restored.seen.len(), 2 * IDS_PER_CHUNK);
    }

    #[test]
    fn ids_saved_before_a_lost_position_are_still_found() {
        let mut state = QueryState::new(at(0), 5_000);
        let mut chunks = vec![String::new(); chunk_count(5_000)];
        let old_position = state.encode_position();
        for id in 0..200 {
            state.remember(id, 1);
        }
        let _lost_position = save(&mut state, &mut chunks);
        let restored = QueryState::restore(QueryState::decode_position(&old_position).unwrap().unwrap(), decoded(&chunks), false, 5_000);
        assert!(restored.seen.contains(199));
    }

    #[test]
    fn empty_and_corrupt_entries() {
        assert!(QueryState::decode_position("").unwrap().is_none());
        assert!(DedupSet::decode_ids("").unwrap().0.is_empty());
        assert!(matches!(QueryState::decode_position("{not json"), Err(HuntressError::Cache(_))));
        assert!(matches!(QueryState::decode_position(r#"{"v":9,"checkpoint":"2026-01-01T00:00:00Z","cursor":null}"#), Err(HuntressError::Cache(_))));
        assert!(matches!(DedupSet::decode_ids("!!!"), Err(HuntressError::Cache(_))));
    }

    #[test]
    fn a_smaller_capacity_restarts_the_chunk_index() {
        let mut position = QueryState::new(at(0), 10_000).position();
        position.chunk = 7;
        let restored = QueryState::restore(position, vec![Vec::new(); 2], false, 2_000);
        assert_eq!(restored.chunk, 0);
    }

    #[test]
    fn dedup_set_is_bounded_and_evicts_oldest() {
        let mut set = DedupSet::new(3);
        for id in [1, 2, 3, 4] {
            assert!(set.insert(id, 1));
        }
        assert_eq!(set.len(), 3);
        assert!(!set.contains(1) && set.contains(4));
        assert!(!set.insert(4, 1));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn completing_a_window_moves_the_checkpoint_and_keeps_ids() {
        let mut state = QueryState::new(at(100), 10_000);
        for id in 0..5_000 {
            state.remember(id, 1);
        }
        state.cursor = Some(Cursor { pages_done: 9, ..Cursor::new(at(100), at(200)) });
        state.complete_window();
        assert_eq!(state.checkpoint, at(200));
        assert!(state.cursor.is_none());
        assert!(state.seen.contains(4_999) && state.seen.contains(0));
    }

    #[test]
    fn checkpoint_never_moves_back() {
        let mut state = QueryState::new(at(300), 10);
        state.cursor = Some(Cursor { pages_done: 1, ..Cursor::new(at(100), at(200)) });
        state.complete_window();
        assert_eq!(state.checkpoint, at(300));
    }

    fn reach(now: i64) -> Reach {
        Reach { now: at(now), delay: chrono::Duration::seconds(300), oldest: at(now - 86_400) }
    }

    #[test]
    fn a_checkpoint_in_the_future_goes_back_to_now_minus_the_delay() {
        let mut state = QueryState::new(at(2_000_000), 10);
        state.cursor = Some(Cursor { page_token: Some("t".into()), ..Cursor::new(at(2_000_000), at(2_000_900)) });
        let repairs = state.repair(&reach(1_000_000));
        assert_eq!(state.checkpoint, Utc.timestamp_opt(1_000_000 - 300, 0).unwrap());
        assert!(state.cursor.is_none());
        assert!(repairs[0].contains("in the future") && repairs[0].contains(&at(2_000_000).to_rfc3339()), "{repairs:?}");
        assert!(state.repair(&reach(1_000_000)).is_empty(), "a repaired state needs no repair");
    }

    #[test]
    fn a_checkpoint_behind_the_delay_but_not_past_now_is_left_alone() {
        let mut state = QueryState::new(at(999_900), 10);
        assert!(state.repair(&reach(1_000_000)).is_empty());
        assert_eq!(state.checkpoint, at(999_900));
    }

    #[test]
    fn a_checkpoint_out_of_reach_moves_forward_to_the_reach() {
        let mut state = QueryState::new(at(5), 10);
        let repairs = state.repair(&reach(1_000_000));
        assert_eq!(state.checkpoint, at(1_000_000 - 86_400));
        assert!(repairs[0].contains("older than"), "{repairs:?}");
    }

    #[test]
    fn cursors_that_cannot_be_resumed_are_dropped() {
        let defects = [
            Cursor::new(at(950_000), at(940_000)),
            Cursor::new(at(950_000), at(950_000)),
            Cursor::new(at(940_000), at(950_000)),
            Cursor::new(at(950_000), at(2_000_000)),
            Cursor { page_token: Some("x".repeat(MAX_TOKEN_CHARS + 1)), ..Cursor::new(at(950_000), at(950_900)) },
            Cursor { page_token: Some("t".into()), pages_done: 1, rows: 201, ..Cursor::new(at(950_000), at(950_900)) },
        ];
        for cursor in defects {
            let mut state = QueryState::new(at(950_000), 10);
            state.cursor = Some(cursor.clone());
            let repairs = state.repair(&reach(1_000_000));
            assert!(state.cursor.is_none(), "{cursor:?} kept");
            assert_eq!(state.checkpoint, at(950_000));
            assert!(repairs[0].contains("dropped"), "{repairs:?}");
        }
        let mut fine = QueryState::new(at(950_000), 10);
        fine.cursor = Some(Cursor { page_token: Some("t".into()), ..Cursor::new(at(950_000), at(950_900)) });
        assert!(fine.repair(&reach(1_000_000)).is_empty());
        assert!(fine.cursor.is_some());
    }

    #[test]
    fn an_unreadable_cursor_costs_the_window_not_the_checkpoint() {
        let text = r#"{"v":1,"checkpoint":"2026-01-01T00:00:00Z","cursor":{"range_start":"yesterday"},"chunk":0}"#;
        let position = QueryState::decode_position(text).unwrap().unwrap();
        assert!(position.cursor.is_none());
        assert!(position.unreadable_cursor.unwrap().contains("unreadable cursor"));
        assert_eq!(position.checkpoint.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        for nonsense in [r#""events_per_second":-4,"token_expired_after":"x""#, r#""events_per_second":1e300,"token_expired_after":-1"#] {
            let text = format!(r#"{{"v":1,"checkpoint":"2026-01-01T00:00:00Z","cursor":null,{nonsense}}}"#);
            let position = QueryState::decode_position(&text).unwrap().unwrap();
            assert_eq!(position.learned, Learned::default(), "{text}");
        }
    }

    #[test]
    fn learned_density_and_token_life_round_trip() {
        let mut state = QueryState::new(at(100), 10);
        state.cursor = Some(Cursor { rows: 1_800, ..Cursor::new(at(100), at(1_000)) });
        state.complete_window();
        assert_eq!(state.learned.events_per_second, 2.0);
        state.learned.token_expired_at_age(30.0);
        state.learned.token_expired_at_age(70.0);
        let restored = QueryState::restore(QueryState::decode_position(&state.encode_position()).unwrap().unwrap(), vec![Vec::new()], false, 10);
        assert_eq!(restored.learned, Learned { events_per_second: 2.0, token_expired_after: Some(30.0) });
        let mut quiet = restored.learned;
        quiet.window_read(0, 900.0);
        assert_eq!(quiet.events_per_second, 1.0, "an empty window halves the estimate");
    }

    #[test]
    fn a_pass_notices_a_token_handed_out_twice() {
        let mut cursor = Cursor::new(at(0), at(10));
        assert!(cursor.follow("a") && cursor.follow("b"));
        assert!(!cursor.follow("a"));
        cursor.restart();
        assert!(cursor.follow("a"), "a new pass starts a new chain");
    }

    #[test]
    fn query_keys_are_distinct_and_plain() {
        assert_ne!(query_key("a"), query_key("b"));
        assert_ne!(seen_chunk_key("a", 0), query_key("a"));
        assert_ne!(seen_chunk_key("a", 0), seen_chunk_key("a", 1));
        assert!(query_key("weird name/ü").chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
