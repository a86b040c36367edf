//! Scrubs secrets from any text that leaves the check: quoted response bodies,
//! error messages, log lines, service-check messages, tags. One function,
//! `Redactor::scrub`, does it everywhere.
//!
//! What is replaced by `********`:
//! - each secret as is (Huntress API key and secret key, Datadog API key);
//! - its base64 forms, standard and URL-safe, padded or not, and the part of
//!   it that shows at any of the three byte offsets inside a longer base64
//!   text: `key:secret` as sent in `Authorization: Basic`, and each key alone;
//! - the value of any `Authorization`, `Proxy-Authorization`, `DD-API-KEY` or
//!   `DD-APPLICATION-KEY` header quoted in the text, whatever its case, in
//!   header form (`Authorization: Basic ...`) or JSON/dict form
//!   (`"authorization": "..."`), known secret or not;
//! - the credential of a proxy URL (`http://user:password@host`): the user,
//!   the password and `user:password`, as written and percent-decoded, each
//!   with its base64 forms (`Proxy-Authorization: Basic` carries one of them).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::base::error::HuntressError;

pub const MASK: &str = "********";

/// Header names whose values are credentials, lowercase; `_` matches `-`.
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "dd-api-key", "dd-application-key"];
/// Schemes that precede the credential in an `Authorization` value.
const AUTH_SCHEMES: [&str; 5] = ["basic", "bearer", "token", "digest", "negotiate"];
/// Encoded forms shorter than this are too likely to occur by chance.
const MIN_NEEDLE: usize = 6;

#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// Every form to replace, longest first.
    needles: Vec<String>,
}

impl Redactor {
    /// Scrubs the given secrets (each alone) and credential headers.
    pub fn new(secrets: &[&str]) -> Self {
        let mut needles = Vec::new();
        for secret in secrets.iter().filter(|s| s.len() >= 4) {
            needles.push(secret.to_string());
            needles.extend(base64_forms(secret.as_bytes()));
        }
        needles.retain(|n| n.len() >= MIN_NEEDLE || secrets.contains(&n.as_str()));
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        Redactor { needles }
    }

    /// The secrets of an instance: the key and secret key, their Basic credential, the
    /// Datadog API key, and the credentials of each proxy URL.
    pub fn for_credentials(api_key: &str, secret_key: &str, dd_api_keys: &[&str], proxies: &[&str]) -> Self {
        let basic = format!("{api_key}:{secret_key}");
        let mut secrets: Vec<String> = vec![basic, api_key.to_string(), secret_key.to_string()];
        secrets.extend(dd_api_keys.iter().map(|k| k.trim().to_string()));
        secrets.extend(proxies.iter().flat_map(|url| proxy_credentials(url)));
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        Redactor::new(&secrets)
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut clean = scrub_credential_headers(text);
        for needle in &self.needles {
            if clean.contains(needle.as_str()) {
                clean = clean.replace(needle.as_str(), MASK);
            }
        }
        clean
    }

    pub fn scrub_in_place(&self, text: &mut String) {
        let clean = self.scrub(text);
        if clean != *text {
            *text = clean;
        }
    }
}

impl HuntressError {
    /// The same error with `redactor` applied to every text it carries.
    pub fn redacted(self, redactor: &Redactor) -> HuntressError {
        match self {
            HuntressError::Config { key, message } => HuntressError::Config { key: redactor.scrub(&key), message: redactor.scrub(&message) },
            HuntressError::Api { kind, message } => HuntressError::Api { kind, message: redactor.scrub(&message) },
            HuntressError::Intake { kind, message } => HuntressError::Intake { kind, message: redactor.scrub(&message) },
            HuntressError::Cache(m) => HuntressError::Cache(redactor.scrub(&m)),
            HuntressError::Deadline(m) => HuntressError::Deadline(redactor.scrub(&m)),
            HuntressError::Internal(m) => HuntressError::Internal(redactor.scrub(&m)),
        }
    }
}

