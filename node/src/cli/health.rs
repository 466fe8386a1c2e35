//! `keel health --admin URL [--ready]`: one GET of a node's `/healthz` (or
//! `/readyz`), exit 0 on 200 and 1 otherwise.
//!
//! This is the container image's health check: the image is `FROM scratch`,
//! with no shell and no curl, so the binary checks itself. It is a plain
//! HTTP/1.1 request over `std::net::TcpStream` rather than the tokio/hyper
//! stack because a health check runs every few seconds in a fresh process
//! and must stay small, and because a hard deadline over the whole exchange
//! (connect, write, read) is simplest to hold with blocking sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

/// The whole exchange (resolve, connect, request, response) must fit in this.
const DEADLINE: Duration = Duration::from_secs(2);
/// Health answers are a few dozen bytes; anything longer is cut here so a
/// wrong server cannot make the check buffer without bound.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Args)]
#[command(after_help = "Exits 0 and prints `healthy: <body>` (or `ready: <body>`) when the node answers 200; \
                  otherwise prints the status and body, or the connection error, to stderr and exits 1. \
                  The whole check is bounded by 2 seconds. Example: keel health --admin http://127.0.0.1:9191")]
pub struct HealthArgs {
    /// The node's admin HTTP address (its `admin.listen`): http://HOST:PORT,
    /// with or without a trailing slash (HOST:PORT alone also works; only
    /// plain http is spoken)
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9191")]
    admin: String,
    /// Check readiness (`/readyz`: member, leader known, caught up) instead
    /// of liveness (`/healthz`: process up, store not failed)
    #[arg(long)]
    ready: bool,
}

/// Where to send the request, parsed from `--admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AdminUrl {
    /// As written in the URL (a name, an IPv4 address or `[v6]`), for
    /// resolving and for the `Host` header.
    host: String,
    port: u16,
}

impl AdminUrl {
    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `http://HOST:PORT`, `http://HOST:PORT/`, `HOST:PORT`, or without the port
/// (80). Any other scheme, a path, a query or user info is an error saying so.
fn parse_admin_url(url: &str) -> Result<AdminUrl, String> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{url:?}: unsupported scheme {scheme:?}; the admin API speaks plain HTTP, give http://HOST:PORT"
            ));
        }
        None => url,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "{url:?}: give only http://HOST:PORT, without a path (the check adds /healthz or /readyz)"
        ));
    }
    if authority.contains('@') {
        return Err(format!("{url:?}: user info is not supported; give http://HOST:PORT"));
    }
    if authority.is_empty() {
        return Err(format!("{url:?}: no host; give http://HOST:PORT"));
    }
    // An IPv6 literal is bracketed, so its colons are not the port's.
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (v6, tail) = after.split_once(']').ok_or_else(|| format!("{url:?}: unclosed '[' in the host"))?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{url:?}: {v6:?} is not an IPv6 address"))?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').ok_or_else(|| format!("{url:?}: expected ':PORT' after ']'"))?),
        };
        (format!("[{v6}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!("{url:?}: put an IPv6 address in brackets, e.g. http://[::1]:9191"));
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host; give http://HOST:PORT"));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => return Err(format!("{url:?}: {p:?} is not a port (1-65535)")),
        },
    };
    Ok(AdminUrl { host, port })
}

/// Runs the check. A failure is printed here as one line (`unhealthy: GET
/// URL: reason`) and ends the process with status 1, rather than returned to
/// `main`: Docker keeps the check's output in `docker inspect`, where a
/// multi-line error with a backtrace would only hide the reason.
pub fn health(args: HealthArgs) -> Result<()> {
    match check(&args) {
        Ok(body) => {
            println!("{}: {body}", if args.ready { "ready" } else { "healthy" });
            Ok(())
        }
        Err(e) => {
            eprintln!("{}: {e:#}", if args.ready { "not ready" } else { "unhealthy" });
            std::process::exit(1)
        }
    }
}

/// The body of a 200 answer, or why there was none.
fn check(args: &HealthArgs) -> Result<String> {
    let url = parse_admin_url(&args.admin).map_err(anyhow::Error::msg).context("--admin")?;
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let target = format!("http://{}{path}", url.authority());
    let response = get(&url, path, Instant::now() + DEADLINE).with_context(|| format!("GET {target}"))?;
    let body = String::from_utf8_lossy(&response.body).trim_end().to_string();
    if response.status != 200 {
        bail!("GET {target}: {}: {body}", response.status_line);
    }
    Ok(body)
}

#[derive(Debug)]
struct Response {
    status: u16,
    /// `503 Service Unavailable`, for the message.
    status_line: String,
    body: Vec<u8>,
}

/// Time left before `deadline`, or an error naming what ran out of it.
fn left(deadline: Instant, doing: &str) -> Result<Duration> {
    let now = Instant::now();
    match deadline.checked_duration_since(now) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => bail!("timed out while {doing} (the check's deadline is {} s)", DEADLINE.as_secs()),
    }
}

