//! One SIEM row as it arrived: field names with their raw JSON values, in order,
//! borrowed from the response body. A value is parsed only when the check needs
//! it (the timestamp, the message, the organization); the rest is copied into
//! the forwarded log verbatim, which spares building and re-serializing a tree.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::json::scan::{next_special, ScanResult, Scanner};

pub struct Row<'a> {
    /// Names, and values as the JSON text they arrived as (checked, not decoded).
    fields: Vec<(Cow<'a, str>, &'a str)>,
    /// Where the fields the check reads on every row are, found while parsing,
    /// so that reading them does not scan the row.
    known: [Option<usize>; KNOWN_FIELDS.len()],
}

/// The fields read on every row: ids, time, message, host and organization.
const KNOWN_FIELDS: [&str; 10] = [
    "uuid",
    "@timestamp",
    "message",
    "log.original",
    "host.hostname",
    "organization_id",
    "organization.id",
    "organization",
    "organization.name",
    "organization_name",
];

fn known_index(key: &str) -> Option<usize> {
    match key {
        "uuid" => Some(0),
        "@timestamp" => Some(1),
        "message" => Some(2),
        "log.original" => Some(3),
        "host.hostname" => Some(4),
        "organization_id" => Some(5),
        "organization.id" => Some(6),
        "organization" => Some(7),
        "organization.name" => Some(8),
        "organization_name" => Some(9),
        _ => None,
    }
}

impl<'a> Row<'a> {
    /// A row from a whole JSON object.
    pub fn parse(text: &'a str) -> ScanResult<Self> {
        let mut scanner = Scanner::new(text);
        let row = Row::scan(&mut scanner, 0)?;
        scanner.finish()?;
        Ok(row)
    }

    /// The object that comes next in `scanner`; `expected_fields` sizes its storage.
    pub fn scan(scanner: &mut Scanner<'a>, expected_fields: usize) -> ScanResult<Self> {
        let fields = Row::scan_fields(scanner, expected_fields)?;
        Ok(Row::new(fields))
    }

    /// The object that comes next in `scanner`, the row after `previous` on a
    /// page: rows of one query usually have the same columns, and a row with
    /// the names of a row already checked has no name twice.
    pub fn scan_after(scanner: &mut Scanner<'a>, previous: Option<&Row<'_>>) -> ScanResult<Self> {
        let mut fields = Row::scan_fields(scanner, previous.map_or(0, |row| row.fields.len()))?;
        let same_names = previous.is_some_and(|row| {
            row.fields.len() == fields.len() && row.fields.iter().zip(&fields).all(|((a, _), (b, _))| a == b)
        });
        if !same_names {
            keep_last_of_each_name(&mut fields);
        }
        Ok(Row::index(fields))
    }

    fn scan_fields(scanner: &mut Scanner<'a>, expected_fields: usize) -> ScanResult<Vec<(Cow<'a, str>, &'a str)>> {
        let mut fields = Vec::with_capacity(expected_fields.max(8));
        scanner.begin_object()?;
        while let Some(name) = scanner.next_key(fields.is_empty())? {
            fields.push((name.decode()?, scanner.value()?));
        }
        Ok(fields)
    }

    fn new(mut fields: Vec<(Cow<'a, str>, &'a str)>) -> Self {
        keep_last_of_each_name(&mut fields);
        Row::index(fields)
    }

    /// A row of distinct names, with its known fields found.
    fn index(fields: Vec<(Cow<'a, str>, &'a str)>) -> Self {
        let mut known = [None; KNOWN_FIELDS.len()];
        for (index, (key, _)) in fields.iter().enumerate() {
            if let Some(slot) = known_index(key) {
                known[slot] = Some(index);
            }
        }
        Row { fields, known }
    }

    pub fn get(&self, key: &str) -> Option<&'a str> {
        match known_index(key) {
            Some(slot) => self.known[slot].and_then(|index| self.fields.get(index)).map(|(_, v)| *v),
            None => self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v),
        }
    }

    /// Names and raw values; a name is `Cow::Borrowed` when the body spelled it
    /// without escapes, so it can be written back as is.
    pub fn fields(&self) -> &[(Cow<'a, str>, &'a str)] {
        &self.fields
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_ref())
    }

    /// The bytes of all raw values: a size hint for the log built from the row.
    pub fn raw_len(&self) -> usize {
        self.fields.iter().map(|(k, v)| k.len() + v.len() + 4).sum()
    }

    /// The parsed row, sorted by key (for the rare paths that need a tree).
    pub fn to_map(&self) -> Map<String, Value> {
        self.fields
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::from_str(v).unwrap_or(Value::Null)))
            .collect()
    }

    /// The parsed value; a null is absent (no parse needed).
    fn parsed(&self, key: &str) -> Option<Value> {
        self.get(key).filter(|raw| *raw != "null").and_then(|raw| serde_json::from_str(raw).ok())
    }
}

