//! Differential fuzzing of the SIEM page scanner against serde_json.
//!
//! Pages are generated valid, then mutated: bytes flipped, cut short, or given
//! tricky tokens (lone and paired surrogate escapes, deep nesting, numbers out
//! of range, repeated members, a byte order mark, odd whitespace). For every
//! page, `parse_page` must accept exactly what serde_json accepts as a page,
//! yield the same rows and page token, never panic, and every row it yields
//! must turn into a log that is valid JSON.
//!
//! `cargo test --no-default-features fuzz` runs a bounded round (a fixed number
//! of cases, and at most `DEFAULT_SECONDS`). For a longer run:
//! `HUNTRESS_FUZZ_SECONDS=3600 cargo test --release --no-default-features fuzz -- --nocapture`;
//! `HUNTRESS_FUZZ_SEED` picks the seed (the test prints the one it used).

use std::time::{Duration, Instant};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::datadog::transform::StalePolicy;
use crate::datadog::transform::{self, Enrichment, LogTemplate, Prepared};
use crate::feeds::siem::{parse_page, Pagination};
use crate::json::row::Row;
use crate::json::scan::Scanner;

const DEFAULT_CASES: u64 = 50_000;
const DEFAULT_SECONDS: u64 = 30;

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const NAMES: &[&str] = &[
    "uuid", "@timestamp", "message", "log.original", "host.hostname", "organization_id", "organization.id", "organization",
    "organization.name", "event.code", "user.name", "date", "timestamp", "ddtags", "hostname", "service", "status",
    "huntress.original_timestamp", "ecs.message", "huntress.truncated", "huntress_org_id", "huntress.row.date",
    "q\\\"uote", "\\u0041scii", "\\ud83d\\ude00", "caf\u{e9}", "",
];

const STRINGS: &[&str] = &[
    "", "plain", "2026-05-27T14:00:00.123456789Z", "2026-05-27T14:00:00+0000", "1779890400123", "1779890400",
    "esc\\\"aped \\\\ \\/ \\b\\f\\n\\r\\t", "\\u00e9\\u0000", "\\ud83d\\ude00", "caf\u{e9} \u{1F600}", "yesterday",
];

const NUMBERS: &[&str] = &[
    "0", "-0", "7", "-42", "1779890400123", "18446744073709551616", "1.5", "-0.0", "1e3", "1E-2", "2.50", "1e308",
    "1.7976931348623157e308", "1.7976931348623158e308", "1e-400", "123456789012345678901234567890",
];

/// Tokens that are inserted as they are: most break the page, some do not.
const TRICKY: &[&str] = &[
    "\\ud800", "\\udc00", "\\udbff\\udfff", "\\ud800\\u0041", "\\ud800\\n", "\\ud800\\", "\\ud83d\\ude00", "\\u0000",
    "\\uD800\\uDC00", "\\u", "\\", "\"", "1e400", "-1e400", "1e308", "-0", "00", "\u{feff}", " ", "\t", "\n", "\r", "\u{a0}",
    ",", ":", "null", "true", "[]", "{}", "\"logs\":[]", "\"pagination\":{}", "\"logs\":null,", "\"uuid\":\"x\",",
    "\"@timestamp\":null,", "{\"a\":1,\"a\":2}", "}", "]", "{", "[", "\u{1}", "\u{e9}", "\u{1F600}",
];

fn write_string(rng: &mut Rng, out: &mut String, pool: &[&str]) {
    out.push('"');
    out.push_str(rng.pick(pool));
    out.push('"');
}

fn space(rng: &mut Rng, out: &mut String) {
    if rng.chance(15) {
        out.push_str(rng.pick(&[" ", "\n", "\t", "\r\n", "  "]));
    }
}

fn write_value(rng: &mut Rng, out: &mut String, depth: usize) {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 | 1 => write_string(rng, out, STRINGS),
        2 => out.push_str(rng.pick(NUMBERS)),
        3 => out.push_str(rng.pick(&["true", "false"])),
        4 => out.push_str("null"),
        5 => {
            out.push('[');
            for index in 0..rng.below(4) {
                if index > 0 {
                    out.push(',');
                }
                space(rng, out);
                write_value(rng, out, depth + 1);
            }
            out.push(']');
        }
        _ => write_object(rng, out, depth + 1, 4),
    }
}

fn write_object(rng: &mut Rng, out: &mut String, depth: usize, max_members: usize) {
    out.push('{');
    for index in 0..rng.below(max_members + 1) {
        if index > 0 {
            out.push(',');
        }
        space(rng, out);
        write_string(rng, out, NAMES);
        space(rng, out);
        out.push(':');
        space(rng, out);
        write_value(rng, out, depth);
    }
    space(rng, out);
    out.push('}');
}

/// A page as the spec shapes it, with now and then an extra member or a null.
fn valid_page(rng: &mut Rng) -> String {
    let mut out = String::from("{");
    space(rng, &mut out);
    if rng.chance(10) {
        out.push_str("\"extra\":");
        write_value(rng, &mut out, 0);
        out.push(',');
    }
    out.push_str("\"logs\":");
    if rng.chance(5) {
        out.push_str("null");
    } else {
        out.push('[');
        for index in 0..rng.below(6) {
            if index > 0 {
                out.push(',');
            }
            space(rng, &mut out);
            write_object(rng, &mut out, 2, 12);
        }
        out.push(']');
    }
    match rng.below(4) {
        0 => {}
        1 => out.push_str(",\"pagination\":null"),
        2 => out.push_str(",\"pagination\":{}"),
        _ => {
            out.push_str(",\"pagination\":{\"next_page_token\":");
            write_string(rng, &mut out, &["", "tok", "t\\u006fk"]);
            out.push('}');
        }
    }
    space(rng, &mut out);
    out.push('}');
    out
}

