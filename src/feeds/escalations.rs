//! Escalations (`escalations.enabled`): SOC requests for action, read from
//! `GET /v1/escalations` newest change first, on the rules of `versioned`.
//! Each new version (id, `updated_at`, status) becomes a log
//! (`service:huntress-escalations`) and a Datadog event whose alert type
//! follows the severity and is `success` once resolved. Each run also reads
//! the open and the overdue escalations (the API's `status=open` and
//! `status=overdue` filters) for `huntress.escalations.open` and
//! `huntress.escalations.overdue` by severity.
//!
//! An escalation lists the organizations it pertains to; it is in the scope
//! when any of them is.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::datadog::report::Event;
use crate::datadog::transform::{Enrichment, LogTemplate, PreparedLog};
use crate::feeds::item::{id_text, join_present, shaped_log, text, LogShape};
use crate::feeds::known::Change;
use crate::feeds::orgs::{enrich_row, resolve, OrgDirectory};
use crate::feeds::scope::OrgRef;
use crate::feeds::versioned::{alert_type, log_status, push_org_tags, version_event, EventParts, FeedNames, VersionedFeed};
use crate::huntress::client::Feature;
use crate::base::tags;

pub const ESCALATIONS_PATH: &str = "/v1/escalations";
pub const SERVICE: &str = "huntress-escalations";
/// The escalation checkpoint and the versions already forwarded.
pub const ESCALATIONS_KEY: &str = "escalations_state";

pub struct Escalations;

fn is_resolved(item: &Map<String, Value>) -> bool {
    text(item, "status").eq_ignore_ascii_case("resolved")
}

/// The organizations listed by the escalation (objects, ids or names), resolved by the directory when it can.
fn organizations(item: &Map<String, Value>, directory: Option<&OrgDirectory>) -> Vec<OrgRef> {
    let listed = item.get("organizations").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    listed
        .iter()
        .map(|org| resolve(directory, &OrgRef::from_object(org)))
        .collect()
}

/// The enrichment of the first organization listed (attributes and tags), as
/// for a row that carried its id and name.
fn enrichment_of(item: &Map<String, Value>, directory: Option<&OrgDirectory>) -> Enrichment {
    let first = item.get("organizations").and_then(Value::as_array).and_then(|a| a.first()).cloned().unwrap_or(Value::Null);
    let (id, name) = match &first {
        // The id as the API gave it (a number stays a number in the log).
        Value::Object(org) => (org.get("id").cloned().unwrap_or(Value::Null), org.get("name").cloned().unwrap_or(Value::Null)),
        other => {
            let org = OrgRef::from_object(other);
            let id = org.id.map(|id| id.parse::<u64>().map_or(Value::String(id), Value::from));
            (id.unwrap_or(Value::Null), org.name.map_or(Value::Null, Value::String))
        }
    };
    let probe = json!({"organization_id": id, "organization.name": name});
    let probe = probe.as_object().cloned().unwrap_or_default();
    enrich_row(directory, &probe).into_owned()
}

static NAMES: FeedNames = FeedNames {
    feature: Feature::Escalations,
    path: ESCALATIONS_PATH,
    plural: "escalations",
    cache_key: ESCALATIONS_KEY,
    what: "escalations",
    max_pages_option: "escalations.max_pages",
    metric_prefix: "huntress.escalations",
    event_title: "Huntress escalation",
    aggregation_prefix: "huntress-escalation",
    service: SERVICE,
};

