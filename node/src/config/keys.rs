//! The one table of configuration keys.
//!
//! Every key keel reads is one [`Key`] row in [`KEYS`]: its name, the kind of
//! value (type and unit), its default, which crate consumes it, its
//! documentation, and the two functions that parse it into the
//! configuration being built and print it back. Everything else is derived
//! from the table:
//!
//! - the `keel node` flags (`--flush-disk-type`, [`KeyFlags`]) and the
//!   `KEEL_*` environment variables ([`env_var_name`]);
//! - the properties parser's key check and the defaults ([`Builder::new`]
//!   applies each row's default through the row's own parser);
//! - `keel config check`'s output ([`super::effective`]);
//! - the keys `keel dev` writes itself ([`dev_managed`]);
//! - the table in `docs/configuration.md` ([`markdown_table`]; a test fails
//!   when the page and the table differ, printing the table to paste).
//!
//! Adding a key is one row here plus the code that uses its value.
//! `keel_raft_log` takes a typed [`StoreConfig`](keel_raft_log::StoreConfig)
//! and knows no key names: the store's rows set its fields.

use std::fmt::Write as _;

use clap::{Arg, ArgAction, ArgMatches, Command};
use keel_raft_log::Preallocate;
use keel_raft_log::format::{MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};

use super::values::{parse_bool, parse_host_port, parse_listen, parse_node_id, parse_peers, parse_retention};
use super::{Builder, NodeConfig, Origin, Setting};

/// One configuration key.
pub struct Key {
    /// `flush.disk.type`: the properties key; the flag and the environment
    /// variable are derived from it.
    pub name: &'static str,
    pub kind: Kind,
    pub default: DefaultValue,
    pub consumer: Consumer,
    /// One line, for `keel node --help`.
    pub summary: &'static str,
    /// The docs page's "meaning" column (Markdown).
    pub doc: &'static str,
    /// `keel dev` writes it into every node's file itself (ports, peers,
    /// directories must agree across the nodes), so `--set` and `KEEL_*`
    /// variables may not change it there.
    pub dev_managed: bool,
    /// Its value never appears in an error or in `keel config check`.
    pub secret: bool,
    /// Parse the (trimmed) text into the configuration being built; the
    /// error is the reason, without the key or the value (the caller adds
    /// both, and where the value came from).
    pub(super) set: fn(&mut Builder, &str) -> Result<(), String>,
    /// The effective value as text that `set` reads back.
    pub(super) show: fn(&NodeConfig) -> String,
}

/// The type of a key's value, with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Path,
    File,
    Bytes,
    Millis,
    Count,
    Bool,
    /// One of the listed words.
    Choice(&'static [&'static str]),
    NodeId,
    /// `ip:port` to bind.
    Listen,
    /// `host:port` others dial.
    HostPort,
    /// `id@host:port,...`.
    Peers,
    Token,
}

impl Kind {
    /// The docs page's "type" column.
    pub fn describe(self) -> String {
        match self {
            Kind::Path => "directory".into(),
            Kind::File => "file path".into(),
            Kind::Bytes => "bytes".into(),
            Kind::Millis => "milliseconds".into(),
            Kind::Count => "count".into(),
            Kind::Bool => "`true` / `false`".into(),
            Kind::Choice(words) => words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(" / "),
            Kind::NodeId => "node id".into(),
            Kind::Listen => "`ip:port`".into(),
            Kind::HostPort => "`host:port`".into(),
            Kind::Peers => "`id@host:port,...`".into(),
            Kind::Token => "token".into(),
        }
    }

    /// The flag's value name in `--help`.
    fn value_name(self) -> &'static str {
        match self {
            Kind::Path => "DIR",
            Kind::File => "FILE",
            Kind::Bytes => "BYTES",
            Kind::Millis => "MS",
            Kind::Count => "N",
            Kind::Bool => "BOOL",
            Kind::Choice(_) => "WORD",
            Kind::NodeId => "ID",
            Kind::Listen => "ADDR",
            Kind::HostPort => "HOST:PORT",
            Kind::Peers => "LIST",
            Kind::Token => "TOKEN",
        }
    }

    fn is_number(self) -> bool {
        matches!(self, Kind::Bytes | Kind::Millis | Kind::Count | Kind::NodeId)
    }
}

