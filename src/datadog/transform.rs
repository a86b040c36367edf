//! Turns one SIEM row into one Datadog log, serialized and ready to batch.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::json::row::{write_member, write_string, Fields, Row};

/// The intake truncates a log over 1 MB; we cut before it does, and say so.
pub const MAX_LOG_BYTES: usize = 1_000_000;
/// The intake silently drops logs dated more than 18 h in the past (after a 202).
/// Ten minutes of slack covers the time between building a log and its arrival.
pub const STALE_AFTER_MS: i64 = (18 * 3600 - 600) * 1000;
/// ... and more than 2 h in the future.
pub const FUTURE_LIMIT_MS: i64 = (2 * 3600 - 600) * 1000;

const ID_FIELDS_ONLY: [&str; 3] = ["uuid", "organization_id", "organization.id"];

/// What to do with a log older than the intake keeps (18 h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StalePolicy {
    /// Send with `date` set to the send time; the event time stays in `huntress.original_timestamp`.
    RewriteDate,
    /// Do not send; count in `huntress.siem.logs_stale`.
    Skip,
}

impl StalePolicy {
    pub fn tag(self) -> &'static str {
        match self {
            StalePolicy::RewriteDate => "rewrite_date",
            StalePolicy::Skip => "skip",
        }
    }
}

/// Everything about the logs of one query that does not change per row.
#[derive(Debug, Clone)]
pub struct LogTemplate {
    pub service: String,
    /// `ddtags`: instance tags, query tags and `query_name:<name>`, comma-joined.
    pub ddtags: String,
    pub stale_policy: StalePolicy,
}

/// Extra attributes and tags for one row (organization enrichment).
#[derive(Debug, Default, Clone)]
pub struct Enrichment {
    pub attributes: Vec<(String, Value)>,
    pub tags: String,
    /// `attributes` as JSON object members: written once, copied into each log.
    members: Vec<u8>,
}

impl Enrichment {
    pub fn new(attributes: Vec<(String, Value)>, tags: String) -> Self {
        let mut members = Vec::new();
        let mut first = true;
        for (key, value) in &attributes {
            write_key(&mut members, &mut first, key);
            write_json(&mut members, value);
        }
        Enrichment { attributes, tags, members }
    }
}

#[derive(Debug)]
pub struct PreparedLog {
    pub id: u64,
    pub json: Vec<u8>,
    pub stale: bool,
    pub truncated: bool,
}

pub enum Prepared {
    Log(PreparedLog),
    /// Older than the intake keeps, and the policy says skip.
    SkippedStale { id: u64 },
}

/// A stable identity for dedup: the row's `uuid`, else a hash of the whole row.
pub fn event_id(row: &Row) -> u64 {
    let mut hasher = Sha256::new();
    match row.get("uuid").and_then(plain_or_decoded_string) {
        Some(uuid) if !uuid.is_empty() => {
            hasher.update(b"uuid:");
            hasher.update(uuid.as_bytes());
        }
        _ => {
            hasher.update(b"row:");
            hasher.update(canonical_row(row));
        }
    }
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
}

/// The row as serde_json writes a parsed copy of it: keys sorted, the last of
/// a repeated key kept, no whitespace. The ids of rows without a `uuid` hash
/// this text, so it must stay byte for byte what it was; values already in
/// that form (most of them) are copied instead of parsed.
fn canonical_row(row: &Row) -> Vec<u8> {
    let mut fields: Vec<(&str, &str)> = row.fields().iter().map(|(key, raw)| (key.as_ref(), *raw)).collect();
    // A stable sort keeps repeated keys in arrival order, so the last one is kept below.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(row.raw_len() + 2);
    out.push(b'{');
    for (index, (key, raw)) in fields.iter().enumerate() {
        if fields.get(index + 1).is_some_and(|(next, _)| next == key) {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        write_string(&mut out, key);
        out.push(b':');
        write_canonical_value(&mut out, raw);
    }
    out.push(b'}');
    out
}

fn write_canonical_value(out: &mut Vec<u8>, raw: &str) {
    match raw.as_bytes().first() {
        Some(b't' | b'f' | b'n') => out.extend_from_slice(raw.as_bytes()),
        Some(b'"') if escapes_as_serde_writes(raw) => out.extend_from_slice(raw.as_bytes()),
        Some(b'"') => match plain_or_decoded_string(raw) {
            Some(decoded) => write_string(out, &decoded),
            None => out.extend_from_slice(b"null"),
        },
        Some(_) if is_canonical_integer(raw) => out.extend_from_slice(raw.as_bytes()),
        // Floats, big integers, objects and arrays: as serde_json writes them.
        _ => write_json(out, &serde_json::from_str::<Value>(raw).unwrap_or(Value::Null)),
    }
}

/// True when every escape in a scanned string is one serde_json writes the
/// same way (`\\uXXXX` and `\\/` are spelled differently there).
fn escapes_as_serde_writes(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut at = 0;
    while let Some(offset) = bytes.get(at..).and_then(|rest| rest.iter().position(|&b| b == b'\\')) {
        // A scanned string has a character after every backslash.
        if !matches!(bytes.get(at + offset + 1), Some(b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f')) {
            return false;
        }
        at += offset + 2;
    }
    true
}

/// An integer that serde_json writes back unchanged: at most 18 digits, no
/// leading zero, and not `-0`.
fn is_canonical_integer(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let plain = (1..=18).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    plain && (!digits.starts_with('0') || raw == "0")
}

/// The text of a raw JSON string that holds no escapes: its value, read in place.
fn plain_string(raw: &str) -> Option<&str> {
    raw.strip_prefix('"').and_then(|t| t.strip_suffix('"')).filter(|inner| !inner.contains('\\'))
}

/// A JSON string's value, read in place when it holds no escapes.
fn plain_or_decoded_string(raw: &str) -> Option<Cow<'_, str>> {
    match plain_string(raw) {
        Some(inner) => Some(Cow::Borrowed(inner)),
        None => serde_json::from_str::<Cow<str>>(raw).ok(),
    }
}

/// True when the row looks like a query without `KEEP`: only ids, no content.
pub fn lacks_keep(row: &Row) -> bool {
    !row.is_empty() && row.keys().all(|k| ID_FIELDS_ONLY.contains(&k))
}

/// Epoch milliseconds from an ECS `@timestamp`: RFC 3339 with any offset
/// (`Z`, `+02:00`, `+0000`) and up to nanoseconds, the same without a zone
/// (read as UTC), or epoch seconds, milliseconds, microseconds or nanoseconds
/// as a number or a string of digits.
pub fn parse_timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => parse_text_timestamp_ms(text.trim()),
        Value::Number(n) => n.as_i64().and_then(epoch_ms).or_else(|| n.as_f64().and_then(epoch_float_ms)),
        _ => None,
    }
}

