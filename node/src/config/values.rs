//! Parsers of the values that more than one key takes; each returns the
//! reason a value is refused, and the caller names the key and the source.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Whether `pem` holds a private key rustls can use.
pub(super) fn check_private_key(pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(_) => Ok(()),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            Err("holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)".to_string())
        }
        Err(e) => Err(format!("not a valid PEM private key: {e}")),
    }
}

pub(super) fn parse_node_id(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(0) => Err("node ids start at 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a node id, a whole number of at least 1".to_string()),
    }
}

pub(super) fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    v.parse::<SocketAddr>().map_err(|_| "expected ip:port, e.g. 127.0.0.1:9091 or [::]:9091".to_string())
}

/// -1 or at least 1; `minus_one` says what -1 means.
pub(super) fn parse_retention(v: &str, minus_one: &str) -> Result<i64, String> {
    match v.parse::<i64>() {
        Ok(n) if n == -1 || n >= 1 => Ok(n),
        _ => Err(format!("expected -1 ({minus_one}) or a whole number of at least 1")),
    }
}

/// `true` or `false`, spelled so.
pub(super) fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

/// A `host:port` others can dial, normalised (IP literals in their canonical
/// form, host names lower-cased) so two spellings of one address compare equal.
pub(super) fn parse_host_port(v: &str) -> Result<String, String> {
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err("expected host:port".to_string());
    };
    let port: u16 = port.parse().map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
    let ip: Option<IpAddr> = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| format!("{host:?} is missing its closing `]`"))?;
        if inner.contains('%') {
            // A link-local address with its zone (`[fe80::1%2]`): `grpc.listen`
            // takes one, and the default `grpc.advertised` is its text, so
            // refusing it here made `keel config check` print a configuration
            // that did not read back (found by the `config` fuzz target).
            let addr = format!("[{inner}]:{port}")
                .parse::<SocketAddrV6>()
                .map_err(|_| format!("{inner:?} is not an IPv6 address with a numeric zone"))?;
            if addr.ip().is_unspecified() {
                return Err(format!("{} is the unspecified address, which others cannot dial", addr.ip()));
            }
            return Ok(addr.to_string());
        }
        Some(IpAddr::V6(inner.parse::<Ipv6Addr>().map_err(|_| format!("{inner:?} is not an IPv6 address"))?))
    } else if host.contains(':') {
        return Err(format!("an IPv6 address needs brackets, e.g. [{host}]:{port}"));
    } else {
        host.parse::<IpAddr>().ok()
    };
    match ip {
        Some(ip) if ip.is_unspecified() => Err(format!(
            "{ip} is the unspecified address, which others cannot dial; advertise an address they can reach"
        )),
        Some(ip) => Ok(SocketAddr::new(ip, port).to_string()),
        None => {
            let valid_name =
                !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
            if !valid_name {
                return Err(format!("{host:?} is not a host name or IP address"));
            }
            Ok(format!("{}:{port}", host.to_ascii_lowercase()))
        }
    }
}

/// `1@host:port,2@host:port,...`: ids at least 1, each once.
pub(super) fn parse_peers(v: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    if v.is_empty() {
        return Err("expected at least one id@host:port".to_string());
    }
    for entry in v.split(',').map(str::trim) {
        let Some((id, addr)) = entry.split_once('@') else {
            return Err(format!("entry {entry:?} is not id@host:port"));
        };
        let id = parse_node_id(id.trim()).map_err(|r| format!("entry {entry:?}: {r}"))?;
        let addr = parse_host_port(addr.trim()).map_err(|r| format!("entry {entry:?}: {r}"))?;
        if peers.insert(id, addr).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    Ok(peers)
}
