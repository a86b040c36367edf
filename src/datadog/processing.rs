//! The Agent's log processing rules (`logs_config.processing_rules` and an
//! instance's `log_processing_rules`), applied to a prepared log the way the
//! Agent's logs processor applies them: in order, global rules first, each on
//! the result of the one before.
//!
//! - `exclude_at_match` drops the log when its message matches;
//! - `include_at_match` drops it when its message does not match;
//! - `mask_sequences` replaces every match with `replace_placeholder`, where
//!   `$1`, `${1}` and `${name}` expand to capture groups as in Go's `ReplaceAll`;
//! - `exclude_truncated` drops a log the check cut to the intake's size limit;
//! - `multi_line` has no meaning for logs that arrive whole, and is skipped.
//!
//! Matching sees the `message` only, as the Agent's does. Masking also rewrites
//! every other string value of the log, nested ones included, except the three
//! the check sets from its own configuration (`ddsource`, `service`, `ddtags`):
//! a Huntress log repeats its message's content in ECS attributes (`ecs.message`,
//! `user.name`, `source.ip`...), and a mask that left them would not keep the
//! masked text in.

use std::borrow::Cow;
use std::fmt;

use regex::Regex;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::base::error::{HuntressError, Result};
use crate::json::row::write_string;

/// Attributes set by the check from its configuration, never from Huntress data.
const UNMASKED: [&str; 3] = ["ddsource", "service", "ddtags"];

#[derive(Clone, Debug)]
enum Action {
    ExcludeAtMatch(Regex),
    IncludeAtMatch(Regex),
    Mask { regex: Regex, placeholder: String },
    ExcludeTruncated,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    action: Action,
}

/// The rules of one instance, global ones first.
#[derive(Clone, Debug, Default)]
pub struct ProcessingRules {
    rules: Vec<Rule>,
    /// The rules as configured, for equality.
    source: Vec<Value>,
}

impl PartialEq for ProcessingRules {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Logs dropped by a rule, by `rule` (and `feature` for the REST feeds).
pub const EXCLUDED_METRIC: &str = "huntress.siem.logs_excluded";

/// What the rules decided for one log.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Sent, masked or not.
    Keep,
    /// Dropped by the rule of this name.
    Excluded(&'a str),
}

impl ProcessingRules {
    /// `global`: `logs_config.processing_rules` from datadog.yaml; `instance`:
    /// the instance's `log_processing_rules`. Each is null or a list of rules.
    pub fn parse(global: &Value, instance: &Value) -> Result<Self> {
        let mut parsed = ProcessingRules::default();
        for (key, list) in [("logs_config.processing_rules", global), ("log_processing_rules", instance)] {
            let entries = match list {
                Value::Null => continue,
                Value::Array(entries) => entries,
                _ => return Err(HuntressError::config(key, "must be a list of rules with `type`, `name` and `pattern`")),
            };
            for (index, entry) in entries.iter().enumerate() {
                if let Some(rule) = parse_rule(&format!("{key}[{index}]"), entry)? {
                    parsed.rules.push(rule);
                }
                parsed.source.push(entry.clone());
            }
        }
        Ok(parsed)
    }

    #[cfg(test)]
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|rule| rule.name.as_str())
    }

    /// Applies the rules to the log serialized in `out[start..]` (one JSON
    /// object), rewriting it there when a mask changed it.
    pub fn apply(&self, out: &mut Vec<u8>, start: usize) -> Verdict<'_> {
        if self.rules.is_empty() {
            return Verdict::Keep;
        }
        match self.decide(&out[start..]) {
            Decision::Drop(name) => Verdict::Excluded(name),
            Decision::Keep(None) => Verdict::Keep,
            Decision::Keep(Some(rewritten)) => {
                out.truncate(start);
                out.extend_from_slice(&rewritten);
                Verdict::Keep
            }
        }
    }

    /// The rules' decision on one serialized log, with its new text when a mask changed it.
    fn decide(&self, log: &[u8]) -> Decision<'_> {
        let Ok(mut log) = serde_json::from_slice::<Members>(log) else {
            // Every prepared log is a JSON object; should one not be, nothing is
            // sent unmasked: it is dropped under the first rule's name.
            return Decision::Drop(&self.rules[0].name);
        };
        let mut changed = false;
        for rule in &self.rules {
            let dropped = match &rule.action {
                Action::ExcludeAtMatch(regex) => regex.is_match(&log.message()),
                Action::IncludeAtMatch(regex) => !regex.is_match(&log.message()),
                Action::ExcludeTruncated => log.is_truncated(),
                Action::Mask { regex, placeholder } => {
                    changed |= log.mask(regex, placeholder);
                    false
                }
            };
            if dropped {
                return Decision::Drop(&rule.name);
            }
        }
        Decision::Keep(changed.then(|| log.to_bytes()))
    }
}

