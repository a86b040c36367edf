//! Organization enrichment: the directory of the account's organizations, read
//! from `GET /v1/account` and `GET /v1/organizations`, kept in the persistent
//! cache for `org_cache_ttl_seconds`, and used to tag each log with
//! `huntress_account_id`, `huntress_org_id`, `huntress_org_name` and
//! `huntress_org_key`.
//!
//! The cached directory is what enriches logs; a refresh that fails keeps it
//! (and says so). Only an empty cache makes the first run fetch it before the
//! SIEM queries; later refreshes come last, when the rate budget has room.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::base::cache::{decode_entry, Cache};
use crate::feeds::item::id_text;
use crate::base::error::{ErrorKind, HuntressError};
use crate::huntress::client::Feature;
use crate::datadog::report::Status;
use crate::feeds::paging::{list_pages, End, Health, PageSource, PAGE_LIMIT};
use crate::base::tags;
use crate::json::row::{Fields, Row};
use crate::datadog::transform::Enrichment;

pub const ACCOUNT_PATH: &str = "/v1/account";
pub const ORGS_PATH: &str = "/v1/organizations";
/// 100 pages of 500: 50,000 organizations. A listing that goes on longer is
/// misbehaving, and is cut.
pub const MAX_ORG_PAGES: u32 = 100;
const DIRECTORY_VERSION: u32 = 1;
/// The cached organization directory (organization enrichment, agent metrics).
pub const ORGS_KEY: &str = "orgs_directory";

#[derive(Debug, Clone, PartialEq)]
pub struct Org {
    /// As the API gave it (an integer).
    pub id: Value,
    pub name: String,
    pub key: String,
    pub agents_count: Option<u64>,
}

/// The organizations of one account, indexed for matching log rows.
#[derive(Debug, Clone)]
pub struct OrgDirectory {
    pub fetched_at: DateTime<Utc>,
    pub account_id: Option<Value>,
    /// False when the listing was cut (page cap, repeated token, budget).
    pub complete: bool,
    orgs: Vec<Org>,
    by_id: HashMap<String, usize>,
    /// Lowercased name → org; `None` when several organizations share the name.
    by_name: HashMap<String, Option<usize>>,
    enrichments: Vec<Enrichment>,
}

#[derive(Serialize, Deserialize)]
struct StoredDirectory {
    v: u32,
    fetched_at: DateTime<Utc>,
    account_id: Option<Value>,
    complete: bool,
    /// `[id, name, key, agents_count]` per organization: compact for thousands.
    orgs: Vec<(Value, String, String, Option<u64>)>,
}

/// The organization id of a row: `organization_id`, else `organization.id`
/// (flat or nested; rows of a `KEEP` carry null columns, which are skipped).
pub fn row_org_id(row: &dyn Fields) -> Option<(Value, String)> {
    ["organization_id", "organization.id"]
        .iter()
        .filter_map(|key| row.non_null(key))
        .find_map(|value| id_text(&value).map(|text| (value, text)))
}

/// The organization name of a row, for rows without an id.
pub fn row_org_name(row: &dyn Fields) -> Option<String> {
    ["organization.name", "organization_name"]
        .iter()
        .filter_map(|key| row.non_null(key))
        .find_map(|value| value.as_str().map(str::trim).filter(|s| !s.is_empty()).map(String::from))
}

fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Whether two organization names are the same name, as the directory
/// matches them: trimmed, case-insensitively.
pub fn same_name(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

/// An organization as an item names it: its id and/or its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgRef {
    pub id: Option<String>,
    pub name: Option<String>,
}

impl OrgRef {
    pub fn new(id: Option<String>, name: Option<String>) -> Self {
        let name = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        OrgRef { id, name }
    }

    /// `{"id": .., "name": ..}`, as escalations and signals carry it. The spec
    /// also types escalation organizations as strings: a number (or a string of
    /// digits) is taken as an id, other text as a name.
    pub fn from_object(value: &Value) -> Self {
        match value {
            Value::Object(_) => OrgRef::new(value.get("id").and_then(id_text), value.get("name").and_then(Value::as_str).map(String::from)),
            Value::String(text) if !text.trim().is_empty() && !text.trim().bytes().all(|b| b.is_ascii_digit()) => OrgRef::new(None, Some(text.clone())),
            other => OrgRef::new(id_text(other), None),
        }
    }

