//! Reading a REST item (a JSON object of the Huntress API) and shaping it into
//! the log it becomes.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::datadog::transform::{self, Enrichment, LogTemplate, Prepared, PreparedLog};

/// An id as text, for matching: integers and non-empty strings.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => (f as i64).to_string(),
            _ => n.to_string(),
        }),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// A string member, trimmed; empty when missing or not a string.
pub fn text<'a>(item: &'a Map<String, Value>, key: &str) -> &'a str {
    item.get(key).and_then(Value::as_str).map(str::trim).unwrap_or_default()
}

pub fn timestamp(item: &Map<String, Value>, key: &str) -> Option<DateTime<Utc>> {
    item.get(key).and_then(transform::parse_timestamp_ms).and_then(DateTime::from_timestamp_millis)
}

pub fn updated_at(item: &Map<String, Value>) -> Option<DateTime<Utc>> {
    timestamp(item, "updated_at")
}

pub fn item_id(item: &Map<String, Value>) -> String {
    item.get("id").and_then(id_text).unwrap_or_else(|| serde_json::to_string(item).unwrap_or_default())
}

/// At most `max_chars` characters, the last an ellipsis when cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The item's `status` moved to `aside`, and `status` set to the log level
/// (`status` is the level in Datadog).
fn set_level(row: &mut Map<String, Value>, aside: &str, level: &str) {
    if let Some(value) = row.remove("status") {
        row.insert(aside.into(), value);
    }
    row.insert("status".into(), Value::from(level));
}

/// The parts that are not empty, joined by `separator`.
pub fn join_present(parts: &[&str], separator: &str) -> String {
    parts.iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(separator)
}

/// How an item becomes its log, beyond its own fields, which stay at the top level.
pub struct LogShape<'a> {
    /// Where the item's `status` moves (`status` is the log level in Datadog).
    pub status_aside: &'static str,
    pub level: &'static str,
    /// The value of `@timestamp`, when the item has one in text.
    pub timestamp: Option<&'a Value>,
    pub message: String,
    /// Attributes the feed adds, e.g. `huntress.incident_change`.
    pub extra: Vec<(&'static str, Value)>,
    /// Tags after the organization's.
    pub tags: Vec<String>,
}

/// The log of one item in `shape`, with the organization's attributes and
/// tags; `None` when the template skips it as stale.
pub fn shaped_log(item: &Map<String, Value>, shape: LogShape, org: Enrichment, template: &LogTemplate, now_ms: i64) -> Option<PreparedLog> {
    let mut row = item.clone();
    set_level(&mut row, shape.status_aside, shape.level);
    if let Some(at) = shape.timestamp.filter(|v| v.is_string()) {
        row.insert("@timestamp".into(), at.clone());
    }
    row.insert("message".into(), Value::String(shape.message));
    for (key, value) in shape.extra {
        row.insert(key.into(), value);
    }
    item_log(row, org, &shape.tags, template, now_ms)
}

/// The log of one item: `row` with the organization's attributes, its tags
/// and then `tags`; `None` when the template skips it as stale.
fn item_log(row: Map<String, Value>, org: Enrichment, tags: &[String], template: &LogTemplate, now_ms: i64) -> Option<PreparedLog> {
    let all: Vec<&str> = std::iter::once(org.tags.as_str()).filter(|t| !t.is_empty()).chain(tags.iter().map(String::as_str)).collect();
    let enrichment = Enrichment::new(org.attributes, all.join(","));
    match transform::log_of_record(row, template, &enrichment, now_ms) {
        Prepared::Log(log) => Some(log),
        Prepared::SkippedStale { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadog::transform::StalePolicy;
    use crate::test_support::NOW;

    #[test]
    fn logs_carry_the_level_the_present_parts_and_the_organization_tags_first() {
        let template = LogTemplate { service: "huntress-test".into(), ddtags: "team:sec".into(), stale_policy: StalePolicy::RewriteDate };
        let mut row = serde_json::json!({"id": 1, "status": "open"}).as_object().unwrap().clone();
        set_level(&mut row, "item_status", "warning");
        row.insert("message".into(), Value::from(join_present(&["", "Subject", "", "Summary"], ": ")));
        let tags = ["severity:low".to_string()];
        let parse = |log: Option<PreparedLog>| serde_json::from_slice::<Map<String, Value>>(&log.unwrap().json).unwrap();
        let org = Enrichment::new(vec![("huntress_org_id".into(), Value::from(7))], "huntress_org_id:7".into());
        let log = parse(item_log(row.clone(), org, &tags, &template, NOW * 1000));
        assert_eq!((&log["status"], &log["item_status"], &log["message"]), (&Value::from("warning"), &Value::from("open"), &Value::from("Subject: Summary")));
        assert_eq!(log["huntress_org_id"], 7);
        assert_eq!(log["ddtags"], "team:sec,huntress_org_id:7,severity:low");
        let log = parse(item_log(row, Enrichment::new(Vec::new(), String::new()), &tags, &template, NOW * 1000));
        assert_eq!(log["ddtags"], "team:sec,severity:low", "no empty tag without an organization");
    }
}
