//! What a REST feed remembers between runs: its checkpoint and the last
//! version forwarded of each recent item (incident reports, escalations,
//! signals), kept in the Agent's persistent cache.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::base::cache::{decode_entry, hash64, Cache};
use crate::feeds::item::{item_id, text, updated_at};

/// Items whose last forwarded version is remembered.
pub const KNOWN_ITEMS: usize = 5_000;
/// Items remembered at most while a walk down a deep backlog is under way:
/// every version it forwarded, so that a walk read again from its first page
/// sends none of them twice.
pub const MAX_KNOWN_ITEMS: usize = 50_000;
const STATE_VERSION: u32 = 1;


/// How an item version relates to what was forwarded before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    StatusChanged,
    Updated,
    /// This version (or a newer one) was already forwarded.
    Seen,
}

impl Change {
    pub fn tag(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::StatusChanged => "status_changed",
            Change::Updated => "updated",
            Change::Seen => "seen",
        }
    }
}

/// The members whose change makes a new version whatever `updated_at` says:
/// what a reader of the item acts on (its status, severity and resolution).
pub const CONTENT_FIELDS: [&str; 6] = ["status", "severity", "closed_at", "resolved_at", "resolution", "resolution_summary"];

/// One version of one item, as hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub report: u64,
    /// `updated_at` in epoch ms, `i64::MIN` when unreadable.
    pub updated_ms: i64,
    pub status: u32,
    /// `updated_at` text and status together.
    pub version: u32,
    /// The `CONTENT_FIELDS` together; 0 when not known (a version saved
    /// before contents were remembered, or one made from the id alone).
    pub content: u32,
}

impl Version {
    pub fn of(item: &Map<String, Value>) -> Version {
        let updated = item.get("updated_at").map(Value::to_string).unwrap_or_default();
        let status = text(item, "status").to_lowercase();
        let fields: Vec<String> = CONTENT_FIELDS.iter().map(|k| item.get(*k).map(Value::to_string).unwrap_or_default()).collect();
        let mut parts: Vec<&str> = vec!["content"];
        parts.extend(fields.iter().map(String::as_str));
        Version {
            report: hash64(&["report", &item_id(item)]),
            updated_ms: updated_at(item).map_or(i64::MIN, |t| t.timestamp_millis()),
            status: hash64(&["status", &status]) as u32,
            version: hash64(&["version", &updated, &status]) as u32,
            content: (hash64(&parts) as u32).max(1),
        }
    }

    /// A version that only the id makes: once forwarded, an item is `Seen`.
    pub fn of_id(item: &Map<String, Value>) -> Version {
        Version { report: hash64(&["report", &item_id(item)]), updated_ms: i64::MIN, status: 0, version: 0, content: 0 }
    }
}

/// The last version forwarded per item, oldest change evicted first.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownVersions {
    order: VecDeque<u64>,
    last: HashMap<u64, Version>,
    capacity: usize,
}