enum Decision<'a> {
    Drop(&'a str),
    Keep(Option<Vec<u8>>),
}

fn parse_rule(key: &str, entry: &Value) -> Result<Option<Rule>> {
    let field = |name: &str| entry.get(name).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let Some(name) = field("name") else {
        return Err(HuntressError::config(key, "the rule has no `name`: give every processing rule a name"));
    };
    let named = |message: String| HuntressError::config(key, format!("rule {name:?}: {message}"));
    let Some(kind) = field("type") else {
        return Err(named("has no `type`: use exclude_at_match, include_at_match or mask_sequences".into()));
    };
    let regex = || -> Result<Regex> {
        let pattern = entry.get("pattern").and_then(Value::as_str).filter(|p| !p.is_empty());
        let pattern = pattern.ok_or_else(|| named("has no `pattern`: a regular expression (RE2 syntax) is required".into()))?;
        compile(pattern).map_err(|e| named(format!("the pattern does not compile ({e})")))
    };
    let action = match kind {
        "exclude_at_match" => Action::ExcludeAtMatch(regex()?),
        "include_at_match" => Action::IncludeAtMatch(regex()?),
        "mask_sequences" => {
            let placeholder = entry.get("replace_placeholder").and_then(Value::as_str);
            let placeholder = placeholder.ok_or_else(|| named("mask_sequences needs `replace_placeholder`, the text that replaces each match".into()))?;
            Action::Mask { regex: regex()?, placeholder: placeholder.to_string() }
        }
        "exclude_truncated" => Action::ExcludeTruncated,
        "multi_line" => return Ok(None),
        other => {
            return Err(named(format!(
                "unknown type {other:?}: use exclude_at_match, include_at_match, mask_sequences or exclude_truncated"
            )))
        }
    };
    Ok(Some(Rule { name: name.to_string(), action }))
}

/// Compiles an RE2 pattern with Go's meaning: in Go, `\d`, `\w`, `\s` and `\b`
/// are ASCII classes; in the `regex` crate they are Unicode ones unless
/// spelled out, so they are spelled out.
pub fn compile(pattern: &str) -> std::result::Result<Regex, regex::Error> {
    Regex::new(&ascii_perl_classes(pattern))
}

fn ascii_perl_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(escaped) = chars.next() else {
            out.push(c);
            break;
        };
        match escaped {
            // Nested classes are valid inside a class too: `[\d-]` becomes `[[0-9]-]`.
            'd' => out.push_str("[0-9]"),
            'D' => out.push_str("[^0-9]"),
            'w' => out.push_str("[0-9A-Za-z_]"),
            'W' => out.push_str("[^0-9A-Za-z_]"),
            's' => out.push_str(r"[\t\n\f\r ]"),
            'S' => out.push_str(r"[^\t\n\f\r ]"),
            'b' => out.push_str(r"(?-u:\b)"),
            'B' => out.push_str(r"(?-u:\B)"),
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    out
}

/// A log's members in their order, borrowed from its text; a string becomes
/// `Text` once a mask changed it.
struct Members<'a>(Vec<(String, Member<'a>)>);

enum Member<'a> {
    Raw(&'a RawValue),
    Text(String),
    /// A masked object or array, as JSON text.
    Json(String),
}

