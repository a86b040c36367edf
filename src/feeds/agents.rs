//! Agent inventory metrics (`metrics.agents.enabled`): pages `GET /v1/agents`
//! (500 per page, up to `metrics.agents.max_pages`) and submits `huntress.agents.*`
//! gauges. The gauges are only submitted when the whole list was read, so a
//! partial listing never shows as a drop in agents.
//!
//! Tags, one extra tag per metric (besides the instance tags), values
//! normalised (see `tags`) and `none` where the API gave null:
//!
//! | metric | tag | values |
//! |---|---|---|
//! | `huntress.agents.count`, `.isolated`, `.stale` | — | |
//! | `huntress.agents.by_platform` | `platform` | at most 100 |
//! | `huntress.agents.by_os` | `os` | OS string shortened (`macOS 15.1.1` → `macos_15.1`), at most 100 |
//! | `huntress.agents.by_version` | `agent_version` | at most 100 |
//! | `huntress.agents.by_defender_status` | `defender_status` | at most 100 |
//! | `huntress.agents.by_firewall_status` | `firewall_status` | at most 100 |
//! | `huntress.agents.tamper_protection` | `tamper_configured`, `tamper_actual` | `true`, `false`, `none`: at most 9 pairs |
//! | `huntress.agents.by_organization` | `huntress_org_id`, `huntress_org_name` | the 500 organizations with most agents, each agent's organization resolved as the scope resolves it |
//!
//! Past its cap, a tag keeps its most frequent values and folds the rest into
//! `other`, so totals still add up.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::feeds::scope::{OrgRef, Scope};
use crate::feeds::feed::{Feed, Slot};
use crate::feeds::forwarding::FeedContext;
use crate::huntress::client::Feature;
use crate::feeds::orgs::{resolve, OrgDirectory};
use crate::datadog::report::{with_tag, Report, Status};
use crate::feeds::paging::{list_pages, End, Health, Listing, PageSource};
use crate::base::tags::{self, cap_values, MAX_ORGS_TAGGED, MAX_TAG_VALUES, NONE, OTHER};
use crate::datadog::transform::parse_timestamp_ms;

pub const AGENTS_PATH: &str = "/v1/agents";

/// The feed's gauges.
pub mod metric {
    pub const BY_DEFENDER_STATUS: &str = "huntress.agents.by_defender_status";
    pub const BY_FIREWALL_STATUS: &str = "huntress.agents.by_firewall_status";
    pub const BY_ORGANIZATION: &str = "huntress.agents.by_organization";
    pub const BY_OS: &str = "huntress.agents.by_os";
    pub const BY_PLATFORM: &str = "huntress.agents.by_platform";
    pub const BY_VERSION: &str = "huntress.agents.by_version";
    pub const COUNT: &str = "huntress.agents.count";
    pub const ISOLATED: &str = "huntress.agents.isolated";
    pub const STALE: &str = "huntress.agents.stale";
    pub const TAMPER_PROTECTION: &str = "huntress.agents.tamper_protection";
}

/// `metrics.agents`.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentsSettings {
    pub enabled: bool,
    pub max_pages: u32,
    /// An agent that has not called back for this long counts as stale.
    pub stale_after_seconds: u64,
}

/// Agent inventory as a feed: after the SIEM queries, when the budget has room.
pub struct Agents(pub AgentsSettings);

impl Feed for Agents {
    fn feature(&self) -> Feature {
        Feature::Agents
    }
    fn slot(&self) -> Slot {
        Slot::Spare
    }
    fn max_pages(&self) -> u32 {
        self.0.max_pages
    }
    fn first_estimate(&self, directory: Option<&OrgDirectory>) -> u32 {
        directory.and_then(OrgDirectory::agent_pages_estimate).unwrap_or(1)
    }
    fn run(&mut self, source: &mut dyn PageSource, ctx: FeedContext<'_>, report: &mut Report) -> (Option<Health>, u32) {
        run(source, &self.0, ctx.now, ctx.directory, ctx.scope, ctx.base_tags, report)
    }
}

