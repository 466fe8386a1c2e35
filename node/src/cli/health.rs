//! `keel health --admin URL [--ready]`: one GET of a node's `/healthz` (or
//! `/readyz`), exit 0 on 200 and 1 otherwise.
//!
//! This is the container image's health check: the image is `FROM scratch`,
//! with no shell and no curl, so the binary checks itself. The request goes
//! through `ureq`, a small blocking HTTP/1.1 client (the same one the chaos
//! harness and the tests use), rather than the tokio/hyper stack: a health
//! check runs every few seconds in a fresh process and must stay small, and
//! ureq's global timeout holds one hard deadline over the whole exchange
//! (resolve, connect, request, response).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

/// The whole exchange (resolve, connect, request, response) must fit in this.
const DEADLINE: Duration = Duration::from_secs(2);
/// Health answers are a few dozen bytes; anything longer is cut here so a
/// wrong server cannot make the check buffer without bound.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

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
    let response = get(&url, path, DEADLINE).with_context(|| format!("GET {target}"))?;
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

/// One GET, the whole exchange within `deadline`; any status is a response
/// (the caller judges it), and only a failure to get one is an error.
fn get(url: &AdminUrl, path: &str, deadline: Duration) -> Result<Response> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(deadline))
            .http_status_as_error(false)
            .user_agent("keel-health")
            .build(),
    );
    let target = format!("http://{}{path}", url.authority());
    let timed_out = || anyhow!("timed out (the check's deadline is {} ms)", deadline.as_millis());
    let mut response = match agent.get(&target).header("Accept", "application/json").call() {
        Ok(response) => response,
        Err(ureq::Error::Timeout(_)) => return Err(timed_out()),
        Err(e) => return Err(anyhow::Error::new(e)),
    };
    let status = response.status();
    let body = match response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec() {
        Ok(body) => body,
        Err(ureq::Error::Timeout(_)) => return Err(timed_out()),
        Err(ureq::Error::BodyExceedsLimit(_)) => {
            bail!("the response is longer than {MAX_RESPONSE_BYTES} bytes; is this keel's admin port?")
        }
        Err(e) => return Err(anyhow::Error::new(e).context("read the response")),
    };
    let status_line = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")).trim_end().to_string();
    Ok(Response { status: status.as_u16(), status_line, body })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

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

    /// A server that answers one connection with `raw` and closes.
    fn answering(raw: &'static [u8]) -> AdminUrl {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            let _ = s.write_all(raw);
        });
        AdminUrl { host: "127.0.0.1".into(), port }
    }

    #[test]
    fn responses_are_read_whole_whatever_their_framing_and_status() {
        let r = get(&answering(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nabcd"), "/healthz", DEADLINE)
            .expect("answered");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcd"[..]));
        let raw =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = get(&answering(raw), "/readyz", DEADLINE).expect("answered");
        assert_eq!((r.status_line.as_str(), r.body.as_slice()), ("503 Service Unavailable", &b"abcde"[..]));
        assert!(get(&answering(b"SSH-2.0-OpenSSH\r\n\r\n"), "/healthz", DEADLINE).is_err());
        assert!(get(&answering(b""), "/healthz", DEADLINE).is_err());
    }

    #[test]
    fn a_closed_port_fails_within_the_deadline() {
        // Bind then drop, so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let url = AdminUrl { host: "127.0.0.1".into(), port };
        let started = Instant::now();
        assert!(get(&url, "/healthz", DEADLINE).is_err());
        assert!(started.elapsed() < DEADLINE + Duration::from_millis(500));
    }

    #[test]
    fn a_silent_server_times_out_after_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = AdminUrl { host: "127.0.0.1".into(), port: listener.local_addr().expect("addr").port() };
        let started = Instant::now();
        let err = get(&url, "/healthz", Duration::from_millis(300)).expect_err("no answer");
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }
}