    /// The organization of a row or map: `organization_id` or `organization.id`
    /// (flat or nested), and `organization.name` or `organization_name`.
    pub fn of_fields(row: &dyn Fields) -> Self {
        OrgRef::new(row_org_id(row).map(|(_, id)| id), row_org_name(row))
    }
}

/// The one resolver of organizations, for scope, enrichment and tags.
///
/// An id is the organization: the directory gives its name, and a name the
/// item also carries is ignored. When the directory does not know the id, the
/// item's own name is kept unless it is the name of another organization of
/// the directory (an item cannot borrow another client's name). Without an
/// id, the name is looked up in the directory (trimmed, case-insensitively)
/// and gives the id when exactly one organization has that name. What stays
/// unknown stays `None`; the scope decides what an unresolved organization means.
pub fn resolve(directory: Option<&OrgDirectory>, org: &OrgRef) -> OrgRef {
    let Some(directory) = directory else { return org.clone() };
    if let Some(index) = directory.index_of(org) {
        let known = &directory.orgs[index];
        return OrgRef::new(id_text(&known.id), Some(known.name.clone()).filter(|n| !n.trim().is_empty()).or_else(|| org.name.clone()));
    }
    let borrowed = org.id.is_some() && org.name.as_deref().is_some_and(|name| directory.by_name.contains_key(&name_key(name)));
    OrgRef::new(org.id.clone(), org.name.clone().filter(|_| !borrowed))
}

impl OrgDirectory {
    pub fn new(fetched_at: DateTime<Utc>, account_id: Option<Value>, orgs: Vec<Org>, complete: bool) -> Self {
        let mut directory = OrgDirectory {
            fetched_at,
            account_id,
            complete,
            orgs: Vec::with_capacity(orgs.len()),
            by_id: HashMap::with_capacity(orgs.len()),
            by_name: HashMap::with_capacity(orgs.len()),
            enrichments: Vec::with_capacity(orgs.len()),
        };
        for org in orgs {
            let Some(id) = id_text(&org.id) else { continue };
            if directory.by_id.contains_key(&id) {
                continue;
            }
            let index = directory.orgs.len();
            directory.by_id.insert(id, index);
            if !org.name.trim().is_empty() {
                directory
                    .by_name
                    .entry(name_key(&org.name))
                    .and_modify(|slot| *slot = None)
                    .or_insert(Some(index));
            }
            directory.enrichments.push(enrichment(directory.account_id.as_ref(), Some(&org.id), Some(&org.name), Some(&org.key)));
            directory.orgs.push(org);
        }
        directory
    }

    /// Builds the directory from API objects; entries without an id are skipped.
    pub fn from_api(fetched_at: DateTime<Utc>, account: Option<&Map<String, Value>>, items: &[Map<String, Value>], complete: bool) -> Self {
        let account_id = account
            .and_then(|a| a.get("id").filter(|v| !v.is_null()).cloned())
            .or_else(|| items.iter().find_map(|o| o.get("account_id").filter(|v| !v.is_null()).cloned()));
        let text = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let orgs = items
            .iter()
            .filter(|o| o.get("id").and_then(id_text).is_some())
            .map(|o| Org {
                id: o["id"].clone(),
                name: text(o, "name"),
                key: text(o, "key"),
                agents_count: o.get("agents_count").and_then(Value::as_u64),
            })
            .collect();
        OrgDirectory::new(fetched_at, account_id, orgs, complete)
    }

    pub fn len(&self) -> usize {
        self.orgs.len()
    }

    pub fn orgs(&self) -> &[Org] {
        &self.orgs
    }

    pub fn get(&self, id: &str) -> Option<&Org> {
        self.by_id.get(id).map(|&i| &self.orgs[i])
    }

    /// The organization an item names: by id when it gives one, else by a
    /// name exactly one organization has (see `resolve`).
    fn index_of(&self, org: &OrgRef) -> Option<usize> {
        match (&org.id, &org.name) {
            (Some(id), _) => self.by_id.get(id).copied(),
            (None, Some(name)) => self.by_name.get(&name_key(name)).copied().flatten(),
            (None, None) => None,
        }
    }

    /// Pages of 500 that listing every agent takes, from the organizations' `agents_count`.
    pub fn agent_pages_estimate(&self) -> Option<u32> {
        let counts: Vec<u64> = self.orgs.iter().filter_map(|o| o.agents_count).collect();
        if counts.is_empty() {
            return None;
        }
        let total: u64 = counts.iter().sum();
        Some((total.div_ceil(u64::from(PAGE_LIMIT))).max(1).min(u64::from(u32::MAX)) as u32)
    }