/// The credential parts of a proxy URL: `user:password`, the password and
/// the user, each as written and percent-decoded. Empty without a user part.
pub fn proxy_credentials(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some((userinfo, _host)) = authority.rsplit_once('@') else { return Vec::new() };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut parts = Vec::new();
    for (user, password) in [(user.to_string(), password.to_string()), (percent_decoded(user), percent_decoded(password))] {
        if !password.is_empty() {
            parts.push(format!("{user}:{password}"));
            parts.push(password);
        }
        parts.push(user);
    }
    parts.retain(|p| !p.is_empty());
    parts.dedup();
    parts
}

/// `%41` as `A`; a `%` not followed by two hex digits stays as it is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The base64 texts in which `secret` can show: its whole encodings, and for
/// each byte offset (0, 1, 2) within a longer encoded text, the run of
/// characters that depend on the secret's bytes only.
fn base64_forms(secret: &[u8]) -> Vec<String> {
    let mut forms = vec![STANDARD.encode(secret), URL_SAFE.encode(secret)];
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(secret);
            let encoded = engine.encode(&shifted);
            // Characters before `start` mix in the bytes before the secret;
            // those after `end` mix in the bytes after it.
            let start = [0, 2, 3][offset];
            let end = (shifted.len() / 3) * 4;
            if end > start {
                forms.push(encoded[start..end].to_string());
            }
        }
    }
    forms
}