/// A key's value when no source sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// This text, parsed by the key's own `set`.
    Value(&'static str),
    /// Computed from other keys once all are known (Markdown, for the docs).
    Derived(&'static str),
    /// Unset: the feature is off.
    None,
}

/// The crate whose code reads the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// `keel-raft-log`, through [`keel_raft_log::StoreConfig`].
    Store,
    /// `keel-node`, through [`NodeConfig`].
    Node,
}

impl Consumer {
    fn crate_name(self) -> &'static str {
        match self {
            Consumer::Store => "keel-raft-log",
            Consumer::Node => "keel-node",
        }
    }
}

const LOG_COLORS: &[&str] = &["auto", "always", "never"];
const POLICIES: &[&str] = &["SYNC_FLUSH", "BATCH_FLUSH", "ASYNC_FLUSH"];
const PREALLOCATE: &[&str] = &["fallocate", "zero"];

/// A positive whole number.
fn positive(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a positive whole number".into()),
    }
}

/// An optional path: empty means unset.
fn optional_path(v: &str) -> Option<std::path::PathBuf> {
    (!v.is_empty()).then(|| v.into())
}

/// Every key, in the order the docs list them.
pub const KEYS: &[Key] = &[
    Key {
        name: "store.path.commitlog",
        kind: Kind::Path,
        default: DefaultValue::Value("./keel-data"),
        consumer: Consumer::Store,
        summary: "data directory",
        doc: "data directory (the Raft log's segments)",
        dev_managed: true,
        secret: false,
        set: |b, v| {
            if v.is_empty() {
                return Err("must not be empty".into());
            }
            b.config.store.dir = v.into();
            Ok(())
        },
        show: |c| c.store.dir.display().to_string(),
    },
    Key {
        name: "segment.bytes",
        kind: Kind::Bytes,
        default: DefaultValue::Value("67108864"),
        consumer: Consumer::Store,
        summary: "size each segment is preallocated to",
        doc: "size each segment is preallocated to (4096 to 1073741824)",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            let n = positive(v)?;
            if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&n) {
                return Err(format!("must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"));
            }
            b.config.store.segment_bytes = n;
            Ok(())
        },
        show: |c| c.store.segment_bytes.to_string(),
    },
    Key {
        name: "segment.preallocate",
        kind: Kind::Choice(PREALLOCATE),
        default: DefaultValue::Value("fallocate"),
        consumer: Consumer::Store,
        summary: "fallocate (unwritten extents) or zero (write zeros)",
        doc: "`fallocate` (reserve unwritten extents: the better p99 under load) or `zero` (write zeros: cheaper \
              fdatasync on an idle ext4 disk); see ARCHITECTURE.md, \"Preallocation\"",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.store.preallocate = match v {
                "zero" => Preallocate::Zero,
                "fallocate" => Preallocate::Fallocate,
                _ => return Err("expected zero or fallocate".into()),
            };
            Ok(())
        },
        show: |c| c.store.preallocate.as_str().to_string(),
    },
    Key {
        name: "segment.preheat",
        kind: Kind::Bool,
        default: DefaultValue::Value("false"),
        consumer: Consumer::Store,
        summary: "read each new segment once so it is cached",
        doc: "read each new segment once so its pages are cached",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.store.preheat = parse_bool(v)?;
            Ok(())
        },
        show: |c| c.store.preheat.to_string(),
    },
    Key {
        name: "store.reserve.bytes",
        kind: Kind::Bytes,
        default: DefaultValue::Derived("max(2 × `segment.bytes`, 64 MiB)"),
        consumer: Consumer::Node,
        summary: "free space below which produce is refused; 0 is off",
        doc: "free space the volume holding the log must keep: below it the leader refuses produce and topic \
              creation (RESOURCE_EXHAUSTED) until space is freed, so ENOSPC never strikes a segment roll or a \
              meta, index or checkpoint write; 0 turns the check off",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            let n = v.parse::<u64>().map_err(|_| "expected a whole number of bytes, 0 or more (0 is off)")?;
            b.reserve_bytes = Some(n);
            Ok(())
        },
        show: |c| c.reserve_bytes.to_string(),
    },
    Key {
        name: "segment.cached.sealed",
        kind: Kind::Count,
        default: DefaultValue::Value("2"),
        consumer: Consumer::Store,
        summary: "newest sealed segments kept in the page cache; -1 leaves it to the kernel",
        doc: "how many of the newest sealed segments keep their pages in the page cache; older ones give theirs \
              back after each roll (reads then come from disk); -1 leaves it to the kernel",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.store.cached_sealed = match v.parse::<i64>() {
                Ok(-1) => None,
                Ok(n) if n >= 0 => Some(usize::try_from(n).map_err(|_| "too large")?),
                _ => return Err("expected a count ≥ 0, or -1 to keep every segment".into()),
            };
            Ok(())
        },
        show: |c| c.store.cached_sealed.map_or_else(|| "-1".to_string(), |n| n.to_string()),
    },
    Key {
        name: "flush.disk.type",
        kind: Kind::Choice(POLICIES),
        default: DefaultValue::Value("SYNC_FLUSH"),
        consumer: Consumer::Store,
        summary: "SYNC_FLUSH, BATCH_FLUSH or ASYNC_FLUSH",
        doc: "`SYNC_FLUSH`, `BATCH_FLUSH` or `ASYNC_FLUSH`",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.store.flush.policy = v.parse().map_err(|_| "expected SYNC_FLUSH, BATCH_FLUSH or ASYNC_FLUSH")?;
            Ok(())
        },
        show: |c| c.store.flush.policy.to_string(),
    },
    Key {
        name: "flush.batch.size",
        kind: Kind::Count,
        default: DefaultValue::Value("100"),
        consumer: Consumer::Store,
        summary: "BATCH_FLUSH: fsync once this many messages are unsynced",
        doc: "BATCH_FLUSH: every node fsyncs once this many messages are unsynced (or `flush.interval.ms` after \
              the oldest); an append, and so an ack, waits for its batch's fsync",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.store.flush.batch_size = positive(v)?;
            Ok(())
        },
        show: |c| c.store.flush.batch_size.to_string(),
    },
    Key {
        name: "flush.interval.ms",
        kind: Kind::Millis,
        default: DefaultValue::Value("100"),
        consumer: Consumer::Store,
        summary: "BATCH_FLUSH / ASYNC_FLUSH: fsync at least this often",
        doc: "BATCH_FLUSH / ASYNC_FLUSH: fsync at least this often",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.store.flush.interval_ms = positive(v)?;
            Ok(())
        },
        show: |c| c.store.flush.interval_ms.to_string(),
    },
    Key {
        name: "flush.commitlog.interval",
        kind: Kind::Count,
        default: DefaultValue::Value("1000"),
        consumer: Consumer::Store,
        summary: "ASYNC_FLUSH: fsync after this many unsynced entries",
        doc: "ASYNC_FLUSH: fsync after this many unsynced entries",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.store.flush.commitlog_interval = positive(v)?;
            Ok(())
        },
        show: |c| c.store.flush.commitlog_interval.to_string(),
    },
    Key {
        name: "flush.commitlog.timeout",
        kind: Kind::Millis,
        default: DefaultValue::Value("5000"),
        consumer: Consumer::Store,
        summary: "how long a producer waits for durability",
        doc: "how long a producer waits for durability before \"outcome unknown\"",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.store.flush.commitlog_timeout_ms = positive(v)?;
            Ok(())
        },
        show: |c| c.store.flush.commitlog_timeout_ms.to_string(),
    },
    Key {
        name: "node.id",
        kind: Kind::NodeId,
        default: DefaultValue::Value("1"),
        consumer: Consumer::Node,
        summary: "this node's Raft id, at least 1",
        doc: "this node's Raft id, at least 1",
        dev_managed: true,
        secret: false,
        set: |b, v| {
            b.config.node_id = parse_node_id(v)?;
            Ok(())
        },
        show: |c| c.node_id.to_string(),
    },
    Key {
        name: "grpc.listen",
        kind: Kind::Listen,
        default: DefaultValue::Value("127.0.0.1:9091"),
        consumer: Consumer::Node,
        summary: "ip:port the gRPC port (clients and peers) binds",
        doc: "`ip:port` the gRPC port (clients and peers) binds",
        dev_managed: true,
        secret: false,
        set: |b, v| {
            b.config.grpc_listen = parse_listen(v)?;
            Ok(())
        },
        show: |c| c.grpc_listen.to_string(),
    },
    Key {
        name: "grpc.advertised",
        kind: Kind::HostPort,
        default: DefaultValue::Derived("`grpc.listen`"),
        consumer: Consumer::Node,
        summary: "host:port other nodes and clients dial",
        doc: "`host:port` other nodes and clients dial; not `0.0.0.0` or `[::]`",
        dev_managed: true,
        secret: false,
        set: |b, v| {
            b.grpc_advertised = Some(parse_host_port(v)?);
            Ok(())
        },
        show: |c| c.grpc_advertised.clone(),
    },
    Key {
        name: "admin.listen",
        kind: Kind::Listen,
        default: DefaultValue::Value("127.0.0.1:9191"),
        consumer: Consumer::Node,
        summary: "ip:port of the admin HTTP API",
        doc: "`ip:port` of the admin HTTP API",
        dev_managed: true,
        secret: false,
        set: |b, v| {
            b.config.admin_listen = parse_listen(v)?;
            Ok(())
        },
        show: |c| c.admin_listen.to_string(),
    },
    Key {
        name: "peers",
        kind: Kind::Peers,
        default: DefaultValue::Derived("`{node.id}@{grpc.advertised}`"),
        consumer: Consumer::Node,
        summary: "voters of a fresh cluster, 1@host:port,2@host:port,...",
        doc: "voters of a fresh cluster, `1@host:port,2@host:port,...`; must list this node at `grpc.advertised`",
        dev_managed: true,
        secret: false,
        set: |b, v| {
            b.peers = Some(parse_peers(v)?);
            Ok(())
        },
        show: |c| c.peers.iter().map(|(id, addr)| format!("{id}@{addr}")).collect::<Vec<_>>().join(","),
    },
    Key {
        name: "cluster.bootstrap",
        kind: Kind::Bool,
        default: DefaultValue::Value("false"),
        consumer: Consumer::Node,
        summary: "initialise the membership from peers when the store is empty",
        doc: "`true`: initialise the membership from `peers` when the store is empty",
        dev_managed: true,
        secret: false,
        set: |b, v| {
            b.config.cluster_bootstrap = parse_bool(v)?;
            Ok(())
        },
        show: |c| c.cluster_bootstrap.to_string(),
    },
    Key {
        name: "retention.ms",
        kind: Kind::Millis,
        default: DefaultValue::Value("604800000"),
        consumer: Consumer::Node,
        summary: "default topic retention by age; -1 keeps forever",
        doc: "default topic retention by age; -1 keeps forever",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.retention_ms = parse_retention(v, "keep forever")?;
            Ok(())
        },
        show: |c| c.retention_ms.to_string(),
    },
    Key {
        name: "retention.bytes",
        kind: Kind::Bytes,
        default: DefaultValue::Value("-1"),
        consumer: Consumer::Node,
        summary: "default retention by size per partition; -1 is unlimited",
        doc: "default retention by size per partition; -1 is unlimited",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.retention_bytes = parse_retention(v, "unlimited")?;
            Ok(())
        },
        show: |c| c.retention_bytes.to_string(),
    },
    Key {
        name: "max.message.bytes",
        kind: Kind::Bytes,
        default: DefaultValue::Value("1048576"),
        consumer: Consumer::Node,
        summary: "default largest message (value + key + headers)",
        doc: "default largest message (value + key + headers); at most what a segment holds minus 1024",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.max_message_bytes = match v.parse::<u32>() {
                Ok(0) => return Err("must be at least 1".into()),
                Ok(n) => n,
                Err(_) => return Err(format!("expected a whole number from 1 to {}", u32::MAX)),
            };
            Ok(())
        },
        show: |c| c.max_message_bytes.to_string(),
    },
    Key {
        name: "producer.id.expiry.ms",
        kind: Kind::Millis,
        default: DefaultValue::Value("86400000"),
        consumer: Consumer::Node,
        summary: "an idle producer id is forgotten after this",
        doc: "an idle producer id is forgotten after this",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.producer_id_expiry_ms = positive(v)?;
            Ok(())
        },
        show: |c| c.producer_id_expiry_ms.to_string(),
    },
    Key {
        name: "admin.token",
        kind: Kind::Token,
        default: DefaultValue::None,
        consumer: Consumer::Node,
        summary: "admin mutations and peer RPCs need this bearer token; empty means none",
        doc: "when set, admin mutations (HTTP, and gRPC topic and membership changes) and peer RPCs need \
              `Authorization: Bearer <token>`; printable ASCII without spaces; every node of a cluster needs \
              the same; empty means none",
        dev_managed: false,
        secret: true,
        set: |b, v| {
            // It travels in an HTTP header and in gRPC metadata, where only
            // visible ASCII is safe; a space would split `Bearer x y`.
            if !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("expected printable ASCII without spaces".into());
            }
            b.config.admin_token = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
        show: |c| if c.admin_token.is_some() { "(set)" } else { "(unset)" }.to_string(),
    },
    Key {
        name: "tls.cert",
        kind: Kind::File,
        default: DefaultValue::None,
        consumer: Consumer::Node,
        summary: "PEM certificate chain; with tls.key and tls.ca, gRPC speaks TLS",
        doc: "PEM certificate chain of this node: with `tls.key` and `tls.ca`, the gRPC port (clients and peers) \
              speaks TLS only, and peers are dialled over TLS with it as the client certificate; must name the \
              host others dial (`grpc.advertised`)",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.tls_cert = optional_path(v);
            Ok(())
        },
        show: |c| c.tls.as_ref().map(|t| t.cert.path.display().to_string()).unwrap_or_default(),
    },
    Key {
        name: "tls.key",
        kind: Kind::File,
        default: DefaultValue::None,
        consumer: Consumer::Node,
        summary: "PEM private key of tls.cert",
        doc: "PEM private key of `tls.cert` (PKCS#8, PKCS#1 or SEC1)",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.tls_key = optional_path(v);
            Ok(())
        },
        show: |c| c.tls.as_ref().map(|t| t.key.path.display().to_string()).unwrap_or_default(),
    },
    Key {
        name: "tls.ca",
        kind: Kind::File,
        default: DefaultValue::None,
        consumer: Consumer::Node,
        summary: "PEM CA that issued every node's certificate (verifies peers)",
        doc: "PEM CA certificate(s) that issued every node's `tls.cert`: verifies the peers this node dials, and \
              the client certificate a peer must present (mutual TLS between peers; clients need none)",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.tls_ca = optional_path(v);
            Ok(())
        },
        show: |c| c.tls.as_ref().map(|t| t.ca.path.display().to_string()).unwrap_or_default(),
    },
    Key {
        name: "log.color",
        kind: Kind::Choice(LOG_COLORS),
        default: DefaultValue::Value("auto"),
        consumer: Consumer::Node,
        summary: "ANSI colours in the log: auto (when stderr is a terminal), always or never",
        doc: "ANSI colour codes in the node's log: `auto` only when stderr is a terminal and `NO_COLOR` is unset, \
              `always`, or `never`; `keel dev` passes `always` to its nodes when its own stderr is a terminal",
        dev_managed: false,
        secret: false,
        set: |b, v| {
            b.config.log_color = super::LogColor::parse(v)?;
            Ok(())
        },
        show: |c| c.log_color.as_str().to_string(),
    },
];

