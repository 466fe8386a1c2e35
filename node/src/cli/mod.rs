//! Client commands: topics, produce, consume, groups, lookups, cluster, and
//! the health check (`keel health`, which talks to the admin HTTP port).
//!
//! Each command is a thin layer over `keel-client` (one file per command);
//! this module holds what they share: `--cluster`, the output format of a
//! record, and small parsers. Errors are returned as `anyhow` errors whose
//! text is the node's own message (it names what was wrong); `main` prints
//! them and exits non-zero.

use std::io::Write;

use anyhow::{Context, Result};
use base64::Engine;
use clap::{Args, ValueEnum};
use keel_client::{Client, ClientOptions, DEV_CLUSTER, FetchedRecord, TlsOptions};
use serde_json::{Map, Value, json};

mod cluster;
mod consume;
mod group;
mod health;
mod lookup;
mod produce;
mod topic;

pub use cluster::{ClusterArgs, cluster};
pub use consume::{ConsumeArgs, consume};
pub use group::{GroupArgs, group};
pub use health::{HealthArgs, health};
pub use lookup::{LookupArgs, lookup};
pub use produce::{ProduceArgs, produce};
pub use topic::{TopicArgs, topic};

/// Environment variable read when `--cluster` is not given.
pub const CLUSTER_ENV: &str = "KEEL_CLUSTER";
/// Read when `--admin-token` is not given: the same variable that sets a
/// node's `admin.token`, since it is the same secret.
pub const TOKEN_ENV: &str = "KEEL_ADMIN_TOKEN";
/// Read when `--tls-ca` is not given: the same variable that sets a node's
/// `tls.ca`, since clients verify the nodes against that same CA.
pub const TLS_CA_ENV: &str = "KEEL_TLS_CA";

/// `--cluster`, taken by every client command.
#[derive(Debug, Clone, Args)]
pub struct ClusterOpt {
    /// Comma-separated node addresses (HOST:PORT). Any reachable node will
    /// do: the client finds the leader itself. When absent, the environment
    /// variable KEEL_CLUSTER, else the `keel dev` nodes
    /// (127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093)
    #[arg(long = "cluster", value_name = "HOST:PORT,...", global = true)]
    pub cluster: Option<String>,
    /// Give up on a request after this many seconds of retrying (leader
    /// elections, unreachable nodes)
    #[arg(long, value_name = "SECONDS", default_value_t = 30, global = true,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Send `authorization: Bearer TOKEN` (the nodes' admin.token): needed
    /// for topic and membership changes on a cluster that sets one. When
    /// absent, the environment variable KEEL_ADMIN_TOKEN
    #[arg(long, value_name = "TOKEN", global = true)]
    pub admin_token: Option<String>,
    /// Speak TLS to the nodes and verify them against this PEM CA
    /// certificate (the nodes' tls.ca). When absent, the environment
    /// variable KEEL_TLS_CA; with neither, plaintext
    #[arg(long, value_name = "FILE", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl ClusterOpt {
    /// The addresses: the flag, else KEEL_CLUSTER, else the dev cluster.
    pub fn addrs(&self) -> Vec<String> {
        let from_env = std::env::var(CLUSTER_ENV).ok().filter(|v| !v.trim().is_empty());
        let list = self.cluster.clone().or(from_env).unwrap_or_else(|| DEV_CLUSTER.to_string());
        Client::parse_addrs(&list)
    }

    pub fn client(&self) -> Result<Client> {
        let addrs = self.addrs();
        let options = self.options(std::time::Duration::from_secs(self.timeout))?;
        Client::with_options(addrs.clone(), options).with_context(|| format!("use the cluster at {}", addrs.join(",")))
    }

    /// Client options with `call_timeout`, the token and TLS: the flags,
    /// else their environment variables.
    pub fn options(&self, call_timeout: std::time::Duration) -> Result<ClientOptions> {
        self.options_with_env(call_timeout, |name| std::env::var_os(name))
    }

