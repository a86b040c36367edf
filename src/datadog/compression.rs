//! How intake bodies are compressed: the Agent's `logs_config` compression
//! settings, paired with what the endpoint is known to accept.
//!
//! The Agent posts `Content-Encoding: zstd` to its own endpoint,
//! `agent-http-intake.logs.<site>`, and to `logs_dd_url` (a relay or an
//! Observability Pipelines Worker set up to receive the Agent's logs). The public
//! send-logs endpoint, `http-intake.logs.<site>`, documents gzip and deflate only,
//! so zstd meant for it (or for any other URL) is sent as gzip instead.

use std::io::Write;

pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// The level of the gzip that replaces zstd where zstd is not known to be
/// accepted: the fast end, as zstd level 1 is.
pub const FALLBACK_GZIP_LEVEL: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    None,
    Gzip(u32),
    Zstd(i32),
}

impl Encoding {
    /// The `Content-Encoding` header value, if any.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Encoding::None => None,
            Encoding::Gzip(_) => Some("gzip"),
            Encoding::Zstd(_) => Some("zstd"),
        }
    }

    /// A batch body: `[`, the comma-separated logs, `]`, encoded.
    pub fn encode_json_array(self, joined: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoding::None => Ok([b"[", joined, b"]"].concat()),
            Encoding::Gzip(level) => {
                let out = Vec::with_capacity(joined.len() / 4 + 1024);
                frame_json_array(flate2::write::GzEncoder::new(out, flate2::Compression::new(level.min(9))), joined)?.finish()
            }
            Encoding::Zstd(level) => {
                let out = Vec::with_capacity(joined.len() / 4 + 1024);
                let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
                // The size is known: it goes in the frame header, and lets zstd size its window.
                encoder.set_pledged_src_size(Some(joined.len() as u64 + 2))?;
                frame_json_array(encoder, joined)?.finish()
            }
        }
    }

    /// What this encoding is called in the Agent log.
    pub fn describe(self) -> String {
        match self {
            Encoding::None => "no compression".into(),
            Encoding::Gzip(level) => format!("gzip level {level}"),
            Encoding::Zstd(level) => format!("zstd level {level}"),
        }
    }
}

/// Writes `[`, the joined logs and `]` through `encoder`.
fn frame_json_array<W: Write>(mut encoder: W, joined: &[u8]) -> std::io::Result<W> {
    encoder.write_all(b"[")?;
    encoder.write_all(joined)?;
    encoder.write_all(b"]")?;
    Ok(encoder)
}

/// The Agent's `logs_config` compression settings, as read from datadog.yaml.
#[derive(Clone, Debug, PartialEq)]
pub struct CompressionSettings {
    pub use_compression: bool,
    /// `zstd` or `gzip`; anything else is refused when parsed.
    pub kind: String,
    pub zstd_level: i32,
    pub gzip_level: u32,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        CompressionSettings { use_compression: true, kind: "zstd".into(), zstd_level: DEFAULT_ZSTD_LEVEL, gzip_level: DEFAULT_GZIP_LEVEL }
    }
}

/// The encoding the settings ask for, before pairing with an endpoint.
pub fn wanted(settings: &CompressionSettings) -> Encoding {
    match (settings.use_compression, settings.kind.as_str()) {
        (false, _) => Encoding::None,
        (true, "gzip") => Encoding::Gzip(settings.gzip_level),
        (true, _) => Encoding::Zstd(settings.zstd_level),
    }
}

/// Whether `url` is an endpoint known to take zstd: the Agent's own logs
/// intake on any site, or the `logs_dd_url` the Agent itself sends to.
pub fn accepts_zstd(url: &str, is_logs_dd_url: bool) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    is_logs_dd_url || host.starts_with("agent-http-intake.logs.")
}