    /// Requests a refresh takes: the account, and one per 500 organizations.
    pub fn refresh_requests(&self) -> u32 {
        1 + (self.orgs.len() as u32).div_ceil(PAGE_LIMIT).max(1)
    }

    /// The attributes and tags for one row: matched by `organization_id` or
    /// `organization.id` (flat or nested), else by `organization.name`.
    /// A known organization's enrichment is borrowed, not built per row.
    pub fn enrich(&self, row: &dyn Fields) -> Cow<'_, Enrichment> {
        let org = OrgRef::of_fields(row);
        if let Some(index) = self.index_of(&org) {
            return Cow::Borrowed(&self.enrichments[index]);
        }
        let org = resolve(Some(self), &org);
        let raw = row_org_id(row).map(|(raw, _)| raw);
        Cow::Owned(enrichment(self.account_id.as_ref(), raw.as_ref(), org.name.as_deref(), None))
    }

    pub fn encode(&self) -> String {
        let stored = StoredDirectory {
            v: DIRECTORY_VERSION,
            fetched_at: self.fetched_at,
            account_id: self.account_id.clone(),
            complete: self.complete,
            orgs: self.orgs.iter().map(|o| (o.id.clone(), o.name.clone(), o.key.clone(), o.agents_count)).collect(),
        };
        serde_json::to_string(&stored).expect("the directory serializes")
    }

    /// `Ok(None)` for an empty cache entry.
    pub fn decode(text: &str) -> Result<Option<OrgDirectory>, String> {
        let Some(stored) = decode_entry(text, "organization cache", DIRECTORY_VERSION, |s: &StoredDirectory| s.v)? else {
            return Ok(None);
        };
        let orgs = stored.orgs.into_iter().map(|(id, name, key, agents_count)| Org { id, name, key, agents_count }).collect();
        Ok(Some(OrgDirectory::new(stored.fetched_at, stored.account_id, orgs, stored.complete)))
    }

    /// This listing, plus the organizations of `older` it did not reach.
    fn merged_with(self, older: &OrgDirectory) -> OrgDirectory {
        let mut orgs = self.orgs;
        let known: std::collections::HashSet<String> = orgs.iter().filter_map(|o| id_text(&o.id)).collect();
        orgs.extend(older.orgs.iter().filter(|o| id_text(&o.id).is_some_and(|id| !known.contains(&id))).cloned());
        let account = self.account_id.or_else(|| older.account_id.clone());
        OrgDirectory::new(self.fetched_at, account, orgs, false)
    }
}

/// Enrichment from what is known; a missing part is left out.
fn enrichment(account: Option<&Value>, id: Option<&Value>, name: Option<&str>, key: Option<&str>) -> Enrichment {
    let mut attributes = Vec::with_capacity(4);
    let mut tag_list = Vec::with_capacity(4);
    let mut add = |attr: &str, value: Value, text: String| {
        tag_list.push(tags::tag(attr, &text));
        attributes.push((attr.to_string(), value));
    };
    if let Some((value, text)) = account.and_then(|v| id_text(v).map(|t| (v.clone(), t))) {
        add("huntress_account_id", value, text);
    }
    if let Some((value, text)) = id.and_then(|v| id_text(v).map(|t| (v.clone(), t))) {
        add("huntress_org_id", value, text);
    }
    if let Some(name) = name.filter(|n| !n.trim().is_empty()) {
        add("huntress_org_name", Value::String(name.to_string()), name.to_string());
    }
    if let Some(key) = key.filter(|k| !k.trim().is_empty()) {
        add("huntress_org_key", Value::String(key.to_string()), key.to_string());
    }
    Enrichment::new(attributes, tag_list.join(","))
}

/// Enrichment for a row with or without a directory: without one, the row's
/// own organization id (or name) still becomes a tag.
pub fn enrich_row<'d>(directory: Option<&'d OrgDirectory>, row: &dyn Fields) -> Cow<'d, Enrichment> {
    match directory {
        Some(directory) => directory.enrich(row),
        None => Cow::Owned(enrichment(None, row_org_id(row).map(|(raw, _)| raw).as_ref(), row_org_name(row).as_deref(), None)),
    }
}

