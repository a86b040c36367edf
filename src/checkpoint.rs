//! Per-query collection state in the Agent's persistent cache: the position (the
//! checkpoint, before which everything is delivered, and the resumable cursor of
//! the window in progress) under one key, and the bounded set of ids of recently
//! forwarded events in rotating chunks of `IDS_PER_CHUNK` ids, so that a page
//! rewrites one small chunk, not the whole set. The ids are written first, as
//! soon as the intake accepts a page, and the position after them: an Agent
//! killed in between replays the page on restart, and the ids drop it.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{HuntressError, Result};

const STATE_VERSION: u32 = 1;
/// Ids per chunk key: five pages of 200 rows.
pub const IDS_PER_CHUNK: usize = 1_000;

/// How many chunk keys hold `capacity` ids.
pub fn chunk_count(capacity: usize) -> usize {
    capacity.div_ceil(IDS_PER_CHUNK).max(1)
}

/// Where the Agent keeps strings between runs (`read_persistent_cache` /
/// `write_persistent_cache`). Errors are plain text for the report.
pub trait Cache {
    fn read(&mut self, key: &str) -> std::result::Result<String, String>;
    fn write(&mut self, key: &str, value: &str) -> std::result::Result<(), String>;
}

/// The cache namespace for one Huntress account at one base URL. Built from
/// stable identity only, so editing tags or timeouts keeps checkpoints, and a
/// new API key starts afresh. The key is hashed: it never reaches the cache.
pub fn cache_id(base_url: &str, api_key: &str) -> String {
    short_hash(&["datadog-huntress/v1", base_url, api_key])
}

/// The cached organization directory (organization enrichment, agent metrics).
pub const ORGS_KEY: &str = "orgs_directory";
/// The incident report checkpoint and the versions already forwarded.
pub const INCIDENTS_KEY: &str = "incidents_state";
/// The escalation checkpoint and the versions already forwarded.
pub const ESCALATIONS_KEY: &str = "escalations_state";
/// The signal checkpoint (`investigated_at`) and the ids already forwarded.
pub const SIGNALS_KEY: &str = "signals_state";

/// Reads a JSON cache entry that carries its format version: `Ok(None)` when
/// the entry is empty, an error naming `what` when it is unreadable or of
/// another version.
pub fn decode_entry<T: DeserializeOwned>(
    text: &str,
    what: &str,
    expected_version: u32,
    version: impl Fn(&T) -> u32,
) -> std::result::Result<Option<T>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let stored: T = serde_json::from_str(text).map_err(|e| format!("unreadable {what} ({e})"))?;
    match version(&stored) {
        v if v == expected_version => Ok(Some(stored)),
        v => Err(format!("{what} format v{v} is not supported")),
    }
}

/// The key of one query's position within the namespace.
pub fn query_key(query_name: &str) -> String {
    format!("siem_{}", short_hash(&["query", query_name]))
}