impl VersionedFeed for Escalations {
    fn names(&self) -> &'static FeedNames {
        &NAMES
    }
    fn organizations(&self, item: &Map<String, Value>) -> Vec<OrgRef> {
        organizations(item, None)
    }

    /// The escalation's fields at the top level, `status` moved to
    /// `escalation_status` (`status` is the log level), `message` from the
    /// subject, `huntress.escalation_change`, and the organization of the first
    /// listed organization as attributes and tags.
    fn log_for(&self, item: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, template: &LogTemplate, now_ms: i64) -> Option<PreparedLog> {
        let (severity, status) = (text(item, "severity"), text(item, "status"));
        let shape = LogShape {
            status_aside: "escalation_status",
            level: log_status(severity, is_resolved(item)),
            timestamp: item.get("updated_at"),
            message: join_present(&[text(item, "type"), text(item, "subject")], ": "),
            extra: vec![("huntress.escalation_change", Value::from(change.tag()))],
            tags: vec![tags::tag("severity", severity), tags::tag("escalation_status", status)],
        };
        shaped_log(item, shape, enrichment_of(item, directory), template, now_ms)
    }

    fn event_for(&self, item: &Map<String, Value>, change: Change, directory: Option<&OrgDirectory>, base: &[String], now: DateTime<Utc>) -> Event {
        let id = item.get("id").and_then(id_text).unwrap_or_else(|| "unknown".into());
        let severity = text(item, "severity");
        let status = text(item, "status");
        let subject = match (text(item, "type"), text(item, "subject")) {
            ("", "") => format!("#{id} ({severity})"),
            (kind, "") | ("", kind) => kind.to_string(),
            (kind, subject) => format!("{kind}: {subject}"),
        };
        let orgs = organizations(item, directory);
        let names: Vec<String> = orgs
            .iter()
            .map(|o| match (&o.name, &o.id) {
                (Some(name), Some(id)) => format!("{name} ({id})"),
                (Some(name), None) => name.clone(),
                (None, Some(id)) => id.clone(),
                (None, None) => "unknown".into(),
            })
            .collect();
        let due = match text(item, "due_at") {
            "" => String::new(),
            due => format!(" · Due: {due}"),
        };
        let body = format!(
            "Severity: {severity} · Status: {status} · Organizations: {}{due} · Subtype: {} · Escalation {id}",
            if names.is_empty() { "unknown".to_string() } else { names.join(", ") },
            match text(item, "subtype") {
                "" => "none",
                s => s,
            }
        );
        let mut tags = base.to_vec();
        for org in &orgs {
            push_org_tags(&mut tags, org.id.as_deref(), org.name.as_deref());
        }
        tags.push(tags::tag("severity", severity));
        tags.push(tags::tag("escalation_status", status));
        tags.push(tags::tag("escalation_type", text(item, "type")));
        let alert_type = alert_type(severity, is_resolved(item));
        let parts = EventParts { id, subject, status: status.to_string(), text: body, alert_type, tags };
        version_event(&NAMES, item, change, parts, now)
    }

    fn status_gauges(&self) -> &'static [(&'static str, &'static str)] {
        &[("open", "open"), ("overdue", "overdue")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadog::processing::ProcessingRules;
    use crate::datadog::transform::StalePolicy;
    use crate::datadog::report::Status;
    use crate::test_support::FakeSource;
    use crate::feeds::scope::{parse, Scope};
    use crate::feeds::known::VersionedState;
    use crate::feeds::versioned::VersionedRun;
    use crate::test_support::{context, iso, TestSink, NOW};
    use crate::test_support::MemoryCache;
    use crate::datadog::report::Report;

    fn escalation(id: u64, updated: i64, status: &str, severity: &str, org: u64) -> Map<String, Value> {
        json!({
            "id": id, "severity": severity, "status": status, "type": "Environmental Issue", "subtype": "US",
            "subject": "Defender Disabled", "organizations": [{"id": org, "name": format!("Org {org}")}],
            "created_at": iso(updated - 3600), "updated_at": iso(updated), "due_at": iso(updated + 86400),
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn page(items: &[Map<String, Value>]) -> crate::base::error::Result<Value> {
        Ok(json!({"escalations": items, "pagination": {}}))
    }

    #[test]
    fn events_follow_severity_and_resolution() {
        let event = Escalations.event_for(&escalation(3, NOW, "open", "critical", 101), Change::New, None, &["team:sec".into()], Utc::now());
        assert_eq!(event.alert_type, "error");
        assert_eq!(event.aggregation_key, "huntress-escalation-3");
        assert_eq!(event.title, "Huntress escalation: Environmental Issue: Defender Disabled");
        for tag in ["team:sec", "huntress_org_id:101", "huntress_org_name:org_101", "severity:critical", "escalation_status:open"] {
            assert!(event.tags.contains(&tag.to_string()), "{tag} in {:?}", event.tags);
        }
        assert!(event.text.contains("Due: "));
        let resolved = Escalations.event_for(&escalation(3, NOW, "resolved", "critical", 101), Change::StatusChanged, None, &[], Utc::now());
        assert_eq!(resolved.alert_type, "success");
        assert!(resolved.title.starts_with("Huntress escalation resolved:"));
        let low = Escalations.event_for(&escalation(4, NOW, "open", "low", 101), Change::New, None, &[], Utc::now());
        assert_eq!(low.alert_type, "warning");
    }

    #[test]
    fn logs_carry_the_escalation_and_its_organization() {
        let template = LogTemplate { service: SERVICE.into(), ddtags: "team:sec".into(), stale_policy: StalePolicy::RewriteDate };
        let log = Escalations.log_for(&escalation(9, NOW, "open", "high", 101), Change::New, None, &template, NOW * 1000).unwrap();
        let log: Map<String, Value> = serde_json::from_slice(&log.json).unwrap();
        assert_eq!(log["service"], SERVICE);
        assert_eq!(log["status"], "error");
        assert_eq!(log["escalation_status"], "open");
        assert_eq!(log["huntress.escalation_change"], "new");
        assert_eq!(log["huntress_org_id"], 101);
        assert_eq!(log["message"], "Environmental Issue: Defender Disabled");
        assert!(log["ddtags"].as_str().unwrap().contains("severity:high"));
        let mut named = escalation(10, NOW, "open", "low", 101);
        named.insert("organizations".into(), json!(["Acme Dental"]));
        let log = Escalations.log_for(&named, Change::New, None, &template, NOW * 1000).unwrap();
        let log: Map<String, Value> = serde_json::from_slice(&log.json).unwrap();
        assert_eq!(log["huntress_org_name"], "Acme Dental", "organizations given as names, as the spec types them");
    }

    #[test]
    fn versions_are_forwarded_once_within_the_scope_and_gauges_read_open_and_overdue() {
        let mut cache = MemoryCache::default();
        let scope = Scope::new(parse(json!({"organizations": {"include": [101]}}).as_object().unwrap()).unwrap());
        let items = vec![escalation(2, NOW - 60, "open", "critical", 101), escalation(1, NOW - 120, "open", "low", 202)];
        let open = items.clone();
        let overdue = vec![items[1].clone()];
        let mut sink = TestSink::accepting();
        let mut report = Report::default();
        let rules = ProcessingRules::default();
        for _ in 0..2 {
            let mut source = FakeSource::new(vec![page(&items), page(&open), page(&overdue)]);
            let mut run = VersionedRun { feed: &Escalations, ctx: context(&mut sink, &rules, &mut cache, &scope) };
            let (health, pages) = run.run(&mut source, &mut report);
            assert_eq!(health.unwrap().status, Status::Ok);
            assert_eq!(pages, 3);
            let filters: Vec<_> = source.requests[1..].iter().map(|(_, q)| q.iter().find(|(k, _)| k == "status").unwrap().1.clone()).collect();
            assert_eq!(filters, vec!["open", "overdue"]);
            for (_, query) in &source.requests {
                assert!(query.contains(&("organization_id".to_string(), "101".to_string())), "the single included id is passed to the API");
            }
        }
        assert_eq!(sink.logs.len(), 1, "one escalation in scope, forwarded once over two runs");
        assert_eq!(report.events.len(), 1);
        assert!(report.events[0].tags.contains(&"huntress_org_id:101".to_string()));
        let gauge = |name: &str, severity: &str| {
            report.metrics.iter().filter(|m| m.name == name && m.tags.contains(&format!("severity:{severity}"))).map(|m| m.value).next_back()
        };
        assert_eq!(gauge("huntress.escalations.open", "critical"), Some(1.0));
        assert_eq!(gauge("huntress.escalations.open", "low"), Some(0.0), "organization 202 is out of scope");
        assert_eq!(gauge("huntress.escalations.overdue", "low"), Some(0.0));
        let by_org: Vec<_> = report.metrics.iter().filter(|m| m.name == "huntress.escalations.open_by_organization").map(|m| (m.tags.clone(), m.value)).collect();
        assert_eq!(by_org.last(), Some(&(vec!["huntress_org_id:101".to_string(), "huntress_org_name:unknown".into(), "severity:critical".into()], 1.0)));
        assert!(by_org.iter().all(|(tags, _)| !tags.contains(&"huntress_org_id:202".to_string())));
        let state = VersionedState::decode(&cache.0[ESCALATIONS_KEY], "escalation checkpoint").unwrap().unwrap();
        assert_eq!(state.checkpoint.timestamp(), NOW - 60);
    }
}