fn parse_text_timestamp_ms(text: &str) -> Option<i64> {
    parse_iso_ms(text).or_else(|| parse_epoch_text_ms(text))
}

fn parse_iso_ms(text: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp_millis());
    }
    let zoned = ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"];
    if let Some(dt) = zoned.iter().find_map(|fmt| DateTime::parse_from_str(text, fmt).ok()) {
        return Some(dt.timestamp_millis());
    }
    // Some sources omit the zone; ECS timestamps are UTC.
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(text, fmt).ok())
        .map(|naive| naive.and_utc().timestamp_millis())
}

fn parse_epoch_text_ms(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().and_then(epoch_ms)
}

/// An epoch count, its unit told by its size: below 10^11 seconds (until the
/// year 5138), then milliseconds, microseconds, nanoseconds.
fn epoch_ms(count: i64) -> Option<i64> {
    let size = count.unsigned_abs();
    let ms = match size {
        0..100_000_000_000 => count.checked_mul(1000)?,
        100_000_000_000..100_000_000_000_000 => count,
        100_000_000_000_000..100_000_000_000_000_000 => count / 1000,
        _ => count / 1_000_000,
    };
    DateTime::from_timestamp_millis(ms).map(|_| ms)
}

fn epoch_float_ms(count: f64) -> Option<i64> {
    let scale = match count.abs() {
        size if size < 1e11 => 1000.0,
        size if size < 1e14 => 1.0,
        size if size < 1e17 => 1e-3,
        _ => 1e-6,
    };
    let ms = (count * scale).round();
    // `as` saturates; the range check refuses what it would have clamped.
    (ms.is_finite() && ms.abs() < 1e16).then_some(ms as i64).filter(|ms| DateTime::from_timestamp_millis(*ms).is_some())
}

