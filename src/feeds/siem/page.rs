//! Reading one page of `POST /v1/siem/query` without building a JSON tree:
//! its rows borrow the body, and its shape is checked, not trusted.

use serde::Deserialize;
use serde_json::Value;

use crate::base::error::{ErrorKind, HuntressError, Result};
use crate::json::row::Row;
use crate::json::scan::{Kind, ScanError, Scanner};

pub const QUERY_PATH: &str = "/v1/siem/query";
/// Huntress returns at most this many rows per page.
pub const MAX_PAGE_ROWS: usize = 200;

pub struct SiemPage<'a> {
    pub rows: Vec<Row<'a>>,
    pub next_page_token: Option<String>,
}

/// The `pagination` member of a page, as the API sends it.
#[derive(Deserialize)]
pub struct Pagination {
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// Parses a page body into rows that borrow it, checking the shape the spec
/// promises instead of trusting it.
pub fn parse_page(body: &[u8]) -> Result<SiemPage<'_>> {
    // UTF-8 is checked once for the whole body, not string by string.
    let text = std::str::from_utf8(body).map_err(|e| malformed(format!("the response is not UTF-8 ({e})")))?;
    let mut scanner = Scanner::new(text);
    if scanner.peek_kind() != Some(Kind::Object) {
        return Err(malformed("the response is not a JSON object".into()));
    }
    let (mut rows, mut pagination) = (None, None);
    scanner.begin_object().map_err(not_json)?;
    let mut first = true;
    while let Some(name) = scanner.next_key(first).map_err(not_json)? {
        first = false;
        match name.decode().map_err(not_json)?.as_ref() {
            "logs" if rows.is_some() => return Err(bad_shape("`logs` appears twice")),
            "logs" => rows = Some(scan_rows(&mut scanner)?),
            "pagination" if pagination.is_some() => return Err(bad_shape("`pagination` appears twice")),
            "pagination" => pagination = Some(scanner.value().map_err(not_json)?),
            _ => drop(scanner.value().map_err(not_json)?),
        }
    }
    scanner.finish().map_err(not_json)?;
    let next_page_token = match pagination.filter(|raw| *raw != "null") {
        None => None,
        // Through a map, so that a repeated member resolves as elsewhere: the last wins.
        Some(raw) if raw.starts_with('{') => serde_json::from_str::<Value>(raw)
            .and_then(serde_json::from_value::<Pagination>)
            .map_err(|e| bad_shape(&format!("`pagination`: {e}")))?
            .next_page_token,
        Some(_) => return Err(malformed("`pagination` is not an object".into())),
    };
    Ok(SiemPage { rows: rows.flatten().unwrap_or_default(), next_page_token: next_page_token.filter(|t| !t.is_empty()) })
}

pub fn malformed(what: String) -> HuntressError {
    HuntressError::api(ErrorKind::MalformedResponse, format!("{QUERY_PATH}: {what}"))
}

fn not_json(error: ScanError) -> HuntressError {
    malformed(format!("the response is not valid JSON ({error})"))
}

fn bad_shape(what: &str) -> HuntressError {
    malformed(format!("the page does not have the expected shape ({what})"))
}

/// `logs`: null, or an array of objects.
fn scan_rows<'a>(scanner: &mut Scanner<'a>) -> Result<Option<Vec<Row<'a>>>> {
    match scanner.peek_kind() {
        Some(Kind::Array) => {}
        // Not a value at all: `value` says where the JSON breaks.
        Some(Kind::Null) | None => return scanner.value().map(|_| None).map_err(not_json),
        Some(kind) => return Err(bad_shape(&format!("`logs` is {}, not an array", kind.name()))),
    }
    let mut rows: Vec<Row> = Vec::with_capacity(MAX_PAGE_ROWS);
    scanner.begin_array().map_err(not_json)?;
    while scanner.next_element(rows.is_empty()).map_err(not_json)? {
        match scanner.peek_kind() {
            // Rows of one query have the same columns: the last row sizes the next.
            Some(Kind::Object) | None => {
                let row = Row::scan_after(scanner, rows.last()).map_err(not_json)?;
                rows.push(row);
            }
            Some(kind) => return Err(bad_shape(&format!("`logs[{}]` is {}, not an object", rows.len(), kind.name()))),
        }
    }
    Ok(Some(rows))
}