/// Enrichment for the rows of one query run, built once per organization.
pub struct Enricher<'d> {
    directory: Option<&'d OrgDirectory>,
    enabled: bool,
    by_id: HashMap<String, Enrichment>,
    without_org: Option<Enrichment>,
    other: Enrichment,
}

/// The fields an organization can be read from (see `row_org_id`, `row_org_name`).
const ORG_FIELDS: [&str; 5] = ["organization_id", "organization.id", "organization", "organization.name", "organization_name"];

impl<'d> Enricher<'d> {
    pub fn new(directory: Option<&'d OrgDirectory>, enabled: bool) -> Self {
        Enricher { directory, enabled, by_id: HashMap::new(), without_org: None, other: Enrichment::default() }
    }

    pub fn enrich(&mut self, row: &Row) -> &Enrichment {
        if !self.enabled {
            return &self.other;
        }
        if ORG_FIELDS.iter().all(|key| row.get(key).is_none_or(|raw| raw == "null")) {
            return self.without_org.get_or_insert_with(|| enrich_row(self.directory, row).into_owned());
        }
        let Some(id) = plain_org_id(row) else {
            // String ids, nested objects and names: rare enough to build each time.
            self.other = enrich_row(self.directory, row).into_owned();
            return &self.other;
        };
        if !self.by_id.contains_key(id) {
            self.by_id.insert(id.to_string(), enrich_row(self.directory, row).into_owned());
        }
        &self.by_id[id]
    }
}

/// The organization id when the row gives it flat as a plain integer: the
/// common case, read without parsing. `row_org_id` would return the same text.
fn plain_org_id<'r>(row: &Row<'r>) -> Option<&'r str> {
    let is_plain = |raw: &str| (1..=18).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_digit());
    ["organization_id", "organization.id"]
        .iter()
        .map(|key| row.get(key))
        .find(|raw| raw.is_some_and(|r| r != "null"))
        .flatten()
        .filter(|raw| is_plain(raw))
}

/// What a refresh produced.
#[derive(Debug)]
pub enum Fetched {
    Directory { directory: OrgDirectory, end: End },
    Failed(HuntressError),
    /// The budget had no room to start.
    Deferred,
}

/// Reads the account and every organization page.
pub fn fetch(source: &mut dyn PageSource, now: DateTime<Utc>, max_pages: u32) -> Fetched {
    if !source.may_send() {
        return Fetched::Deferred;
    }
    let account = match source.get(ACCOUNT_PATH, &[]) {
        Ok(Value::Object(mut body)) => match body.remove("account") {
            Some(Value::Object(account)) => account,
            _ => return Fetched::Failed(malformed(ACCOUNT_PATH, "`account` is not an object")),
        },
        Ok(_) => return Fetched::Failed(malformed(ACCOUNT_PATH, "the response is not a JSON object")),
        Err(error) => return Fetched::Failed(error),
    };
    let mut items = Vec::new();
    let listing = list_pages(source, ORGS_PATH, "organizations", &[], max_pages, |page| {
        items.extend(page);
        true
    });
    match listing.end {
        End::Failed(error) => Fetched::Failed(error),
        end => {
            let complete = end.is_complete();
            Fetched::Directory { directory: OrgDirectory::from_api(now, Some(&account), &items, complete), end }
        }
    }
}

fn malformed(path: &str, what: &str) -> HuntressError {
    HuntressError::api(ErrorKind::MalformedResponse, format!("{path}: {what}"))
}

/// The directory of one instance: loaded from the persistent cache once, then
/// kept in memory and refreshed when its TTL has passed.
pub struct Orgs {
    ttl: Duration,
    directory: Option<OrgDirectory>,
    loaded: bool,
}

impl Orgs {
    pub fn new(ttl: Duration) -> Self {
        Orgs { ttl, directory: None, loaded: false }
    }

    pub fn directory(&self) -> Option<&OrgDirectory> {
        self.directory.as_ref()
    }

    /// Reads the cached directory the first time; a warning when it cannot.
    pub fn load(&mut self, cache: &mut dyn Cache) -> Option<String> {
        if self.loaded {
            return None;
        }
        self.loaded = true;
        match cache.read(ORGS_KEY).map_err(|e| format!("cannot read the organization cache ({e})")).and_then(|t| OrgDirectory::decode(&t)) {
            Ok(directory) => {
                self.directory = directory;
                None
            }
            Err(message) => Some(format!("{message}; it will be fetched again")),
        }
    }