/// True when the intake reads `raw` as the instant the check read: a JSON
/// string in strict RFC 3339. Other forms are moved aside, not forwarded as
/// `@timestamp`, so that the log carries one date: `date`.
fn intake_reads_timestamp(raw: &str) -> bool {
    plain_string(raw).is_some_and(|text| DateTime::parse_from_rfc3339(text).is_ok())
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Where the log's `message` comes from.
enum MessageSource<'a> {
    /// `log.original`, a non-empty string; the ECS `message` moves to `ecs.message`.
    LogOriginal(&'a str),
    /// `message`, a string.
    Message(&'a str),
    /// `message` that is not a string (a number, an object): its JSON text.
    NotString(&'a str),
    /// No `message`: the row's other fields stand in, as the text of a JSON object.
    Row,
}

fn message_source<'a>(row: &Row<'a>) -> MessageSource<'a> {
    let is_text = |raw: &str| raw.starts_with('"') && raw != "\"\"";
    if let Some(original) = row.get("log.original").filter(|raw| is_text(raw)) {
        return MessageSource::LogOriginal(original);
    }
    match row.get("message") {
        Some(raw) if raw.starts_with('"') => MessageSource::Message(raw),
        Some(raw) if raw != "null" => MessageSource::NotString(raw),
        _ => MessageSource::Row,
    }
}

/// The row's non-null fields, in the order they came, as one JSON object
/// written as a JSON string: built from the raw values, never parsed.
fn write_row_as_message(out: &mut Vec<u8>, row: &Row) {
    let mut text = Vec::with_capacity(row.raw_len() + 2);
    text.push(b'{');
    let mut first = true;
    for (key, raw) in row.fields() {
        if *raw != "null" && key != "message" {
            write_member(&mut text, &mut first, key, matches!(key, Cow::Borrowed(_)), raw.as_bytes());
        }
    }
    text.push(b'}');
    // Names and raw values are `str`s, so this borrows: nothing is replaced.
    write_string(out, &String::from_utf8_lossy(&text));
}

/// `id` is the row's `event_id`, which the caller has already computed for dedup.
pub fn log_of_row(row: &Row, id: u64, template: &LogTemplate, enrichment: &Enrichment, now_ms: i64) -> Prepared {
    let mut json = Vec::new();
    match write_log(row, template, enrichment, now_ms, &mut json) {
        Written::Log { stale, truncated } => Prepared::Log(PreparedLog { id, json, stale, truncated }),
        Written::SkippedStale => Prepared::SkippedStale { id },
    }
}

/// What `write_log` did.
pub enum Written {
    Log { stale: bool, truncated: bool },
    /// Older than the intake keeps, and the policy says skip: nothing written.
    SkippedStale,
}

/// Serializes the log at the end of `out`, so that logs can be built back to
/// back in one buffer.
pub fn write_log(row: &Row, template: &LogTemplate, enrichment: &Enrichment, now_ms: i64, out: &mut Vec<u8>) -> Written {
    let raw_timestamp = row.get("@timestamp");
    let event_ms = raw_timestamp.and_then(raw_timestamp_ms);
    let too_old = event_ms.is_some_and(|ms| ms < now_ms - STALE_AFTER_MS);
    let too_new = event_ms.is_some_and(|ms| ms > now_ms + FUTURE_LIMIT_MS);
    let out_of_window = too_old || too_new;
    if out_of_window && template.stale_policy == StalePolicy::Skip {
        return Written::SkippedStale;
    }
    let message = message_source(row);
    let from_log_original = matches!(message, MessageSource::LogOriginal(_));
    // The row's `@timestamp` goes on only when it is the date the log is given.
    let keep_timestamp = !out_of_window && event_ms.is_some() && raw_timestamp.is_some_and(intake_reads_timestamp);

    let start = out.len();
    out.reserve(row.raw_len() + 256 + template.ddtags.len() + enrichment.tags.len());
    out.push(b'{');
    let mut first = true;
    // A row field named like an attribute the log sets itself, or like one the
    // intake reads a date from, moves under `ROW_FIELD_PREFIX`.
    for (key, raw) in row.fields() {
        // ES|QL answers every `KEEP` column for every row, null where a row has no
        // such field: nulls say nothing, and would be ingested (and billed) per log.
        if *raw == "null" {
            continue;
        }
        let name: Cow<str> = match key.as_ref() {
            "log.original" if from_log_original => continue,
            "message" if from_log_original => Cow::Borrowed("ecs.message"),
            "message" => continue,
            // `@timestamp` outranks `date` at the intake: one it would read
            // differently, or a re-dated log's, moves aside.
            "@timestamp" if !keep_timestamp => Cow::Borrowed("huntress.original_timestamp"),
            k if is_reserved_name(k, enrichment) => Cow::Owned(format!("{ROW_FIELD_PREFIX}{k}")),
            k => Cow::Borrowed(k),
        };
        let plain = matches!(key, Cow::Borrowed(_)) && name == key.as_ref();
        write_member(out, &mut first, &name, plain, raw.as_bytes());
    }
    // Values below are written in place: no allocation per log.
    if !enrichment.members.is_empty() {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(&enrichment.members);
    }
    write_key(out, &mut first, "message");
    match &message {
        MessageSource::LogOriginal(raw) | MessageSource::Message(raw) => out.extend_from_slice(raw.as_bytes()),
        MessageSource::NotString(raw) => write_string(out, raw),
        MessageSource::Row => write_row_as_message(out, row),
    }
    let date_ms = match event_ms {
        Some(ms) if !out_of_window => ms,
        _ => now_ms,
    };
    write_key(out, &mut first, "date");
    write_json(out, &date_ms);
    write_member(out, &mut first, "ddsource", true, b"\"huntress\"");
    write_key(out, &mut first, "service");
    write_string(out, &template.service);
    write_key(out, &mut first, "ddtags");
    write_joined_tags(out, &template.ddtags, &enrichment.tags);
    write_hostname(out, &mut first, row);
    if out_of_window {
        write_member(out, &mut first, "huntress.date_rewritten", true, b"true");
    } else if event_ms.is_none() {
        write_member(out, &mut first, "huntress.timestamp_missing", true, b"true");
    }
    out.push(b'}');

    let mut truncated = false;
    if out.len() - start > MAX_LOG_BYTES {
        let cut;
        (cut, truncated) = cut_to_limit(&out[start..]);
        out.truncate(start);
        out.extend_from_slice(&cut);
    }
    Written::Log { stale: out_of_window, truncated }
}

/// `@timestamp` straight from the raw value when it is a plain string.
fn raw_timestamp_ms(text: &str) -> Option<i64> {
    match plain_string(text) {
        Some(inner) => parse_text_timestamp_ms(inner.trim()),
        None => serde_json::from_str::<Value>(text).ok().and_then(|v| parse_timestamp_ms(&v)),
    }
}

/// Where a row field that shares its name with an attribute the check writes,
/// or with one the intake reads a date from, is forwarded: under this prefix,
/// so that the log has one value per key and one date.
pub const ROW_FIELD_PREFIX: &str = "huntress.row.";

/// True for names a row field cannot keep: the check's own attributes, the
/// intake's date attributes, and names already under `ROW_FIELD_PREFIX` (so
/// that two row fields never land on one name).
fn is_reserved_name(name: &str, enrichment: &Enrichment) -> bool {
    matches!(
        name,
        "date" | "ddsource" | "service" | "ddtags" | "hostname" | "ecs.message"
            | "huntress.original_timestamp" | "huntress.truncated" | "huntress.original_size"
            | "huntress.date_rewritten" | "huntress.timestamp_missing"
            | "timestamp" | "_timestamp" | "Timestamp" | "eventTime" | "published_date"
    ) || name.starts_with(ROW_FIELD_PREFIX)
        || enrichment.attributes.iter().any(|(attribute, _)| attribute == name)
}

/// Writes a value as serde_json does; writing to a `Vec` cannot fail.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

fn write_key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    write_member(out, first, name, true, b"");
}

