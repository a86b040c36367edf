//! Organization scope: which of the account's organizations (clients) an
//! instance forwards, for every feed.
//!
//! `organizations: {include: [...], exclude: [...]}` names organizations by id
//! or exact name. With an `include` list only those organizations are kept;
//! `exclude` removes organizations after that. A row, report, escalation,
//! signal or agent whose organization cannot be told (no id or name, or an id
//! the organization directory does not know while the rules name organizations
//! by name) follows `unknown_organization`: `forward` (the default) or `drop`.
//! SIEM rows are filtered here, after the query, never by editing the ES|QL.
//!
//! Each decision that drops an item, and each unknown organization, is counted
//! by feed for `huntress.scope.filtered` and `huntress.scope.unknown_organization`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::datadog::report::{with_tag, Report};
use crate::base::cache::short_hash;
use crate::base::error::{HuntressError, Result};
use crate::feeds::item::id_text;
pub use crate::feeds::orgs::OrgRef;
use crate::feeds::orgs::{resolve, same_name, OrgDirectory};

/// Items dropped as outside the scope, by `feed`.
pub const FILTERED_METRIC: &str = "huntress.scope.filtered";
/// Items of an organization the check could not tell, by `feed` and `action`.
pub const UNKNOWN_METRIC: &str = "huntress.scope.unknown_organization";

/// What happens to an item whose organization cannot be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownPolicy {
    #[default]
    Forward,
    Drop,
}

impl UnknownPolicy {
    pub fn tag(self) -> &'static str {
        match self {
            UnknownPolicy::Forward => "forward",
            UnknownPolicy::Drop => "drop",
        }
    }
}

/// The configured rules. Empty lists select every organization.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeRules {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub unknown: UnknownPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    Keep,
    Drop,
    Unknown,
}

fn is_id(entry: &str) -> bool {
    !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit())
}

/// One list of rules against a resolved organization: an id entry matches its
/// id, a name entry its name (trimmed, case-insensitively, as enrichment
/// matches names). `None` when the list names organizations in a way the
/// item's organization cannot be told by: ids without the item's id, or names
/// without its name.
fn list_verdict(list: &[String], org: &OrgRef) -> Option<bool> {
    let by_id = org.id.as_ref().is_some_and(|id| list.iter().any(|entry| entry == id));
    let by_name = org.name.as_ref().is_some_and(|name| list.iter().any(|entry| !is_id(entry) && same_name(entry, name)));
    if by_id || by_name {
        return Some(true);
    }
    let (has_ids, has_names) = (list.iter().any(|e| is_id(e)), list.iter().any(|e| !is_id(e)));
    if (has_ids && org.id.is_none()) || (has_names && org.name.is_none()) {
        return None;
    }
    Some(false)
}

impl ScopeRules {
    pub fn is_active(&self) -> bool {
        !self.include.is_empty() || !self.exclude.is_empty() || self.unknown == UnknownPolicy::Drop
    }

    /// What this scope collects, as a suffix of the instance's cache keys
    /// (empty for no scope, so unscoped instances keep their keys). Lists are
    /// compared as the scope compares names: trimmed, in any case and order.
    pub fn state_suffix(&self) -> String {
        if !self.is_active() {
            return String::new();
        }
        let normalized = |list: &[String]| {
            let mut names: Vec<String> = list.iter().map(|name| name.trim().to_lowercase()).collect();
            names.sort();
            names.dedup();
            names.join("\n")
        };
        format!("_scope{}", short_hash(&["scope", &normalized(&self.include), &normalized(&self.exclude), self.unknown.tag()]))
    }

    fn verdict(&self, org: &OrgRef) -> Membership {
        if org.id.is_none() && org.name.is_none() {
            return Membership::Unknown;
        }
        match list_verdict(&self.exclude, org) {
            Some(true) => return Membership::Drop,
            None => return Membership::Unknown,
            Some(false) => {}
        }
        if self.include.is_empty() {
            return Membership::Keep;
        }
        match list_verdict(&self.include, org) {
            Some(true) => Membership::Keep,
            Some(false) => Membership::Drop,
            None => Membership::Unknown,
        }
    }
}

/// The rules for one run, with the organization directory that resolves ids
/// to names, and the counts of what they dropped.
#[derive(Debug, Default)]
pub struct Scope {
    rules: ScopeRules,
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Scope {
    pub fn new(rules: ScopeRules) -> Self {
        Scope { rules, counts: Mutex::new(BTreeMap::new()) }
    }

    pub fn is_active(&self) -> bool {
        self.rules.is_active()
    }

    fn count(&self, feed: &'static str, what: &'static str) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry((feed, what)).or_default() += 1;
    }

