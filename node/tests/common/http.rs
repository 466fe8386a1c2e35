//! A tiny blocking HTTP/1.1 client for tests, over `std::net::TcpStream`:
//! enough for the admin API and for chromedriver (`webdriver.rs`), and no
//! crate for it, which would weigh more than everything it is used for.
//!
//! One request per connection (`Connection: close`). The response ends at its
//! `Content-Length`, at the end of its chunked body (hyper chunks bodies whose
//! length it does not know beforehand), or else at EOF. Every call is bounded
//! by its timeout, connect included, so a server that stops answering fails
//! the test instead of hanging it. Plain HTTP only; `addr` is `host:port`.
//!
//! Checked by hand against `python3 -m http.server` (Content-Length bodies,
//! 404s, EOF) and against chromedriver (JSON both ways).

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What `get` and `request` give a whole call.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// A response head larger than this is not a server a test should trust.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A complete response.
pub struct Response {
    pub status: u16,
    /// In the order received, names as the server spelled them; look them up
    /// with `header`, which ignores case.
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

/// One request, bounded by `TIMEOUT`. `Host`, `Connection: close` and
/// `Content-Length` are added (the first two unless `headers` has them).
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
    let what = format!("{method} http://{addr}{path}");
    exchange(addr, method, path, headers, body, timeout).map_err(|error| format!("{what}: {error}"))
}

fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    let deadline = Instant::now() + timeout;
    let head = request_head(addr, method, path, headers, body.map_or(0, <[u8]>::len))?;
    let mut stream = connect(addr, timeout)?;
    stream.set_nodelay(true).map_err(|e| format!("set TCP_NODELAY: {e}"))?;

    set_timeouts(&stream, deadline)?;
    stream.write_all(head.as_bytes()).map_err(|e| io_error("send the request", &e))?;
    if let Some(body) = body {
        set_timeouts(&stream, deadline)?;
        stream.write_all(body).map_err(|e| io_error("send the body", &e))?;
    }
    stream.flush().map_err(|e| io_error("send the request", &e))?;

    // Read until the response is complete, not necessarily until EOF: a
    // server may keep the connection open a while despite `Connection: close`.
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(response) = parse(&received, false, method)? {
            return Ok(response);
        }
        set_timeouts(&stream, deadline)?;
        let n = stream.read(&mut chunk).map_err(|e| {
            io_error(
                &format!("read the response ({} bytes so far: {:?})", received.len(), excerpt_bytes(&received)),
                &e,
            )
        })?;
        if n == 0 {
            return parse(&received, true, method)?.ok_or_else(|| {
                format!(
                    "the connection closed after {} bytes, before the response was complete: {:?}",
                    received.len(),
                    excerpt_bytes(&received)
                )
            });
        }
        received.extend_from_slice(&chunk[..n]);
    }
}

fn request_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> Result<String, String> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if has("content-length") || has("transfer-encoding") {
        return Err("the body's length is set by the client; pass no Content-Length or Transfer-Encoding".to_owned());
    }
    let fields = [method, path].into_iter().chain(headers.iter().flat_map(|(n, v)| [*n, *v]));
    for field in fields {
        if field.contains(['\r', '\n']) {
            return Err(format!("a line break in the request line or a header: {field:?}"));
        }
    }
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str(&format!("Content-Length: {body_len}\r\n"));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head)
}

/// Tries every address `addr` resolves to, each with what is left of
/// `timeout`.
fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    let resolved: Vec<_> = addr.to_socket_addrs().map_err(|e| format!("resolve {addr}: {e}"))?.collect();
    let mut errors = Vec::new();
    for socket in &resolved {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            errors.push(format!("{socket}: timed out"));
            break;
        }
        match TcpStream::connect_timeout(socket, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => errors.push(format!("{socket}: {e}")),
        }
    }
    if errors.is_empty() {
        return Err(format!("{addr} resolves to no address"));
    }
    Err(format!("connect: {}", errors.join("; ")))
}