    fn options_with_env(
        &self,
        call_timeout: std::time::Duration,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<ClientOptions> {
        let set = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty());
        let token = match (&self.admin_token, set(env(TOKEN_ENV))) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(v)) => Some(
                v.into_string().map_err(|_| anyhow::anyhow!("environment variable {TOKEN_ENV} is not valid UTF-8"))?,
            ),
            (None, None) => None,
        };
        let tls = match self.tls_ca.clone().or_else(|| set(env(TLS_CA_ENV)).map(Into::into)) {
            Some(path) => Some(
                TlsOptions::from_ca_file(&path)
                    .with_context(|| format!("--tls-ca (or {TLS_CA_ENV}) = {}", path.display()))?,
            ),
            None => None,
        };
        Ok(ClientOptions { call_timeout, tls, token, ..ClientOptions::default() })
    }
}

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Each value, then a newline
    Text,
    /// One JSON object per line: partition, offset, timestamp_ms, key,
    /// value, tag, headers (non-UTF-8 bytes as base64, marked
    /// "encoding":"base64")
    Json,
}

/// One record as a JSON object. Bytes that are UTF-8 are strings; others
/// are base64 with an `encoding` (value), `key_encoding` (key) or per-header
/// `encoding` field saying so.
pub fn record_json(partition: u32, r: &FetchedRecord) -> Value {
    let mut o = Map::new();
    o.insert("partition".into(), json!(partition));
    o.insert("offset".into(), json!(r.offset));
    o.insert("timestamp_ms".into(), json!(r.timestamp_ms));
    if r.key.is_empty() {
        o.insert("key".into(), Value::Null);
    } else {
        let (key, base64) = text_or_base64(&r.key);
        o.insert("key".into(), json!(key));
        if base64 {
            o.insert("key_encoding".into(), json!("base64"));
        }
    }
    let (value, base64) = text_or_base64(&r.value);
    o.insert("value".into(), json!(value));
    if base64 {
        o.insert("encoding".into(), json!("base64"));
    }
    o.insert("tag".into(), if r.tag.is_empty() { Value::Null } else { json!(r.tag) });
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|h| {
            let (value, base64) = text_or_base64(&h.value);
            if base64 {
                json!({ "key": h.key, "value": value, "encoding": "base64" })
            } else {
                json!({ "key": h.key, "value": value })
            }
        })
        .collect();
    o.insert("headers".into(), Value::Array(headers));
    Value::Object(o)
}

fn text_or_base64(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(bytes), true),
    }
}

/// Writes one record in `format`.
pub fn write_record(out: &mut impl Write, format: Format, partition: u32, r: &FetchedRecord) -> std::io::Result<()> {
    match format {
        Format::Text => {
            out.write_all(&r.value)?;
            out.write_all(b"\n")
        }
        Format::Json => {
            serde_json::to_writer(&mut *out, &record_json(partition, r))?;
            out.write_all(b"\n")
        }
    }
}

/// `k=v` (the value may hold more `=`).
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Checks a partition number against the topic's count.
pub fn check_partition(topic: &str, partition: u32, partitions: u32) -> Result<()> {
    anyhow::ensure!(
        partition < partitions,
        "topic {topic} has {partitions} partition(s) (0..={}); there is no partition {partition}",
        partitions.saturating_sub(1)
    );
    Ok(())
}

/// Numbers as compact ranges: `3, 7, 11-20`, cut after `max` ranges.
pub fn ranges(numbers: &[u64], max: usize) -> String {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for n in sorted {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => runs.push((n, n)),
        }
    }
    let mut parts: Vec<String> =
        runs.iter().take(max).map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    if runs.len() > max {
        parts.push(format!("… ({} more ranges)", runs.len() - max));
    }
    parts.join(", ")
}