    /// True when there is no directory, or its TTL has passed (always with TTL 0).
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        match &self.directory {
            None => true,
            // A fetch time in the future (clock step, edited cache) is due too, or it never would be.
            Some(d) => (now - d.fetched_at).to_std().map_or(true, |age| age >= self.ttl) || self.ttl.is_zero(),
        }
    }

    /// Requests a refresh is expected to take.
    pub fn refresh_requests(&self) -> u32 {
        self.directory.as_ref().map_or(2, OrgDirectory::refresh_requests)
    }

    /// Refreshes the directory. A failure keeps the cached one (WARNING) or,
    /// with none cached, leaves logs without organization names (CRITICAL).
    /// `None` when deferred before sending anything.
    pub fn refresh(&mut self, source: &mut dyn PageSource, cache: &mut dyn Cache, now: DateTime<Utc>) -> Option<Health> {
        match fetch(source, now, MAX_ORG_PAGES) {
            Fetched::Deferred => None,
            Fetched::Failed(error) => Some(self.failed(&error, now)),
            Fetched::Directory { directory, end } => {
                let mut warnings = Vec::new();
                if let Some(shortfall) = end.shortfall("organizations", MAX_ORG_PAGES, "org_cache_ttl_seconds") {
                    warnings.push(format!("{shortfall}; kept {} organizations", directory.len()));
                }
                let directory = match (&self.directory, directory.complete) {
                    (Some(older), false) => directory.merged_with(older),
                    _ => directory,
                };
                if let Err(e) = cache.write(ORGS_KEY, &directory.encode()) {
                    warnings.push(format!("cannot save the organization cache ({e}); it is kept in memory"));
                }
                self.directory = Some(directory);
                Some(if warnings.is_empty() { Health::ok(Feature::Orgs) } else { Health::warning(Feature::Orgs, warnings.join("; ")) })
            }
        }
    }

    fn failed(&self, error: &HuntressError, now: DateTime<Utc>) -> Health {
        match &self.directory {
            Some(cached) => {
                let age = (now - cached.fetched_at).num_seconds().max(0);
                let message = format!("refreshing the organization directory failed; using the cached one ({} organizations, {age}s old): {error}", cached.len());
                Health::failed(Feature::Orgs, Status::Warning, message, error)
            }
            None => {
                let message = format!("cannot read the organization directory; logs are not tagged with organization names: {error}");
                Health::failed(Feature::Orgs, Status::Critical, message, error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::FakeSource;
    use chrono::TimeZone;
    use serde_json::json;
    use crate::test_support::MemoryCache;
    use std::collections::HashMap as Map2;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn row(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn directory() -> OrgDirectory {
        let orgs = vec![
            row(json!({"id": 101, "name": "Acme Dental", "key": "acmedental", "account_id": 5, "agents_count": 700})),
            row(json!({"id": 102, "name": "Blue Harbor Logistics", "key": "blueharbor", "agents_count": 301})),
            row(json!({"id": 103, "name": "Twin", "key": "twin1"})),
            row(json!({"id": 104, "name": "twin", "key": "twin2"})),
        ];
        OrgDirectory::from_api(at(1_000), Some(&row(json!({"id": 5, "name": "Demo MSP"}))), &orgs, true)
    }

    fn attrs(e: &Enrichment) -> Map2<String, Value> {
        e.attributes.iter().cloned().collect()
    }

    #[test]
    fn the_run_enricher_agrees_with_enrich_row() {
        let d = directory();
        let mut enricher = Enricher::new(Some(&d), true);
        let rows = [
            json!({"organization_id": 102}),
            json!({"organization_id": 999}),
            json!({"organization_id": null, "organization.id": 101}),
            json!({"organization_id": "102"}),
            json!({"organization": {"id": 103}}),
            json!({"organization.name": "Acme Dental"}),
            json!({"uuid": "x"}),
            json!({"uuid": "y", "organization_id": null}),
            json!({"organization_id": 102}),
            json!({"organization_id": 12345678901234567890u64}),
        ];
        for value in rows {
            let text = value.to_string();
            let raw = Row::parse(&text).unwrap();
            let expected = enrich_row(Some(&d), &row(value.clone()));
            let got = enricher.enrich(&raw);
            assert_eq!((&got.tags, attrs(got)), (&expected.tags, attrs(&expected)), "{value}");
        }
        let raw = Row::parse(r#"{"organization_id": 102}"#).unwrap();
        assert_eq!(Enricher::new(Some(&d), false).enrich(&raw).tags, "");
    }

    #[test]
    fn rows_match_by_flat_dotted_and_nested_ids() {
        let d = directory();
        let expected = "huntress_account_id:5,huntress_org_id:101,huntress_org_name:acme_dental,huntress_org_key:acmedental";
        for r in [
            json!({"organization_id": 101}),
            json!({"organization_id": "101"}),
            json!({"organization.id": 101}),
            json!({"organization_id": null, "organization.id": 101}),
            json!({"organization": {"id": 101, "name": "ignored when the id matches"}}),
        ] {
            let e = d.enrich(&row(r.clone()));
            assert_eq!(e.tags, expected, "{r}");
            let a = attrs(&e);
            assert_eq!(a["huntress_org_id"], json!(101));
            assert_eq!(a["huntress_org_name"], json!("Acme Dental"));
            assert_eq!(a["huntress_org_key"], json!("acmedental"));
            assert_eq!(a["huntress_account_id"], json!(5));
        }
    }

    #[test]
    fn rows_without_an_id_match_by_name() {
        let d = directory();
        let e = d.enrich(&row(json!({"organization.name": "blue harbor logistics"})));
        assert_eq!(e.tags, "huntress_account_id:5,huntress_org_id:102,huntress_org_name:blue_harbor_logistics,huntress_org_key:blueharbor");
        let nested = d.enrich(&row(json!({"organization_id": null, "organization": {"name": "Acme Dental"}})));
        assert!(nested.tags.contains("huntress_org_id:101"));
        // A name two organizations share is not guessed at.
        let twin = d.enrich(&row(json!({"organization.name": "Twin"})));
        assert_eq!(twin.tags, "huntress_account_id:5,huntress_org_name:twin");
        let unknown = d.enrich(&row(json!({"organization.name": "New Client Ltd."})));
        assert_eq!(unknown.tags, "huntress_account_id:5,huntress_org_name:new_client_ltd.");
        assert_eq!(attrs(&unknown)["huntress_org_name"], json!("New Client Ltd."));
    }

    #[test]
    fn unknown_ids_and_missing_orgs_still_carry_what_is_known() {
        let d = directory();
        assert_eq!(d.enrich(&row(json!({"organization_id": 999}))).tags, "huntress_account_id:5,huntress_org_id:999");
        assert_eq!(d.enrich(&row(json!({"uuid": "x"}))).tags, "huntress_account_id:5");
        assert_eq!(enrich_row(None, &row(json!({"organization.id": 7}))).tags, "huntress_org_id:7");
        assert_eq!(enrich_row(None, &row(json!({"uuid": "x"}))).tags, "");
    }

    #[test]
    fn directory_round_trips_through_the_cache() {
        let d = directory();
        let decoded = OrgDirectory::decode(&d.encode()).unwrap().unwrap();
        assert_eq!(decoded.orgs(), d.orgs());
        assert_eq!(decoded.fetched_at, d.fetched_at);
        assert_eq!(decoded.account_id, Some(json!(5)));
        assert_eq!(decoded.enrich(&row(json!({"organization_id": 102}))).tags, d.enrich(&row(json!({"organization_id": 102}))).tags);
        assert!(OrgDirectory::decode("").unwrap().is_none());
        assert!(OrgDirectory::decode("{bad").is_err());
        assert_eq!(d.agent_pages_estimate(), Some(3));
        assert_eq!(d.refresh_requests(), 2);
    }

    #[test]
    fn thousands_of_organizations_fetch_over_pages() {
        let page = |range: std::ops::Range<u32>, token: Option<&str>| {
            let orgs: Vec<Value> = range.map(|i| json!({"id": 10_000 + i, "name": format!("Org {i}"), "key": format!("org{i}")})).collect();
            Ok(json!({"organizations": orgs, "pagination": token.map_or(json!({}), |t| json!({"next_page_token": t}))}))
        };
        let mut source = FakeSource::new(vec![
            Ok(json!({"account": {"id": 5}})),
            page(0..500, Some("a")),
            page(500..1000, Some("b")),
            page(1000..1200, None),
        ]);
        let Fetched::Directory { directory, end } = fetch(&mut source, at(0), MAX_ORG_PAGES) else { panic!() };
        assert!(end.is_complete() && directory.complete);
        assert_eq!(directory.len(), 1200);
        assert_eq!(directory.enrich(&row(json!({"organization_id": 11_150}))).tags, "huntress_account_id:5,huntress_org_id:11150,huntress_org_name:org_1150,huntress_org_key:org1150");
        assert_eq!(source.requests[0].0, ACCOUNT_PATH);
        assert!(source.requests[1..].iter().all(|(path, q)| path == ORGS_PATH && q.contains(&("limit".into(), "500".into()))));
    }

    #[test]
    fn a_looping_listing_ends_and_keeps_what_it_has() {
        let looping: Vec<_> = std::iter::once(Ok(json!({"account": {"id": 5}})))
            .chain((0..20).map(|_| Ok(json!({"organizations": [{"id": 1, "name": "A"}], "pagination": {"next_page_token": "again"}}))))
            .collect();
        let mut source = FakeSource::new(looping);
        let Fetched::Directory { directory, end } = fetch(&mut source, at(0), MAX_ORG_PAGES) else { panic!() };
        assert!(matches!(end, End::RepeatedToken));
        assert!(!directory.complete);
        assert_eq!(source.requests.len(), 3);
    }

    #[test]
    fn a_failed_refresh_keeps_the_cached_directory() {
        let mut cache = MemoryCache::default();
        cache.0.insert(ORGS_KEY.into(), directory().encode());
        let mut orgs = Orgs::new(Duration::from_secs(3600));
        assert!(orgs.load(&mut cache).is_none());
        assert!(!orgs.due(at(1_000 + 3_599)));
        assert!(orgs.due(at(1_000 + 3_600)));
        let mut source = FakeSource::new(vec![Err(HuntressError::api(ErrorKind::ServerError, "/v1/account returned 500"))]);
        let health = orgs.refresh(&mut source, &mut cache, at(5_000)).unwrap();
        assert_eq!(health.status, Status::Warning);
        assert!(health.message.unwrap().contains("using the cached one (4 organizations, 4000s old)"));
        assert_eq!(orgs.directory().unwrap().len(), 4);
        assert_eq!(OrgDirectory::decode(&cache.0[ORGS_KEY]).unwrap().unwrap().fetched_at, at(1_000), "the cache is untouched");

        let mut empty = Orgs::new(Duration::from_secs(3600));
        let mut source = FakeSource::new(vec![Err(HuntressError::api(ErrorKind::Forbidden, "403"))]);
        assert_eq!(empty.refresh(&mut source, &mut MemoryCache::default(), at(0)).unwrap().status, Status::Critical);
        assert!(empty.directory().is_none());
    }

    #[test]
    fn ttl_zero_is_always_due_and_a_partial_listing_merges() {
        let mut orgs = Orgs::new(Duration::ZERO);
        orgs.directory = Some(directory());
        assert!(orgs.due(at(1_000)));
        let mut source = FakeSource::new(vec![
            Ok(json!({"account": {"id": 5}})),
            Ok(json!({"organizations": [{"id": 101, "name": "Acme Dental Group", "key": "acme"}], "pagination": {"next_page_token": "x"}})),
        ]);
        source.budget = 2;
        let health = orgs.refresh(&mut source, &mut MemoryCache::default(), at(2_000)).unwrap();
        assert_eq!(health.status, Status::Warning);
        let d = orgs.directory().unwrap();
        assert_eq!(d.len(), 4, "organizations the cut listing did not reach are kept");
        assert_eq!(d.get("101").unwrap().name, "Acme Dental Group");
        assert!(!d.complete);
    }

    #[test]
    fn a_directory_fetched_in_the_future_is_due_and_a_corrupt_one_is_refetched() {
        let mut orgs = Orgs::new(Duration::from_secs(3600));
        orgs.directory = Some(directory());
        assert!(orgs.due(at(500)), "fetched after now: a clock step or an edited cache");
        assert!(!orgs.due(at(1_500)));
        for corrupt in ["{", "[]", r#"{"v":1,"fetched_at":"soon"}"#, "\u{0}"] {
            let mut cache = MemoryCache::default();
            cache.0.insert(ORGS_KEY.into(), corrupt.into());
            let mut fresh = Orgs::new(Duration::from_secs(3600));
            assert!(fresh.load(&mut cache).unwrap().contains("fetched again"), "{corrupt}");
            assert!(fresh.directory().is_none() && fresh.due(at(1_000)));
        }
    }
}
