//! Per-query collection state, stored as two opaque strings in the Agent's
//! persistent cache: the position (the checkpoint, before which everything is
//! delivered, and the resumable cursor of the window in progress), and the
//! bounded set of ids of recently forwarded events. The ids are written first,
//! as soon as the intake accepts a page, and the position after them: an Agent
//! killed in between replays the page on restart, and the ids drop it.

use std::collections::{HashSet, VecDeque};

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{HuntressError, Result};

const STATE_VERSION: u32 = 1;
/// Ids kept from a finished window, for events on the boundary of the next.
pub const BOUNDARY_IDS_KEPT: usize = 2_000;

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

/// The key of one query's position within the namespace.
pub fn query_key(query_name: &str) -> String {
    format!("siem_{}", short_hash(&["query", query_name]))
}

/// The key of one query's forwarded-event ids.
pub fn seen_key(query_name: &str) -> String {
    format!("{}_seen", query_key(query_name))
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
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
}

#[derive(Serialize, Deserialize)]
struct StoredPosition {
    v: u32,
    checkpoint: String,
    cursor: Option<Cursor>,
}

impl QueryState {
    pub fn new(checkpoint: DateTime<Utc>, dedup_capacity: usize) -> Self {
        QueryState { checkpoint, cursor: None, seen: DedupSet::new(dedup_capacity) }
    }

    /// The checkpoint and cursor, as stored under `query_key`.
    pub fn encode_position(&self) -> String {
        let stored = StoredPosition {
            v: STATE_VERSION,
            checkpoint: self.checkpoint.to_rfc3339_opts(SecondsFormat::Nanos, true),
            cursor: self.cursor.clone(),
        };
        serde_json::to_string(&stored).expect("state serializes")
    }

    /// The forwarded-event ids, as stored under `seen_key`.
    pub fn encode_seen(&self) -> String {
        self.seen.encode()
    }

    /// `None` for an empty position entry; an error for one that cannot be read.
    pub fn decode_position(text: &str) -> Result<Option<(DateTime<Utc>, Option<Cursor>)>> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let stored: StoredPosition = serde_json::from_str(text)
            .map_err(|e| HuntressError::Cache(format!("unreadable checkpoint ({e})")))?;
        if stored.v != STATE_VERSION {
            return Err(HuntressError::Cache(format!("checkpoint format v{} is not supported", stored.v)));
        }
        let checkpoint = DateTime::parse_from_rfc3339(&stored.checkpoint)
            .map_err(|e| HuntressError::Cache(format!("unreadable checkpoint time ({e})")))?
            .with_timezone(&Utc);
        Ok(Some((checkpoint, stored.cursor)))
    }

    pub fn decode_seen(text: &str, dedup_capacity: usize) -> Result<DedupSet> {
        let mut seen = DedupSet::decode(text.trim())?;
        seen.set_capacity(dedup_capacity);
        Ok(seen)
    }

    /// The window is fully delivered: move the checkpoint to its end.
    pub fn complete_window(&mut self) {
        if let Some(cursor) = self.cursor.take() {
            self.checkpoint = self.checkpoint.max(cursor.range_end);
            self.seen.keep_newest(BOUNDARY_IDS_KEPT);
        }
    }
}

/// Ids of recently forwarded events, oldest evicted first past `capacity`.
/// Stored as 64-bit hashes: at 50,000 ids the chance of any collision is ~1e-10.
#[derive(Debug, Clone, PartialEq)]
pub struct DedupSet {
    order: VecDeque<u64>,
    members: HashSet<u64>,
    capacity: usize,
}

impl DedupSet {
    pub fn new(capacity: usize) -> Self {
        DedupSet { order: VecDeque::new(), members: HashSet::new(), capacity: capacity.max(1) }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains(&id)
    }

    pub fn insert(&mut self, id: u64) {
        if self.members.insert(id) {
            self.order.push_back(id);
            self.evict_to(self.capacity);
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        self.evict_to(self.capacity);
    }

    pub fn keep_newest(&mut self, count: usize) {
        self.evict_to(count);
    }

    fn evict_to(&mut self, count: usize) {
        while self.order.len() > count {
            if let Some(old) = self.order.pop_front() {
                self.members.remove(&old);
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(self.order.len() * 8);
        for id in &self.order {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<DedupSet> {
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .map_err(|e| HuntressError::Cache(format!("unreadable dedup ids ({e})")))?;
        let mut set = DedupSet::new(usize::MAX);
        for chunk in bytes.chunks_exact(8) {
            set.insert(u64::from_le_bytes(chunk.try_into().expect("chunks of 8")));
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 123_456_789).unwrap()
    }

    #[test]
    fn state_round_trips_with_nanoseconds() {
        let mut state = QueryState::new(at(1_780_000_000), 100);
        state.cursor = Some(Cursor { range_start: at(1), range_end: at(2), page_token: Some("t".into()), pages_done: 3, restarts: 0 });
        for id in 0..10 {
            state.seen.insert(id * 7919);
        }
        let (checkpoint, cursor) = QueryState::decode_position(&state.encode_position()).unwrap().unwrap();
        let seen = QueryState::decode_seen(&state.encode_seen(), 100).unwrap();
        assert_eq!(QueryState { checkpoint, cursor, seen }, state);
        assert_eq!(checkpoint.timestamp_subsec_nanos(), 123_456_789);
    }

    #[test]
    fn empty_and_corrupt_entries() {
        assert!(QueryState::decode_position("").unwrap().is_none());
        assert!(QueryState::decode_seen("", 10).unwrap().is_empty());
        assert!(matches!(QueryState::decode_position("{not json"), Err(HuntressError::Cache(_))));
        assert!(matches!(QueryState::decode_position(r#"{"v":9,"checkpoint":"x","cursor":null}"#), Err(HuntressError::Cache(_))));
        assert!(matches!(QueryState::decode_seen("!!!", 10), Err(HuntressError::Cache(_))));
    }

    #[test]
    fn decoded_ids_respect_a_smaller_capacity() {
        let mut set = DedupSet::new(100);
        for id in 0..100 {
            set.insert(id);
        }
        let smaller = QueryState::decode_seen(&set.encode(), 10).unwrap();
        assert_eq!(smaller.len(), 10);
        assert!(smaller.contains(99) && !smaller.contains(0));
    }

    #[test]
    fn dedup_set_is_bounded_and_evicts_oldest() {
        let mut set = DedupSet::new(3);
        for id in [1, 2, 3, 4] {
            set.insert(id);
        }
        assert_eq!(set.len(), 3);
        assert!(!set.contains(1) && set.contains(4));
        set.insert(4);
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn completing_a_window_moves_the_checkpoint_and_trims_ids() {
        let mut state = QueryState::new(at(100), 10_000);
        for id in 0..5_000 {
            state.seen.insert(id);
        }
        state.cursor = Some(Cursor { range_start: at(100), range_end: at(200), page_token: None, pages_done: 9, restarts: 0 });
        state.complete_window();
        assert_eq!(state.checkpoint, at(200));
        assert!(state.cursor.is_none());
        assert_eq!(state.seen.len(), BOUNDARY_IDS_KEPT);
        assert!(state.seen.contains(4_999) && !state.seen.contains(0));
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
        assert_ne!(seen_key("a"), query_key("a"));
        assert!(query_key("weird name/ü").chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