/// The row of `name`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The keys `keel dev` writes into every node's file itself.
pub fn dev_managed() -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(|k| k.dev_managed)
}

/// Prefix of the environment variables that set keys.
const ENV_PREFIX: &str = "KEEL_";

/// `flush.disk.type` -> `KEEL_FLUSH_DISK_TYPE`.
pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "_"))
}

/// `flush.disk.type` -> `flush-disk-type` (the flag without its dashes).
fn flag_long(key: &str) -> String {
    key.replace('.', "-")
}

/// `flush.disk.type` -> `--flush-disk-type`.
pub fn flag_name(key: &str) -> String {
    format!("--{}", flag_long(key))
}

/// The default as the docs and `--help` show it.
fn default_text(key: &Key, markdown: bool) -> String {
    let tick = |s: &str| if markdown { format!("`{s}`") } else { s.to_string() };
    match key.default {
        DefaultValue::Value(v) if key.kind.is_number() => match human(key.kind, v) {
            Some(h) => format!("{v} ({h})"),
            None => v.to_string(),
        },
        DefaultValue::Value(v) => tick(v),
        DefaultValue::Derived(text) if markdown => text.to_string(),
        DefaultValue::Derived(text) => text.replace('`', ""),
        DefaultValue::None => "(none)".to_string(),
    }
}