/// The encoding to send with, and the Agent-log line that says why when it
/// differs from what the settings ask for.
pub fn for_endpoint(settings: &CompressionSettings, url: &str, is_logs_dd_url: bool) -> (Encoding, Option<String>) {
    let encoding = wanted(settings);
    if matches!(encoding, Encoding::Zstd(_)) && !accepts_zstd(url, is_logs_dd_url) {
        let fallback = Encoding::Gzip(FALLBACK_GZIP_LEVEL);
        let note = format!(
            "logs_config.compression_kind is zstd, but {url} is not known to accept zstd (the public logs intake documents gzip and deflate); \
             sending {}. zstd is used with logs_config.logs_dd_url, or with logs_intake_url set to the Agent's endpoint https://agent-http-intake.logs.<site>/api/v2/logs",
            fallback.describe()
        );
        return (fallback, Some(note));
    }
    (encoding, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(logs: usize) -> Vec<u8> {
        (0..logs).map(|i| format!("{{\"message\":\"logon {i} from 10.0.0.{}\",\"event.code\":4624}}", i % 250)).collect::<Vec<_>>().join(",").into_bytes()
    }

    fn decode(encoding: Encoding, body: &[u8]) -> Vec<serde_json::Value> {
        let mut raw = Vec::new();
        match encoding {
            Encoding::None => raw.extend_from_slice(body),
            Encoding::Gzip(_) => drop(flate2::read::GzDecoder::new(body).read_to_end(&mut raw).unwrap()),
            Encoding::Zstd(_) => raw = zstd::stream::decode_all(body).unwrap(),
        }
        serde_json::from_slice(&raw).unwrap()
    }

    #[test]
    fn every_encoding_round_trips_a_json_array() {
        let joined = sample(500);
        for encoding in [Encoding::None, Encoding::Gzip(1), Encoding::Gzip(6), Encoding::Zstd(1), Encoding::Zstd(3)] {
            let body = encoding.encode_json_array(&joined).unwrap();
            let logs = decode(encoding, &body);
            assert_eq!(logs.len(), 500, "{encoding:?}");
            assert_eq!(logs[499]["message"], "logon 499 from 10.0.0.249", "{encoding:?}");
            assert!(decode(encoding, &encoding.encode_json_array(b"").unwrap()).is_empty());
            if encoding != Encoding::None {
                assert!(body.len() < joined.len() / 3, "{encoding:?} {}", body.len());
            }
        }
    }

    #[test]
    fn headers_name_the_encoding() {
        assert_eq!(Encoding::None.content_encoding(), None);
        assert_eq!(Encoding::Gzip(6).content_encoding(), Some("gzip"));
        assert_eq!(Encoding::Zstd(1).content_encoding(), Some("zstd"));
        // zstd frames start with their magic number, gzip members with 1f 8b.
        assert_eq!(&Encoding::Zstd(1).encode_json_array(b"{}").unwrap()[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(&Encoding::Gzip(1).encode_json_array(b"{}").unwrap()[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn settings_choose_the_encoding_as_the_agent_does() {
        let agent_default = CompressionSettings::default();
        assert_eq!(wanted(&agent_default), Encoding::Zstd(1));
        assert_eq!(wanted(&CompressionSettings { kind: "gzip".into(), gzip_level: 4, ..agent_default.clone() }), Encoding::Gzip(4));
        assert_eq!(wanted(&CompressionSettings { use_compression: false, ..agent_default.clone() }), Encoding::None);
    }

    #[test]
    fn zstd_goes_only_where_it_is_known_accepted() {
        let settings = CompressionSettings { zstd_level: 3, ..CompressionSettings::default() };
        let public = "https://http-intake.logs.datadoghq.eu/api/v2/logs";
        let (encoding, note) = for_endpoint(&settings, public, false);
        assert_eq!(encoding, Encoding::Gzip(FALLBACK_GZIP_LEVEL));
        assert!(note.unwrap().contains(public));
        assert_eq!(for_endpoint(&settings, "https://agent-http-intake.logs.datadoghq.eu/api/v2/logs", false), (Encoding::Zstd(3), None));
        assert_eq!(for_endpoint(&settings, "http://opw.internal:8282/api/v2/logs", true), (Encoding::Zstd(3), None));
        let gzip = CompressionSettings { kind: "gzip".into(), ..settings };
        assert_eq!(for_endpoint(&gzip, public, false), (Encoding::Gzip(6), None));
    }
}