/// A repeated name keeps only its last value, where that value stands, as
/// serde_json resolves it when it parses an object to a map: every reader of
/// the row, and the forwarded log, see one value per name.
fn keep_last_of_each_name(fields: &mut Vec<(Cow<'_, str>, &str)>) {
    // Small rows, the usual case, compare names directly; big ones hash them.
    let repeated = if fields.len() <= 32 {
        fields.iter().enumerate().any(|(index, (key, _))| fields[index + 1..].iter().any(|(later, _)| later == key))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(fields.len());
        !fields.iter().all(|(key, _)| seen.insert(key.as_ref()))
    };
    if !repeated {
        return;
    }
    let mut seen = std::collections::HashSet::with_capacity(fields.len());
    let mut keep: Vec<bool> = fields.iter().rev().map(|(key, _)| seen.insert(key.clone())).collect();
    keep.reverse();
    let mut flags = keep.into_iter();
    fields.retain(|_| flags.next().unwrap_or(true));
}

/// Field lookup shared by raw rows and parsed maps.
pub trait Fields {
    /// A field given flat (`organization.id` as one key) or nested
    /// (`organization: {id}`); nulls count as absent (a `KEEP` column a row lacks).
    fn non_null(&self, dotted: &str) -> Option<Value>;
}

fn nested<'v>(root: &'v Value, rest: std::str::Split<'_, char>) -> Option<&'v Value> {
    let mut current = root;
    for part in rest {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

impl Fields for Row<'_> {
    fn non_null(&self, dotted: &str) -> Option<Value> {
        if let Some(value) = self.parsed(dotted).filter(|v| !v.is_null()) {
            return Some(value);
        }
        let mut parts = dotted.split('.');
        let root = self.parsed(parts.next()?)?;
        nested(&root, parts).filter(|v| !v.is_null()).cloned()
    }
}

impl Fields for Map<String, Value> {
    fn non_null(&self, dotted: &str) -> Option<Value> {
        if let Some(value) = self.get(dotted).filter(|v| !v.is_null()) {
            return Some(value.clone());
        }
        let mut parts = dotted.split('.');
        nested(self.get(parts.next()?)?, parts).filter(|v| !v.is_null()).cloned()
    }
}

/// Writes a JSON object member, with a comma before all but the first.
pub fn write_member(out: &mut Vec<u8>, first: &mut bool, name: &str, name_is_plain: bool, raw_value: &[u8]) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    if name_is_plain {
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.push(b'"');
    } else {
        write_string(out, name);
    }
    out.push(b':');
    out.extend_from_slice(raw_value);
}

/// `text` as a JSON string: runs without anything to escape are copied whole.
pub fn write_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut at = 0;
    loop {
        let special = next_special(bytes, at);
        out.extend_from_slice(&bytes[at..special]);
        let Some(&byte) = bytes.get(special) else { break };
        write_escape(out, byte);
        at = special + 1;
    }
    out.push(b'"');
}