/// Counts over every agent of the account.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentInventory {
    pub total: u64,
    pub by_platform: BTreeMap<String, u64>,
    pub by_os: BTreeMap<String, u64>,
    pub by_version: BTreeMap<String, u64>,
    pub by_defender_status: BTreeMap<String, u64>,
    pub by_firewall_status: BTreeMap<String, u64>,
    pub isolated: u64,
    /// (configured, actual) → agents.
    pub tamper: BTreeMap<(String, String), u64>,
    pub stale: u64,
    /// Organization id (as text, or `none`) → agents, by the organization
    /// `orgs::resolve` gives (an id, a nested `organization.id`, or a name).
    pub by_org: BTreeMap<String, u64>,
    /// Organization id → the name resolved with it.
    pub org_names: BTreeMap<String, String>,
}

fn text<'a>(agent: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    agent.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

fn bool_value(value: Option<&Value>) -> String {
    match value {
        Some(Value::Bool(true)) => "true".into(),
        Some(Value::Bool(false)) => "false".into(),
        _ => NONE.into(),
    }
}

/// A bounded OS tag: lowercase, a leading `Microsoft` dropped, version numbers
/// cut to major.minor (`Ubuntu 22.04.4 LTS` → `ubuntu_22.04_lts`).
pub fn normalize_os(os: Option<&str>) -> String {
    let lowered = os.unwrap_or_default().trim().to_lowercase();
    let lowered = lowered.strip_prefix("microsoft ").unwrap_or(&lowered);
    let words: Vec<String> = lowered.split_whitespace().map(short_version).collect();
    tags::value_or(Some(&words.join(" ")), NONE)
}

fn short_version(word: &str) -> String {
    let is_version = word.contains('.') && word.chars().all(|c| c.is_ascii_digit() || c == '.');
    if is_version {
        word.split('.').filter(|p| !p.is_empty()).take(2).collect::<Vec<_>>().join(".")
    } else {
        word.to_string()
    }
}

/// Isolated now: `Isolated`, or `Pending Release` (still cut off until released).
/// `Pending Isolation` is not isolated yet; `huntress.agents.by_firewall_status` shows it.
pub fn is_isolated(firewall_status: Option<&str>) -> bool {
    matches!(tags::value_or(firewall_status, NONE).as_str(), "isolated" | "pending_release")
}

impl AgentInventory {
    /// Counts one agent. Stale: `last_callback_at` older than `stale_after`, or missing.
    pub fn add(&mut self, agent: &Map<String, Value>, directory: Option<&OrgDirectory>, now: DateTime<Utc>, stale_after: Duration) {
        self.total += 1;
        *self.by_platform.entry(tags::value_or(text(agent, "platform"), NONE)).or_default() += 1;
        *self.by_os.entry(normalize_os(text(agent, "os"))).or_default() += 1;
        *self.by_version.entry(tags::value_or(text(agent, "version"), NONE)).or_default() += 1;
        *self.by_defender_status.entry(tags::value_or(text(agent, "defender_status"), NONE)).or_default() += 1;
        let firewall = text(agent, "firewall_status");
        *self.by_firewall_status.entry(tags::value_or(firewall, NONE)).or_default() += 1;
        self.isolated += u64::from(is_isolated(firewall));
        let tamper = (bool_value(agent.get("tamper_protection_configured")), bool_value(agent.get("tamper_protection_actual")));
        *self.tamper.entry(tamper).or_default() += 1;
        let last_callback = agent.get("last_callback_at").and_then(parse_timestamp_ms);
        let stale_before = now.timestamp_millis() - stale_after.as_millis() as i64;
        self.stale += u64::from(last_callback.is_none_or(|ms| ms < stale_before));
        let org = resolve(directory, &OrgRef::of_fields(agent));
        let id = org.id.unwrap_or_else(|| NONE.to_string());
        if let Some(name) = org.name {
            self.org_names.entry(id.clone()).or_insert(name);
        }
        *self.by_org.entry(id).or_default() += 1;
    }