/// The content of a JSON string literal: borrowed when it has no escapes.
fn string_content(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

impl Members<'_> {
    fn message(&self) -> Cow<'_, str> {
        match self.0.iter().find(|(key, _)| key == "message") {
            Some((_, Member::Text(text))) => Cow::Borrowed(text),
            Some((_, Member::Raw(raw))) => string_content(raw).unwrap_or(Cow::Borrowed(raw.get())),
            Some((_, Member::Json(json))) => Cow::Borrowed(json),
            None => Cow::Borrowed(""),
        }
    }

    fn is_truncated(&self) -> bool {
        self.0.iter().any(|(key, value)| key == "huntress.truncated" && matches!(value, Member::Raw(raw) if raw.get() == "true"))
    }

    /// Masks the message and every other string value; true when any changed.
    fn mask(&mut self, regex: &Regex, placeholder: &str) -> bool {
        let mut changed = false;
        for (_, value) in self.0.iter_mut().filter(|(key, _)| !UNMASKED.contains(&key.as_str())) {
            match value {
                Member::Text(text) => changed |= mask_text(text, regex, placeholder),
                Member::Raw(raw) if raw.get().starts_with('"') => {
                    let Some(content) = string_content(raw) else { continue };
                    if let Cow::Owned(masked) = regex.replace_all(&content, placeholder) {
                        if masked != content {
                            *value = Member::Text(masked);
                            changed = true;
                        }
                    }
                }
                Member::Raw(raw) if raw.get().starts_with(['{', '[']) => {
                    if let Some(masked) = mask_json(raw.get(), regex, placeholder) {
                        *value = Member::Json(masked);
                        changed = true;
                    }
                }
                Member::Json(json) => {
                    if let Some(masked) = mask_json(json, regex, placeholder) {
                        *json = masked;
                        changed = true;
                    }
                }
                Member::Raw(_) => {}
            }
        }
        changed
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        out.push(b'{');
        for (index, (key, value)) in self.0.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_string(&mut out, key);
            out.push(b':');
            match value {
                Member::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
                Member::Json(json) => out.extend_from_slice(json.as_bytes()),
                Member::Text(text) => write_string(&mut out, text),
            }
        }
        out.push(b'}');
        out
    }
}

/// An object or array with its strings masked, as JSON text; None when unchanged.
fn mask_json(json: &str, regex: &Regex, placeholder: &str) -> Option<String> {
    let mut nested = serde_json::from_str::<Value>(json).ok()?;
    mask_value(&mut nested, regex, placeholder).then(|| serde_json::to_string(&nested).expect("a Value serializes"))
}

fn mask_text(text: &mut String, regex: &Regex, placeholder: &str) -> bool {
    match regex.replace_all(text, placeholder) {
        Cow::Borrowed(_) => false,
        Cow::Owned(masked) => {
            let changed = masked != *text;
            *text = masked;
            changed
        }
    }
}