/// The JSON escape of `"`, `\\` or a control character.
fn write_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_keep_raw_values_and_borrow_plain_names() {
        let text = r#"{"uuid":"a","event.code":4625,"nested":{"x":[1,2]},"esc\"aped":"v\n"}"#;
        let row = Row::parse(text).unwrap();
        assert_eq!(row.get("event.code").unwrap(), "4625");
        assert_eq!(row.get("nested").unwrap(), r#"{"x":[1,2]}"#);
        assert!(matches!(row.fields()[0].0, Cow::Borrowed(_)));
        assert!(matches!(row.fields()[3].0, Cow::Owned(_)));
        assert_eq!(row.keys().collect::<Vec<_>>(), ["uuid", "event.code", "nested", "esc\"aped"]);
    }

    #[test]
    fn non_null_reads_flat_then_nested_for_rows_and_maps() {
        let value = json!({"organization.id": null, "organization": {"id": 7, "name": "Acme"}, "host.hostname": "DC1"});
        let text = value.to_string();
        let row = Row::parse(&text).unwrap();
        let map = value.as_object().unwrap().clone();
        for fields in [&row as &dyn Fields, &map as &dyn Fields] {
            assert_eq!(fields.non_null("organization.id"), Some(json!(7)));
            assert_eq!(fields.non_null("organization.name"), Some(json!("Acme")));
            assert_eq!(fields.non_null("host.hostname"), Some(json!("DC1")));
            assert_eq!(fields.non_null("user.name"), None);
        }
    }

    #[test]
    fn known_and_other_fields_read_the_same_way() {
        let text = r#"{"a":1,"uuid":"u","message":"m1","b":2,"message":"m2","host.hostname":null}"#;
        let row = Row::parse(text).unwrap();
        let map: Map<String, Value> = serde_json::from_str(text).unwrap();
        for key in KNOWN_FIELDS.iter().chain(&["a", "b", "c"]) {
            let expected = map.get(*key).map(|v| v.to_string());
            assert_eq!(row.get(key).map(|raw| raw.to_string()), expected, "{key}");
        }
    }

    #[test]
    fn lone_surrogates_in_names_or_values_are_errors_not_panics() {
        for text in [r#"{"\ud800":1}"#, r#"{"a\udc00b":1}"#, r#"{"x":"\ud800"}"#, r#"{"x":{"\udbff\u0041":1}}"#] {
            assert!(Row::parse(text).is_err(), "{text}");
        }
        let row = Row::parse(r#"{"\ud83d\ude00":1}"#).unwrap();
        assert_eq!(row.keys().collect::<Vec<_>>(), ["\u{1F600}"]);
    }

    #[test]
    fn a_repeated_name_keeps_its_last_value_where_it_stands() {
        let text = r#"{"uuid":"a","@timestamp":"2026-01-01T00:00:00Z","x":1,"uuid":"b","@timestamp":null,"y":2,"x":3}"#;
        let row = Row::parse(text).unwrap();
        assert_eq!(row.fields().iter().map(|(k, v)| (k.as_ref(), *v)).collect::<Vec<_>>(), [("uuid", "\"b\""), ("@timestamp", "null"), ("y", "2"), ("x", "3")]);
        assert_eq!(row.get("uuid"), Some("\"b\""));
        assert_eq!(row.get("x"), Some("3"));
        let map: Map<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(row.to_map(), map);
        // A row after one with the same names, and after one with other names.
        let page = r#"[{"a":1,"b":2},{"a":3,"b":4},{"a":5,"a":6}]"#;
        let mut scanner = Scanner::new(page);
        scanner.begin_array().unwrap();
        let mut rows: Vec<Row> = Vec::new();
        while scanner.next_element(rows.is_empty()).unwrap() {
            let row = Row::scan_after(&mut scanner, rows.last()).unwrap();
            rows.push(row);
        }
        assert_eq!(rows[1].get("b"), Some("4"));
        assert_eq!(rows[2].fields().len(), 1);
        assert_eq!(rows[2].get("a"), Some("6"));
        // Many names, hashed rather than compared pairwise.
        let many: Vec<String> = (0..40).map(|i| format!("\"f{}\":{i}", i % 30)).collect();
        let text = format!("{{{}}}", many.join(","));
        let row = Row::parse(&text).unwrap();
        assert_eq!(row.fields().len(), 30);
        assert_eq!(row.get("f0"), Some("30"));
    }

    #[test]
    fn rows_with_more_fields_than_a_u16_keep_their_known_fields() {
        let mut text = String::from("{");
        for i in 0..70_000 {
            text.push_str(&format!("\"f{i}\":0,"));
        }
        text.push_str(r#""uuid":"last","@timestamp":"2026-01-01T00:00:00Z"}"#);
        let row = Row::parse(&text).unwrap();
        assert_eq!(row.get("uuid"), Some("\"last\""));
        assert_eq!(row.get("@timestamp"), Some("\"2026-01-01T00:00:00Z\""));
    }

    #[test]
    fn non_objects_are_refused() {
        assert!(Row::parse("[1]").is_err());
        assert!(Row::parse("\"x\"").is_err());
        assert!(Row::parse("{\"a\":1} {}").is_err());
    }

    #[test]
    fn members_are_written_as_valid_json() {
        let mut out = b"{".to_vec();
        let mut first = true;
        write_member(&mut out, &mut first, "a", true, b"1");
        write_member(&mut out, &mut first, "q\"uote", false, b"\"x\"");
        out.push(b'}');
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed, json!({"a": 1, "q\"uote": "x"}));
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        let mut seed = 11u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let alphabet = ['a', ' ', '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{1}', '\u{1f}', '\u{7f}', '/', 'é', '😀'];
        for _ in 0..2_000 {
            let len = next() as usize % 40;
            let text: String = (0..len).map(|_| alphabet[next() as usize % alphabet.len()]).collect();
            let mut out = Vec::new();
            write_string(&mut out, &text);
            assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
        }
    }
}