    /// Submits the gauges; see the module docs for the tags.
    pub fn report(&self, report: &mut Report, base: &[String], directory: Option<&OrgDirectory>) {
        report.gauge(metric::COUNT, self.total as f64, base);
        report.gauge(metric::ISOLATED, self.isolated as f64, base);
        report.gauge(metric::STALE, self.stale as f64, base);
        let breakdowns = [
            (metric::BY_PLATFORM, "platform", &self.by_platform),
            (metric::BY_OS, "os", &self.by_os),
            (metric::BY_VERSION, "agent_version", &self.by_version),
            (metric::BY_DEFENDER_STATUS, "defender_status", &self.by_defender_status),
            (metric::BY_FIREWALL_STATUS, "firewall_status", &self.by_firewall_status),
        ];
        for (metric, tag, counts) in breakdowns {
            for (value, count) in cap_values(counts.clone(), MAX_TAG_VALUES) {
                report.gauge(metric, count as f64, &with_tag(base, format!("{tag}:{value}")));
            }
        }
        for ((configured, actual), count) in &self.tamper {
            let mut tags = with_tag(base, format!("tamper_configured:{configured}"));
            tags.push(format!("tamper_actual:{actual}"));
            report.gauge(metric::TAMPER_PROTECTION, *count as f64, &tags);
        }
        for (org, count) in cap_values(self.by_org.clone(), MAX_ORGS_TAGGED) {
            let name = match org.as_str() {
                OTHER | NONE => org.clone(),
                id => match (directory.and_then(|d| d.get(id)), self.org_names.get(id)) {
                    (Some(known), _) => tags::value_or(Some(&known.name), NONE),
                    (None, Some(name)) => tags::value_or(Some(name), tags::UNKNOWN),
                    (None, None) => tags::UNKNOWN.to_string(),
                },
            };
            let mut tags = with_tag(base, tags::tag("huntress_org_id", &org));
            tags.push(format!("huntress_org_name:{name}"));
            report.gauge(metric::BY_ORGANIZATION, count as f64, &tags);
        }
    }
}

/// Reads every agent page into an inventory of the agents in scope.
pub fn collect_in_scope(
    source: &mut dyn PageSource,
    max_pages: u32,
    now: DateTime<Utc>,
    stale_after: Duration,
    scope: &Scope,
    directory: Option<&OrgDirectory>,
) -> (AgentInventory, Listing) {
    let mut inventory = AgentInventory::default();
    let filters: Vec<_> = scope.api_filter(directory).into_iter().collect();
    let listing = list_pages(source, AGENTS_PATH, "agents", &filters, max_pages, |agents| {
        for agent in &agents {
            let org = OrgRef::of_fields(agent);
            if scope.admits(Feature::Agents.tag(), &org, directory) {
                inventory.add(agent, directory, now, stale_after);
            }
        }
        true
    });
    (inventory, listing)
}

