//! A minimal HTTP/1.1 GET for the nodes' admin API (status and digests).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(5);

/// GET `path` from `addr` (`host:port`): the JSON body of a 200 answer.
pub fn get_json(addr: &str, path: &str) -> Result<serde_json::Value> {
    let sock = addr.to_socket_addrs()?.next().with_context(|| format!("{addr} resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(|| format!("read GET {path} from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("GET {path} from {addr}: no header end"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        bail!("GET {path} from {addr}: HTTP {status}: {body}");
    }
    // Bodies are sent whole (Content-Length) by the admin server; a chunked
    // one would not parse and is reported as such.
    serde_json::from_str(body).with_context(|| format!("GET {path} from {addr}: not JSON: {body}"))
}