fn get(url: &AdminUrl, path: &str, deadline: Instant) -> Result<Response> {
    // Name resolution cannot be given a timeout through std; the health
    // check runs against 127.0.0.1, where there is nothing to resolve.
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .or_else(|_| url.authority().to_socket_addrs())
        .with_context(|| format!("resolve {}", url.authority()))?
        .collect();
    if addrs.is_empty() {
        bail!("{} resolves to no address", url.authority());
    }
    let mut stream = None;
    let mut last_error = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, left(deadline, "connecting")?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(anyhow::Error::new(e).context(format!("connect to {addr}"))),
        }
    }
    let mut stream = match stream {
        Some(s) => s,
        None => return Err(last_error.expect("at least one address was tried")),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keel-health\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n",
        url.authority()
    );
    stream.set_write_timeout(Some(left(deadline, "sending the request")?))?;
    stream.write_all(request.as_bytes()).context("send the request")?;

    // `Connection: close`: the server closes after the response, so read to
    // EOF (or to the body's length, whichever comes first).
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left(deadline, "waiting for the response")?))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_RESPONSE_BYTES {
                    bail!("the response is longer than {MAX_RESPONSE_BYTES} bytes; is this keel's admin port?");
                }
                if parse_response(&raw).is_ok_and(|r| r.complete) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                bail!("timed out while waiting for the response (the check's deadline is {} s)", DEADLINE.as_secs())
            }
            Err(e) => return Err(anyhow::Error::new(e).context("read the response")),
        }
    }
    let parsed = parse_response(&raw)?;
    if !parsed.complete {
        bail!("the connection closed before the whole response arrived ({} bytes)", raw.len());
    }
    Ok(parsed.response)
}

struct Parsed {
    response: Response,
    /// Whether the body is all there (by Content-Length or chunked framing);
    /// without either, only EOF completes it.
    complete: bool,
}

/// Parses what has arrived so far: status line, headers, and the body framed
/// by Content-Length or chunked transfer encoding (or up to EOF).
fn parse_response(raw: &[u8]) -> Result<Parsed> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        if raw.is_empty() {
            bail!("the server closed the connection without answering");
        }
        bail!("no complete HTTP header in the response: {:?}", String::from_utf8_lossy(raw));
    };
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        bail!("not an HTTP/1 response: {status_line:?}");
    }
    let status: u16 = code
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in the status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().with_context(|| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let (body, complete) = if chunked {
        dechunk(rest)
    } else if let Some(n) = content_length {
        (rest[..n.min(rest.len())].to_vec(), rest.len() >= n)
    } else {
        (rest.to_vec(), false)
    };
    let status_line = format!("{status} {reason}").trim_end().to_string();
    Ok(Parsed { response: Response { status, status_line, body }, complete })
}

/// Decodes a chunked body as far as it has arrived; `true` once the last
/// (zero-length) chunk was seen.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { return (body, false) };
        let size_field = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_field.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else { return (body, false) };
        if size == 0 {
            return (body, true);
        }
        let data = &rest[eol + 2..];
        if data.len() < size + 2 {
            body.extend_from_slice(&data[..size.min(data.len())]);
            return (body, false);
        }
        body.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> (String, u16) {
        let u = parse_admin_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (u.host, u.port)
    }

    #[test]
    fn admin_urls_parse_with_or_without_scheme_and_trailing_slash() {
        assert_eq!(ok("http://127.0.0.1:9191"), ("127.0.0.1".into(), 9191));
        assert_eq!(ok("http://127.0.0.1:9191/"), ("127.0.0.1".into(), 9191));
        assert_eq!(ok("HTTP://node-1:9191"), ("node-1".into(), 9191));
        assert_eq!(ok("localhost:9192"), ("localhost".into(), 9192));
        assert_eq!(ok(" http://[::1]:9193/ "), ("[::1]".into(), 9193));
        assert_eq!(ok("http://example.org"), ("example.org".into(), 80));
        assert_eq!(ok("http://[::1]"), ("[::1]".into(), 80));
    }

    #[test]
    fn other_schemes_paths_and_bad_ports_are_refused_with_the_reason() {
        for (url, reason) in [
            ("https://127.0.0.1:9191", "unsupported scheme \"https\""),
            ("ftp://h:1", "unsupported scheme"),
            ("http://127.0.0.1:9191/healthz", "without a path"),
            ("http://h:1?x=1", "without a path"),
            ("http://user@h:1", "user info"),
            ("http://", "no host"),
            ("http://:9191", "no host"),
            ("http://h:0", "not a port"),
            ("http://h:70000", "not a port"),
            ("http://h:", "not a port"),
            ("http://::1:9191", "brackets"),
            ("http://[::1:9191", "unclosed"),
            ("http://[zz]:1", "not an IPv6 address"),
        ] {
            let err = parse_admin_url(url).expect_err(url);
            assert!(err.contains(reason), "{url}: {err:?} does not mention {reason:?}");
        }
    }

    #[test]
    fn responses_are_framed_by_length_chunks_or_eof() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcd").expect("parses");
        assert!(r.complete);
        assert_eq!((r.response.status, r.response.body.as_slice()), (200, &b"abcd"[..]));
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nabc").expect("parses");
        assert!(!r.complete);
        assert_eq!(r.response.status_line, "503 Service Unavailable");
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .expect("parses");
        assert!(r.complete);
        assert_eq!(r.response.body, b"abcde");
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nuntil eof").expect("parses");
        assert!(!r.complete);
        assert_eq!(r.response.body, b"until eof");
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"").is_err());
    }

    #[test]
    fn a_closed_port_fails_within_the_deadline() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let url = AdminUrl { host: "127.0.0.1".into(), port };
        let started = Instant::now();
        assert!(get(&url, "/healthz", Instant::now() + DEADLINE).is_err());
        assert!(started.elapsed() < DEADLINE + Duration::from_millis(500));
    }

    #[test]
    fn a_silent_server_times_out_after_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = AdminUrl { host: "127.0.0.1".into(), port: listener.local_addr().expect("addr").port() };
        let started = Instant::now();
        let err = get(&url, "/healthz", Instant::now() + Duration::from_millis(300)).expect_err("no answer");
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }
}