impl KnownVersions {
    pub fn new(capacity: usize) -> Self {
        KnownVersions { order: VecDeque::new(), last: HashMap::new(), capacity: capacity.max(1) }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// A version is seen when its content is the one forwarded and its time is
    /// the same or older (a stale copy). A changed content is a new version
    /// whatever its time says: an item once served with a time far in the
    /// future still has its later resolution forwarded.
    pub fn classify(&self, v: &Version) -> Change {
        let Some(old) = self.last.get(&v.report) else { return Change::New };
        let older = old.updated_ms != i64::MIN && v.updated_ms != i64::MIN && v.updated_ms < old.updated_ms;
        let same_content = if old.content != 0 && v.content != 0 { old.content == v.content } else { old.status == v.status };
        if same_content && (old.version == v.version || older) {
            Change::Seen
        } else if old.status != v.status {
            Change::StatusChanged
        } else {
            Change::Updated
        }
    }

    pub fn record(&mut self, v: Version) {
        if self.last.insert(v.report, v).is_some() {
            self.order.retain(|r| *r != v.report);
        }
        self.order.push_back(v.report);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.last.remove(&oldest);
            }
        }
    }

    /// Remembers `capacity` items from now on (the oldest changes beyond it are dropped).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.last.remove(&oldest);
            }
        }
    }

    /// Remembers at least `capacity` items from now on.
    pub fn grow_to(&mut self, capacity: usize) {
        self.capacity = self.capacity.max(capacity);
    }

    /// Remembers `capacity` items from now on, dropping first the oldest
    /// recorded of those changed before `keep_since_ms`: the changes a scan
    /// from the checkpoint reads again stay, even past `capacity`.
    pub fn shrink_keeping(&mut self, capacity: usize, keep_since_ms: i64) {
        let mut excess = self.order.len().saturating_sub(capacity.max(1));
        let last = &mut self.last;
        self.order.retain(|report| {
            if excess == 0 || last[report].updated_ms >= keep_since_ms {
                return true;
            }
            last.remove(report);
            excess -= 1;
            false
        });
        self.capacity = capacity.max(1).max(self.order.len());
    }

    /// The content hashes, in the order of `encode`: a member of its own, so
    /// that a version of the check that does not know it still reads the rest.
    fn encode_contents(&self) -> String {
        let bytes: Vec<u8> = self.order.iter().flat_map(|r| self.last[r].content.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
    }

    fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(self.order.len() * 24);
        for report in &self.order {
            let v = &self.last[report];
            bytes.extend_from_slice(&v.report.to_le_bytes());
            bytes.extend_from_slice(&v.updated_ms.to_le_bytes());
            bytes.extend_from_slice(&v.status.to_le_bytes());
            bytes.extend_from_slice(&v.version.to_le_bytes());
        }
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
    }

    fn decode(text: &str, contents: &str, capacity: usize) -> Result<Self, String> {
        let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
        let bytes = engine.decode(text).map_err(|e| format!("unreadable versions ({e})"))?;
        let contents = engine.decode(contents).map_err(|e| format!("unreadable version contents ({e})"))?;
        // Contents that do not match the versions one for one are not used.
        let contents: Vec<u32> = if contents.len() / 4 == bytes.len() / 24 {
            contents.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
        } else {
            Vec::new()
        };
        let mut known = KnownVersions::new(capacity.max(bytes.len() / 24));
        for (i, c) in bytes.chunks_exact(24).enumerate() {
            known.record(Version {
                content: contents.get(i).copied().unwrap_or(0),
                report: u64::from_le_bytes(c[0..8].try_into().expect("8 bytes")),
                updated_ms: i64::from_le_bytes(c[8..16].try_into().expect("8 bytes")),
                status: u32::from_le_bytes(c[16..20].try_into().expect("4 bytes")),
                version: u32::from_le_bytes(c[20..24].try_into().expect("4 bytes")),
            });
        }
        Ok(known)
    }
}

/// Where a walk down a listing deeper than one run's pages stands: the
/// checkpoint stays where the walk began until the walk is complete.
#[derive(Debug, Clone, PartialEq)]
pub struct Walk {
    /// The token of the next page to read; `None`: the first page (a walk
    /// whose token was refused starts again from there).
    pub token: Option<String>,
    /// When the walk began: a change made after it may sit on a page already
    /// read, so the checkpoint moves no further than this.
    pub started: DateTime<Utc>,
    /// The newest `updated_at` read so far, not after the time it was read.
    pub newest: Option<DateTime<Utc>>,
    /// The `updated_at` of the last item read, to check the order across runs.
    pub last: Option<DateTime<Utc>>,
    /// Whether every item so far came newest change first.
    pub ordered: bool,
    /// Versions forwarded during the walk: the memory holds them all (up to
    /// `MAX_KNOWN_ITEMS`).
    pub forwarded: usize,
    /// Pages the walk has read from the first page: a walk whose token the
    /// API refused reads again that far and further in one run, so that
    /// tokens expiring between runs do not hold it at the same depth.
    pub pages: u32,
}

impl Walk {
    pub fn new(started: DateTime<Utc>) -> Self {
        Walk { token: None, started, newest: None, last: None, ordered: true, forwarded: 0, pages: 0 }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredWalk {
    token: Option<String>,
    started: String,
    newest: Option<String>,
    last: Option<String>,
    ordered: bool,
    forwarded: usize,
    #[serde(default)]
    pages: u32,
}

fn stored_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| format!("`{text}` is not a time ({e})"))
}

impl StoredWalk {
    fn of(walk: &Walk) -> Self {
        StoredWalk {
            token: walk.token.clone(),
            started: stored_time(walk.started),
            newest: walk.newest.map(stored_time),
            last: walk.last.map(stored_time),
            ordered: walk.ordered,
            forwarded: walk.forwarded,
            pages: walk.pages,
        }
    }

