//! A blocking HTTP client for tests, a thin layer over `ureq`: the tests read
//! `Response { status, headers, body }` whatever the status, and panic with
//! the body when it is not what they expected.
//!
//! ureq rather than a client of our own: it is small, blocking (the tests'
//! calls need no runtime) and already knows chunked bodies, 1xx responses and
//! the rest of HTTP/1.1. It is configured so that a 4xx or 5xx is a
//! `Response` the test asserts on, not an error; no redirect is followed
//! (the admin API's answer is what is checked, not where it points); no
//! proxy from the environment is used (every address is local); and every
//! call, connect included, is bounded by its timeout, so a server that stops
//! answering fails the test instead of hanging it. Plain HTTP only; `addr` is
//! `host:port`.

use std::fmt;
use std::time::Duration;

use ureq::http;

/// What `get` and `request` give a whole call.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A complete response.
pub struct Response {
    pub status: u16,
    /// Names lower-cased (as the `http` crate keeps them); look them up with
    /// `header`, which ignores case.
    pub headers: Vec<(String, String)>,
    /// Decoded from chunks when the server chunked it.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name`, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text; invalid UTF-8 becomes U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics, showing the status and body, if it is not
    /// JSON (what a test wants: the assertion names what came instead).
    pub fn json(&self) -> serde_json::Value {
        self.try_json().unwrap_or_else(|error| panic!("{error}"))
    }

    /// The body as JSON, or an error showing the status and body.
    pub fn try_json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("HTTP {} body is not JSON ({e}): {}", self.status, excerpt(&self.text(), 2000)))
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &excerpt(&self.text(), 2000))
            .finish()
    }
}

/// `GET path` from `addr` (`host:port`), bounded by `TIMEOUT`.
pub fn get(addr: &str, path: &str) -> Result<Response, String> {
    request(addr, "GET", path, &[], None)
}

/// One request, bounded by `TIMEOUT`. ureq adds `Host` and `Content-Length`.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, String> {
    request_with_timeout(addr, method, path, headers, body, TIMEOUT)
}

/// `request` with its own bound on the whole call (connect, send, receive).
pub fn request_with_timeout(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    let url = format!("http://{addr}{path}");
    exchange(&url, method, headers, body, timeout).map_err(|error| format!("{method} {url}: {error}"))
}

fn exchange(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    // An agent per call: its configuration is the call's timeout, and the
    // tests never need a connection kept for the next one.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    // An empty body rather than none, so a bodiless POST still says
    // `Content-Length: 0`, as servers expect.
    let request = builder.body(body.unwrap_or_default()).map_err(|e| e.to_string())?;
    let mut response = agent.run(request).map_err(|e| e.to_string())?;
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = response.body_mut().read_to_vec().map_err(|e| format!("read the body: {e}"))?;
    Ok(Response { status: response.status().as_u16(), headers, body })
}

/// The first `max` characters of `text`, marked when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}