/// Replaces the value of every credential header quoted in `text`.
fn scrub_credential_headers(text: &str) -> String {
    let lower = text.to_ascii_lowercase().replace('_', "-");
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for name in CREDENTIAL_HEADERS {
        let mut from = 0;
        while let Some(found) = lower[from..].find(name) {
            let after_name = from + found + name.len();
            if let Some(span) = header_value(&lower, after_name) {
                spans.push(span);
            }
            from = after_name;
        }
    }
    if spans.is_empty() {
        return text.to_string();
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in spans {
        if start < copied {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(MASK);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Where the value after a header name starts and ends: past quotes and a
/// `:` or `=`, up to the closing quote, or (unquoted) one token, two when the
/// first is an auth scheme. `None` when no separator follows the name.
fn header_value(lower: &str, after_name: usize) -> Option<(usize, usize)> {
    let bytes = lower.as_bytes();
    let skip = |mut at: usize, set: &[u8]| {
        while at < bytes.len() && set.contains(&bytes[at]) {
            at += 1;
        }
        at
    };
    let mut at = skip(after_name, b"\"'\\ \t");
    if at >= bytes.len() || !matches!(bytes[at], b':' | b'=') {
        return None;
    }
    at += 1;
    let value_start = skip(at, b"\"'\\ \t");
    let quoted = value_start > at && bytes[at..value_start].iter().any(|b| matches!(b, b'"' | b'\''));
    let end = if quoted {
        value_start + lower[value_start..].find(['"', '\'', '\\', '\n', '\r']).unwrap_or(lower.len() - value_start)
    } else {
        let token_end = |from: usize| from + lower[from..].find(|c: char| c.is_whitespace() || "\"',;&}]>)".contains(c)).unwrap_or(lower.len() - from);
        let first_end = token_end(value_start);
        if AUTH_SCHEMES.contains(&&lower[value_start..first_end]) {
            token_end(skip(first_end, b" \t"))
        } else {
            first_end
        }
    };
    (end > value_start).then_some((value_start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "hk-public-key-abcdef";
    const SECRET: &str = "hs-private-secret-0987654321";
    const DD_KEY: &str = "dd-test-api-key-0123456789";

    fn redactor() -> Redactor {
        let basic = format!("{KEY}:{SECRET}");
        Redactor::new(&[&basic, KEY, SECRET, DD_KEY])
    }

    fn assert_clean(text: &str) {
        let clean = redactor().scrub(text);
        for secret in [KEY, SECRET, DD_KEY] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
            for form in base64_forms(secret.as_bytes()) {
                assert!(!clean.contains(&form), "{form} of {secret} in {clean}");
            }
        }
        let basic = STANDARD.encode(format!("{KEY}:{SECRET}"));
        assert!(!clean.contains(&basic[..20]), "{clean}");
    }

    #[test]
    fn raw_keys_are_scrubbed() {
        assert_clean(&format!("key {KEY} secret {SECRET} dd {DD_KEY}"));
    }

    #[test]
    fn every_base64_form_is_scrubbed() {
        for secret in [format!("{KEY}:{SECRET}"), KEY.into(), SECRET.into(), DD_KEY.into()] {
            for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                assert_clean(&format!("creds={}", engine.encode(&secret)));
            }
            // Inside a longer base64 text, at each of the three byte offsets.
            for prefix in ["", "x", "xy", "xyz", "{\"user\":"] {
                let embedded = STANDARD.encode(format!("{prefix}{secret} and more"));
                assert_clean(&embedded);
            }
        }
    }

    #[test]
    fn credential_headers_are_scrubbed_in_any_form() {
        let value = "Basic c29tZS1vdGhlci1jcmVkZW50aWFs";
        for text in [
            format!("Authorization: {value}\r\nHost: x"),
            format!("authorization:{value}"),
            format!("{{\"Authorization\": \"{value}\", \"Host\": \"x\"}}"),
            format!("{{'authorization': '{value}'}}"),
            format!("{{\\\"AUTHORIZATION\\\": \\\"{value}\\\"}}"),
            format!("Proxy-Authorization: {value}"),
            "DD-API-KEY: 0123456789abcdef0123".to_string(),
            "{\"dd-api-key\": \"0123456789abcdef0123\"}".to_string(),
            "dd_api_key=0123456789abcdef0123&x=1".to_string(),
        ] {
            let clean = Redactor::default().scrub(&text);
            assert!(!clean.contains("c29tZS1vdGhlci1jcmVkZW50aWFs") && !clean.contains("0123456789abcdef0123"), "{clean}");
            assert!(clean.contains(MASK), "{clean}");
        }
        let clean = Redactor::default().scrub("{\"authorization\": \"Basic abc\", \"host\": \"api\"}");
        assert!(clean.contains("\"host\": \"api\""), "the rest of the text stays: {clean}");
    }

    #[test]
    fn proxy_credentials_are_scrubbed_in_every_form() {
        let redactor = Redactor::for_credentials(KEY, SECRET, &[DD_KEY], &["http://squid-user:p%40ss-w0rd-42@proxy.local:3128/"]);
        let decoded = "squid-user:p@ss-w0rd-42";
        for text in [
            format!("407 echo: {decoded}"),
            format!("bare {}", STANDARD.encode(decoded)),
            format!("Proxy-Authorization: Basic {}", STANDARD.encode(decoded)),
            format!("{{\"proxy-authorization\": \"Basic {}\"}}", STANDARD.encode(decoded)),
            "url http://squid-user:p%40ss-w0rd-42@proxy.local:3128/".to_string(),
            format!("inside {}", STANDARD.encode(format!("xy{decoded}zz"))),
            "password p@ss-w0rd-42 alone".to_string(),
        ] {
            let clean = redactor.scrub(&text);
            assert!(!clean.contains("p@ss-w0rd-42") && !clean.contains("p%40ss-w0rd-42") && !clean.contains("squid-user"), "{clean}");
            for form in base64_forms(decoded.as_bytes()) {
                assert!(!clean.contains(&form), "{form} in {clean}");
            }
        }
        assert!(proxy_credentials("http://proxy.local:3128").is_empty());
        assert_eq!(proxy_credentials("https://bob@proxy"), vec!["bob".to_string()]);
        assert_eq!(percent_decoded("a%2Fb%zz%4"), "a/b%zz%4");
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let text = "the authorization failed: check the key; status 401 {\"error\": \"Unauthorized\"}";
        assert_eq!(redactor().scrub(text), text);
        assert_eq!(Redactor::default().scrub("héllo ✓"), "héllo ✓");
    }
}
