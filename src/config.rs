//! Reads one check instance, and the Agent's settings, into a `Config`: the
//! settings struct of each part (HTTP clients, the Huntress client, the intake,
//! the SIEM feed, every REST feed), filled here and nowhere else. Every error
//! names the key and says how to fix it.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::base::error::{HuntressError, Result};
use crate::base::http::{HttpSettings, ProxyConfig, TlsSettings};
use crate::base::redact::Redactor;
use crate::datadog::compression::{self, CompressionSettings};
use crate::datadog::intake::IntakeSettings;
use crate::datadog::processing::ProcessingRules;
use crate::datadog::transform::StalePolicy;
use crate::feeds::agents::AgentsSettings;
use crate::feeds::feed::ListSettings;
use crate::feeds::scope::ScopeRules;
use crate::feeds::siem::{LogQuery, SiemSettings};
use crate::feeds::FeedSettings;
use crate::huntress::client::HuntressSettings;

pub const DEFAULT_BASE_URL: &str = "https://api.huntress.io";
pub const DEFAULT_SERVICE: &str = "huntress-siem";
const MAX_LOOKBACK_SECONDS: u64 = 7 * 24 * 3600;

/// What the Agent itself knows, passed in by the Python check.
#[derive(Clone, Default)]
pub struct AgentContext {
    pub api_key: String,
    pub site: String,
    pub min_collection_interval: f64,
    pub proxy: Option<ProxyConfig>,
    /// The Agent's `logs_config` settings the check follows, by their key under
    /// `logs_config` (`processing_rules`, `logs_dd_url`, `use_compression`...).
    pub logs_config: Value,
}

/// One instance, as the settings of the parts that use it.
#[derive(Clone, PartialEq)]
pub struct Config {
    pub huntress: HuntressSettings,
    pub intake: IntakeSettings,
    /// Said once in the Agent log: why the intake encoding is not what the Agent's settings ask.
    pub encoding_note: Option<String>,
    /// The instance's `tags`, on everything the check emits.
    pub tags: Vec<String>,
    pub run_deadline: Duration,
    pub siem: SiemSettings,
    pub feeds: FeedSettings,
    pub org_cache_ttl: Duration,
    pub scope: ScopeRules,
    pub processing_rules: ProcessingRules,
}

impl Config {
    /// Scrubs every secret this instance was given: both Huntress keys, the
    /// Datadog API key, and the credentials of the proxies it uses.
    pub fn redactor(&self) -> Redactor {
        let proxies: Vec<&str> = [&self.huntress.http.proxy, &self.intake.http.proxy]
            .into_iter()
            .flatten()
            .flat_map(|p| [p.http.as_deref(), p.https.as_deref()])
            .flatten()
            .collect();
        Redactor::for_credentials(&self.huntress.api_key, &self.huntress.secret_key, &[&self.intake.dd_api_key], &proxies)
    }
}

/// Scrubs every secret an instance and the Agent give, read from them as they
/// are: for the errors raised before the instance is understood (a
/// configuration error quotes what it was given, and may quote a secret).
pub fn raw_redactor(instance: &Value, agent: &AgentContext) -> Redactor {
    let text = |key: &str| instance.get(key).and_then(Value::as_str).map(str::trim).unwrap_or_default().to_string();
    let proxies: Vec<&str> = agent.proxy.iter().flat_map(|p| [p.http.as_deref(), p.https.as_deref()]).flatten().collect();
    let dd_keys = [text("dd_api_key"), agent.api_key.trim().to_string()];
    let dd_keys: Vec<&str> = dd_keys.iter().map(String::as_str).collect();
    Redactor::for_credentials(&text("huntress_api_key"), &text("huntress_secret_key"), &dd_keys, &proxies)
}


/// Checks that `path` holds at least one PEM certificate and nothing that
/// breaks the PEM format.
fn check_ca_file(key: &str, path: &str) -> Result<()> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| HuntressError::config(key, format!("cannot read {path:?}: {e}")))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| HuntressError::config(key, format!("{path:?} is not a valid PEM file ({e}): give a file of `BEGIN CERTIFICATE` blocks")))?;
        count += 1;
    }
    if count == 0 {
        return Err(HuntressError::config(key, format!("{path:?} holds no PEM certificate: give a file of `BEGIN CERTIFICATE` blocks")));
    }
    Ok(())
}

