//! What the Huntress client and the intake client share: an HTTP client built
//! from the config, the run deadline, and retry backoff.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::redirect::Policy;
use reqwest::{Client, RequestBuilder};
use tokio::runtime::Runtime;

use crate::config::{Config, ProxyConfig, TlsSettings};
use crate::error::{HuntressError, Result};

pub const USER_AGENT: &str = concat!("datadog-huntress/", env!("CARGO_PKG_VERSION"));

/// The instant a run must be finished by.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Deadline(Instant::now() + budget)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Sleeps for `wait` unless that would pass the deadline.
    pub fn sleep(&self, wait: Duration) -> bool {
        if wait >= self.remaining() {
            return false;
        }
        std::thread::sleep(wait);
        true
    }
}

/// Exponential backoff: 0.5 s, 1 s, 2 s, 4 s ... capped at 8 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(4))).min(Duration::from_secs(8))
}

fn install_crypto_provider() {
    // reqwest is built without a default provider; ring is installed once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A blocking HTTP client: an async reqwest client driven by a single-threaded
/// runtime on the caller's thread. Unlike `reqwest::blocking`, no request or
/// body crosses to another thread, which saves CPU on every request.
pub struct HttpClient {
    client: Client,
    runtime: Runtime,
}

/// A complete answer: status, headers and the whole body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

/// Where a request failed: before an answer came, or while reading its body.
pub enum HttpFailure {
    Send(reqwest::Error),
    Body(reqwest::Error),
}

impl HttpClient {
    /// A client for one destination: `tls` says how it checks certificates.
    pub fn new(config: &Config, tls: &TlsSettings) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HuntressError::config("request_timeout", format!("cannot start the HTTP runtime: {e}")))?;
        // reqwest's connector needs the runtime's context while it is built.
        let client = {
            let _entered = runtime.enter();
            build_client(config, tls)?
        };
        Ok(HttpClient { client, runtime })
    }

    pub fn get(&self, url: &str) -> RequestBuilder {
        self.client.get(url)
    }

    pub fn post(&self, url: &str) -> RequestBuilder {
        self.client.post(url)
    }

    /// Sends the request and reads the whole answer.
    pub fn execute(&self, request: RequestBuilder) -> std::result::Result<Answer, HttpFailure> {
        self.runtime.block_on(async {
            let response = request.send().await.map_err(HttpFailure::Send)?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(HttpFailure::Body)?;
            Ok(Answer { status, headers, body })
        })
    }
}

/// A client that never follows redirects: a redirect would carry `DD-API-KEY`
/// (a custom header that reqwest keeps across hosts) to wherever it points.
fn build_client(config: &Config, tls: &TlsSettings) -> Result<Client> {
    install_crypto_provider();
    let mut builder = Client::builder()
        .user_agent(USER_AGENT)
        .redirect(Policy::none())
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .tls_danger_accept_invalid_certs(!tls.verify);
    if let Some(path) = &tls.ca_cert {
        let key = tls.ca_cert_key;
        let pem = std::fs::read(path).map_err(|e| HuntressError::config(key, format!("cannot read {path:?}: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| HuntressError::config(key, format!("{path:?} is not a PEM bundle: {e}")))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder = apply_proxy(builder, config.proxy.as_ref())?;
    builder
        .build()
        .map_err(|e| HuntressError::config(tls.ca_cert_key, format!("cannot build the HTTP client: {e}")))
}

fn apply_proxy(
    mut builder: reqwest::ClientBuilder,
    proxy: Option<&ProxyConfig>,
) -> Result<reqwest::ClientBuilder> {
    let Some(proxy) = proxy else { return Ok(builder.no_proxy()) };
    let no_proxy = reqwest::NoProxy::from_string(&proxy.no_proxy.join(","));
    if let Some(url) = &proxy.https {
        let p = reqwest::Proxy::https(url).map_err(|e| HuntressError::config("proxy.https", format!("invalid proxy URL: {e}")))?;
        builder = builder.proxy(p.no_proxy(no_proxy.clone()));
    }
    if let Some(url) = &proxy.http {
        let p = reqwest::Proxy::http(url).map_err(|e| HuntressError::config("proxy.http", format!("invalid proxy URL: {e}")))?;
        builder = builder.proxy(p.no_proxy(no_proxy));
    }
    Ok(builder)
}

/// At most `max` characters of a response body, for error messages.
pub fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut short: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        short.push('…');
    }
    short.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(10), Duration::from_secs(8));
    }

    #[test]
    fn deadline_refuses_long_sleeps() {
        let deadline = Deadline::after(Duration::from_millis(20));
        assert!(!deadline.sleep(Duration::from_secs(1)));
        assert!(deadline.sleep(Duration::from_millis(1)));
    }

    #[test]
    fn excerpt_is_short_and_single_line() {
        assert_eq!(excerpt(b"line1\nline2", 100), "line1 line2");
        assert_eq!(excerpt(b"abcdef", 3), "abc…");
    }
}