    /// The organization an item names, as the directory resolves it (see `orgs::resolve`).
    fn resolved(org: &OrgRef, directory: Option<&OrgDirectory>) -> OrgRef {
        resolve(directory, org)
    }

    /// Kept when any organization is in scope; unknown when none is but one
    /// cannot be told; an item without organizations is unknown.
    fn verdict_any(&self, orgs: &[OrgRef], directory: Option<&OrgDirectory>) -> Membership {
        if orgs.is_empty() {
            return Membership::Unknown;
        }
        let verdicts: Vec<Membership> = orgs.iter().map(|org| self.rules.verdict(&Self::resolved(org, directory))).collect();
        if verdicts.contains(&Membership::Keep) {
            Membership::Keep
        } else if verdicts.contains(&Membership::Unknown) {
            Membership::Unknown
        } else {
            Membership::Drop
        }
    }

    fn forwards(&self, verdict: Membership) -> bool {
        verdict == Membership::Keep || (verdict == Membership::Unknown && self.rules.unknown == UnknownPolicy::Forward)
    }

    /// Whether an item of `feed` that belongs to `org` is forwarded; counted.
    pub fn admits(&self, feed: &'static str, org: &OrgRef, directory: Option<&OrgDirectory>) -> bool {
        self.admits_any(feed, std::slice::from_ref(org), directory)
    }

    /// For items tied to several organizations (escalations): forwarded when
    /// any of them is in scope; an item with none follows `unknown_organization`.
    /// Counted for `report`.
    pub fn admits_any(&self, feed: &'static str, orgs: &[OrgRef], directory: Option<&OrgDirectory>) -> bool {
        if !self.is_active() {
            return true;
        }
        let verdict = self.verdict_any(orgs, directory);
        match verdict {
            Membership::Keep => {}
            Membership::Drop => self.count(feed, "filtered"),
            Membership::Unknown => self.count(feed, self.rules.unknown.tag()),
        }
        self.forwards(verdict)
    }

    /// The `organization_id` filter a list request can carry: when the scope is
    /// exactly one organization (by id, or by a name the directory resolves),
    /// the API leaves the others out and saves requests. The items are still
    /// checked against the scope.
    pub fn api_filter(&self, directory: Option<&OrgDirectory>) -> Option<(&'static str, String)> {
        let single = match (self.rules.include.as_slice(), self.rules.exclude.is_empty()) {
            ([only], true) => only,
            _ => return None,
        };
        let id = if is_id(single) { Some(single.clone()) } else { resolve(directory, &OrgRef::new(None, Some(single.clone()))).id };
        id.filter(|id| is_id(id) && id.len() <= 10).map(|id| ("organization_id", id))
    }

    /// `admits_any` without counting: for items read a second time in a run (the status gauges).
    pub fn would_admit_any(&self, orgs: &[OrgRef], directory: Option<&OrgDirectory>) -> bool {
        !self.is_active() || self.forwards(self.verdict_any(orgs, directory))
    }

    /// The organizations of the directory in scope, for organization gauges.
    pub fn admits_org_id(&self, id: &str, directory: Option<&OrgDirectory>) -> bool {
        !self.is_active() || self.rules.verdict(&Self::resolved(&OrgRef::new(Some(id.to_string()), None), directory)) == Membership::Keep
    }

    /// `huntress.scope.filtered` and `huntress.scope.unknown_organization`, by feed; then resets.
    pub fn report(&self, report: &mut Report, base: &[String]) {
        for ((feed, what), count) in std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner())) {
            let tags = with_tag(base, format!("feed:{feed}"));
            match what {
                "filtered" => report.count(FILTERED_METRIC, count as f64, &tags),
                action => report.count(UNKNOWN_METRIC, count as f64, &with_tag(&tags, format!("action:{action}"))),
            }
        }
    }
}

/// Parses `organizations` and `unknown_organization` from the instance.
pub fn parse(obj: &Map<String, Value>) -> Result<ScopeRules> {
    let mut rules = ScopeRules::default();
    match obj.get("organizations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(section)) => {
            for key in section.keys() {
                if key != "include" && key != "exclude" {
                    return Err(HuntressError::config(&format!("organizations.{key}"), "is not an option: use `include` and `exclude`"));
                }
            }
            rules.include = parse_list(section.get("include"), "organizations.include")?;
            rules.exclude = parse_list(section.get("exclude"), "organizations.exclude")?;
        }
        Some(_) => return Err(HuntressError::config("organizations", "must be a mapping, e.g. {include: [1234, \"Acme Dental\"]}")),
    }
    rules.unknown = match obj.get("unknown_organization") {
        None | Some(Value::Null) => UnknownPolicy::Forward,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("forward") => UnknownPolicy::Forward,
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("drop") => UnknownPolicy::Drop,
        Some(_) => return Err(HuntressError::config("unknown_organization", "must be `forward` or `drop`")),
    };
    Ok(rules)
}

