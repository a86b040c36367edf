//! The Agent's persistent cache as the core sees it: the `Cache` trait, the
//! namespace of one Huntress account, versioned JSON entries, and the hashes
//! that keep identities (API keys, query names, item ids) out of what is stored.

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

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

/// The keys of one instance's state within its account's namespace: the
/// account's keys with `suffix` appended. Instances that share a Huntress
/// account but collect different organizations (one per client) keep apart
/// checkpoints and memories of what they handled: rows one leaves out of its
/// scope are rows the other must still send.
pub struct SuffixedKeys<'a> {
    pub inner: &'a mut dyn Cache,
    pub suffix: &'a str,
}

impl Cache for SuffixedKeys<'_> {
    fn read(&mut self, key: &str) -> std::result::Result<String, String> {
        self.inner.read(&format!("{key}{}", self.suffix))
    }

    fn write(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        self.inner.write(&format!("{key}{}", self.suffix), value)
    }
}

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

/// SHA-256 of `parts`, each prefixed by its length so that no two lists of
/// parts hash alike.
pub fn digest(parts: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The first 12 bytes of `digest(parts)` in hex: a name for a cache key.
pub fn short_hash(parts: &[&str]) -> String {
    digest(parts)[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 8 bytes of `digest(parts)`: a compact stored identity.
pub fn hash64(parts: &[&str]) -> u64 {
    let bytes = digest(parts);
    u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixed_keys_read_and_write_only_their_own_entries() {
        let mut agent = crate::test_support::MemoryCache::default();
        agent.write("incidents_state", "account").unwrap();
        let mut scoped = SuffixedKeys { inner: &mut agent, suffix: "_scopeabc" };
        assert_eq!(scoped.read("incidents_state").unwrap(), "");
        scoped.write("incidents_state", "client").unwrap();
        assert_eq!(scoped.read("incidents_state").unwrap(), "client");
        assert_eq!(agent.read("incidents_state").unwrap(), "account");
        assert_eq!(agent.read("incidents_state_scopeabc").unwrap(), "client");
    }

    #[test]
    fn cache_ids_are_stable_and_hide_the_key() {
        let a = cache_id("https://api.huntress.io", "PUBKEY");
        assert_eq!(a, cache_id("https://api.huntress.io", "PUBKEY"));
        assert_ne!(a, cache_id("https://api.huntress.io", "OTHER"));
        assert!(!a.contains("PUBKEY"));
    }

    #[test]
    fn parts_are_hashed_with_their_lengths() {
        assert_ne!(hash64(&["ab", "c"]), hash64(&["a", "bc"]));
        assert_eq!(short_hash(&["x"]).len(), 24);
    }
}