    fn read(value: Value) -> Result<Walk, String> {
        let stored: StoredWalk = serde_json::from_value(value).map_err(|e| e.to_string())?;
        if stored.token.as_deref().is_some_and(str::is_empty) {
            return Err("an empty page token".into());
        }
        let optional = |text: &Option<String>| text.as_deref().map(parse_time).transpose();
        Ok(Walk {
            token: stored.token,
            started: parse_time(&stored.started)?,
            newest: optional(&stored.newest)?,
            last: optional(&stored.last)?,
            ordered: stored.ordered,
            forwarded: stored.forwarded,
            pages: stored.pages,
        })
    }
}

/// A checkpoint and the versions already forwarded, as kept in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedState {
    /// The newest time delivered; the next scan stops below it.
    pub checkpoint: DateTime<Utc>,
    pub known: KnownVersions,
    /// How far past the checkpoint one listing reads, in seconds; `None`: up to now.
    pub span: Option<i64>,
    /// The walk under way down a backlog deeper than a run's pages.
    pub walk: Option<Walk>,
    /// Why the saved walk could not be read (not saved: it is dropped).
    pub unreadable_walk: Option<String>,
    /// Whether the entry (or its walk) was unreadable when loaded, for the
    /// `cache` error count (not saved).
    pub damaged: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredState {
    v: u32,
    checkpoint: String,
    known: String,
    /// The content hash of each version in `known` (added later: may be missing).
    #[serde(default)]
    contents: String,
    /// The signal feed's read window, in seconds (see `signals`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    span: Option<i64>,
    /// A walk down a deep backlog (see `Walk`), read on its own so that an
    /// unreadable one drops only itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    walk: Option<Value>,
}

impl VersionedState {
    pub fn new(checkpoint: DateTime<Utc>) -> Self {
        VersionedState { checkpoint, known: KnownVersions::new(KNOWN_ITEMS), span: None, walk: None, unreadable_walk: None, damaged: false }
    }

    pub fn encode(&self) -> String {
        let stored = StoredState {
            v: STATE_VERSION,
            checkpoint: stored_time(self.checkpoint),
            known: self.known.encode(),
            contents: self.known.encode_contents(),
            span: self.span,
            walk: self.walk.as_ref().map(|walk| serde_json::to_value(StoredWalk::of(walk)).expect("walk serializes")),
        };
        serde_json::to_string(&stored).expect("state serializes")
    }

    /// `what` names the entry in messages, e.g. "incident checkpoint".
    pub fn decode(text: &str, what: &str) -> Result<Option<Self>, String> {
        let Some(stored) = decode_entry(text, what, STATE_VERSION, |s: &StoredState| s.v)? else {
            return Ok(None);
        };
        let checkpoint = DateTime::parse_from_rfc3339(&stored.checkpoint).map_err(|e| format!("unreadable {what} ({e})"))?;
        let known = KnownVersions::decode(&stored.known, &stored.contents, KNOWN_ITEMS).map_err(|e| format!("{what}: {e}"))?;
        let span = stored.span.filter(|s| *s > 0);
        let (walk, unreadable_walk) = match stored.walk.map(StoredWalk::read).transpose() {
            Ok(walk) => (walk, None),
            Err(why) => (None, Some(why)),
        };
        let damaged = unreadable_walk.is_some();
        Ok(Some(VersionedState { checkpoint: checkpoint.with_timezone(&Utc), known, span, walk, unreadable_walk, damaged }))
    }