/// Collects and, when the whole list was read, reports. `None` when the budget
/// left no room to send anything. The page count is for the next estimate.
pub fn run(
    source: &mut dyn PageSource,
    settings: &AgentsSettings,
    now: DateTime<Utc>,
    directory: Option<&OrgDirectory>,
    scope: &Scope,
    base: &[String],
    report: &mut Report,
) -> (Option<Health>, u32) {
    let stale_after = Duration::from_secs(settings.stale_after_seconds);
    let (inventory, listing) = collect_in_scope(source, settings.max_pages, now, stale_after, scope, directory);
    let health = match &listing.end {
        End::Budget if listing.pages == 0 => None,
        End::Failed(error) => {
            Some(Health::failed(Feature::Agents, Status::Critical, format!("agent metrics not submitted: {error}"), error))
        }
        end if end.is_complete() => {
            inventory.report(report, base, directory);
            Some(Health::ok(Feature::Agents))
        }
        end => {
            let why = end.shortfall("agents", settings.max_pages, "metrics.agents.max_pages").unwrap_or_default();
            Some(Health::warning(Feature::Agents, format!("agent metrics not submitted this run, the list is incomplete ({why})")))
        }
    };
    (health, listing.pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadog::report::MetricKind;
    use crate::test_support::FakeSource;
    use chrono::TimeZone;
    use serde_json::json;

    const NOW: i64 = 1_780_000_000;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(NOW, 0).unwrap()
    }

    fn ago(secs: i64) -> String {
        Utc.timestamp_opt(NOW - secs, 0).unwrap().to_rfc3339()
    }

    fn agent(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn gauges<'a>(report: &'a Report, name: &str) -> Vec<(&'a [String], f64)> {
        report.metrics.iter().filter(|m| m.name == name).inspect(|m| assert_eq!(m.kind, MetricKind::Gauge)).map(|m| (&m.tags[..], m.value)).collect()
    }

    fn value_with(report: &Report, name: &str, tag: &str) -> Option<f64> {
        gauges(report, name).into_iter().find(|(tags, _)| tags.iter().any(|t| t == tag)).map(|(_, v)| v)
    }

    fn sample() -> Vec<Map<String, Value>> {
        vec![
            agent(json!({"organization_id": 101, "platform": "windows", "os": "Windows 11 Pro", "version": "0.14.20", "defender_status": "Healthy",
                "firewall_status": "Enabled", "tamper_protection_configured": true, "tamper_protection_actual": true, "last_callback_at": ago(60)})),
            agent(json!({"organization_id": 101, "platform": "windows", "os": "Microsoft Windows 11 Pro", "version": "0.14.20", "defender_status": "Unhealthy",
                "firewall_status": "Isolated", "tamper_protection_configured": true, "tamper_protection_actual": null, "last_callback_at": ago(3 * 86_400)})),
            agent(json!({"organization_id": 102, "platform": "darwin", "os": "macOS 15.1.1", "version": "0.13.246", "defender_status": null,
                "firewall_status": "Pending Release", "tamper_protection_configured": null, "tamper_protection_actual": null, "last_callback_at": ago(10)})),
            agent(json!({"organization_id": 102, "platform": "linux", "os": "Ubuntu 22.04.4 LTS", "version": "0.13.246",
                "firewall_status": "Pending Isolation", "last_callback_at": null})),
        ]
    }

    #[test]
    fn os_strings_are_shortened_and_normalised() {
        assert_eq!(normalize_os(Some("macOS 15.1.1")), "macos_15.1");
        assert_eq!(normalize_os(Some("Ubuntu 22.04.4 LTS")), "ubuntu_22.04_lts");
        assert_eq!(normalize_os(Some("Microsoft Windows Server 2022 Standard")), "windows_server_2022_standard");
        assert_eq!(normalize_os(Some("Windows® 10 Pro")), "windows_10_pro");
        assert_eq!(normalize_os(Some("Red Hat Enterprise Linux 9.3")), "red_hat_enterprise_linux_9.3");
        assert_eq!(normalize_os(None), "none");
    }

    #[test]
    fn inventory_counts_every_dimension() {
        let mut inventory = AgentInventory::default();
        for a in sample() {
            inventory.add(&a, None, now(), Duration::from_secs(86_400));
        }
        assert_eq!(inventory.total, 4);
        assert_eq!(inventory.by_os["windows_11_pro"], 2);
        assert_eq!(inventory.by_platform["windows"], 2);
        assert_eq!(inventory.by_defender_status["none"], 2);
        assert_eq!(inventory.by_firewall_status["pending_isolation"], 1);
        assert_eq!(inventory.isolated, 2, "Isolated and Pending Release");
        assert_eq!(inventory.stale, 2, "three days without a callback, and never called back");
        assert_eq!(inventory.tamper[&("true".to_string(), "none".to_string())], 1);
        assert_eq!(inventory.tamper[&("none".to_string(), "none".to_string())], 2);

        let directory = OrgDirectory::from_api(now(), None, &[agent(json!({"id": 101, "name": "Acme Dental"}))], true);
        let mut report = Report::default();
        inventory.report(&mut report, &["team:sec".to_string()], Some(&directory));
        assert_eq!(value_with(&report, "huntress.agents.count", "team:sec"), Some(4.0));
        assert_eq!(value_with(&report, "huntress.agents.by_version", "agent_version:0.13.246"), Some(2.0));
        assert_eq!(value_with(&report, "huntress.agents.by_organization", "huntress_org_name:acme_dental"), Some(2.0));
        let org_102 = gauges(&report, "huntress.agents.by_organization").into_iter().find(|(t, _)| t.contains(&"huntress_org_id:102".to_string())).unwrap();
        assert!(org_102.0.contains(&"huntress_org_name:unknown".to_string()), "an organization missing from the directory");
        for metric in &report.metrics {
            assert_eq!(metric.tags[0], "team:sec");
            assert!(metric.tags.len() <= 3, "{metric:?}");
        }
    }

    #[test]
    fn agents_are_grouped_by_the_organization_resolved() {
        let directory = OrgDirectory::from_api(
            now(),
            None,
            &[agent(json!({"id": 101, "name": "Acme Dental"})), agent(json!({"id": 102, "name": "Bravo Law"}))],
            true,
        );
        let mut inventory = AgentInventory::default();
        for a in [
            json!({"organization_id": 101}),
            json!({"organization": {"id": 101, "name": "Acme Dental"}}),
            json!({"organization": {"name": " bravo law "}}),
            json!({"organization_name": "Bravo Law"}),
            json!({"organization": {"id": 303, "name": "Charlie Ltd"}}),
            json!({"platform": "windows"}),
        ] {
            inventory.add(&agent(a), Some(&directory), now(), Duration::from_secs(86_400));
        }
        let expected: BTreeMap<String, u64> = [("101", 2), ("102", 2), ("303", 1), ("none", 1)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(inventory.by_org, expected);
        let mut report = Report::default();
        inventory.report(&mut report, &[], Some(&directory));
        let by_org = |id: &str| gauges(&report, "huntress.agents.by_organization").into_iter().find(|(t, _)| t.contains(&format!("huntress_org_id:{id}"))).map(|(t, v)| (t.to_vec(), v));
        assert_eq!(by_org("102"), Some((vec!["huntress_org_id:102".to_string(), "huntress_org_name:bravo_law".into()], 2.0)), "by name alone");
        assert_eq!(by_org("303").unwrap().0[1], "huntress_org_name:charlie_ltd", "an id the directory does not know keeps the agent's name");
        assert_eq!(by_org("none").unwrap().1, 1.0);
    }

    #[test]
    fn cardinality_is_capped_per_tag_and_totals_kept() {
        let mut inventory = AgentInventory::default();
        for i in 0..2_000 {
            let a = agent(json!({"organization_id": 10_000 + i % 700, "version": format!("1.{}.0", i % 250), "platform": "windows", "last_callback_at": ago(5)}));
            inventory.add(&a, None, now(), Duration::from_secs(86_400));
        }
        let mut report = Report::default();
        inventory.report(&mut report, &[], None);
        let versions = gauges(&report, "huntress.agents.by_version");
        assert_eq!(versions.len(), MAX_TAG_VALUES);
        assert_eq!(versions.iter().map(|(_, v)| v).sum::<f64>(), 2_000.0);
        assert!(value_with(&report, "huntress.agents.by_version", "agent_version:other").unwrap() > 0.0);
        let orgs = gauges(&report, "huntress.agents.by_organization");
        assert_eq!(orgs.len(), MAX_ORGS_TAGGED);
        assert_eq!(orgs.iter().map(|(_, v)| v).sum::<f64>(), 2_000.0);
        // Organizations 10000..10599 have 3 agents, the rest 2: the 499 kept are among the largest.
        assert_eq!(value_with(&report, "huntress.agents.by_organization", "huntress_org_id:10000"), Some(3.0));
        assert_eq!(value_with(&report, "huntress.agents.by_organization", "huntress_org_name:other"), Some(2_000.0 - 499.0 * 3.0));
    }

    #[test]
    fn incomplete_listings_submit_nothing() {
        let page = |token: Option<&str>| {
            Ok(json!({"agents": sample().into_iter().map(Value::Object).collect::<Vec<_>>(), "pagination": token.map_or(json!({}), |t| json!({"next_page_token": t}))}))
        };
        let config = AgentsSettings { enabled: true, max_pages: 2, stale_after_seconds: 86_400 };
        let mut report = Report::default();
        let mut source = FakeSource::new(vec![page(Some("a")), page(Some("b")), page(None)]);
        let (health, pages) = run(&mut source, &config, now(), None, &Scope::default(), &[], &mut report);
        assert_eq!((health.unwrap().status, pages), (Status::Warning, 2));
        assert!(report.metrics.is_empty());

        let config = AgentsSettings { max_pages: 3, ..config };
        let mut source = FakeSource::new(vec![page(Some("a")), page(Some("b")), page(None)]);
        let (health, _) = run(&mut source, &config, now(), None, &Scope::default(), &[], &mut report);
        assert_eq!(health.unwrap().status, Status::Ok);
        assert_eq!(gauges(&report, "huntress.agents.count")[0].1, 12.0);

        let mut source = FakeSource::new(vec![]);
        source.budget = 0;
        let (health, pages) = run(&mut source, &config, now(), None, &Scope::default(), &[], &mut Report::default());
        assert!(health.is_none() && pages == 0, "deferred before sending anything");
    }
}