/// `base` and `extra` comma-joined as one JSON string; escaping works per
/// character, so the two escaped halves are joined without a new string.
fn write_joined_tags(out: &mut Vec<u8>, base: &str, extra: &str) {
    match (base.is_empty(), extra.is_empty()) {
        (_, true) => write_string(out, base),
        (true, false) => write_string(out, extra),
        (false, false) => {
            write_string(out, base);
            out.pop();
            out.push(b',');
            let second = out.len();
            write_string(out, extra);
            out.remove(second);
        }
    }
}

/// `hostname` from `host.hostname`: copied as is when it is a non-empty string.
fn write_hostname(out: &mut Vec<u8>, first: &mut bool, row: &Row) {
    if let Some(raw) = row.get("host.hostname").filter(|raw| raw.starts_with('"') && *raw != "\"\"") {
        write_member(out, first, "hostname", true, raw.as_bytes());
    } else if let Some(host) = row.non_null("host.hostname").as_ref().and_then(as_text) {
        write_key(out, first, "hostname");
        write_string(out, &host);
    }
}

/// Prepares an already parsed record (incident reports) the same way.
pub fn log_of_record(record: Map<String, Value>, template: &LogTemplate, enrichment: &Enrichment, now_ms: i64) -> Prepared {
    let text = serde_json::to_string(&record).expect("a JSON map serializes");
    let row = Row::parse(&text).expect("a serialized map is an object");
    log_of_row(&row, event_id(&row), template, enrichment, now_ms)
}

/// The rare log over the limit: parsed and cut by `serialize_within_limit`.
pub fn cut_to_limit(json: &[u8]) -> (Vec<u8>, bool) {
    match serde_json::from_slice::<Map<String, Value>>(json) {
        Ok(log) => serialize_within_limit(log),
        Err(_) => (json.to_vec(), false),
    }
}

/// The attributes kept when cutting strings is not enough.
const KEPT_WHEN_CUT: [&str; 9] =
    ["message", "date", "ddsource", "service", "ddtags", "hostname", "uuid", "huntress.truncated", "huntress.original_size"];

/// Serializes the log; a log over `MAX_LOG_BYTES` has its longest strings cut
/// until it fits, and carries `huntress.truncated: true`. The cuts are planned
/// from the size of each member, measured once, and the log is written once:
/// the cost is linear in the size of the log.
fn serialize_within_limit(mut log: Map<String, Value>) -> (Vec<u8>, bool) {
    let mut sizes = member_sizes(&log);
    let original_size = object_size(&sizes);
    if original_size <= MAX_LOG_BYTES {
        return (to_json(&log), false);
    }
    log.insert("huntress.truncated".into(), Value::Bool(true));
    log.insert("huntress.original_size".into(), Value::from(original_size));
    sizes = member_sizes(&log);
    let mut size = object_size(&sizes);
    size = cut_longest_strings(&mut log, &mut sizes, size);
    if size > MAX_LOG_BYTES {
        // Only many small fields remain: keep the message and the reserved attributes.
        log.retain(|key, _| KEPT_WHEN_CUT.contains(&key.as_str()));
        sizes.retain(|key, _| KEPT_WHEN_CUT.contains(&key.as_str()));
        size = object_size(&sizes);
        cut_longest_strings(&mut log, &mut sizes, size);
    }
    (to_json(&log), true)
}

fn to_json(log: &Map<String, Value>) -> Vec<u8> {
    // Serializing a map of JSON values into a Vec cannot fail.
    serde_json::to_vec(log).unwrap_or_default()
}

/// The serialized size of each member: `"key":value`.
fn member_sizes(log: &Map<String, Value>) -> std::collections::HashMap<String, usize> {
    log.iter().map(|(key, value)| (key.clone(), serialized_len(&Value::String(key.clone())) + 1 + serialized_len(value))).collect()
}

