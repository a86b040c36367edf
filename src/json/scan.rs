//! A validating JSON scanner that finds where values start and end without
//! building them. SIEM rows are copied into forwarded logs field by field, as
//! the exact text they arrived as, so each value is checked against the strict
//! JSON grammar (RFC 8259) but never decoded. On SIEM pages this takes about
//! half the CPU of visiting every field through serde; string ends are found
//! eight bytes at a time.
//!
//! The text is a `&str`, so it is valid UTF-8 before scanning starts.
//!
//! Beyond the grammar, the scanner refuses what serde_json refuses when it
//! parses a document to values (a lone UTF-16 surrogate escape, a number
//! beyond an `f64`, nesting past its depth limit), so that a value it accepts
//! can always be decoded, and a page is accepted or refused as a whole.

use std::fmt;

/// Nesting deeper than this is refused, so that hostile input cannot exhaust
/// the stack. It counts every open object and array from the top of the
/// document, and is serde_json's limit: what one refuses, so does the other.
pub const MAX_DEPTH: usize = 127;

/// Where the text stops being valid JSON, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub expected: &'static str,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "expected {} at byte {}", self.expected, self.offset)
    }
}

impl std::error::Error for ScanError {}

pub type ScanResult<T> = Result<T, ScanError>;

/// The contents of a JSON string, between its quotes, still escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawString<'a> {
    pub escaped_text: &'a str,
    pub has_escapes: bool,
    /// Where the string's opening quote is, for errors.
    pub offset: usize,
}

impl<'a> RawString<'a> {
    /// The string's value: borrowed when it holds no escapes. The scanner
    /// has checked every escape, so this fails only on a string it did not scan.
    pub fn decode(&self) -> ScanResult<std::borrow::Cow<'a, str>> {
        if !self.has_escapes {
            return Ok(std::borrow::Cow::Borrowed(self.escaped_text));
        }
        let quoted = format!("\"{}\"", self.escaped_text);
        serde_json::from_str(&quoted)
            .map(std::borrow::Cow::Owned)
            .map_err(|_| ScanError { offset: self.offset, expected: "a string with valid escapes" })
    }
}

/// The kind of JSON value that starts at the current position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Bool => "a boolean",
            Kind::Null => "null",
        }
    }
}