/// `67108864` bytes -> `64 MiB`, `604800000` ms -> `7 days`: only for
/// values that are a whole number of the larger unit.
fn human(kind: Kind, v: &str) -> Option<String> {
    let n: u64 = v.parse().ok()?;
    let units: &[(u64, &str, &str)] = match kind {
        Kind::Bytes => &[(1 << 30, "GiB", "GiB"), (1 << 20, "MiB", "MiB"), (1 << 10, "KiB", "KiB")],
        Kind::Millis => &[(86_400_000, "day", "days"), (3_600_000, "hour", "hours"), (60_000, "minute", "minutes")],
        _ => return None,
    };
    units
        .iter()
        .find(|(size, _, _)| n >= *size && n.is_multiple_of(*size))
        .map(|(size, one, many)| format!("{} {}", n / size, if n / size == 1 { one } else { many }))
}

/// The table of `docs/configuration.md`, generated.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | type | default | read by | meaning |\n|---|---|---|---|---|\n");
    for key in KEYS {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            key.name,
            key.kind.describe(),
            default_text(key, true),
            key.consumer.crate_name(),
            key.doc
        );
    }
    out
}

/// The `keel node` flags: one per key, each `--` and the key with `.` turned
/// into `-`, its value parsed by the same code as the file's. Built from
/// [`KEYS`] with clap's builder API, so a new row is a new flag.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyFlags {
    /// The flags that were given, in table order.
    pub settings: Vec<Setting>,
}