    /// The saved state, or a fresh one `lookback` before `now`; an unreadable
    /// entry is reported in `warnings` and replaced.
    pub fn load(cache: &mut dyn Cache, key: &str, what: &str, now: DateTime<Utc>, lookback: Duration, warnings: &mut Vec<String>) -> Self {
        let fresh = || VersionedState::new(now - chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::zero()));
        match cache.read(key).map_err(|e| format!("cannot read the {what} ({e})")).and_then(|t| VersionedState::decode(&t, what)) {
            Ok(Some(state)) if state.checkpoint > now => {
                // Nothing changes after now: from a future checkpoint every scan would stop at
                // once. The look-back is read again; the known versions drop what was sent.
                let fresh = fresh();
                warnings.push(format!(
                    "the {what} {} is in the future (a clock step, or a restored or edited cache); items are read again from {}",
                    state.checkpoint.to_rfc3339(),
                    fresh.checkpoint.to_rfc3339()
                ));
                VersionedState { checkpoint: fresh.checkpoint, walk: None, ..state }
            }
            Ok(Some(state)) => {
                if let Some(why) = &state.unreadable_walk {
                    warnings.push(format!(
                        "the saved position in the listing of the {what} is unreadable ({why}); the listing is read again from its newest change, and what was sent is not sent again"
                    ));
                }
                state
            }
            Ok(None) => fresh(),
            Err(message) => {
                warnings.push(format!("{message}; starting again from initial_lookback_seconds"));
                VersionedState { damaged: true, ..fresh() }
            }
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(updated: &str, status: &str, resolved_at: Option<&str>) -> Map<String, Value> {
        json!({"id": 7, "updated_at": updated, "status": status, "severity": "critical", "resolved_at": resolved_at})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_version_from_the_future_does_not_hide_a_later_resolution() {
        let mut known = KnownVersions::new(10);
        known.record(Version::of(&item("2099-01-01T00:00:00Z", "open", None)));
        let resolved = Version::of(&item("2026-12-02T10:00:00Z", "resolved", Some("2026-12-02T10:00:00Z")));
        assert_eq!(known.classify(&resolved), Change::StatusChanged);
        known.record(resolved);
        assert_eq!(known.classify(&resolved), Change::Seen, "then it is seen");
        let resolution_only = Version::of(&item("2026-12-02T09:00:00Z", "resolved", Some("2026-12-02T11:00:00Z")));
        assert_eq!(known.classify(&resolution_only), Change::Updated, "a changed resolution is new too");
    }

    #[test]
    fn contents_round_trip_and_entries_without_them_still_read() {
        let mut state = VersionedState::new(Utc::now());
        state.known.record(Version::of(&item("2099-01-01T00:00:00Z", "open", None)));
        state.span = Some(40);
        let decoded = VersionedState::decode(&state.encode(), "test state").unwrap().unwrap();
        assert_eq!(decoded.span, Some(40));
        let later = Version::of(&item("2026-12-02T10:00:00Z", "open", Some("2026-12-02T10:00:00Z")));
        assert_eq!(decoded.known.classify(&later), Change::Updated);

        // An entry written before contents were kept: the status decides alone.
        let mut stored: serde_json::Value = serde_json::from_str(&state.encode()).unwrap();
        stored.as_object_mut().unwrap().remove("contents");
        stored.as_object_mut().unwrap().remove("span");
        let old = VersionedState::decode(&stored.to_string(), "test state").unwrap().unwrap();
        assert_eq!((old.span, old.known.classify(&later)), (None, Change::Seen));
        assert_eq!(old.known.classify(&Version::of(&item("2026-12-02T10:00:00Z", "resolved", None))), Change::StatusChanged);
    }

    #[test]
    fn a_walk_round_trips_and_shrinking_keeps_the_changes_since_the_checkpoint() {
        let mut state = VersionedState::new(Utc::now());
        let started = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z").unwrap().with_timezone(&Utc);
        state.walk = Some(Walk { token: Some("abc".into()), newest: Some(started), last: None, ordered: false, forwarded: 7, pages: 3, ..Walk::new(started) });
        let decoded = VersionedState::decode(&state.encode(), "test state").unwrap().unwrap();
        assert_eq!((decoded.walk, decoded.unreadable_walk, decoded.damaged), (state.walk.clone(), None, false));
        let mut stored: Value = serde_json::from_str(&state.encode()).unwrap();
        stored["walk"]["token"] = json!("");
        let damaged = VersionedState::decode(&stored.to_string(), "test state").unwrap().unwrap();
        assert!(damaged.walk.is_none() && damaged.damaged && damaged.unreadable_walk.unwrap().contains("empty"));

        let mut known = KnownVersions::new(10);
        for (id, minute) in [(1, 50), (2, 10), (3, 40), (4, 20)] {
            let mut version = Version::of(&item("2026-12-02T10:00:00Z", "open", None));
            version.report = id;
            version.updated_ms = minute * 60_000;
            known.record(version);
        }
        known.shrink_keeping(2, 30 * 60_000);
        let kept: Vec<u64> = known.order.iter().copied().collect();
        assert_eq!(kept, vec![1, 3], "the changes before the checkpoint go first, whenever recorded");
        known.shrink_keeping(1, 30 * 60_000);
        assert_eq!(known.len(), 2, "changes since the checkpoint stay past the bound");
    }
}