impl fmt::Debug for Config {
    // Secrets are never printed, even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("base_url", &self.huntress.base_url)
            .field("queries", &self.siem.queries)
            .field("intake_url", &self.intake.url)
            .field("api_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn parse(instance: &Value, agent: &AgentContext) -> Result<Config> {
        let obj = instance
            .as_object()
            .ok_or_else(|| HuntressError::config("instances", "each instance must be a mapping of options"))?;
        let reader = Reader { obj };
        let logs = LogsSettings::parse(&agent.logs_config)?;
        let (intake, encoding_note) = intake_settings(&reader, agent, &logs)?;
        let interval = reader.number("min_collection_interval")?.unwrap_or(agent.min_collection_interval);
        let deadline_default = default_deadline(interval);
        Ok(Config {
            huntress: HuntressSettings {
                api_key: reader.secret("huntress_api_key", "set it to the API key from <account>.huntress.io > API Credentials")?,
                secret_key: reader.secret("huntress_secret_key", "set it to the API secret key generated with the API key")?,
                base_url: reader.url("huntress_base_url", DEFAULT_BASE_URL)?,
                http: http_settings(&reader, agent, "tls_verify", "tls_ca_cert")?,
            },
            intake,
            encoding_note,
            tags: reader.tags("tags")?,
            run_deadline: Duration::from_secs_f64(reader.positive("run_deadline_seconds", deadline_default, 86_400.0)?),
            siem: siem_settings(&reader, interval)?,
            feeds: FeedSettings {
                incidents: list_settings(obj, "incidents")?,
                escalations: list_settings(obj, "escalations")?,
                signals: list_settings(obj, "signals")?,
                agents: agents_settings(obj)?,
            },
            org_cache_ttl: secs(reader.uint("org_cache_ttl_seconds", 3600, 0, 30 * 86_400)?),
            scope: crate::feeds::scope::parse(obj)?,
            processing_rules: ProcessingRules::parse(&logs.processing_rules, obj.get("log_processing_rules").unwrap_or(&Value::Null))?,
        })
    }
}

/// The intake the logs go to (`logs_intake_url`, else the Agent's
/// `logs_dd_url`, else the site's), its key and encoding, and why the encoding
/// is not the Agent's when it is not.
fn intake_settings(reader: &Reader, agent: &AgentContext, logs: &LogsSettings) -> Result<(IntakeSettings, Option<String>)> {
    let site = if agent.site.trim().is_empty() { "datadoghq.com" } else { agent.site.trim() };
    let default_url = logs.dd_url.clone().unwrap_or_else(|| format!("https://http-intake.logs.{site}/api/v2/logs"));
    let url = reader.url("logs_intake_url", &default_url)?;
    let to_logs_dd_url = logs.dd_url.as_ref() == Some(&url);
    let (encoding, note) = compression::for_endpoint(&logs.compression, &url, to_logs_dd_url);
    let http = http_settings(reader, agent, "intake_tls_verify", "intake_tls_ca_cert")?;
    Ok((IntakeSettings { url, dd_api_key: dd_api_key(reader, agent)?, encoding, http }, note))
}

/// One HTTP client's settings: the shared `request_timeout` and proxy, and its
/// own TLS options.
fn http_settings(reader: &Reader, agent: &AgentContext, verify_key: &'static str, ca_cert_key: &'static str) -> Result<HttpSettings> {
    Ok(HttpSettings {
        request_timeout: Duration::from_secs_f64(reader.positive("request_timeout", 30.0, 600.0)?),
        proxy: if reader.bool("skip_proxy", false)? { None } else { agent.proxy.clone() },
        tls: TlsSettings { verify: reader.bool(verify_key, true)?, ca_cert: reader.ca_cert(ca_cert_key)?, ca_cert_key },
    })
}

/// Late events are looked for at most this far back: the intake drops logs
/// older than 18 h under `stale_log_policy: skip`, and a day bounds the id memory.
const MAX_LATE_REACH_SECONDS: u64 = 86_400;