fn mutate(rng: &mut Rng, page: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(page.len() + 1);
        match rng.below(6) {
            0 if at < page.len() => {
                page.remove(at);
            }
            1 if at < page.len() => page[at] = rng.pick(b"{}[]\":,\\ -+.0123456789eEtrufalsnu/\x01\x7f\xc3\xa9\xff"),
            2 => page.truncate(at),
            3 => {
                let depth = 120 + rng.below(15);
                let nest = "[".repeat(depth) + &"]".repeat(depth);
                page.splice(at..at, nest.into_bytes());
            }
            _ => {
                let token = rng.pick(TRICKY).as_bytes().to_vec();
                page.splice(at..at, token);
            }
        }
    }
}

/// The members of an object in the order they came, repeats included.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[derive(Debug, PartialEq)]
struct Page {
    rows: Vec<Map<String, Value>>,
    next_page_token: Option<String>,
}

/// What serde_json makes of a page: `None` when it is not a page.
fn serde_page(body: &[u8]) -> Option<Page> {
    let Value::Object(_) = serde_json::from_slice::<Value>(body).ok()? else { return None };
    let Entries(entries) = serde_json::from_slice(body).ok()?;
    let named = |name: &str| entries.iter().filter(|(key, _)| key == name).map(|(_, value)| value).collect::<Vec<_>>();
    let (logs, pagination) = (named("logs"), named("pagination"));
    if logs.len() > 1 || pagination.len() > 1 {
        return None;
    }
    let rows = match logs.first() {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(rows)) => rows.iter().map(|row| row.as_object().cloned()).collect::<Option<_>>()?,
        Some(_) => return None,
    };
    let next_page_token = match pagination.first() {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) => serde_json::from_value::<Pagination>((*value).clone()).ok()?.next_page_token,
        Some(_) => return None,
    };
    Some(Page { rows, next_page_token: next_page_token.filter(|token| !token.is_empty()) })
}

/// What the scanner makes of it; every row also becomes a log.
fn scanned_page(body: &[u8]) -> Option<Page> {
    let page = parse_page(body).ok()?;
    let template = LogTemplate { service: "huntress".into(), ddtags: "a:b".into(), stale_policy: StalePolicy::RewriteDate };
    let rows = page.rows.iter().map(|row| row_map(row, &template)).collect();
    Some(Page { rows, next_page_token: page.next_page_token })
}

fn row_map(row: &Row, template: &LogTemplate) -> Map<String, Value> {
    let names: std::collections::HashSet<&str> = row.keys().collect();
    assert_eq!(names.len(), row.fields().len(), "one value per name");
    let id = transform::event_id(row);
    let now = 1_780_000_000_000;
    if let Prepared::Log(log) = transform::log_of_row(row, id, template, &Enrichment::default(), now) {
        let entries: Entries = serde_json::from_slice(&log.json)
            .unwrap_or_else(|e| panic!("a log is a JSON object ({e}): {:?}", String::from_utf8_lossy(&log.json)));
        let names: std::collections::HashSet<&str> = entries.0.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(names.len(), entries.0.len(), "one key per name in {}", String::from_utf8_lossy(&log.json));
    }
    row.fields()
        .iter()
        .map(|(key, raw)| (key.to_string(), serde_json::from_str(raw).expect("a scanned value parses")))
        .collect()
}

fn check(body: &[u8]) {
    let expected = serde_page(body);
    let actual = scanned_page(body);
    assert_eq!(actual, expected, "page {:?}", String::from_utf8_lossy(body));
    if let Ok(text) = std::str::from_utf8(body) {
        let mut scanner = Scanner::new(text);
        let ours = scanner.value().and_then(|_| scanner.finish()).is_ok();
        assert_eq!(ours, serde_json::from_str::<Value>(text).is_ok(), "document {text:?}");
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.parse().ok())
}

#[test]
fn fuzz_page_scanner_against_serde_json() {
    let seed = env_number("HUNTRESS_FUZZ_SEED").unwrap_or(0x5eed_1234_abcd_0001);
    let long_run = env_number("HUNTRESS_FUZZ_SECONDS");
    let budget = Duration::from_secs(long_run.unwrap_or(DEFAULT_SECONDS));
    let cases = if long_run.is_some() { u64::MAX } else { DEFAULT_CASES };
    println!("fuzz seed {seed:#x}");
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let (mut done, mut accepted) = (0u64, 0u64);
    while done < cases && started.elapsed() < budget {
        let mut page = valid_page(&mut rng).into_bytes();
        if done % 8 != 0 {
            mutate(&mut rng, &mut page);
        }
        check(&page);
        accepted += u64::from(serde_page(&page).is_some());
        done += 1;
    }
    println!("fuzz: {done} pages, {accepted} valid, in {:?}", started.elapsed());
    assert!(done >= 1_000, "too few cases ran ({done})");
    assert!(accepted * 10 >= done, "mutations should leave some pages valid ({accepted} of {done})");
    assert!(accepted * 10 <= done * 9, "mutations should break most pages ({accepted} of {done})");
}

#[test]
fn fuzz_tricky_tokens_in_every_position() {
    let mut rng = Rng(7);
    let pages: Vec<String> = (0..6).map(|_| valid_page(&mut rng)).collect();
    for page in &pages {
        for token in TRICKY {
            for at in (0..=page.len()).filter(|at| page.is_char_boundary(*at)).step_by(11) {
                let mut body = page.clone();
                body.insert_str(at, token);
                check(body.as_bytes());
            }
        }
    }
}
