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
//! Matching sees the `message` only, as the Agent's does. Masking rewrites
//! every copy of what it matches in a log, since a Huntress log repeats its
//! message's content in ECS attributes (`ecs.message`, `user.name`,
//! `source.ip`...):
//! - every string value, nested ones included, and each copy of a member a
//!   nested object repeats;
//! - every member name, except the reserved attributes the check writes
//!   (`message`, `date`, `status`, `hostname`, `service`, `ddsource`, `ddtags`);
//! - each tag of `ddtags` (organization names and the other tags built from
//!   Huntress data, the instance's tags too), a `,` a mask writes becoming `_`.
//!
//! `ddsource` and `service` come from the configuration and are not masked.
//! `mask_events` applies the masks to the title, text and tags of the Datadog
//! events the check sends. Metric and service check tags are not masked.

use std::borrow::Cow;
use std::fmt;

use regex::Regex;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::base::error::{HuntressError, Result};
use crate::datadog::transform::{cut_to_limit, MAX_LOG_BYTES};
use crate::json::row::write_string;

/// What masks may write for one log, all strings together: past it, the rest
/// of the string being masked is cut (never sent unmasked) and the log is cut
/// to the intake's limit afterwards. A placeholder longer than what it
/// replaces, or a pattern that matches everywhere, cannot make the rules'
/// memory grow past this.
const MASK_BUDGET: usize = 2 * MAX_LOG_BYTES;