fn siem_settings(reader: &Reader, interval: f64) -> Result<SiemSettings> {
    Ok(SiemSettings {
        queries: parse_queries(reader.obj.get("log_queries"))?,
        service: reader.string("service", DEFAULT_SERVICE)?,
        max_pages_per_run: reader.uint("max_pages_per_run", 100, 1, 100_000)? as u32,
        initial_lookback: secs(reader.uint("initial_lookback_seconds", 3600, 1, MAX_LOOKBACK_SECONDS)?),
        collection_delay: secs(reader.uint("collection_delay_seconds", 10, 0, 86_400)?),
        max_window: secs(reader.uint("max_window_seconds", 900, 10, 86_400)?),
        dedup_cache_size: reader.uint("dedup_cache_size", 50_000, 1_000, 1_000_000)? as usize,
        stale_policy: parse_stale_policy(reader)?,
        enrich_with_org_tags: reader.bool("enrich_with_org_tags", true)?,
        late_reach: secs(reader.uint("late_arrival_window_seconds", 21_600, 0, MAX_LATE_REACH_SECONDS)?),
        lag_warning: secs(reader.uint("lag_warning_seconds", 900, 60, 7 * 86_400)?),
        interval: Duration::from_secs_f64(if interval > 0.0 && interval.is_finite() { interval.min(86_400.0) } else { 15.0 }),
    })
}

/// The Agent's `logs_config` settings, as the Agent reads them from datadog.yaml.
struct LogsSettings {
    processing_rules: Value,
    /// `logs_dd_url` as an intake URL.
    dd_url: Option<String>,
    compression: CompressionSettings,
}

impl LogsSettings {
    fn parse(logs_config: &Value) -> Result<LogsSettings> {
        let empty = Map::new();
        let reader = Reader { obj: logs_config.as_object().unwrap_or(&empty) };
        let named = |key: &'static str| move |error: HuntressError| rename(error, &format!("logs_config.{key}"));
        let defaults = CompressionSettings::default();
        let kind = reader.string("compression_kind", &defaults.kind).map_err(named("compression_kind"))?.to_ascii_lowercase();
        if kind != "zstd" && kind != "gzip" {
            return Err(HuntressError::config("logs_config.compression_kind", format!("{kind:?} is not a compression the Agent knows: use zstd or gzip")));
        }
        let compression = CompressionSettings {
            use_compression: reader.bool("use_compression", true).map_err(named("use_compression"))?,
            kind,
            zstd_level: zstd_level(&reader)?,
            gzip_level: reader.uint("compression_level", u64::from(defaults.gzip_level), 0, 9).map_err(named("compression_level"))? as u32,
        };
        let no_ssl = reader.bool("logs_no_ssl", false).map_err(named("logs_no_ssl"))?;
        let dd_url = reader.string_opt("logs_dd_url").map_err(named("logs_dd_url"))?.map(|url| logs_dd_url(&url, no_ssl)).transpose()?;
        Ok(LogsSettings { processing_rules: rules_list(logs_config.get("processing_rules"))?, dd_url, compression })
    }
}

fn zstd_level(reader: &Reader) -> Result<i32> {
    let Some(level) = reader.number("zstd_compression_level").map_err(|e| rename(e, "logs_config.zstd_compression_level"))? else {
        return Ok(compression::DEFAULT_ZSTD_LEVEL);
    };
    if level.fract() != 0.0 || !(-7.0..=22.0).contains(&level) {
        return Err(HuntressError::config("logs_config.zstd_compression_level", format!("{level} is out of range: use a whole number from -7 to 22")));
    }
    Ok(level as i32)
}

/// `processing_rules` arrives as a list, or as JSON text when set through
/// `DD_LOGS_CONFIG_PROCESSING_RULES`.
fn rules_list(value: Option<&Value>) -> Result<Value> {
    match value {
        Some(Value::String(text)) if text.trim().is_empty() => Ok(Value::Null),
        Some(Value::String(text)) => serde_json::from_str(text)
            .map_err(|e| HuntressError::config("logs_config.processing_rules", format!("is text that is not a JSON list of rules ({e})"))),
        Some(value) => Ok(value.clone()),
        None => Ok(Value::Null),
    }
}

/// `host:port`, or a URL; `logs_no_ssl` picks http when no scheme is given.
fn logs_dd_url(value: &str, no_ssl: bool) -> Result<String> {
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ((if no_ssl { "http" } else { "https" }).to_string(), value),
    };
    let host = rest.split('/').next().unwrap_or_default();
    if !(scheme == "http" || scheme == "https") || host.is_empty() || host.contains(char::is_whitespace) {
        return Err(HuntressError::config(
            "logs_config.logs_dd_url",
            format!("{value:?} is not host:port or an http(s) URL, e.g. opw.internal:8282"),
        ));
    }
    Ok(format!("{scheme}://{host}/api/v2/logs"))
}

fn secs(value: u64) -> Duration {
    Duration::from_secs(value)
}