/// Bounds the next read or write by what is left until `deadline`.
fn set_timeouts(stream: &TcpStream, deadline: Instant) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".to_owned());
    }
    // Both calls refuse only a zero duration, excluded above.
    stream.set_read_timeout(Some(left)).map_err(|e| format!("set the read timeout: {e}"))?;
    stream.set_write_timeout(Some(left)).map_err(|e| format!("set the write timeout: {e}"))
}

fn io_error(doing: &str, error: &std::io::Error) -> String {
    match error.kind() {
        // What a socket timeout reports, depending on the platform.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!("{doing}: timed out"),
        _ => format!("{doing}: {error}"),
    }
}

/// The response in `received`, `None` while more bytes are needed. At `eof`
/// a body without length or chunking ends there; anything else incomplete
/// is an error.
fn parse(received: &[u8], eof: bool, method: &str) -> Result<Option<Response>, String> {
    let mut start = 0;
    loop {
        let rest = &received[start..];
        let Some(head_len) = find(rest, b"\r\n\r\n") else {
            if rest.len() > MAX_HEAD_BYTES {
                return Err(format!("no end of the response head in {} bytes", rest.len()));
            }
            return Ok(None);
        };
        let (status, headers) = parse_head(&rest[..head_len])?;
        let body_start = start + head_len + 4;
        // 1xx responses (100 Continue, 103 Early Hints) come before the
        // real one; skip them.
        if (100..200).contains(&status) {
            start = body_start;
            continue;
        }
        let response = |body: Vec<u8>| Response { status, headers: headers.clone(), body };
        let body = &received[body_start..];
        let value = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim());

        if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
            return Ok(Some(response(Vec::new())));
        }
        if let Some(coding) = value("transfer-encoding") {
            if !coding.to_ascii_lowercase().ends_with("chunked") {
                return Err(format!("unsupported Transfer-Encoding: {coding}"));
            }
            return Ok(dechunk(body)?.map(response));
        }
        if let Some(length) = value("content-length") {
            let length: usize = length.parse().map_err(|_| format!("bad Content-Length: {length:?}"))?;
            if body.len() < length {
                return Ok(None);
            }
            return Ok(Some(response(body[..length].to_vec())));
        }
        return Ok(eof.then(|| response(body.to_vec())));
    }
}

fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), String> {
    let head =
        std::str::from_utf8(head).map_err(|_| format!("the response head is not UTF-8: {:?}", excerpt_bytes(head)))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 = code.parse().map_err(|_| format!("bad status line: {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header line: {line:?}"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok((status, headers))
}

/// A chunked body decoded, `None` until its last chunk and trailers are in.
fn dechunk(mut encoded: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_len) = find(encoded, b"\r\n") else { return Ok(None) };
        let line =
            std::str::from_utf8(&encoded[..line_len]).map_err(|_| "a chunk size line is not UTF-8".to_owned())?;
        // A size may carry extensions after ';', which mean nothing here.
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size line: {line:?}"))?;
        encoded = &encoded[line_len + 2..];
        if size == 0 {
            // Trailers, if any, then an empty line.
            loop {
                let Some(line_len) = find(encoded, b"\r\n") else { return Ok(None) };
                encoded = &encoded[line_len + 2..];
                if line_len == 0 {
                    return Ok(Some(body));
                }
            }
        }
        if encoded.len() < size + 2 {
            return Ok(None);
        }
        if &encoded[size..size + 2] != b"\r\n" {
            return Err(format!("chunk of {size} bytes not followed by CRLF"));
        }
        body.extend_from_slice(&encoded[..size]);
        encoded = &encoded[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The first `max` characters of `text`, marked when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

fn excerpt_bytes(bytes: &[u8]) -> String {
    excerpt(&String::from_utf8_lossy(bytes), 500)
}