fn parse_list(value: Option<&Value>, key: &str) -> Result<Vec<String>> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(HuntressError::config(key, "must be a list of organization ids or exact names")),
    };
    items
        .iter()
        .map(|item| match item {
            Value::Number(_) => id_text(item).ok_or_else(|| HuntressError::config(key, "holds a number that is not an organization id")),
            Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            _ => Err(HuntressError::config(key, "must hold organization ids (numbers) or exact names (non-empty strings)")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn rules(value: Value) -> ScopeRules {
        parse(value.as_object().unwrap()).unwrap()
    }

    fn org(id: Option<&str>, name: Option<&str>) -> OrgRef {
        OrgRef::new(id.map(String::from), name.map(String::from))
    }

    fn directory() -> OrgDirectory {
        let items = [json!({"id": 101, "name": "Acme Dental"}), json!({"id": 102, "name": "Bravo Law"})];
        let items: Vec<_> = items.iter().map(|v| v.as_object().unwrap().clone()).collect();
        OrgDirectory::from_api(Utc.timestamp_opt(0, 0).unwrap(), None, &items, true)
    }

    #[test]
    fn each_scope_keeps_its_own_state_and_no_scope_keeps_the_account_keys() {
        assert_eq!(rules(json!({})).state_suffix(), "");
        let acme = rules(json!({"organizations": {"include": [101, " Acme Dental "]}})).state_suffix();
        assert!(acme.starts_with("_scope") && acme.len() == "_scope".len() + 24, "{acme}");
        let same = rules(json!({"organizations": {"include": ["acme dental", 101]}})).state_suffix();
        assert_eq!(acme, same, "order, case and padding do not change what is collected");
        let bravo = rules(json!({"organizations": {"include": [102]}})).state_suffix();
        let excluded = rules(json!({"organizations": {"exclude": [101, "Acme Dental"]}})).state_suffix();
        let dropping = rules(json!({"organizations": {"include": [101, "Acme Dental"]}, "unknown_organization": "drop"})).state_suffix();
        assert!(bravo != acme && excluded != acme && dropping != acme && dropping != excluded);
        assert_ne!(rules(json!({"unknown_organization": "drop"})).state_suffix(), "");
    }

    #[test]
    fn include_by_id_or_name_and_exclude_after() {
        let d = directory();
        let scope = Scope::new(rules(json!({"organizations": {"include": [101, "Bravo Law"], "exclude": ["102"]}})));
        assert!(scope.admits("siem", &org(Some("101"), None), Some(&d)));
        assert!(!scope.admits("siem", &org(Some("102"), None), Some(&d)), "excluded after include");
        assert!(!scope.admits("siem", &org(Some("103"), Some("Charlie")), Some(&d)));
        let by_name = Scope::new(rules(json!({"organizations": {"include": ["Acme Dental"]}})));
        assert!(by_name.admits("incidents", &org(Some("101"), None), Some(&d)), "the directory gives the name");
        assert!(!by_name.admits("incidents", &org(Some("102"), None), Some(&d)));
        assert!(by_name.admits("incidents", &org(None, Some(" acme DENTAL ")), None), "names match as enrichment matches them");
    }

    #[test]
    fn scope_decides_on_the_organization_the_directory_resolves() {
        let d = directory();
        // Excluded by id: the client's items named only by name are resolved and dropped.
        let exclude = Scope::new(rules(json!({"organizations": {"exclude": [102]}, "unknown_organization": "drop"})));
        for named in [org(Some("102"), None), org(None, Some("Bravo Law")), org(None, Some("bravo law")), org(Some("102"), Some("Acme Dental"))] {
            assert!(!exclude.admits("siem", &named, Some(&d)), "{named:?}");
        }
        assert!(exclude.admits("siem", &org(None, Some("ACME dental")), Some(&d)));
        assert!(!exclude.admits("siem", &org(None, Some("Nobody Inc")), Some(&d)), "a name nobody has is unknown: dropped");
        assert!(!exclude.admits("siem", &org(None, Some("Bravo Law")), None), "no directory: unknown, dropped");
        // Included by id: the client's own items named by name are kept, not filtered.
        let include = Scope::new(rules(json!({"organizations": {"include": [101]}, "unknown_organization": "drop"})));
        assert!(include.admits("escalations", &org(None, Some("Acme Dental")), Some(&d)));
        assert!(include.admits_any("escalations", &[OrgRef::from_object(&json!("acme dental"))], Some(&d)));
        assert!(!include.admits_any("escalations", &[OrgRef::from_object(&json!("Bravo Law"))], Some(&d)));
        // An unknown id cannot borrow the name of another organization.
        let by_name = Scope::new(rules(json!({"organizations": {"include": ["Acme Dental"]}, "unknown_organization": "drop"})));
        assert!(!by_name.admits("signals", &org(Some("999"), Some("Acme Dental")), Some(&d)));
        assert!(by_name.admits("signals", &org(Some("101"), Some("whatever the item says")), Some(&d)));
        let mut report = Report::default();
        include.report(&mut report, &[]);
        let filtered: Vec<(String, f64)> = report.metrics.iter().map(|m| (m.tags.join(","), m.value)).collect();
        assert_eq!(filtered, vec![("feed:escalations".to_string(), 1.0)], "only the other client's escalation is filtered");
    }

    #[test]
    fn unknown_organizations_follow_the_policy_and_are_counted() {
        let d = directory();
        let forward = Scope::new(rules(json!({"organizations": {"include": ["Acme Dental"]}})));
        assert!(forward.admits("siem", &org(None, None), Some(&d)));
        assert!(forward.admits("siem", &org(Some("999"), None), Some(&d)), "an id the directory lacks, rules by name");
        let drop = Scope::new(rules(json!({"organizations": {"include": [101]}, "unknown_organization": "drop"})));
        assert!(!drop.admits("signals", &org(None, None), Some(&d)));
        assert!(!drop.admits("signals", &org(Some("999"), None), Some(&d)), "rules by id decide without a name");
        let mut report = Report::default();
        forward.report(&mut report, &[]);
        drop.report(&mut report, &[]);
        let counts: Vec<(String, Vec<String>, f64)> = report.metrics.iter().map(|m| (m.name.clone(), m.tags.clone(), m.value)).collect();
        assert_eq!(
            counts,
            vec![
                ("huntress.scope.unknown_organization".into(), vec!["feed:siem".into(), "action:forward".into()], 2.0),
                ("huntress.scope.unknown_organization".into(), vec!["feed:signals".into(), "action:drop".into()], 1.0),
                ("huntress.scope.filtered".into(), vec!["feed:signals".into()], 1.0),
            ]
        );
    }

    #[test]
    fn any_organization_in_scope_admits_a_shared_item() {
        let scope = Scope::new(rules(json!({"organizations": {"include": [101]}})));
        assert!(scope.admits_any("escalations", &[org(Some("102"), None), org(Some("101"), None)], None));
        assert!(!scope.admits_any("escalations", &[org(Some("102"), None)], None));
        assert!(scope.admits_any("escalations", &[], None), "no organization: forwarded by default");
        assert_eq!(OrgRef::from_object(&json!({"id": 101, "name": "Acme"})), org(Some("101"), Some("Acme")));
        assert_eq!(OrgRef::from_object(&json!("101")), org(Some("101"), None));
        assert_eq!(OrgRef::from_object(&json!("Acme Dental")), org(None, Some("Acme Dental")));
        assert_eq!(OrgRef::from_object(&json!(null)), org(None, None));
        assert_eq!(scope.api_filter(None), Some(("organization_id", "101".to_string())));
        assert_eq!(Scope::new(rules(json!({"organizations": {"include": ["Acme"]}}))).api_filter(None), None);
        let d = directory();
        let by_name = Scope::new(rules(json!({"organizations": {"include": ["bravo law"]}})));
        assert_eq!(by_name.api_filter(Some(&d)), Some(("organization_id", "102".to_string())), "a name the directory resolves");
        assert_eq!(Scope::new(rules(json!({"organizations": {"include": [1, 2]}}))).api_filter(None), None);
        assert_eq!(Scope::new(rules(json!({"organizations": {"include": [1], "exclude": [3]}}))).api_filter(None), None);
        assert!(!Scope::default().is_active());
        assert!(Scope::default().admits("siem", &org(None, None), None));
    }

    #[test]
    fn bad_scope_options_name_the_key() {
        let key = |v: Value| match parse(v.as_object().unwrap()) {
            Err(HuntressError::Config { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(json!({"organizations": [1]})), "organizations");
        assert_eq!(key(json!({"organizations": {"include": "Acme"}})), "organizations.include");
        assert_eq!(key(json!({"organizations": {"exclude": [""]}})), "organizations.exclude");
        assert_eq!(key(json!({"organizations": {"only": [1]}})), "organizations.only");
        assert_eq!(key(json!({"unknown_organization": "keep"})), "unknown_organization");
    }
}