/// 80% of the collection interval, so a run ends before the next one is due.
fn default_deadline(min_collection_interval: f64) -> f64 {
    let interval = if min_collection_interval > 0.0 { min_collection_interval } else { 15.0 };
    (interval * 0.8).clamp(10.0, 3300.0)
}

fn dd_api_key(reader: &Reader, agent: &AgentContext) -> Result<String> {
    match reader.string_opt("dd_api_key")? {
        Some(key) => Ok(key),
        None if !agent.api_key.trim().is_empty() => Ok(agent.api_key.trim().to_string()),
        None => Err(HuntressError::config(
            "dd_api_key",
            "no Datadog API key: set `api_key` in datadog.yaml or `dd_api_key` in the instance",
        )),
    }
}

fn parse_stale_policy(reader: &Reader) -> Result<StalePolicy> {
    match reader.string("stale_log_policy", "rewrite_date")?.as_str() {
        "rewrite_date" => Ok(StalePolicy::RewriteDate),
        "skip" => Ok(StalePolicy::Skip),
        other => Err(HuntressError::config(
            "stale_log_policy",
            format!("unknown policy {other:?}: use `rewrite_date` or `skip`"),
        )),
    }
}

fn parse_queries(value: Option<&Value>) -> Result<Vec<LogQuery>> {
    let list = match value {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(HuntressError::config(
                "log_queries",
                "at least one query is required: add an entry with `name` and `esql_query`",
            ))
        }
        Some(_) => return Err(HuntressError::config("log_queries", "must be a list of {name, esql_query, tags}")),
    };
    let mut names = HashSet::new();
    let mut queries = Vec::with_capacity(list.len());
    for (index, entry) in list.iter().enumerate() {
        let query = parse_query(index, entry)?;
        if !names.insert(query.name.clone()) {
            return Err(HuntressError::config(
                &format!("log_queries[{index}].name"),
                format!("duplicate name {:?}: every query needs a unique name", query.name),
            ));
        }
        queries.push(query);
    }
    Ok(queries)
}

fn parse_query(index: usize, entry: &Value) -> Result<LogQuery> {
    let prefix = format!("log_queries[{index}]");
    let obj = entry
        .as_object()
        .ok_or_else(|| HuntressError::config(&prefix, "must be a mapping with `name` and `esql_query`"))?;
    let reader = Reader { obj };
    let key = |k: &str| format!("{prefix}.{k}");
    let name = reader
        .string_opt("name")
        .map_err(|_| HuntressError::config(&key("name"), "must be a string"))?
        .ok_or_else(|| HuntressError::config(&key("name"), "is required: give the query a short unique name"))?;
    refuse_comma(&key("name"), &name)?;
    let esql = reader
        .string_opt("esql_query")
        .map_err(|_| HuntressError::config(&key("esql_query"), "must be a string"))?
        .ok_or_else(|| HuntressError::config(&key("esql_query"), "is required: an ES|QL query starting with `FROM logs`"))?;
    validate_esql(&esql).map_err(|message| HuntressError::config(&key("esql_query"), message))?;
    let tags = reader.tags("tags").map_err(|error| match error {
        HuntressError::Config { message, .. } => HuntressError::config(&key("tags"), message),
        other => other,
    })?;
    let service = reader.string_opt("service").map_err(|_| HuntressError::config(&key("service"), "must be a string"))?;
    Ok(LogQuery { name, esql, tags, service })
}

/// Logs carry their tags in one comma-joined `ddtags` string, where a comma
/// would split one tag in two, while metrics would keep it whole: refused, so
/// that a query name or a tag means the same on both.
fn refuse_comma(key: &str, text: &str) -> Result<()> {
    if text.contains(',') {
        return Err(HuntressError::config(key, format!("{text:?} contains a comma, which would split it into two tags on logs: remove it")));
    }
    Ok(())
}

/// The window is given by `range_start`/`range_end`; a time filter in the query
/// would silently cut it, so it is refused.
pub fn validate_esql(esql: &str) -> std::result::Result<(), String> {
    let normalized = esql.trim().to_ascii_lowercase();
    let first_stage = normalized.split('|').next().unwrap_or_default();
    let mut words = first_stage.split_whitespace();
    if words.next() != Some("from") || words.next() != Some("logs") {
        return Err("must start with `FROM logs`".into());
    }
    if normalized.contains("now(") {
        return Err("must not filter on time (NOW()): the check sets the time range itself".into());
    }
    for stage in normalized.split('|').skip(1) {
        let stage = stage.trim();
        if stage.starts_with("where") && filters_on_timestamp(stage) {
            return Err("must not filter on @timestamp: the check sets the time range itself".into());
        }
    }
    Ok(())
}