fn mask_value(value: &mut Value, regex: &Regex, placeholder: &str) -> bool {
    match value {
        Value::String(text) => mask_text(text, regex, placeholder),
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| mask_value(item, regex, placeholder) | changed),
        Value::Object(members) => members.values_mut().fold(false, |changed, item| mask_value(item, regex, placeholder) | changed),
        _ => false,
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(32);
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((key, Member::Raw(value)));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CARDS: &str = r"(?:4[0-9]{12}(?:[0-9]{3})?|[25][1-7][0-9]{14}|6(?:011|5[0-9][0-9])[0-9]{12}|3[47][0-9]{13}|3(?:0[0-5]|[68][0-9])[0-9]{11}|(?:2131|1800|35\d{3})\d{11})";

    fn rules(global: Value, instance: Value) -> ProcessingRules {
        ProcessingRules::parse(&global, &instance).unwrap()
    }

    /// The log after the rules, or None when dropped (with the rule's name checked).
    fn run(rules: &ProcessingRules, log: Value) -> (Option<Value>, Option<String>) {
        let mut out = b"prefix,".to_vec();
        out.extend_from_slice(log.to_string().as_bytes());
        match rules.apply(&mut out, 7) {
            Verdict::Keep => {
                assert_eq!(&out[..7], b"prefix,");
                (Some(serde_json::from_slice(&out[7..]).unwrap()), None)
            }
            Verdict::Excluded(name) => (None, Some(name.to_string())),
        }
    }

    fn error(global: Value, instance: Value) -> (String, String) {
        match ProcessingRules::parse(&global, &instance) {
            Err(HuntressError::Config { key, message }) => (key, message),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn documented_examples_behave_as_in_the_agent() {
        let mask = rules(Value::Null, json!([{"type": "mask_sequences", "name": "mask_credit_cards", "replace_placeholder": "[masked_credit_card]", "pattern": CARDS}]));
        let (log, _) = run(&mask, json!({"message": "paid with 4111111111111111 today", "ecs.message": "card 4111111111111111", "n": 4111111111111111u64}));
        let log = log.unwrap();
        assert_eq!(log["message"], "paid with [masked_credit_card] today");
        assert_eq!(log["ecs.message"], "card [masked_credit_card]");
        assert_eq!(log["n"], 4111111111111111u64, "numbers are not strings and stay");

        let groups = rules(Value::Null, json!([{"type": "mask_sequences", "name": "mask_user_email", "replace_placeholder": "$1 masked_user@${2}", "pattern": "(User email: )[^@]*@(.*)"}]));
        let (log, _) = run(&groups, json!({"message": "User email: foo.bar@example.com"}));
        // Go's ReplaceAll, hence the Agent, keeps the group's own trailing space and the
        // placeholder's: two spaces (the documentation's rendering shows one).
        assert_eq!(log.unwrap()["message"], "User email:  masked_user@example.com");

        let exclude = rules(Value::Null, json!([{"type": "exclude_at_match", "name": "exclude_datadoghq_users", "pattern": r"\w+@datadoghq.com"}]));
        assert_eq!(run(&exclude, json!({"message": "login by jane@datadoghq.com"})).1.as_deref(), Some("exclude_datadoghq_users"));
        assert!(run(&exclude, json!({"message": "login by jane@example.com"})).0.is_some());

        let include = rules(Value::Null, json!([{"type": "include_at_match", "name": "include_datadoghq_users", "pattern": r"\w+@datadoghq.com"}]));
        assert!(run(&include, json!({"message": "login by jane@datadoghq.com"})).0.is_some());
        assert_eq!(run(&include, json!({"message": "login by jane@example.com"})).1.as_deref(), Some("include_datadoghq_users"));
    }

    #[test]
    fn rules_apply_in_order_global_first() {
        // The global mask runs first, so the instance's exclusion no longer sees the card.
        let ordered = rules(
            json!([{"type": "mask_sequences", "name": "cards", "replace_placeholder": "[card]", "pattern": r"\d{4}-\d{4}-\d{4}-\d{4}"}]),
            json!([{"type": "exclude_at_match", "name": "raw_cards", "pattern": r"\d{4}-\d{4}"}]),
        );
        assert_eq!(ordered.names().collect::<Vec<_>>(), ["cards", "raw_cards"]);
        let (log, _) = run(&ordered, json!({"message": "card 1234-5678-9012-3456"}));
        assert_eq!(log.unwrap()["message"], "card [card]");
        // Several include rules must all match.
        let both = rules(Value::Null, json!([
            {"type": "include_at_match", "name": "errors", "pattern": "ERROR"},
            {"type": "include_at_match", "name": "auth", "pattern": "auth"}
        ]));
        assert!(run(&both, json!({"message": "ERROR auth failed"})).0.is_some());
        assert_eq!(run(&both, json!({"message": "ERROR disk full"})).1.as_deref(), Some("auth"));
    }

    #[test]
    fn masking_keeps_order_reserved_attributes_and_unchanged_bytes() {
        let mask = rules(Value::Null, json!([{"type": "mask_sequences", "name": "ip", "replace_placeholder": "x.x.x.x", "pattern": r"\d+\.\d+\.\d+\.\d+"}]));
        let text = r#"{"z":"10.0.0.1","message":"from 10.0.0.1","ddtags":"ip:10.0.0.1","nested":{"a":["10.1.1.1",3]},"big":123456789012345678901234567890}"#;
        let mut out = text.as_bytes().to_vec();
        assert_eq!(mask.apply(&mut out, 0), Verdict::Keep);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"z":"x.x.x.x","message":"from x.x.x.x","ddtags":"ip:10.0.0.1","nested":{"a":["x.x.x.x",3]},"big":123456789012345678901234567890}"#
        );
        // Escaped strings are decoded before matching, and written back escaped; two
        // masks in a row both reach a nested value.
        let two = rules(Value::Null, json!([
            {"type": "mask_sequences", "name": "ip", "replace_placeholder": "x.x.x.x", "pattern": r"\d+\.\d+\.\d+\.\d+"},
            {"type": "mask_sequences", "name": "user", "replace_placeholder": "<user>", "pattern": "alice"}
        ]));
        let (log, _) = run(&two, json!({"message": "\"alice\"\tfrom 10.0.0.1\n", "nested": {"who": ["alice@10.2.3.4"]}}));
        let log = log.unwrap();
        assert_eq!(log["message"], "\"<user>\"\tfrom x.x.x.x\n");
        assert_eq!(log["nested"]["who"][0], "<user>@x.x.x.x");
        assert!(compile(r"\Qa.b\E").is_err(), "the regex crate does not take Go's \\Q...\\E quoting");
        let untouched = r#"{"message":"nothing here",  "n": 1.50}"#;
        let mut out = untouched.as_bytes().to_vec();
        mask.apply(&mut out, 0);
        assert_eq!(out, untouched.as_bytes(), "a log no mask matched is left byte for byte");
    }

    #[test]
    fn escapes_and_classes_follow_go() {
        // Go's \d is ASCII: Arabic-Indic digits are not digits to the Agent.
        assert!(!compile(r"^\d+$").unwrap().is_match("٣٤"));
        assert!(compile(r"^\d+$").unwrap().is_match("34"));
        assert!(!compile(r"^\w+$").unwrap().is_match("é"));
        assert!(compile(r"[\d-]+").unwrap().is_match("12-34"));
        assert!(compile(r"\bcat\b").unwrap().is_match("a cat."));
        assert!(compile(r"\\d").unwrap().is_match(r"\d"), "an escaped backslash stays one");
        let names = rules(Value::Null, json!([{"type": "mask_sequences", "name": "n", "replace_placeholder": "<${user}>$$", "pattern": r"user=(?P<user>\w)\w*"}]));
        assert_eq!(run(&names, json!({"message": "user=alice"})).0.unwrap()["message"], "<a>$");
    }

    #[test]
    fn truncated_logs_and_multi_line_rules() {
        let rules = rules(json!([{"type": "multi_line", "name": "ml", "pattern": r"^\d"}]), json!([{"type": "exclude_truncated", "name": "no_cut"}]));
        assert_eq!(rules.names().collect::<Vec<_>>(), ["no_cut"]);
        assert_eq!(run(&rules, json!({"message": "x", "huntress.truncated": true})).1.as_deref(), Some("no_cut"));
        assert!(run(&rules, json!({"message": "x"})).0.is_some());
    }

    #[test]
    fn invalid_rules_are_named() {
        let (key, message) = error(Value::Null, json!([{"type": "mask_sequences", "name": "cards", "pattern": "x"}]));
        assert_eq!(key, "log_processing_rules[0]");
        assert!(message.contains("\"cards\"") && message.contains("replace_placeholder"), "{message}");
        let (key, message) = error(json!([{"type": "exclude_at_match", "name": "ok", "pattern": "a"}, {"type": "exclude_at_match", "name": "broken", "pattern": "(a"}]), Value::Null);
        assert_eq!(key, "logs_config.processing_rules[1]");
        assert!(message.contains("\"broken\"") && message.contains("does not compile"), "{message}");
        let (_, message) = error(Value::Null, json!([{"type": "drop_everything", "name": "odd", "pattern": "a"}]));
        assert!(message.contains("\"odd\"") && message.contains("unknown type"), "{message}");
        let (key, message) = error(Value::Null, json!([{"type": "exclude_at_match", "pattern": "a"}]));
        assert_eq!(key, "log_processing_rules[0]");
        assert!(message.contains("name"), "{message}");
        let (_, message) = error(Value::Null, json!([{"type": "include_at_match", "name": "empty"}]));
        assert!(message.contains("\"empty\"") && message.contains("pattern"), "{message}");
        assert_eq!(error(Value::Null, json!("x")).0, "log_processing_rules");
    }

    #[test]
    fn no_rules_keep_everything_untouched() {
        let none = rules(Value::Null, json!([]));
        assert!(none.names().next().is_none());
        let mut out = b"not even json".to_vec();
        assert_eq!(none.apply(&mut out, 0), Verdict::Keep);
        assert_eq!(out, b"not even json");
    }
}