/// The key of one chunk of a query's forwarded-event ids.
pub fn seen_chunk_key(query_name: &str, index: usize) -> String {
    format!("{}_seen{index}", query_key(query_name))
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// An in-memory `Cache`, for unit tests.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryCache(pub std::collections::HashMap<String, String>);

#[cfg(test)]
impl Cache for MemoryCache {
    fn read(&mut self, key: &str) -> std::result::Result<String, String> {
        Ok(self.0.get(key).cloned().unwrap_or_default())
    }

    fn write(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        self.0.insert(key.into(), value.into());
        Ok(())
    }
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryState {
    /// Every event with `@timestamp` before this is delivered.
    pub checkpoint: DateTime<Utc>,
    pub cursor: Option<Cursor>,
    pub seen: DedupSet,
    /// The chunk that new ids go to, and the ids it holds.
    pub chunk: usize,
    pub open_chunk: Vec<u64>,
}

/// The position as stored: `chunk` is the index of the open id chunk.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Position {
    v: u32,
    pub checkpoint: DateTime<Utc>,
    pub cursor: Option<Cursor>,
    #[serde(default)]
    pub chunk: usize,
}

impl QueryState {
    pub fn new(checkpoint: DateTime<Utc>, dedup_capacity: usize) -> Self {
        let capacity = chunk_count(dedup_capacity) * IDS_PER_CHUNK;
        QueryState { checkpoint, cursor: None, seen: DedupSet::new(capacity), chunk: 0, open_chunk: Vec::new() }
    }

    /// The state from a stored position and the decoded id chunks, indexed by
    /// chunk number (empty for a missing or unreadable chunk).
    pub fn restore(position: Position, mut chunks: Vec<Vec<u64>>, dedup_capacity: usize) -> QueryState {
        let mut state = QueryState::new(position.checkpoint, dedup_capacity);
        state.cursor = position.cursor;
        state.chunk = if position.chunk < chunks.len() { position.chunk } else { 0 };
        state.seen.reserve(chunks.iter().map(Vec::len).sum());
        // Oldest chunk first, so that eviction order survives a restart.
        for offset in 1..=chunks.len() {
            for id in &chunks[(state.chunk + offset) % chunks.len()] {
                state.seen.insert(*id);
            }
        }
        if let Some(open) = chunks.get_mut(state.chunk) {
            state.open_chunk = std::mem::take(open);
        }
        state
    }

    pub fn position(&self) -> Position {
        Position { v: STATE_VERSION, checkpoint: self.checkpoint, cursor: self.cursor.clone(), chunk: self.chunk }
    }

    /// The checkpoint and cursor, as stored under `query_key`.
    pub fn encode_position(&self) -> String {
        serde_json::to_string(&self.position()).expect("state serializes")
    }

    /// `None` for an empty position entry; an error for one that cannot be read.
    pub fn decode_position(text: &str) -> Result<Option<Position>> {
        decode_entry(text, "checkpoint", STATE_VERSION, |p: &Position| p.v).map_err(HuntressError::Cache)
    }

    /// Records a forwarded (or deliberately skipped) event.
    pub fn remember(&mut self, id: u64) {
        if self.seen.insert(id) {
            self.open_chunk.push(id);
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

/// Ids of recently forwarded events, oldest evicted first past `capacity`.
/// Stored as 64-bit hashes: at 50,000 ids the chance of any collision is ~1e-10.
#[derive(Debug, Clone, PartialEq)]
pub struct DedupSet {
    order: VecDeque<u64>,
    members: HashSet<u64, BuildHasherDefault<IdHasher>>,
    capacity: usize,
}

impl DedupSet {
    pub fn new(capacity: usize) -> Self {
        DedupSet { order: VecDeque::new(), members: HashSet::default(), capacity: capacity.max(1) }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains(&id)
    }

    /// True when the id was not there yet.
    pub fn insert(&mut self, id: u64) -> bool {
        if !self.members.insert(id) {
            return false;
        }
        self.order.push_back(id);
        self.evict_to(self.capacity);
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Room for `additional` more ids (up to the capacity) without rehashing.
    pub fn reserve(&mut self, additional: usize) {
        let room = additional.min(self.capacity.saturating_sub(self.order.len()));
        self.members.reserve(room);
        self.order.reserve(room);
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        self.evict_to(self.capacity);
    }

    fn evict_to(&mut self, count: usize) {
        while self.order.len() > count {
            if let Some(old) = self.order.pop_front() {
                self.members.remove(&old);
            }
        }
    }

    pub fn encode_ids(ids: &[u64]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 8);
        for id in ids {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
    }

    pub fn decode_ids(text: &str) -> Result<Vec<u64>> {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.trim())
            .map_err(|e| HuntressError::Cache(format!("unreadable dedup ids ({e})")))?;
        Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 123_456_789).unwrap()
    }

    fn decoded(chunks: &[String]) -> Vec<Vec<u64>> {
        chunks.iter().map(|c| DedupSet::decode_ids(c).unwrap()).collect()
    }

    fn save(state: &mut QueryState, chunks: &mut [String]) -> String {
        chunks[state.chunk] = state.encode_open_chunk();
        state.rotate_full_chunk(chunks.len());
        state.encode_position()
    }

    #[test]
    fn state_round_trips_with_nanoseconds_and_ids() {
        let mut state = QueryState::new(at(1_780_000_000), 3_000);
        state.cursor = Some(Cursor { range_start: at(1), range_end: at(2), page_token: Some("t".into()), pages_done: 3, restarts: 0 });
        let mut chunks = vec![String::new(); chunk_count(3_000)];
        let mut position = String::new();
        for id in 0..2_500u64 {
            state.remember(id * 7919);
            if id % 200 == 199 {
                position = save(&mut state, &mut chunks);
            }
        }
        position = if state.open_chunk.is_empty() { position } else { save(&mut state, &mut chunks) };
        let restored = QueryState::restore(QueryState::decode_position(&position).unwrap().unwrap(), decoded(&chunks), 3_000);
        assert_eq!(restored.checkpoint.timestamp_subsec_nanos(), 123_456_789);
        assert_eq!(restored.cursor, state.cursor);
        assert_eq!(restored.seen.len(), 2_500);
        assert!(restored.seen.contains(2_499 * 7919) && restored.seen.contains(0));
        assert_eq!(restored.chunk, state.chunk);
        assert_eq!(restored.open_chunk, state.open_chunk);
    }

    #[test]
    fn a_page_rewrites_one_small_chunk() {
        let mut state = QueryState::new(at(0), 50_000);
        for id in 0..40_000 {
            state.remember(id);
            state.rotate_full_chunk(chunk_count(50_000));
        }
        assert!(state.encode_open_chunk().len() <= IDS_PER_CHUNK * 8 * 4 / 3 + 4);
    }

    #[test]
    fn full_chunks_rotate_and_the_oldest_is_overwritten() {
        let capacity = 2 * IDS_PER_CHUNK;
        let mut state = QueryState::new(at(0), capacity);
        let mut chunks = vec![String::new(); chunk_count(capacity)];
        let mut position = String::new();
        for id in 0..(3 * IDS_PER_CHUNK as u64) {
            state.remember(id);
            position = save(&mut state, &mut chunks);
        }
        let restored = QueryState::restore(QueryState::decode_position(&position).unwrap().unwrap(), decoded(&chunks), capacity);
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
            state.remember(id);
        }
        let _lost_position = save(&mut state, &mut chunks);
        let restored = QueryState::restore(QueryState::decode_position(&old_position).unwrap().unwrap(), decoded(&chunks), 5_000);
        assert!(restored.seen.contains(199));
    }

    #[test]
    fn empty_and_corrupt_entries() {
        assert!(QueryState::decode_position("").unwrap().is_none());
        assert!(DedupSet::decode_ids("").unwrap().is_empty());
        assert!(matches!(QueryState::decode_position("{not json"), Err(HuntressError::Cache(_))));
        assert!(matches!(QueryState::decode_position(r#"{"v":9,"checkpoint":"2026-01-01T00:00:00Z","cursor":null}"#), Err(HuntressError::Cache(_))));
        assert!(matches!(DedupSet::decode_ids("!!!"), Err(HuntressError::Cache(_))));
    }

    #[test]
    fn a_smaller_capacity_restarts_the_chunk_index() {
        let mut position = QueryState::new(at(0), 10_000).position();
        position.chunk = 7;
        let restored = QueryState::restore(position, vec![Vec::new(); 2], 2_000);
        assert_eq!(restored.chunk, 0);
    }

    #[test]
    fn dedup_set_is_bounded_and_evicts_oldest() {
        let mut set = DedupSet::new(3);
        for id in [1, 2, 3, 4] {
            assert!(set.insert(id));
        }
        assert_eq!(set.len(), 3);
        assert!(!set.contains(1) && set.contains(4));
        assert!(!set.insert(4));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn completing_a_window_moves_the_checkpoint_and_keeps_ids() {
        let mut state = QueryState::new(at(100), 10_000);
        for id in 0..5_000 {
            state.remember(id);
        }
        state.cursor = Some(Cursor { range_start: at(100), range_end: at(200), page_token: None, pages_done: 9, restarts: 0 });
        state.complete_window();
        assert_eq!(state.checkpoint, at(200));
        assert!(state.cursor.is_none());
        assert!(state.seen.contains(4_999) && state.seen.contains(0));
    }

    #[test]
    fn checkpoint_never_moves_back() {
        let mut state = QueryState::new(at(300), 10);
        state.cursor = Some(Cursor { range_start: at(100), range_end: at(200), page_token: None, pages_done: 1, restarts: 0 });
        state.complete_window();
        assert_eq!(state.checkpoint, at(300));
    }

    #[test]
    fn cache_ids_are_stable_and_hide_the_key() {
        let a = cache_id("https://api.huntress.io", "PUBKEY");
        assert_eq!(a, cache_id("https://api.huntress.io", "PUBKEY"));
        assert_ne!(a, cache_id("https://api.huntress.io", "OTHER"));
        assert!(!a.contains("PUBKEY"));
        assert_ne!(query_key("a"), query_key("b"));
        assert_ne!(seen_chunk_key("a", 0), query_key("a"));
        assert_ne!(seen_chunk_key("a", 0), seen_chunk_key("a", 1));
        assert!(query_key("weird name/ü").chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