pub struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Objects and arrays open at `pos`, from the top of the document.
    depth: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Self {
        Scanner { text, bytes: text.as_bytes(), pos: 0, depth: 0 }
    }

    fn error<T>(&self, expected: &'static str) -> ScanResult<T> {
        Err(ScanError { offset: self.pos, expected })
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The kind of the next value, after whitespace; `None` for anything that
    /// cannot start a value.
    pub fn peek_kind(&mut self) -> Option<Kind> {
        self.skip_whitespace();
        match self.bytes.get(self.pos)? {
            b'{' => Some(Kind::Object),
            b'[' => Some(Kind::Array),
            b'"' => Some(Kind::String),
            b'-' | b'0'..=b'9' => Some(Kind::Number),
            b't' | b'f' => Some(Kind::Bool),
            b'n' => Some(Kind::Null),
            _ => None,
        }
    }

    /// Checks that nothing but whitespace is left.
    pub fn finish(&mut self) -> ScanResult<()> {
        self.skip_whitespace();
        if self.pos != self.bytes.len() {
            return self.error("the end of the document");
        }
        Ok(())
    }

    fn eat(&mut self, byte: u8, expected: &'static str) -> ScanResult<()> {
        self.skip_whitespace();
        if self.bytes.get(self.pos) != Some(&byte) {
            return self.error(expected);
        }
        self.pos += 1;
        Ok(())
    }

    /// Enters the object that comes next.
    pub fn begin_object(&mut self) -> ScanResult<()> {
        self.eat(b'{', "'{'")?;
        self.enter()
    }

    fn enter(&mut self) -> ScanResult<()> {
        if self.depth >= MAX_DEPTH {
            self.pos -= 1;
            return self.error("less nesting");
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// The next member name of the object being read, or `None` after its `}`.
    /// `first` is true for the first call on an object.
    pub fn next_key(&mut self, first: bool) -> ScanResult<Option<RawString<'a>>> {
        self.skip_whitespace();
        match self.bytes.get(self.pos) {
            Some(b'}') => {
                self.pos += 1;
                self.leave();
                return Ok(None);
            }
            Some(b',') if !first => self.pos += 1,
            _ if first => {}
            _ => return self.error("',' or '}'"),
        }
        self.skip_whitespace();
        if self.bytes.get(self.pos) != Some(&b'"') {
            return self.error("a member name (a string)");
        }
        let name = self.string()?;
        self.eat(b':', "':'")?;
        Ok(Some(name))
    }

    /// Enters the array that comes next.
    pub fn begin_array(&mut self) -> ScanResult<()> {
        self.eat(b'[', "'['")?;
        self.enter()
    }

    /// True when another element of the array being read follows, false after its `]`.
    pub fn next_element(&mut self, first: bool) -> ScanResult<bool> {
        self.skip_whitespace();
        match self.bytes.get(self.pos) {
            Some(b']') => {
                self.pos += 1;
                self.leave();
                Ok(false)
            }
            Some(b',') if !first => {
                self.pos += 1;
                Ok(true)
            }
            _ if first => Ok(true),
            _ => self.error("',' or ']'"),
        }
    }

    /// The next value, checked, as the text it was written as.
    pub fn value(&mut self) -> ScanResult<&'a str> {
        self.skip_whitespace();
        let start = self.pos;
        self.skip_value()?;
        self.text.get(start..self.pos).map_or_else(|| self.error("a JSON value"), Ok)
    }

    /// Recursion is bounded by `MAX_DEPTH`, which `enter` enforces.
    fn skip_value(&mut self) -> ScanResult<()> {
        match self.peek_kind() {
            Some(Kind::String) => self.string().map(drop),
            Some(Kind::Number) => self.number(),
            Some(Kind::Object) => self.skip_object(),
            Some(Kind::Array) => self.skip_array(),
            Some(Kind::Bool) => self.literal(if self.bytes.get(self.pos) == Some(&b't') { "true" } else { "false" }),
            Some(Kind::Null) => self.literal("null"),
            None => self.error("a JSON value"),
        }
    }

    fn skip_object(&mut self) -> ScanResult<()> {
        self.begin_object()?;
        let mut first = true;
        while self.next_key(first)?.is_some() {
            self.skip_value()?;
            first = false;
        }
        Ok(())
    }

    fn skip_array(&mut self) -> ScanResult<()> {
        self.begin_array()?;
        let mut first = true;
        while self.next_element(first)? {
            self.skip_value()?;
            first = false;
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static str) -> ScanResult<()> {
        if !self.bytes.get(self.pos..).is_some_and(|rest| rest.starts_with(word.as_bytes())) {
            return self.error(word);
        }
        self.pos += word.len();
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number, refused when it is beyond the range of an `f64`, as
    /// serde_json refuses it: such a number has no value anyone could read.
    fn number(&mut self) -> ScanResult<()> {
        let start = self.pos;
        let has_exponent = self.number_grammar()?;
        let text = self.text.get(start..self.pos).unwrap_or_default();
        // serde_json's own reading decides: near `f64::MAX` it rounds
        // differently from `str::parse`. Only numbers that could be that big pay.
        if (has_exponent || text.len() > 300) && serde_json::from_str::<serde_json::Value>(text).is_err() {
            self.pos = start;
            return self.error("a number within the range of a 64-bit float");
        }
        Ok(())
    }

    /// Checks the grammar of a number; true when it has an exponent.
    fn number_grammar(&mut self) -> ScanResult<bool> {
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes.get(self.pos) {
            // No leading zeros: `0` stands alone.
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.error("a digit"),
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.error("a digit after '.'");
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.error("a digit in the exponent");
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads the string that starts at the current `"`.
    fn string(&mut self) -> ScanResult<RawString<'a>> {
        let offset = self.pos;
        let start = self.pos + 1;
        let mut at = start;
        let mut has_escapes = false;
        loop {
            at = next_special(self.bytes, at);
            match self.bytes.get(at) {
                Some(b'"') => {
                    self.pos = at + 1;
                    let Some(escaped_text) = self.text.get(start..at) else { return self.error("a string") };
                    return Ok(RawString { escaped_text, has_escapes, offset });
                }
                Some(b'\\') => {
                    has_escapes = true;
                    self.pos = at;
                    at = self.escape_end()?;
                }
                Some(_) => {
                    self.pos = at;
                    return self.error("no control character in a string (it must be escaped)");
                }
                None => {
                    self.pos = at;
                    return self.error("the closing '\"' of a string");
                }
            }
        }
    }

    /// Checks the escape at the current `\\` and returns where it ends. A
    /// `\\u` escape of a UTF-16 surrogate must be a leading one followed by a
    /// trailing one, as serde_json requires when it decodes a string: a lone
    /// surrogate is no character, and the value could not be decoded.
    fn escape_end(&mut self) -> ScanResult<usize> {
        let after = self.pos + 1;
        match self.bytes.get(after) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(after + 1),
            Some(b'u') => {
                let unit = self.hex_escape(after + 1)?;
                match unit {
                    0xDC00..=0xDFFF => self.error("no lone trailing surrogate in a '\\u' escape"),
                    0xD800..=0xDBFF => self.trailing_surrogate_end(after + 5),
                    _ => Ok(after + 5),
                }
            }
            _ => self.error("a valid escape ('\\\"', '\\\\', '\\/', '\\b', '\\f', '\\n', '\\r', '\\t' or '\\uXXXX')"),
        }
    }

    /// The code unit of the four hex digits at `at`.
    fn hex_escape(&self, at: usize) -> ScanResult<u16> {
        let hex = self.bytes.get(at..at + 4).and_then(|h| std::str::from_utf8(h).ok());
        match hex.filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit())) {
            Some(digits) => u16::from_str_radix(digits, 16).map_or_else(|_| self.error("four hex digits after '\\u'"), Ok),
            None => self.error("four hex digits after '\\u'"),
        }
    }

    /// After a leading surrogate ending at `at`: the `\\uDC00`-`\\uDFFF` that must follow.
    fn trailing_surrogate_end(&mut self, at: usize) -> ScanResult<usize> {
        if self.bytes.get(at..at + 2) != Some(b"\\u") {
            self.pos = at;
            return self.error("a trailing surrogate ('\\uDC00' to '\\uDFFF') after a leading one");
        }
        self.pos = at;
        match self.hex_escape(at + 2)? {
            0xDC00..=0xDFFF => Ok(at + 6),
            _ => self.error("a trailing surrogate ('\\uDC00' to '\\uDFFF') after a leading one"),
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Where the first `"`, `\\` or control character is, from `at` on (the
/// length when there is none): the bytes a JSON string must escape. Eight
/// bytes at a time, in plain integer arithmetic: portable, and no `unsafe`.
pub fn next_special(bytes: &[u8], mut at: usize) -> usize {
    while let Some(Ok(word)) = bytes.get(at..at + 8).map(<[u8; 8]>::try_from) {
        let mask = special_bytes(u64::from_le_bytes(word));
        if mask != 0 {
            return at + (mask.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let rest = bytes.get(at..).unwrap_or_default();
    at + rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(rest.len())
}

/// The high bit of the lowest special byte of `word` is set (bits above it
/// may be set wrongly by borrows, so only the lowest one counts). Each test is
/// the "has a zero byte" trick: `v - 1` borrows into the high bit only where
/// a byte of `v` is zero (or, for `- 0x20`, below 0x20).
fn special_bytes(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v;
    (zero_in(quote) | zero_in(backslash) | (word.wrapping_sub(ONES * 0x20) & !word)) & HIGH_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole_value(text: &str) -> ScanResult<&str> {
        let mut scanner = Scanner::new(text);
        let value = scanner.value()?;
        scanner.finish()?;
        Ok(value)
    }

    #[test]
    fn values_come_back_as_written() {
        for text in [
            r#""plain""#,
            r#""esc\"aped \\ \/ \b\f\n\r\t \u00e9 \uD83D\uDE00""#,
            "\"caf\u{e9} \u{1F600}\"",
            "0",
            "-0.5e+10",
            "12E-3",
            "true",
            "false",
            "null",
            "[]",
            "{}",
            r#"{"a":[1,{"b":null}],"c":"d"}"#,
            "[ 1 , 2 ]",
        ] {
            assert_eq!(whole_value(text), Ok(text), "{text}");
        }
        assert_eq!(whole_value("  [1]  "), Ok("[1]"));
    }

    #[test]
    fn invalid_json_is_refused_where_it_breaks() {
        let cases = [
            ("\"abc", 4),
            ("\"a\u{1}b\"", 2),
            ("\"a\nb\"", 2),
            (r#""\x""#, 1),
            (r#""\u12G4""#, 1),
            ("01", 1),
            ("-", 1),
            ("1.", 2),
            ("1e", 2),
            ("tru", 0),
            ("nul", 0),
            ("[1,]", 3),
            ("[1 2]", 3),
            (r#"{"a" 1}"#, 5),
            (r#"{"a":1,}"#, 7),
            (r#"{a:1}"#, 1),
            ("{\"a\":1} x", 8),
            ("", 0),
        ];
        for (text, offset) in cases {
            let error = whole_value(text).expect_err(text);
            assert_eq!(error.offset, offset, "{text}: {error}");
        }
    }

    #[test]
    fn lone_surrogates_are_refused_as_serde_json_refuses_them() {
        for text in [r#""\ud800""#, r#""\udc00""#, r#""\udbff x""#, r#""\ud800\u0041""#, r#""\ud800\n""#, r#""\uDFFF\uD800""#] {
            assert!(serde_json::from_str::<serde_json::Value>(text).is_err(), "{text}");
            assert!(whole_value(text).is_err(), "{text}");
            let object = format!("{{{text}:1}}");
            assert!(whole_value(&object).is_err(), "{object}");
        }
        for text in [r#""\ud800\udc00""#, r#""\uDBFF\uDFFF""#, r#""\ud7ff\ue000""#] {
            assert_eq!(whole_value(text), Ok(text));
        }
    }

    #[test]
    fn numbers_beyond_a_float_are_refused() {
        for text in ["1e400", "-1e400", &"9".repeat(400), "1.7976931348623158e308"] {
            assert!(serde_json::from_str::<serde_json::Value>(text).is_err(), "{text}");
            assert!(whole_value(text).is_err(), "{text}");
        }
        for text in ["1e308", "1e-400", "18446744073709551616"] {
            assert_eq!(whole_value(text), Ok(text));
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(whole_value(&deep).unwrap_err().expected, "less nesting");
        let fine = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(whole_value(&fine).is_ok());
    }

    #[test]
    fn names_decode_only_when_escaped() {
        let mut scanner = Scanner::new(r#"{"plain":1,"q\"uote":2}"#);
        scanner.begin_object().unwrap();
        let plain = scanner.next_key(true).unwrap().unwrap();
        assert!(matches!(plain.decode(), Ok(std::borrow::Cow::Borrowed("plain"))));
        assert_eq!(scanner.value(), Ok("1"));
        let quoted = scanner.next_key(false).unwrap().unwrap();
        assert_eq!(quoted.decode().unwrap(), "q\"uote");
        assert_eq!(scanner.value(), Ok("2"));
        assert_eq!(scanner.next_key(false), Ok(None));
    }

    #[test]
    fn special_bytes_are_found_like_a_byte_by_byte_search() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..5_000 {
            let bytes: Vec<u8> = (0..round % 40)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let byte = (state >> 56) as u8;
                    // Mostly ordinary bytes (high ones included), so that runs are long.
                    if byte < 16 { [0x00, 0x1f, b'"', b'\\'][usize::from(byte % 4)] } else { byte.max(0x20) }
                })
                .collect();
            for at in 0..=bytes.len() {
                let expected = at + bytes[at..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(bytes.len() - at);
                assert_eq!(next_special(&bytes, at), expected, "{bytes:?} from {at}");
            }
        }
    }

    /// The scanner accepts exactly what serde_json accepts, on many mutations
    /// of valid documents (a seeded generator, so failures reproduce).
    #[test]
    fn agrees_with_serde_json_on_mutated_documents() {
        let seeds = [
            r#"{"a":[1,-2.5e3,true,false,null],"b":{"c":"d\"e\\f\u00e9"},"g":"","h":0}"#,
            r#"[{"uuid":"x","n":-0.0},"\ud83d\ude00",[[]],{}]"#,
            "\"caf\u{e9}\t\"",
        ];
        let alphabet = b"{}[]\":,\\ \n-+.0123456789eEtrufalsn/bu\x01\x1fA";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut doc = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..1 + next(3) {
                let at = next(doc.len() + 1);
                match next(3) {
                    0 if at < doc.len() => {
                        doc.remove(at);
                    }
                    1 if at < doc.len() => doc[at] = alphabet[next(alphabet.len())],
                    _ => doc.insert(at, alphabet[next(alphabet.len())]),
                }
            }
            let Ok(text) = std::str::from_utf8(&doc) else { continue };
            let ours = whole_value(text).is_ok();
            // Parsed to a value: serde_json checks surrogates and number ranges only then.
            let theirs = serde_json::from_str::<serde_json::Value>(text).is_ok();
            assert_eq!(ours, theirs, "{text:?}");
            accepted += usize::from(ours);
        }
        assert!(accepted > 1000, "the mutations should keep some documents valid ({accepted})");
    }
}
