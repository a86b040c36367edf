//! What the Huntress client and the intake client share: an HTTP client built
//! from the config, the run deadline, and retry backoff.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::redirect::Policy;
use reqwest::{Client, RequestBuilder};
use tokio::runtime::Runtime;

use crate::base::error::{HuntressError, Result};
use crate::base::redact::Redactor;

/// How one HTTP client reaches its destination: its time limit, the Agent's
/// proxy, and how it checks the server's certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// Bounds each request, body included.
    pub request_timeout: Duration,
    pub proxy: Option<ProxyConfig>,
    pub tls: TlsSettings,
}

/// The Agent's proxy settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyConfig {
    pub http: Option<String>,
    pub https: Option<String>,
    pub no_proxy: Vec<String>,
}

/// How one HTTP client checks the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub verify: bool,
    /// A PEM file of additional trusted CAs, checked when the config is read.
    pub ca_cert: Option<String>,
    /// The option `ca_cert` came from, for errors.
    pub ca_cert_key: &'static str,
}

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

/// Largest Huntress response body read. A SIEM page holds at most 200 rows;
/// 32 MiB leaves about 160 KB per row, far above real events (the intake takes
/// at most 1 MB per log anyway), while the peak memory of reading one body
/// stays well under 100 MB.
pub const MAX_HUNTRESS_BODY: usize = 32 * 1024 * 1024;
/// Largest intake answer read: the intake answers `{}` or a short error.
pub const MAX_INTAKE_BODY: usize = 1024 * 1024;

/// An answer: status, headers and the body, read up to a maximum.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// The body was longer than the maximum (declared or sent): `body` holds at
    /// most its first bytes and the connection was dropped.
    pub oversized: bool,
}

/// Where a request failed: before an answer came, while reading its body, or
/// because the whole exchange outlasted its time limit.
pub enum HttpFailure {
    Send(reqwest::Error),
    Body(reqwest::Error),
    TimedOut,
}

impl HttpClient {
    /// A client for one destination: `tls` says how it checks certificates.
    pub fn new(settings: &HttpSettings) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HuntressError::config("request_timeout", format!("cannot start the HTTP runtime: {e}")))?;
        // reqwest's connector needs the runtime's context while it is built.
        let client = {
            let _entered = runtime.enter();
            build_client(settings)?
        };
        Ok(HttpClient { client, runtime })
    }

    pub fn get(&self, url: &str) -> RequestBuilder {
        self.client.get(url)
    }

    pub fn post(&self, url: &str) -> RequestBuilder {
        self.client.post(url)
    }

    /// Sends the request and reads the answer, its body as a stream of at most
    /// `max_body` bytes. `timeout` bounds the whole exchange, body included.
    ///
    /// A request given up (timed out, or failed part way) closes its
    /// connection before this returns: the connection's task lives on this
    /// runtime, which otherwise would run it again only at the next request,
    /// after the backoff, leaving the server a connection held open.
    pub fn execute(&self, request: RequestBuilder, timeout: Duration, max_body: usize) -> std::result::Result<Answer, HttpFailure> {
        let result = self.exchange(request, timeout, max_body);
        if result.is_err() {
            self.settle();
        }
        result
    }

    /// Runs the tasks the dropped exchange left ready (the connection noticing
    /// that nobody waits for its answer, and closing), without waiting for anything.
    fn settle(&self) {
        self.runtime.block_on(async {
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
        });
    }

    fn exchange(&self, request: RequestBuilder, timeout: Duration, max_body: usize) -> std::result::Result<Answer, HttpFailure> {
        self.runtime.block_on(async {
            let exchange = async {
                let response = request.send().await.map_err(HttpFailure::Send)?;
                read_capped(response, max_body).await
            };
            match tokio::time::timeout(timeout, exchange).await {
                // reqwest's own timeout (the client's, equal to request_timeout) may fire first.
                Ok(Err(HttpFailure::Send(e) | HttpFailure::Body(e))) if e.is_timeout() => Err(HttpFailure::TimedOut),
                Ok(result) => result,
                Err(_elapsed) => Err(HttpFailure::TimedOut),
            }
        })
    }
}