/// True when `@timestamp` is compared in a `WHERE` stage, on either side,
/// quoted with backquotes (`` `@timestamp` ``) or not.
fn filters_on_timestamp(where_stage: &str) -> bool {
    let unquoted = where_stage.replace('`', "");
    let mut rest = unquoted.as_str();
    while let Some(pos) = rest.find("@timestamp") {
        let before = rest.get(..pos).unwrap_or_default().trim_end();
        let after = rest.get(pos + "@timestamp".len()..).unwrap_or_default().trim_start();
        let compared_after = after.starts_with(['<', '>', '=', '!']) || after.starts_with("in ") || after.starts_with("in(");
        let compared_before = before.ends_with(['<', '>', '=']);
        if compared_after || compared_before {
            return true;
        }
        rest = rest.get(pos + 1..).unwrap_or_default();
    }
    false
}

fn agents_settings(obj: &Map<String, Value>) -> Result<AgentsSettings> {
    let section = sub_section(obj, "metrics")?;
    let agents = match section.as_ref().and_then(|m| m.get("agents")) {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(HuntressError::config("metrics.agents", "must be a mapping, e.g. {enabled: true}")),
    };
    let empty = Map::new();
    let reader = Reader { obj: agents.as_ref().unwrap_or(&empty) };
    Ok(AgentsSettings {
        enabled: reader.bool("enabled", false).map_err(|e| rename(e, "metrics.agents.enabled"))?,
        max_pages: reader.uint("max_pages", 20, 1, 1000).map_err(|e| rename(e, "metrics.agents.max_pages"))? as u32,
        stale_after_seconds: reader
            .uint("stale_after_seconds", 86_400, 60, 365 * 86_400)
            .map_err(|e| rename(e, "metrics.agents.stale_after_seconds"))?,
    })
}

/// `<key>: {enabled, max_pages}` of an opt-in REST feed (incidents, escalations, signals).
fn list_settings(obj: &Map<String, Value>, key: &str) -> Result<ListSettings> {
    let section = sub_section(obj, key)?;
    let empty = Map::new();
    let reader = Reader { obj: section.as_ref().unwrap_or(&empty) };
    Ok(ListSettings {
        enabled: reader.bool("enabled", false).map_err(|e| rename(e, &format!("{key}.enabled")))?,
        max_pages: reader.uint("max_pages", 10, 1, 1000).map_err(|e| rename(e, &format!("{key}.max_pages")))? as u32,
    })
}

fn sub_section(obj: &Map<String, Value>, key: &str) -> Result<Option<Map<String, Value>>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(HuntressError::config(key, "must be a mapping")),
    }
}

fn rename(error: HuntressError, key: &str) -> HuntressError {
    match error {
        HuntressError::Config { message, .. } => HuntressError::Config { key: key.to_string(), message },
        other => other,
    }
}