impl clap::FromArgMatches for KeyFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for key in KEYS {
            if let Some(value) = matches.get_one::<String>(key.name) {
                self.settings.retain(|s| s.key != key.name);
                self.settings.push(Setting {
                    key: key.name.to_string(),
                    value: value.clone(),
                    origin: Origin::Flag(flag_name(key.name)),
                });
            }
        }
        Ok(())
    }
}

impl clap::Args for KeyFlags {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = cmd.next_help_heading("Configuration keys (override KEEL_* variables and the --config file)");
        for key in KEYS {
            cmd = cmd.arg(
                Arg::new(key.name)
                    .long(flag_long(key.name))
                    .value_name(key.kind.value_name())
                    .action(ArgAction::Set)
                    .help(format!("`{}`: {} [default: {}]", key.name, key.summary, default_text(key, false))),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_each_default_parses_with_its_own_parser() {
        let mut names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KEYS.len(), "a key is listed twice");
        for key in KEYS {
            if let DefaultValue::Value(v) = key.default {
                let mut b = Builder::empty();
                (key.set)(&mut b, v).unwrap_or_else(|e| panic!("default of {} does not parse: {e}", key.name));
            }
            assert!(!key.summary.is_empty() && !key.doc.is_empty(), "{} is undocumented", key.name);
        }
    }

    #[test]
    fn defaults_print_with_their_unit() {
        assert_eq!(human(Kind::Bytes, "67108864").as_deref(), Some("64 MiB"));
        assert_eq!(human(Kind::Millis, "86400000").as_deref(), Some("1 day"));
        assert_eq!(human(Kind::Millis, "5000"), None);
        assert_eq!(human(Kind::Bytes, "-1"), None);
        let retention = key("retention.ms").expect("a key");
        assert_eq!(default_text(retention, true), "604800000 (7 days)");
        assert_eq!(default_text(key("flush.disk.type").expect("a key"), true), "`SYNC_FLUSH`");
    }

    /// The page's table is the generated one. On failure, paste the printed
    /// table between the markers (or run `keel config keys`).
    #[test]
    fn the_docs_page_lists_exactly_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let page = std::fs::read_to_string(path).expect("read docs/configuration.md");
        let (begin, end) = ("<!-- keys: generated from node/src/config/keys.rs -->\n", "<!-- keys: end -->");
        let start = page.find(begin).expect("the page has the begin marker") + begin.len();
        let stop = page[start..].find(end).expect("the page has the end marker") + start;
        let table = markdown_table();
        assert!(page[start..stop] == table, "docs/configuration.md's key table is stale; the table is:\n{table}");
    }
}