/// Attributes set by the check from its configuration, never from Huntress data.
const UNMASKED: [&str; 2] = ["ddsource", "service"];
/// Members whose names stay: the reserved attributes the check writes.
const RESERVED_NAMES: [&str; 7] = ["message", "date", "status", "hostname", "service", "ddsource", "ddtags"];

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
    /// Sent, but the masks made it longer than the intake takes: it was cut
    /// again to the limit, and counts as truncated.
    Cut,
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

    /// Applies the masks, in order, to one text the check sends outside a
    /// log (an event's title or text); at most `MASK_BUDGET` bytes come out.
    pub fn mask_text(&self, text: &str) -> String {
        let mut text = text.to_string();
        let mut budget = MASK_BUDGET;
        for rule in &self.rules {
            if let Action::Mask { regex, placeholder } = &rule.action {
                mask_text(&mut text, regex, placeholder, &mut budget);
            }
        }
        text
    }

    /// Applies the masks to each tag of a list (event tags), as to `ddtags`.
    pub fn mask_tag(&self, tag: &str) -> String {
        let mut tag = tag.to_string();
        let mut budget = MASK_BUDGET;
        for rule in &self.rules {
            if let Action::Mask { regex, placeholder } = &rule.action {
                tag = mask_tags(&tag, regex, placeholder, &mut budget);
            }
        }
        tag
    }

    pub fn has_masks(&self) -> bool {
        self.rules.iter().any(|rule| matches!(rule.action, Action::Mask { .. }))
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
            Decision::Keep(Some(rewritten)) if rewritten.len() > MAX_LOG_BYTES => {
                let (cut, _) = cut_to_limit(&rewritten);
                out.truncate(start);
                out.extend_from_slice(&cut);
                Verdict::Cut
            }
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
        let mut budget = MASK_BUDGET;
        for rule in &self.rules {
            let dropped = match &rule.action {
                Action::ExcludeAtMatch(regex) => regex.is_match(&log.message()),
                Action::IncludeAtMatch(regex) => !regex.is_match(&log.message()),
                Action::ExcludeTruncated => log.is_truncated(),
                Action::Mask { regex, placeholder } => {
                    changed |= log.mask(regex, placeholder, &mut budget);
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
    fn mask(&mut self, regex: &Regex, placeholder: &str, budget: &mut usize) -> bool {
        let mut changed = false;
        for (key, value) in self.0.iter_mut().filter(|(key, _)| !UNMASKED.contains(&key.as_str())) {
            if !RESERVED_NAMES.contains(&key.as_str()) {
                changed |= mask_text(key, regex, placeholder, budget);
            }
            if key == "ddtags" {
                let tags = match value {
                    Member::Text(text) => text.clone(),
                    Member::Raw(raw) => string_content(raw).map(Cow::into_owned).unwrap_or_default(),
                    Member::Json(_) => continue,
                };
                let masked = mask_tags(&tags, regex, placeholder, budget);
                if masked != tags {
                    *value = Member::Text(masked);
                    changed = true;
                }
                continue;
            }
            match value {
                Member::Text(text) => changed |= mask_text(text, regex, placeholder, budget),
                Member::Raw(raw) if raw.get().starts_with('"') => {
                    let Some(content) = string_content(raw) else { continue };
                    if let Cow::Owned(masked) = bounded_replace(&content, regex, placeholder, budget) {
                        if masked != content {
                            *value = Member::Text(masked);
                            changed = true;
                        }
                    }
                }
                Member::Raw(raw) if raw.get().starts_with(['{', '[']) => {
                    if let Some(masked) = mask_json(raw.get(), regex, placeholder, budget) {
                        *value = Member::Json(masked);
                        changed = true;
                    }
                }
                Member::Json(json) => {
                    if let Some(masked) = mask_json(json, regex, placeholder, budget) {
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

/// Each tag of a comma-separated list masked on its own; a `,` the mask
/// writes becomes `_`, so that one tag stays one tag.
fn mask_tags(tags: &str, regex: &Regex, placeholder: &str, budget: &mut usize) -> String {
    tags.split(',')
        .map(|tag| match bounded_replace(tag, regex, placeholder, budget) {
            Cow::Borrowed(tag) => tag.to_string(),
            Cow::Owned(masked) => masked.replace(',', "_"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An object or array with every string in it masked, member names and each
/// copy of a repeated member included, as JSON text; None when unchanged.
/// The text is rewritten string by string, never parsed into a tree: what is
/// not a string is copied as it is.
fn mask_json(json: &str, regex: &Regex, placeholder: &str, budget: &mut usize) -> Option<String> {
    let bytes = json.as_bytes();
    let mut out: Option<String> = None;
    let (mut copied, mut at) = (0, 0);
    while at < bytes.len() {
        if bytes[at] != b'"' {
            at += 1;
            continue;
        }
        let mut end = at + 1;
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let end = (end + 1).min(bytes.len());
        let literal = &json[at..end];
        let content: Cow<'_, str> = match literal.contains('\\') {
            false => Cow::Borrowed(&literal[1..literal.len().saturating_sub(1).max(1)]),
            true => Cow::Owned(serde_json::from_str::<String>(literal).ok()?),
        };
        if let Cow::Owned(masked) = bounded_replace(&content, regex, placeholder, budget) {
            if masked != content {
                let out = out.get_or_insert_with(|| String::with_capacity(json.len()));
                out.push_str(&json[copied..at]);
                let mut encoded = Vec::with_capacity(masked.len() + 2);
                write_string(&mut encoded, &masked);
                out.push_str(std::str::from_utf8(&encoded).expect("JSON text is UTF-8"));
                copied = end;
            }
        }
        at = end;
    }
    let mut out = out?;
    out.push_str(&json[copied..]);
    Some(out)
}

fn mask_text(text: &mut String, regex: &Regex, placeholder: &str, budget: &mut usize) -> bool {
    match bounded_replace(text, regex, placeholder, budget) {
        Cow::Borrowed(_) => false,
        Cow::Owned(masked) => {
            let changed = masked != *text;
            *text = masked;
            changed
        }
    }
}

/// `regex.replace_all(text, placeholder)`, writing at most `budget` bytes
/// (taken from it). Past the budget the text is cut where the writing
/// stopped: what follows is left out, never left unmasked.
fn bounded_replace<'t>(text: &'t str, regex: &Regex, placeholder: &str, budget: &mut usize) -> Cow<'t, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for caps in regex.captures_iter(text) {
        let whole = caps.get(0).expect("group 0 is the match");
        let out = out.get_or_insert_with(|| String::with_capacity(text.len().min(*budget)));
        out.push_str(&text[copied..whole.start()]);
        caps.expand(placeholder, out);
        copied = whole.end();
        if out.len() > *budget {
            let mut cut = *budget;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            *budget = 0;
            return Cow::Owned(std::mem::take(out));
        }
    }
    let Some(mut out) = out else { return Cow::Borrowed(text) };
    let rest = &text[copied..];
    let room = budget.saturating_sub(out.len());
    let mut keep = rest.len().min(room);
    while !rest.is_char_boundary(keep) {
        keep -= 1;
    }
    out.push_str(&rest[..keep]);
    *budget = budget.saturating_sub(out.len());
    Cow::Owned(out)
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
            Verdict::Keep | Verdict::Cut => {
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
            r#"{"z":"x.x.x.x","message":"from x.x.x.x","ddtags":"ip:x.x.x.x","nested":{"a":["x.x.x.x",3]},"big":123456789012345678901234567890}"#
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
    fn masks_reach_every_copy_member_names_and_tags() {
        let mask = rules(Value::Null, json!([{"type": "mask_sequences", "name": "client", "replace_placeholder": "[client]", "pattern": "(?i)acme[ _]dental"}]));
        // A nested object repeating a member: the first copy matches, the last does not.
        let text = r#"{"message":"m","service":"huntress-siem","nested":{"who":"Acme Dental","who":"nobody"},"list":[{"k":"acme dental"},{"k":"acme dental"}],"by_name":{"Acme Dental":1},"Acme Dental":"x","ddtags":"huntress_org_name:acme_dental,team:acme dental,env:prod"}"#;
        let mut out = text.as_bytes().to_vec();
        assert_eq!(mask.apply(&mut out, 0), Verdict::Keep);
        let masked = std::str::from_utf8(&out).unwrap();
        assert!(!masked.to_lowercase().contains("acme"), "{masked}");
        assert!(masked.contains(r#""nested":{"who":"[client]","who":"nobody"}"#), "both copies stay, each masked: {masked}");
        assert!(masked.contains(r#""by_name":{"[client]":1}"#) && masked.contains(r#""[client]":"x""#), "member names are masked: {masked}");
        assert!(masked.contains(r#""ddtags":"huntress_org_name:[client],team:[client],env:prod""#), "each tag on its own: {masked}");
        assert!(masked.contains(r#""message":"m","service":"huntress-siem""#), "reserved names and configured values stay");
        // The tag built from the name (lowercased, `_` for spaces) is what a mask on tags must catch.
        let tag_mask = rules(Value::Null, json!([{"type": "mask_sequences", "name": "tag", "replace_placeholder": "a,b", "pattern": "acme_dental"}]));
        let (log, _) = run(&tag_mask, json!({"message": "m", "ddtags": "huntress_org_name:acme_dental,team:secops"}));
        assert_eq!(log.unwrap()["ddtags"], "huntress_org_name:a_b,team:secops", "a comma a mask writes does not split a tag");
        assert_eq!(mask.mask_text("Escalation for ACME Dental"), "Escalation for [client]");
        assert_eq!(tag_mask.mask_tag("huntress_org_name:acme_dental"), "huntress_org_name:a_b");
        assert!(mask.has_masks() && !rules(Value::Null, Value::Null).has_masks());
    }

    #[test]
    fn masks_never_make_a_log_longer_than_the_intake_takes() {
        // A placeholder longer than what it replaces: a 500 KB message of digits.
        let long = rules(json!(null), json!([{"type": "mask_sequences", "name": "long", "pattern": "[0-9]", "replace_placeholder": "[digit]"}]));
        let mut out = json!({"message": "7".repeat(500_000), "uuid": "u"}).to_string().into_bytes();
        assert_eq!(long.apply(&mut out, 0), Verdict::Cut);
        assert!(out.len() <= MAX_LOG_BYTES, "{}", out.len());
        let log: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(log["huntress.truncated"], json!(true));
        assert!(!log["message"].as_str().unwrap().contains('7'), "what is cut away is never left unmasked");
        // A pattern that matches everywhere, over many strings: the masks' output stays within the budget.
        let everywhere = rules(json!(null), json!([{"type": "mask_sequences", "name": "all", "pattern": "x*", "replace_placeholder": "0123456789"}]));
        let strings: Vec<String> = (0..2_000).map(|i| format!("{i:0>400}")).collect();
        let mut out = json!({"message": "m", "items": strings}).to_string().into_bytes();
        assert_eq!(everywhere.apply(&mut out, 0), Verdict::Cut);
        assert!(out.len() <= MAX_LOG_BYTES);
        let mut budget = 100;
        let ones = "1".repeat(1_000);
        let masked = bounded_replace(&ones, &compile("1").unwrap(), "xx", &mut budget);
        assert_eq!((masked.len(), budget), (100, 0));
        assert_eq!(bounded_replace("abc", &compile("z").unwrap(), "x", &mut budget), "abc", "nothing to mask costs nothing");
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