/// Whether an I/O error means the reader of stdout went away (`| head`):
/// then the command stops quietly.
pub fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use keel_client::Header;

    use super::*;

    #[test]
    fn json_records_keep_text_as_text_and_mark_base64() {
        let r = FetchedRecord {
            offset: 5,
            timestamp_ms: 1_700_000_000_000,
            key: Bytes::from_static(b"k1"),
            value: Bytes::from_static(&[0xff, 0x00, 0x10]),
            tag: String::new(),
            headers: vec![Header::new("trace", "abc"), Header::new("bin", Bytes::from_static(&[0xc3]))],
        };
        let v = record_json(2, &r);
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 5);
        assert_eq!(v["key"], "k1");
        assert!(v.get("key_encoding").is_none());
        assert_eq!(v["value"], "/wAQ");
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["tag"], Value::Null);
        assert_eq!(v["headers"][0], json!({"key": "trace", "value": "abc"}));
        assert_eq!(v["headers"][1]["encoding"], "base64");
        let text = FetchedRecord { value: Bytes::from_static("héllo".as_bytes()), ..r };
        let v = record_json(0, &text);
        assert_eq!(v["value"], "héllo");
        assert!(v.get("encoding").is_none());
    }

    #[test]
    fn ranges_compress_and_cut() {
        assert_eq!(ranges(&[11, 3, 7, 12, 13], 10), "3, 7, 11-13");
        assert_eq!(ranges(&[1, 3, 5, 7], 2), "1, 3, … (2 more ranges)");
        assert_eq!(ranges(&[], 2), "");
    }

    #[test]
    fn headers_split_at_the_first_equals_sign() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_header("a="), Ok(("a".into(), String::new())));
        assert!(parse_header("=b").is_err());
        assert!(parse_header("ab").is_err());
    }

    #[test]
    fn the_cluster_flag_wins_over_the_default() {
        let opt = ClusterOpt { cluster: Some(" a:1 , b:2,".into()), timeout: 30, admin_token: None, tls_ca: None };
        assert_eq!(opt.addrs(), vec!["a:1".to_string(), "b:2".to_string()]);
    }

    #[test]
    fn token_and_ca_come_from_the_flags_else_the_environment() {
        let none = ClusterOpt { cluster: None, timeout: 30, admin_token: None, tls_ca: None };
        let d = std::time::Duration::from_secs(3);
        // Phase: nothing set: plaintext, no token.
        let o = none.options_with_env(d, |_| None).expect("valid");
        assert!(o.token.is_none() && o.tls.is_none());
        assert_eq!(o.call_timeout, d);
        // Phase: the variables fill in; an empty one counts as unset.
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").expect("write");
        let env = |name: &str| match name {
            TOKEN_ENV => Some("from-env".into()),
            TLS_CA_ENV => Some(ca.clone().into_os_string()),
            _ => None,
        };
        let o = none.options_with_env(d, env).expect("valid");
        assert_eq!(o.token.as_deref(), Some("from-env"));
        assert!(o.tls.is_some());
        let o = none.options_with_env(d, |_| Some("".into())).expect("empty variables are unset");
        assert!(o.token.is_none() && o.tls.is_none());
        // Phase: the flag wins over the variable.
        let flagged = ClusterOpt { admin_token: Some("from-flag".into()), ..none.clone() };
        assert_eq!(flagged.options_with_env(d, env).expect("valid").token.as_deref(), Some("from-flag"));
        // Phase: a CA file that is missing or holds no certificate is named.
        let bad = ClusterOpt { tls_ca: Some(dir.path().join("absent.pem")), ..none.clone() };
        let err = format!("{:#}", bad.options_with_env(d, |_| None).expect_err("missing file"));
        assert!(err.contains("--tls-ca") && err.contains("absent.pem"), "{err}");
        std::fs::write(&ca, "not pem").expect("write");
        let err = format!("{:#}", none.options_with_env(d, env).expect_err("not PEM"));
        assert!(err.contains("KEEL_TLS_CA") && err.contains("no PEM CERTIFICATE"), "{err}");
    }
}