/// Reads a body chunk by chunk and stops at `max_body` bytes: a declared length
/// over it is refused before reading, and an endless body stops at the cap. The
/// buffer never grows past the cap.
async fn read_capped(mut response: reqwest::Response, max_body: usize) -> std::result::Result<Answer, HttpFailure> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let declared = response.content_length();
    let mut answer = Answer { status, headers, body: bytes::Bytes::new(), oversized: false };
    if declared.is_some_and(|length| length > max_body as u64) {
        answer.oversized = true;
        return Ok(answer);
    }
    let mut body = bytes::BytesMut::with_capacity(declared.map_or(0, |length| length as usize));
    while let Some(chunk) = response.chunk().await.map_err(HttpFailure::Body)? {
        if body.len() + chunk.len() > max_body {
            answer.oversized = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    answer.body = body.freeze();
    Ok(answer)
}

/// A client that never follows redirects: a redirect would carry `DD-API-KEY`
/// (a custom header that reqwest keeps across hosts) to wherever it points.
fn build_client(settings: &HttpSettings) -> Result<Client> {
    install_crypto_provider();
    let tls = &settings.tls;
    let mut builder = Client::builder()
        .user_agent(USER_AGENT)
        .redirect(Policy::none())
        .timeout(settings.request_timeout)
        .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .tls_danger_accept_invalid_certs(!tls.verify);
    if let Some(path) = &tls.ca_cert {
        let key = tls.ca_cert_key;
        let pem = std::fs::read(path).map_err(|e| HuntressError::config(key, format!("cannot read {path:?}: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| HuntressError::config(key, format!("{path:?} is not a PEM bundle: {e}")))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder = apply_proxy(builder, settings.proxy.as_ref())?;
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

/// At most `max` characters of a response body, for error messages, with
/// secrets and credential headers scrubbed (see `redact`) before it is cut, so
/// that no cut leaves part of a secret behind.
pub fn excerpt(body: &[u8], max: usize, redactor: &Redactor) -> String {
    // Room past `max` for a secret or header value that starts before the cut.
    let window = &body[..body.len().min(max * 4 + 4096)];
    let text = redactor.scrub(&String::from_utf8_lossy(window));
    let mut short: String = text.chars().take(max).collect();
    if text.chars().count() > max || window.len() < body.len() {
        short.push('…');
    }
    short.replace(['\n', '\r'], " ")
}

/// The error with its causes. URLs in it never hold a secret: credentials go in headers.
pub fn short_reqwest(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
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
        let none = Redactor::default();
        assert_eq!(excerpt(b"line1\nline2", 100, &none), "line1 line2");
        assert_eq!(excerpt(b"abcdef", 3, &none), "abc…");
    }

    #[test]
    fn excerpt_scrubs_before_it_cuts() {
        let redactor = Redactor::new(&["supersecretvalue42"]);
        let body = format!("{}supersecretvalue42", "x".repeat(190));
        let short = excerpt(body.as_bytes(), 200, &redactor);
        assert!(!short.contains("supersecr"), "{short}");
        let echoed = b"{\"headers\": {\"Authorization\": \"Basic aGs6aHM=\"}}";
        assert!(!excerpt(echoed, 200, &none_but_headers()).contains("aGs6aHM"));
    }

    fn none_but_headers() -> Redactor {
        Redactor::default()
    }

    /// A local server that answers with the given head, then streams `body_chunks`
    /// chunks of 64 KiB (forever when `None`).
    fn serve(head: &'static str, body_chunks: Option<usize>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request);
            if socket.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = format!("{:x}\r\n{}\r\n", 65536, "a".repeat(65536));
            let mut sent = 0;
            while body_chunks.is_none_or(|n| sent < n) {
                if socket.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
                sent += 1;
            }
            if head.contains("chunked") {
                let _ = socket.write_all(b"0\r\n\r\n");
            }
            // Hold the connection open: a declared body that never comes must time out.
            std::thread::sleep(Duration::from_secs(10));
        });
        url
    }

    fn test_client() -> HttpClient {
        let tls = TlsSettings { verify: true, ca_cert: None, ca_cert_key: "tls_ca_cert" };
        HttpClient::new(&HttpSettings { request_timeout: Duration::from_secs(30), proxy: None, tls }).unwrap()
    }

    #[test]
    fn a_request_given_up_closes_its_connection_before_execute_returns() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            // Reads the request, never answers, and reports when the client closes.
            while socket.read(&mut buf).is_ok_and(|n| n > 0) {}
            closed_tx.send(Instant::now()).unwrap();
        });
        let client = test_client();
        let result = client.execute(client.get(&url), Duration::from_millis(300), 1024);
        let returned = Instant::now();
        assert!(matches!(result, Err(HttpFailure::TimedOut)));
        let closed = closed_rx.recv_timeout(Duration::from_secs(5)).expect("the connection is closed without another request");
        assert!(closed.saturating_duration_since(returned) < Duration::from_millis(200), "closed {:?} after giving up", closed - returned);
    }

    #[test]
    fn an_endless_chunked_body_stops_at_the_cap() {
        let url = serve("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", None);
        let client = test_client();
        let answer = client.execute(client.get(&url), Duration::from_secs(20), 1024 * 1024).ok().unwrap();
        assert!(answer.oversized);
        assert!(answer.body.len() <= 1024 * 1024);
    }

    #[test]
    fn a_declared_length_over_the_cap_is_not_read() {
        let url = serve("HTTP/1.1 200 OK\r\ncontent-length: 1500000000\r\n\r\n", Some(0));
        let client = test_client();
        let answer = client.execute(client.get(&url), Duration::from_secs(20), 1024 * 1024).ok().unwrap();
        assert!(answer.oversized && answer.body.is_empty());
    }

    #[test]
    fn a_body_under_the_cap_is_read_whole() {
        let url = serve("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", Some(3));
        let client = test_client();
        let answer = client.execute(client.get(&url), Duration::from_secs(20), 1024 * 1024).ok().unwrap();
        assert!(!answer.oversized);
        assert_eq!(answer.body.len(), 3 * 65536);
    }

    #[test]
    fn the_timeout_covers_a_body_that_never_ends() {
        // Headers at once, then a trickle: the time limit must cut the body read.
        let url = serve("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc", Some(0));
        let client = test_client();
        let started = std::time::Instant::now();
        let failure = client.execute(client.get(&url), Duration::from_millis(300), 1024).err();
        assert!(matches!(failure, Some(HttpFailure::TimedOut)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