/// Typed access to one mapping, with errors that name the key.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn string_opt(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(HuntressError::config(key, "must be a string")),
        }
    }

    /// The path of a PEM file of CA certificates, checked now.
    fn ca_cert(&self, key: &str) -> Result<Option<String>> {
        let path = self.string_opt(key)?;
        if let Some(path) = &path {
            check_ca_file(key, path)?;
        }
        Ok(path)
    }

    fn string(&self, key: &str, default: &str) -> Result<String> {
        Ok(self.string_opt(key)?.unwrap_or_else(|| default.to_string()))
    }

    fn secret(&self, key: &str, fix: &str) -> Result<String> {
        match self.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(Value::String(_)) | None => Err(HuntressError::config(key, format!("is required: {fix}"))),
            Some(_) => Err(HuntressError::config(key, "must be a string")),
        }
    }

    fn url(&self, key: &str, default: &str) -> Result<String> {
        let url = self.string(key, default)?;
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
            return Err(HuntressError::config(key, format!("{url:?} is not an http(s) URL, e.g. {default}")));
        }
        Ok(url.trim_end_matches('/').to_string())
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if matches!(s.to_ascii_lowercase().as_str(), "true" | "false") => {
                Ok(s.eq_ignore_ascii_case("true"))
            }
            Some(_) => Err(HuntressError::config(key, "must be true or false")),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .map(Some)
                .map_err(|_| HuntressError::config(key, format!("{s:?} is not a number"))),
            Some(_) => Err(HuntressError::config(key, "must be a number")),
        }
    }

    fn uint(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64> {
        let Some(value) = self.number(key)? else { return Ok(default) };
        if value.fract() != 0.0 || value < min as f64 || value > max as f64 {
            return Err(HuntressError::config(key, format!("{value} is out of range: use a whole number from {min} to {max}")));
        }
        Ok(value as u64)
    }

    fn positive(&self, key: &str, default: f64, max: f64) -> Result<f64> {
        let Some(value) = self.number(key)? else { return Ok(default) };
        if !(value > 0.0 && value <= max) {
            return Err(HuntressError::config(key, format!("{value} is out of range: use a number of seconds above 0 and at most {max}")));
        }
        Ok(value)
    }

    fn tags(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => refuse_comma(key, s).map(|()| s.trim().to_string()),
                    _ => Err(HuntressError::config(key, "must be a list of strings like `team:secops`")),
                })
                .filter(|t| !matches!(t, Ok(s) if s.is_empty()))
                .collect(),
            Some(_) => Err(HuntressError::config(key, "must be a list of strings like `team:secops`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadog::compression::Encoding;
    use serde_json::json;

    fn agent() -> AgentContext {
        AgentContext { api_key: "agent-dd-key".into(), site: "datadoghq.eu".into(), min_collection_interval: 900.0, ..AgentContext::default() }
    }

    fn minimal() -> Value {
        json!({
            "huntress_api_key": "k", "huntress_secret_key": "s",
            "log_queries": [{"name": "win", "esql_query": "FROM logs | KEEP uuid"}]
        })
    }

    fn error_key(instance: Value) -> String {
        match Config::parse(&instance, &agent()) {
            Err(HuntressError::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_come_from_agent_and_documented_values() {
        let config = Config::parse(&minimal(), &agent()).unwrap();
        assert_eq!(config.huntress.base_url, DEFAULT_BASE_URL);
        assert_eq!(config.intake.url, "https://http-intake.logs.datadoghq.eu/api/v2/logs");
        assert_eq!(config.intake.dd_api_key, "agent-dd-key");
        assert_eq!(config.siem.max_pages_per_run, 100);
        assert_eq!(config.siem.collection_delay, Duration::from_secs(10));
        assert_eq!(config.siem.late_reach, Duration::from_secs(21_600));
        assert_eq!(config.siem.lag_warning, Duration::from_secs(900));
        assert_eq!(config.siem.interval, Duration::from_secs(900), "the agent's min_collection_interval");
        assert_eq!(config.run_deadline, Duration::from_secs(720));
        assert!(config.huntress.http.tls.verify);
        assert_eq!(config.siem.stale_policy, StalePolicy::RewriteDate);
    }

    #[test]
    fn commas_in_query_names_and_tags_are_refused_alike() {
        let mut instance = minimal();
        instance["tags"] = json!(["team:sec,ops"]);
        assert_eq!(error_key(instance), "tags");
        let mut instance = minimal();
        instance["log_queries"][0]["tags"] = json!(["a:b", "c,d"]);
        assert_eq!(error_key(instance), "log_queries[0].tags");
        let mut instance = minimal();
        instance["log_queries"][0]["name"] = json!("win,dc");
        assert_eq!(error_key(instance), "log_queries[0].name");
        let mut instance = minimal();
        instance["log_queries"][0]["tags"] = json!(["a:b c"]);
        assert!(Config::parse(&instance, &agent()).is_ok());
    }

    fn temp_file(name: &str, contents: &str) -> String {
        let path = std::env::temp_dir().join(format!("huntress-config-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn ca_files_must_hold_pem_certificates() {
        let der_as_text = temp_file("garbage.pem", "not a certificate at all\n");
        let broken = temp_file("broken.pem", "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n");
        let key_only = temp_file("key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let good = temp_file("good.pem", "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n");
        for key in ["tls_ca_cert", "intake_tls_ca_cert"] {
            for path in [&der_as_text, &broken, &key_only, &"/nonexistent/ca.pem".to_string()] {
                let mut instance = minimal();
                instance[key] = json!(path);
                assert_eq!(error_key(instance), key, "{path}");
            }
            let mut instance = minimal();
            instance[key] = json!(good);
            assert!(Config::parse(&instance, &agent()).is_ok());
        }
    }

    #[test]
    fn huntress_tls_options_leave_the_intake_verified() {
        let mut instance = minimal();
        instance["tls_verify"] = json!(false);
        let config = Config::parse(&instance, &agent()).unwrap();
        assert!(!config.huntress.http.tls.verify);
        assert!(config.intake.http.tls.verify);
        assert_eq!(config.intake.http.tls.ca_cert, None);
        let mut instance = minimal();
        instance["intake_tls_verify"] = json!(false);
        let config = Config::parse(&instance, &agent()).unwrap();
        assert!(config.huntress.http.tls.verify && !config.intake.http.tls.verify);
    }

    #[test]
    fn missing_or_blank_required_keys_are_named() {
        let mut instance = minimal();
        instance.as_object_mut().unwrap().remove("huntress_api_key");
        assert_eq!(error_key(instance), "huntress_api_key");
        let mut instance = minimal();
        instance["huntress_secret_key"] = json!("  ");
        assert_eq!(error_key(instance), "huntress_secret_key");
        let mut instance = minimal();
        instance["log_queries"] = json!([]);
        assert_eq!(error_key(instance), "log_queries");
    }

    #[test]
    fn query_entries_are_validated() {
        let mut instance = minimal();
        instance["log_queries"] = json!([{"name": "a", "esql_query": "FROM logs"}, {"name": "a", "esql_query": "FROM logs"}]);
        assert_eq!(error_key(instance), "log_queries[1].name");
        let mut instance = minimal();
        instance["log_queries"] = json!([{"name": "a", "esql_query": "FROM metrics"}]);
        assert_eq!(error_key(instance), "log_queries[0].esql_query");
        let mut instance = minimal();
        instance["log_queries"] = json!([{"esql_query": "FROM logs"}]);
        assert_eq!(error_key(instance), "log_queries[0].name");
    }

    #[test]
    fn esql_rules() {
        assert!(validate_esql("from LOGS | KEEP uuid").is_ok());
        assert!(validate_esql("FROM logs|KEEP uuid").is_ok());
        assert!(validate_esql("FROM logs | SORT @timestamp | KEEP @timestamp").is_ok());
        assert!(validate_esql("FROM logsx").is_err());
        assert!(validate_esql("FROM logs | WHERE @timestamp > \"2026-01-01\"").is_err());
        assert!(validate_esql("FROM logs | WHERE event.code == \"4625\" AND @timestamp >= x").is_err());
        assert!(validate_esql("FROM logs | WHERE `@timestamp` > \"2026-01-01\"").is_err());
        assert!(validate_esql("FROM logs | WHERE `@timestamp`>=x").is_err());
        assert!(validate_esql("FROM logs | WHERE \"2026-01-01\" < `@timestamp`").is_err());
        assert!(validate_esql("FROM logs | WHERE @timestamp IN (x)").is_err());
        assert!(validate_esql("FROM logs | SORT `@timestamp` DESC | KEEP `@timestamp`").is_ok());
        assert!(validate_esql("FROM logs | WHERE x > NOW() - 1 hour").is_err());
    }

    #[test]
    fn numbers_are_range_checked() {
        let mut instance = minimal();
        instance["max_pages_per_run"] = json!(0);
        assert_eq!(error_key(instance), "max_pages_per_run");
        let mut instance = minimal();
        instance["request_timeout"] = json!("abc");
        assert_eq!(error_key(instance), "request_timeout");
        let mut instance = minimal();
        instance["stale_log_policy"] = json!("drop");
        assert_eq!(error_key(instance), "stale_log_policy");
        let mut instance = minimal();
        instance["metrics"] = json!({"agents": {"max_pages": -1}});
        assert_eq!(error_key(instance), "metrics.agents.max_pages");
    }

    #[test]
    fn missing_dd_api_key_is_reported() {
        let context = AgentContext { api_key: String::new(), ..agent() };
        match Config::parse(&minimal(), &context) {
            Err(HuntressError::Config { key, .. }) => assert_eq!(key, "dd_api_key"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut instance = minimal();
        instance["huntress_api_key"] = json!("PUBLICKEY123");
        instance["huntress_secret_key"] = json!("SECRET456");
        let printed = format!("{:?}", Config::parse(&instance, &agent()).unwrap());
        assert!(!printed.contains("PUBLICKEY123") && !printed.contains("SECRET456") && !printed.contains("agent-dd-key"));
    }

    fn with_logs(logs_config: Value) -> AgentContext {
        AgentContext { logs_config, ..agent() }
    }

    #[test]
    fn logs_dd_url_replaces_the_site_intake_and_logs_intake_url_wins() {
        let relay = Config::parse(&minimal(), &with_logs(json!({"logs_dd_url": "opw.internal:8282", "logs_no_ssl": true}))).unwrap();
        assert_eq!(relay.intake.url, "http://opw.internal:8282/api/v2/logs");
        assert_eq!(relay.intake.encoding, Encoding::Zstd(1), "the Agent's default, sent where the Agent sends it");
        assert!(relay.encoding_note.is_none());
        let tls = Config::parse(&minimal(), &with_logs(json!({"logs_dd_url": "opw.internal:8282", "logs_no_ssl": "false"}))).unwrap();
        assert_eq!(tls.intake.url, "https://opw.internal:8282/api/v2/logs");
        let schemed = Config::parse(&minimal(), &with_logs(json!({"logs_dd_url": "http://relay:80/"}))).unwrap();
        assert_eq!(schemed.intake.url, "http://relay:80/api/v2/logs");
        let mut instance = minimal();
        instance["logs_intake_url"] = json!("https://intake.example/api/v2/logs");
        let overridden = Config::parse(&instance, &with_logs(json!({"logs_dd_url": "opw.internal:8282"}))).unwrap();
        assert_eq!(overridden.intake.url, "https://intake.example/api/v2/logs");
        assert_eq!(overridden.intake.encoding, Encoding::Gzip(compression::FALLBACK_GZIP_LEVEL));
        assert!(overridden.encoding_note.unwrap().contains("https://intake.example/api/v2/logs"));
        let bad = Config::parse(&minimal(), &with_logs(json!({"logs_dd_url": "ftp://relay:21"})));
        assert!(matches!(bad, Err(HuntressError::Config { key, .. }) if key == "logs_config.logs_dd_url"));
    }

    #[test]
    fn compression_follows_the_agent_settings() {
        let site = Config::parse(&minimal(), &agent()).unwrap();
        assert_eq!(site.intake.encoding, Encoding::Gzip(compression::FALLBACK_GZIP_LEVEL), "zstd is not documented for the public intake");
        assert!(site.encoding_note.is_some());
        let gzip = Config::parse(&minimal(), &with_logs(json!({"compression_kind": "gzip", "compression_level": 4}))).unwrap();
        assert_eq!((gzip.intake.encoding, gzip.encoding_note), (Encoding::Gzip(4), None));
        let off = Config::parse(&minimal(), &with_logs(json!({"use_compression": false}))).unwrap();
        assert_eq!(off.intake.encoding, Encoding::None);
        let mut instance = minimal();
        instance["logs_intake_url"] = json!("https://agent-http-intake.logs.datadoghq.eu/api/v2/logs");
        let agent_endpoint = Config::parse(&instance, &with_logs(json!({"zstd_compression_level": "3"}))).unwrap();
        assert_eq!(agent_endpoint.intake.encoding, Encoding::Zstd(3));
        for (settings, key) in [
            (json!({"compression_kind": "brotli"}), "logs_config.compression_kind"),
            (json!({"zstd_compression_level": 40}), "logs_config.zstd_compression_level"),
            (json!({"compression_level": 10}), "logs_config.compression_level"),
            (json!({"processing_rules": "[not json"}), "logs_config.processing_rules"),
        ] {
            match Config::parse(&minimal(), &with_logs(settings.clone())) {
                Err(HuntressError::Config { key: got, .. }) => assert_eq!(got, key, "{settings}"),
                other => panic!("{settings}: {other:?}"),
            }
        }
    }

    #[test]
    fn instance_rules_follow_the_global_ones() {
        let mut instance = minimal();
        instance["log_processing_rules"] = json!([{"type": "exclude_at_match", "name": "instance_rule", "pattern": "b"}]);
        let global = r#"[{"type": "exclude_at_match", "name": "global_rule", "pattern": "a"}]"#;
        let config = Config::parse(&instance, &with_logs(json!({"processing_rules": global}))).unwrap();
        assert_eq!(config.processing_rules.names().collect::<Vec<_>>(), ["global_rule", "instance_rule"]);
        instance["log_processing_rules"] = json!([{"type": "mask_sequences", "name": "no_placeholder", "pattern": "b"}]);
        assert_eq!(error_key(instance), "log_processing_rules[0]");
    }
}