fn serialized_len(value: &Value) -> usize {
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Counts what is written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Braces, members and the commas between them.
fn object_size(sizes: &std::collections::HashMap<String, usize>) -> usize {
    2 + sizes.values().sum::<usize>() + sizes.len().saturating_sub(1)
}

/// Cuts the longest string members, longest first, each by what is still
/// over the limit (plus slack for the marker), never below 32 bytes; returns
/// the new size. Each member is measured again only once, after its cut.
fn cut_longest_strings(log: &mut Map<String, Value>, sizes: &mut std::collections::HashMap<String, usize>, mut size: usize) -> usize {
    let mut candidates: Vec<(usize, String)> =
        log.iter().filter_map(|(key, value)| value.as_str().filter(|text| text.len() > 64).map(|text| (text.len(), key.clone()))).collect();
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    for (_, key) in candidates {
        if size <= MAX_LOG_BYTES {
            break;
        }
        let excess = size - MAX_LOG_BYTES + 1024;
        let Some(value) = log.get_mut(&key) else { continue };
        shorten(value, excess);
        let member = serialized_len(&Value::String(key.clone())) + 1 + serialized_len(value);
        let old = sizes.insert(key, member).unwrap_or(0);
        size = size - old + member;
    }
    size
}

fn shorten(value: &mut Value, excess: usize) {
    if let Value::String(text) = value {
        let mut keep = text.len().saturating_sub(excess).max(32).min(text.len());
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        text.truncate(keep);
        text.push_str("...[truncated]");
    }
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(policy: StalePolicy) -> LogTemplate {
        LogTemplate { service: "huntress-siem".into(), ddtags: "team:sec,query_name:win".into(), stale_policy: policy }
    }

    fn parse(text: &str) -> Row<'_> {
        Row::parse(text).unwrap()
    }

    fn row(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn prepared(value: Value, now: i64) -> (Map<String, Value>, PreparedLog) {
        match log_of_record(row(value), &template(StalePolicy::RewriteDate), &Enrichment::default(), now) {
            Prepared::Log(log) => (serde_json::from_slice(&log.json).unwrap(), log),
            Prepared::SkippedStale { .. } => panic!("unexpected skip"),
        }
    }

    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn nanosecond_timestamps_parse_to_milliseconds() {
        assert_eq!(parse_timestamp_ms(&json!("2026-05-27T14:00:00.123456789Z")), Some(1_779_890_400_123));
        assert_eq!(parse_timestamp_ms(&json!("2026-05-27T14:00:00Z")), Some(1_779_890_400_000));
        assert_eq!(parse_timestamp_ms(&json!("2026-05-27T16:00:00.5+02:00")), Some(1_779_890_400_500));
        assert_eq!(parse_timestamp_ms(&json!("2026-05-27T14:00:00.999999999")), Some(1_779_890_400_999));
        assert_eq!(parse_timestamp_ms(&json!(1_779_890_400_123i64)), Some(1_779_890_400_123));
        assert_eq!(parse_timestamp_ms(&json!("yesterday")), None);
        assert_eq!(parse_timestamp_ms(&json!(null)), None);
    }

    #[test]
    fn timestamps_in_common_forms_parse() {
        let ms = 1_779_890_400_123i64;
        assert_eq!(parse_timestamp_ms(&json!("2026-05-27T14:00:00.123+0000")), Some(ms));
        assert_eq!(parse_timestamp_ms(&json!("2026-05-27T16:00:00.123+0200")), Some(ms));
        assert_eq!(parse_timestamp_ms(&json!("2026-05-27 14:00:00.123Z")), Some(ms));
        assert_eq!(parse_timestamp_ms(&json!("2026-05-27T14:00:00")), Some(ms - 123));
        assert_eq!(parse_timestamp_ms(&json!("1779890400123")), Some(ms));
        assert_eq!(parse_timestamp_ms(&json!(" 1779890400 ")), Some(ms - 123));
        assert_eq!(parse_timestamp_ms(&json!(1_779_890_400)), Some(ms - 123));
        assert_eq!(parse_timestamp_ms(&json!(1_779_890_400.123)), Some(ms));
        assert_eq!(parse_timestamp_ms(&json!(1_779_890_400_123_456i64)), Some(ms));
        assert_eq!(parse_timestamp_ms(&json!(1_779_890_400_123_456_789i64)), Some(ms));
        assert_eq!(parse_timestamp_ms(&json!(1e300)), None);
        assert_eq!(parse_timestamp_ms(&json!("12a")), None);
        assert_eq!(parse_timestamp_ms(&json!("")), None);
    }

    /// The date the intake reads: the first of its date attributes it can parse.
    fn intake_date_ms(log: &Map<String, Value>) -> Option<i64> {
        ["@timestamp", "timestamp", "date", "_timestamp", "Timestamp", "eventTime", "published_date"]
            .iter()
            .find_map(|attribute| log.get(*attribute).and_then(parse_timestamp_ms))
    }

    /// Member names as written, repeats included.
    fn written_names(json: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(json).unwrap();
        let mut scanner = crate::json::scan::Scanner::new(text);
        scanner.begin_object().unwrap();
        let mut names = Vec::new();
        while let Some(name) = scanner.next_key(names.is_empty()).unwrap() {
            names.push(name.decode().unwrap().into_owned());
            scanner.value().unwrap();
        }
        names
    }

    fn prepared_text(text: &str, policy: StalePolicy, enrichment: &Enrichment) -> Option<(Map<String, Value>, Vec<String>)> {
        let row = parse(text);
        match log_of_row(&row, event_id(&row), &template(policy), enrichment, NOW) {
            Prepared::Log(log) => Some((serde_json::from_slice(&log.json).unwrap(), written_names(&log.json))),
            Prepared::SkippedStale { .. } => None,
        }
    }

    #[test]
    fn the_date_the_check_decides_is_the_one_the_intake_reads() {
        let recent = NOW - 3_600_000;
        let iso = DateTime::from_timestamp_millis(recent).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let plus_0000 = iso.replace('Z', "+0000");
        let old_plus_0000 = DateTime::from_timestamp_millis(NOW - 20 * 3_600_000).unwrap().format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string();
        let rows = [
            (format!(r#"{{"uuid":"a","@timestamp":"{iso}"}}"#), recent, true),
            (format!(r#"{{"uuid":"b","@timestamp":"{plus_0000}"}}"#), recent, false),
            (format!(r#"{{"uuid":"c","@timestamp":"{recent}"}}"#), recent, false),
            (format!(r#"{{"uuid":"d","@timestamp":{recent}}}"#), recent, false),
            (r#"{"uuid":"e","@timestamp":"yesterday"}"#.to_string(), NOW, false),
            (format!(r#"{{"uuid":"f","@timestamp":"{iso}","@timestamp":null}}"#), NOW, false),
            (format!(r#"{{"uuid":"g","@timestamp":null,"@timestamp":"{iso}"}}"#), recent, true),
            (format!(r#"{{"uuid":"h","@timestamp":"{old_plus_0000}"}}"#), NOW, false),
            (format!(r#"{{"uuid":"i","@timestamp":"{iso}","timestamp":"2001-01-01T00:00:00Z","date":5}}"#), recent, true),
        ];
        for (text, date, keeps_timestamp) in rows {
            let (log, _) = prepared_text(&text, StalePolicy::RewriteDate, &Enrichment::default()).unwrap();
            assert_eq!(log["date"], date, "{text}");
            assert_eq!(intake_date_ms(&log), Some(date), "{text}");
            assert_eq!(log.contains_key("@timestamp"), keeps_timestamp, "{text}");
            assert!(log.get("timestamp").is_none(), "{text}");
        }
        let (log, _) = prepared_text(r#"{"uuid":"e","@timestamp":"yesterday"}"#, StalePolicy::RewriteDate, &Enrichment::default()).unwrap();
        assert_eq!(log["huntress.original_timestamp"], "yesterday");
        assert_eq!(log["huntress.timestamp_missing"], true);
        // The 18 h rule applies to the date read from a `+0000` timestamp.
        let old = format!(r#"{{"uuid":"h","@timestamp":"{old_plus_0000}"}}"#);
        assert!(prepared_text(&old, StalePolicy::Skip, &Enrichment::default()).is_none());
    }

    #[test]
    fn a_log_has_one_value_per_key() {
        let enrichment = Enrichment::new(vec![("huntress_org_id".into(), json!(42))], "huntress_org_id:42".into());
        let text = r#"{"uuid":"a","x":1,"uuid":"b","x":2,"message":"m","ecs.message":"e","date":"d","ddtags":"t",
            "hostname":"h","service":"s","ddsource":"src","huntress.original_timestamp":"o","huntress.truncated":"no",
            "huntress_org_id":7,"huntress.row.date":"r","timestamp":"2001-01-01T00:00:00Z","@timestamp":"bad"}"#;
        let (log, names) = prepared_text(text, StalePolicy::RewriteDate, &enrichment).unwrap();
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!((&log["uuid"], &log["x"]), (&json!("b"), &json!(2)));
        assert_eq!(log["huntress_org_id"], 42);
        assert_eq!(log["huntress.row.huntress_org_id"], 7);
        assert_eq!(log["huntress.original_timestamp"], "bad");
        assert_eq!(log["huntress.row.huntress.original_timestamp"], "o");
        assert_eq!(log["huntress.row.date"], "d");
        assert_eq!(log["huntress.row.huntress.row.date"], "r");
        assert_eq!(log["huntress.row.ecs.message"], "e");
        assert_eq!(log["huntress.row.timestamp"], "2001-01-01T00:00:00Z");
        assert_eq!(log["huntress.row.huntress.truncated"], "no");
        assert_eq!((&log["ddtags"], &log["service"], &log["ddsource"]), (&json!("team:sec,query_name:win,huntress_org_id:42"), &json!("huntress-siem"), &json!("huntress")));
        // With `log.original`, the row's `message` becomes `ecs.message`, and the row's own `ecs.message` moves aside.
        let text = r#"{"uuid":"l","log.original":"raw","message":"m","ecs.message":"e"}"#;
        let (log, names) = prepared_text(text, StalePolicy::RewriteDate, &Enrichment::default()).unwrap();
        assert_eq!(names.iter().collect::<std::collections::HashSet<_>>().len(), names.len(), "{names:?}");
        assert_eq!((&log["message"], &log["ecs.message"], &log["huntress.row.ecs.message"]), (&json!("raw"), &json!("m"), &json!("e")));
    }

    #[test]
    fn a_two_megabyte_row_of_many_fields_is_cut_in_one_pass() {
        let mut value = Map::new();
        value.insert("uuid".into(), json!("big"));
        value.insert("message".into(), json!("m".repeat(300_000)));
        for i in 0..2_000 {
            value.insert(format!("field.{i}"), json!(format!("{i}:{}\u{e9}\"", "v".repeat(850))));
        }
        let text = serde_json::to_string(&value).unwrap();
        assert!(text.len() > 2_000_000);
        let started = std::time::Instant::now();
        let (log, prepared) = prepared(Value::Object(value), NOW);
        println!("cut a {} byte row in {:?}", text.len(), started.elapsed());
        assert!(prepared.truncated && prepared.json.len() <= MAX_LOG_BYTES, "{}", prepared.json.len());
        assert_eq!(log["huntress.truncated"], true);
        assert!(log["huntress.original_size"].as_u64().unwrap() > 2_000_000);
        assert_eq!(log["uuid"], "big");
        let cut = log.values().filter_map(Value::as_str).filter(|text| text.ends_with("...[truncated]")).count();
        assert!(cut >= 1, "some strings are cut");
        // Fields that were not cut are whole.
        let whole = log.iter().filter(|(key, _)| key.starts_with("field.")).filter(|(_, v)| !v.as_str().unwrap().ends_with("...[truncated]"));
        for (key, text) in whole {
            let i = key.trim_start_matches("field.");
            assert_eq!(text.as_str().unwrap(), format!("{i}:{}\u{e9}\"", "v".repeat(850)));
        }
    }

    #[test]
    fn reserved_attributes_and_ecs_fields() {
        let ts = "2026-05-27T14:00:00.123456789Z";
        let now = parse_timestamp_ms(&json!(ts)).unwrap() + 60_000;
        let (log, _) = prepared(
            json!({"uuid": "u1", "@timestamp": ts, "message": "logon", "host.hostname": "DC01", "event.code": "4624"}),
            now,
        );
        assert_eq!(log["message"], "logon");
        assert_eq!(log["date"], 1_779_890_400_123i64);
        assert_eq!(log["hostname"], "DC01");
        assert_eq!(log["ddsource"], "huntress");
        assert_eq!(log["service"], "huntress-siem");
        assert_eq!(log["ddtags"], "team:sec,query_name:win");
        assert_eq!(log["event.code"], "4624");
        assert_eq!(log["uuid"], "u1");
        assert_eq!(log["@timestamp"], ts);
    }

    #[test]
    fn message_prefers_log_original_then_message_then_row() {
        let (log, _) = prepared(json!({"uuid": "a", "log.original": "<raw/>", "message": "parsed"}), NOW);
        assert_eq!(log["message"], "<raw/>");
        assert_eq!(log["ecs.message"], "parsed");
        assert!(log.get("log.original").is_none());
        let (log, _) = prepared(json!({"uuid": "b", "event.code": 5}), NOW);
        let message: Value = serde_json::from_str(log["message"].as_str().unwrap()).unwrap();
        assert_eq!(message["event.code"], 5);
    }

    #[test]
    fn rows_without_message_stand_in_as_their_json_text() {
        let text = r#"{"uuid":"r","message":null,"event.code":4625,"user.name":null,"q\"name":"v\n","nested":{ "a" : [1, "x"] }}"#;
        let row = parse(text);
        let Prepared::Log(log) = log_of_row(&row, 1, &template(StalePolicy::RewriteDate), &Enrichment::default(), NOW) else {
            panic!("a log")
        };
        let log: Map<String, Value> = serde_json::from_slice(&log.json).unwrap();
        let message = log["message"].as_str().unwrap();
        // Arrival order, nulls and `message` left out, values as they were written.
        assert_eq!(message, r#"{"uuid":"r","event.code":4625,"q\"name":"v\n","nested":{ "a" : [1, "x"] }}"#);
        let parsed: Value = serde_json::from_str(message).unwrap();
        assert_eq!(parsed["q\"name"], "v\n");
        let (log, _) = prepared(json!({"uuid": "m", "message": {"k": [true]}}), NOW);
        assert_eq!(log["message"], r#"{"k":[true]}"#);
    }

    #[test]
    fn canonical_rows_are_what_serde_json_writes() {
        let values = [
            "null", "true", "false", "0", "-0", "7", "-42", "123456789012345678", "1234567890123456789", "18446744073709551616",
            "1.5", "-0.0", "1e3", "1E-2", "2.50", r#""plain""#, r#""caf\u00e9 \/ \" \\ \n \u001f \uD83D\uDE00""#,
            "\"\u{e9}\"", r#""a\"b\\c\nd\te\rf\bg\f""#, r#""\\u00e9""#, "{ \"b\" : [1, 2.0, {\"c\": null}] , \"a\":\"x\"}", "[ ]",
        ];
        let keys = ["uuid_", "a", "b", "@timestamp", "q\\\"k", "\\u00e9", "z.y"];
        let mut seed = 5u64;
        let mut next = move |bound: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % bound
        };
        for _ in 0..3_000 {
            let members: Vec<String> = (0..1 + next(8))
                .map(|_| format!("\"{}\" : {}", keys[next(keys.len())], values[next(values.len())]))
                .collect();
            let text = format!("{{{}}}", members.join(", "));
            let row = parse(&text);
            let expected = serde_json::to_vec(&row.to_map()).unwrap();
            assert_eq!(String::from_utf8(canonical_row(&row)).unwrap(), String::from_utf8(expected).unwrap(), "{text}");
        }
    }

    #[test]
    fn null_columns_are_not_forwarded() {
        let (log, _) = prepared(json!({"uuid": "n", "message": "m", "user.name": null, "source.ip": null, "event.code": 0}), NOW);
        assert!(log.get("user.name").is_none() && log.get("source.ip").is_none());
        assert_eq!(log["event.code"], 0);
        assert_eq!(log["message"], "m");
    }

    #[test]
    fn nested_hostname_and_missing_timestamp() {
        let (log, _) = prepared(json!({"uuid": "c", "host": {"hostname": "WS1"}}), NOW);
        assert_eq!(log["hostname"], "WS1");
        assert_eq!(log["date"], NOW);
        assert_eq!(log["huntress.timestamp_missing"], true);
    }

    #[test]
    fn huge_messages_are_cut_below_the_intake_limit() {
        let big = "x".repeat(3 * MAX_LOG_BYTES);
        let (log, prepared) = prepared(json!({"uuid": "d", "message": big, "other": "y".repeat(200_000)}), NOW);
        assert!(prepared.truncated);
        assert!(prepared.json.len() <= MAX_LOG_BYTES);
        assert_eq!(log["huntress.truncated"], true);
        assert!(log["message"].as_str().unwrap().ends_with("...[truncated]"));
        assert_eq!(log["uuid"], "d");
    }

    #[test]
    fn many_small_fields_still_fit() {
        let mut value = Map::new();
        value.insert("uuid".into(), json!("e"));
        for i in 0..40_000 {
            value.insert(format!("field.{i}"), json!("0123456789012345678901234567890"));
        }
        let (_, prepared) = prepared(Value::Object(value), NOW);
        assert!(prepared.truncated && prepared.json.len() <= MAX_LOG_BYTES);
    }

    #[test]
    fn stale_events_are_redated_or_skipped() {
        let old = NOW - 20 * 3600 * 1000;
        let old_iso = DateTime::from_timestamp_millis(old).unwrap().to_rfc3339();
        let (log, prepared) = prepared(json!({"uuid": "f", "@timestamp": old_iso.clone()}), NOW);
        assert!(prepared.stale);
        assert_eq!(log["date"], NOW);
        assert_eq!(log["huntress.original_timestamp"], old_iso);
        assert!(log.get("@timestamp").is_none());
        let skipped = log_of_record(row(json!({"uuid": "f", "@timestamp": old_iso})), &template(StalePolicy::Skip), &Enrichment::default(), NOW);
        assert!(matches!(skipped, Prepared::SkippedStale { .. }));
    }

    #[test]
    fn ids_come_from_uuid_else_row_hash() {
        let a = json!({"uuid": "same", "x": 1}).to_string();
        let b = json!({"uuid": "same", "x": 2}).to_string();
        assert_eq!(event_id(&parse(&a)), event_id(&parse(&b)));
        // The same uuid spelled with an escape is the same event.
        assert_eq!(event_id(&parse(r#"{"uuid": "s\u0061me"}"#)), event_id(&parse(&a)));
        assert_ne!(event_id(&parse(r#"{"uuid": "other"}"#)), event_id(&parse(&a)));
        let c = json!({"x": 1, "y": 2}).to_string();
        let d = json!({"y": 2, "x": 1}).to_string();
        let e = json!({"x": 1, "y": 3}).to_string();
        assert_eq!(event_id(&parse(&c)), event_id(&parse(&d)));
        assert_ne!(event_id(&parse(&c)), event_id(&parse(&e)));
        // Ids are stored in checkpoints: pinned (first 8 bytes of SHA-256, little-endian).
        assert_eq!(event_id(&parse(&a)), 17_287_844_810_874_581_400);
        assert_eq!(event_id(&parse(r#"{"y": 2, "x": 1}"#)), 11_755_555_424_225_629_373);
    }

    #[test]
    fn rows_without_keep_are_detected() {
        assert!(lacks_keep(&parse(&json!({"uuid": "a", "organization_id": 1}).to_string())));
        assert!(lacks_keep(&parse(&json!({"uuid": "a", "organization.id": 1}).to_string())));
        assert!(!lacks_keep(&parse(&json!({"uuid": "a", "message": "m"}).to_string())));
    }

    #[test]
    fn joined_tags_are_one_escaped_string() {
        let cases = [
            ("a\"b", "c\\d", "a\"b,c\\d"),
            ("plain", "c\\d", "plain,c\\d"),
            ("a\nb", "plain", "a\nb,plain"),
            ("", "x", "x"),
            ("y", "", "y"),
            ("", "", ""),
        ];
        for (base, extra, joined) in cases {
            let mut out = Vec::new();
            write_joined_tags(&mut out, base, extra);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), joined);
        }
    }

    #[test]
    fn enrichment_adds_attributes_and_tags() {
        let enrichment = Enrichment::new(vec![("huntress_org_name".into(), json!("Acme"))], "huntress_org_name:acme".into());
        let Prepared::Log(log) = log_of_record(row(json!({"uuid": "g"})), &template(StalePolicy::RewriteDate), &enrichment, NOW) else { panic!() };
        let log: Map<String, Value> = serde_json::from_slice(&log.json).unwrap();
        assert_eq!(log["huntress_org_name"], "Acme");
        assert_eq!(log["ddtags"], "team:sec,query_name:win,huntress_org_name:acme");
        // Several attributes, one of them also a row field (the enrichment wins), and a row with no other field.
        let attributes = vec![("huntress_org_id".into(), json!(42)), ("huntress_org_name".into(), json!("A \"q\""))];
        let enrichment = Enrichment::new(attributes, String::new());
        for record in [json!({"uuid": "h", "huntress_org_id": 7}), json!({"x": null})] {
            let Prepared::Log(log) = log_of_record(row(record), &template(StalePolicy::RewriteDate), &enrichment, NOW) else { panic!() };
            let log: Map<String, Value> = serde_json::from_slice(&log.json).unwrap();
            assert_eq!((&log["huntress_org_id"], &log["huntress_org_name"]), (&json!(42), &json!("A \"q\"")));
        }
    }
}
