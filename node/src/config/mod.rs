//! The node's configuration: the article's store and flush keys plus the
//! node's own, read from a `.properties` file, `KEEL_*` environment variables
//! and `keel node` flags.
//!
//! Every key is one row of the table in [`keys`] (name, type, default,
//! the crate that reads it, its docs, its parser): the flags, the `KEEL_*`
//! variables, the file's key check, `keel config check` and the table in
//! `docs/configuration.md` all come from it.
//!
//! The three `tls.*` keys go together: all set (TLS on) or none (plaintext).
//! Their files are read and checked at start-up (and by `keel config
//! check`); a missing, unreadable or malformed one stops the node with the
//! key and the file named.
//!
//! **Precedence**, highest first: flag > environment > file > default. Each
//! key has one flag, its name with `.` turned into `-` (`--flush-disk-type`),
//! and one environment variable, `KEEL_` and its name upper-cased with `.`
//! turned into `_` (`KEEL_FLUSH_DISK_TYPE`). Only variables that name a key
//! are read, so `KEEL_CLUSTER` (used by the client commands) is ignored.
//!
//! The file (`--config FILE`) is Java-properties style, without line
//! continuations or escapes: `key=value` or `key: value`, `#` and `!` start
//! comment lines, blank lines are skipped, whitespace around keys and values
//! is trimmed. An unknown key, a duplicate key or a line without a separator
//! is an error; so is a bad value from any source, and the message names the
//! key, the value and where it came from (`FILE:LINE`, the variable, or the
//! flag).
//!
pub mod keys;
mod values;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use keel_raft_log::StoreConfig;

use keys::{DefaultValue, KEYS};
pub use keys::{KeyFlags, env_var_name, flag_name};

/// Everything `keel node` needs, validated.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `node.id`: this node's Raft id, at least 1.
    pub node_id: u64,
    /// Whether some source named `node.id` (else it is the default, 1):
    /// a node refuses a cluster member's data without it.
    pub node_id_given: bool,
    /// `grpc.listen`: where the one gRPC port (clients and peers) listens.
    pub grpc_listen: SocketAddr,
    /// `grpc.advertised`: `host:port` other nodes and clients use to reach
    /// this node (default: `grpc.listen`).
    pub grpc_advertised: String,
    /// `admin.listen`: the admin HTTP address.
    pub admin_listen: SocketAddr,
    /// `peers`: every voter of a fresh cluster, `id -> host:port`
    /// (this node included).
    pub peers: BTreeMap<u64, String>,
    /// `cluster.bootstrap`: initialise the membership from `peers` when
    /// the store is empty.
    pub cluster_bootstrap: bool,
    /// `store.path.commitlog`, `segment.*`, `flush.*`.
    pub store: StoreConfig,
    /// `retention.ms`: default for topics; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: default per partition; -1 unlimited.
    pub retention_bytes: i64,
    /// `max.message.bytes`: default largest record value + key + headers.
    pub max_message_bytes: u32,
    /// `producer.id.expiry.ms`: idle producer ids are forgotten after this.
    pub producer_id_expiry_ms: u64,
    /// `admin.token`: when set, mutations need `Authorization: Bearer`.
    pub admin_token: Option<String>,
    /// `store.reserve.bytes`: the free space below which the leader refuses
    /// writes that grow the log (0: no check).
    pub reserve_bytes: u64,
    /// `tls.cert`, `tls.key`, `tls.ca`: all three, read and checked, or none.
    pub tls: Option<TlsFiles>,
    /// `log.color`: ANSI colours in the node's log.
    pub log_color: LogColor,
}

/// `log.color`: whether the log carries ANSI colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogColor {
    /// Only when stderr is a terminal and `NO_COLOR` is unset.
    Auto,
    Always,
    Never,
}

impl LogColor {
    pub fn as_str(self) -> &'static str {
        match self {
            LogColor::Auto => "auto",
            LogColor::Always => "always",
            LogColor::Never => "never",
        }
    }

    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "auto" => Ok(LogColor::Auto),
            "always" => Ok(LogColor::Always),
            "never" => Ok(LogColor::Never),
            _ => Err("expected auto, always or never".to_string()),
        }
    }

    /// Whether to write colour codes to stderr now.
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal as _;
        match self {
            LogColor::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            LogColor::Always => true,
            LogColor::Never => false,
        }
    }
}

/// The node's TLS material, read from the files the `tls.*` keys name.
#[derive(Clone)]
pub struct TlsFiles {
    /// `tls.cert`: this node's certificate chain.
    pub cert: PemFile,
    /// `tls.key`: its private key.
    pub key: PemFile,
    /// `tls.ca`: the CA that issued every node's certificate.
    pub ca: PemFile,
}

/// One PEM file: where it was read from, and its bytes.
#[derive(Clone)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: the key's bytes must never reach a log.
        f.debug_struct("TlsFiles")
            .field("cert", &self.cert.path)
            .field("key", &self.key.path)
            .field("ca", &self.ca.path)
            .finish()
    }
}

/// The smallest default reserve: room for checkpoints, the meta file and
/// indexes beside the segments when segments are small.
pub const MIN_DEFAULT_RESERVE_BYTES: u64 = 64 << 20;

/// `store.reserve.bytes` when not set: two segments, one for the next
/// roll's preallocation and one for the roll a truncation makes, with at
/// least [`MIN_DEFAULT_RESERVE_BYTES`] for the rest.
pub fn default_reserve_bytes(segment_bytes: u64) -> u64 {
    segment_bytes.saturating_mul(2).max(MIN_DEFAULT_RESERVE_BYTES)
}

/// A record carries more than the message: the Raft entry wraps it in its own
/// encoding. `max.message.bytes` must leave this much of a segment's largest
/// payload for that wrapping.
pub const MESSAGE_FRAMING_BYTES: usize = 1024;

/// Where a value came from; errors start with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a properties file (1-based).
    File { path: String, line: usize },
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag, spelled with its dashes.
    Flag(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File { path, line } => write!(f, "{path}:{line}"),
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One `key = value` from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

/// `keel node` flags: `--config FILE` and one flag per key, each overriding
/// the environment and the file.
#[derive(Debug, Default, clap::Args)]
pub struct NodeArgs {
    /// A `.properties` file (`key=value` lines; see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeyFlags,
}

/// `keel config ...`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Load FILE as `keel node --config FILE` would (KEEL_* variables
    /// included) and print the effective configuration, one key=value per line.
    Check {
        /// The `.properties` file to check.
        file: PathBuf,
    },
    /// Print every configuration key: its type, default, the crate that
    /// reads it and what it means (the table of docs/configuration.md).
    Keys,
}

/// `keel node`: file, then environment, then flags, over the defaults.
pub fn load(args: &NodeArgs) -> anyhow::Result<NodeConfig> {
    load_with_env(args.config.as_deref(), std::env::vars_os(), args.keys.settings.clone())
}

/// `keel config check FILE`: print the configuration `keel node --config FILE`
/// would run with.
pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file } => {
            let config = load_with_env(Some(&file), std::env::vars_os(), Vec::new())?;
            let mut out = std::io::stdout().lock();
            for (key, value) in effective(&config) {
                writeln!(out, "{key}={value}").context("writing the configuration to stdout")?;
            }
            out.flush().context("writing the configuration to stdout")?;
            Ok(())
        }
        ConfigCommand::Keys => {
            let mut out = std::io::stdout().lock();
            out.write_all(keys::markdown_table().as_bytes()).context("writing the keys to stdout")?;
            out.flush().context("writing the keys to stdout")?;
            Ok(())
        }
    }
}

fn load_with_env(
    file: Option<&Path>,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    flags: Vec<Setting>,
) -> anyhow::Result<NodeConfig> {
    let file_settings = match file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
            parse_properties(&text, &path.display().to_string())?
        }
        None => Vec::new(),
    };
    let env_settings = env_settings(vars)?;
    resolve(file_settings, env_settings, flags)
}

/// Parse a properties file. `source_name` (the path as given) prefixes every
/// error and origin.
///
/// Deliberately smaller than `java.util.Properties`: no line continuations,
/// no escapes, no whitespace-only separator. Keys are not checked here: an
/// unknown key is reported when the settings are applied.
pub fn parse_properties(text: &str, source_name: &str) -> anyhow::Result<Vec<Setting>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut settings: Vec<Setting> = Vec::new();
    let mut first_line_of: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let origin = Origin::File { path: source_name.to_string(), line };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            continue;
        }
        // The first `=` or `:` separates, so values may contain either
        // (`grpc.listen: 127.0.0.1:9091`, `peers=1@a:1`).
        let Some(at) = trimmed.find(['=', ':']) else {
            anyhow::bail!("{origin}: expected `key=value` or `key: value`, found {trimmed:?}");
        };
        let key = trimmed[..at].trim();
        let value = trimmed[at + 1..].trim();
        if key.is_empty() {
            anyhow::bail!("{origin}: missing key before the separator in {trimmed:?}");
        }
        if let Some(first) = first_line_of.get(key) {
            anyhow::bail!("{origin}: duplicate key `{key}` (first set at {source_name}:{first})");
        }
        first_line_of.insert(key.to_string(), line);
        settings.push(Setting { key: key.to_string(), value: value.to_string(), origin });
    }
    Ok(settings)
}

/// The `KEEL_*` variables that name a key, in key order. Others are ignored:
/// `KEEL_CLUSTER` belongs to the client commands, `KEEL_TEST_SEED` to tests.
///
/// Takes `vars_os` rather than `vars` because `std::env::vars` panics on any
/// non-UTF-8 variable, even one keel never reads.
fn env_settings(vars: impl IntoIterator<Item = (OsString, OsString)>) -> anyhow::Result<Vec<Setting>> {
    let vars: BTreeMap<OsString, OsString> = vars.into_iter().collect();
    let mut settings = Vec::new();
    for key in KEYS.iter().map(|k| k.name) {
        let name = env_var_name(key);
        let Some(value) = vars.get(std::ffi::OsStr::new(&name)) else { continue };
        let Some(value) = value.to_str() else {
            anyhow::bail!("environment variable {name}: the value for `{key}` is not valid UTF-8");
        };
        settings.push(Setting { key: key.to_string(), value: value.to_string(), origin: Origin::Env(name) });
    }
    Ok(settings)
}

/// Apply the three sources in precedence order (each overriding the last)
/// over the defaults, then check the relations between keys.
pub fn resolve(file: Vec<Setting>, env: Vec<Setting>, flags: Vec<Setting>) -> anyhow::Result<NodeConfig> {
    let mut builder = Builder::new();
    for setting in file.into_iter().chain(env).chain(flags) {
        builder.set(&setting)?;
    }
    builder.finish()
}

/// The configuration being assembled. Every value is parsed as it is set, so a
/// bad value fails even when a higher source overrides it.
#[derive(Debug)]
struct Builder {
    /// The keys whose value needs no other key's, set in place; the rest
    /// are filled in by [`Builder::finish`].
    config: NodeConfig,
    /// `None`: the default, which is `grpc.listen`.
    grpc_advertised: Option<String>,
    /// `None`: the default, this node alone.
    peers: Option<BTreeMap<u64, String>>,
    /// `None`: the default, which depends on `segment.bytes`.
    reserve_bytes: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    /// Where each key that was set came from; absent means the default.
    origins: BTreeMap<&'static str, Origin>,
}

impl Builder {
    /// Every field at a placeholder, before the table's defaults.
    fn empty() -> Self {
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            config: NodeConfig {
                node_id: 0,
                node_id_given: false,
                grpc_listen: unset,
                grpc_advertised: String::new(),
                admin_listen: unset,
                peers: BTreeMap::new(),
                cluster_bootstrap: false,
                store: StoreConfig::new(""),
                retention_ms: 0,
                retention_bytes: 0,
                max_message_bytes: 0,
                producer_id_expiry_ms: 0,
                admin_token: None,
                reserve_bytes: 0,
                tls: None,
                log_color: LogColor::Auto,
            },
            grpc_advertised: None,
            peers: None,
            reserve_bytes: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            origins: BTreeMap::new(),
        }
    }

    /// Every key at its default: each row's default text through the row's
    /// own parser, so the table is the only place a default is written.
    fn new() -> Self {
        let mut builder = Self::empty();
        for key in KEYS {
            if let DefaultValue::Value(text) = key.default {
                // Checked for every row by `keys::tests`.
                (key.set)(&mut builder, text).unwrap_or_else(|why| panic!("the default of `{}`: {why}", key.name));
            }
        }
        builder
    }

    fn set(&mut self, setting: &Setting) -> anyhow::Result<()> {
        let Setting { key, value, origin } = setting;
        let Some(row) = keys::key(key) else {
            anyhow::bail!("{origin}: unknown configuration key `{key}` (value {value:?})");
        };
        if let Err(reason) = (row.set)(self, value.trim()) {
            let shown = if row.secret { "(hidden)" } else { value.as_str() };
            anyhow::bail!("{origin}: invalid value {shown:?} for `{key}`: {reason}");
        }
        self.origins.insert(row.name, origin.clone());
        Ok(())
    }

    /// `key` and where its value came from, for errors about two keys.
    fn described(&self, key: &str) -> String {
        match self.origins.get(key) {
            Some(origin) => format!("`{key}` (from {origin})"),
            None => format!("`{key}` (default)"),
        }
    }

    fn finish(mut self) -> anyhow::Result<NodeConfig> {
        // Each value was checked as it was set; this is the store's own
        // check of what it is given, which the table's parsers cover.
        self.config.store.validate().context("the store configuration")?;

        if self.config.grpc_listen == self.config.admin_listen && self.config.grpc_listen.port() != 0 {
            anyhow::bail!(
                "{} and {} are both {}; the gRPC and admin ports must differ",
                self.described("grpc.listen"),
                self.described("admin.listen"),
                self.config.grpc_listen
            );
        }

        let grpc_advertised = match self.grpc_advertised.clone() {
            Some(advertised) => advertised,
            None => {
                if self.config.grpc_listen.ip().is_unspecified() {
                    anyhow::bail!(
                        "`grpc.advertised` is not set, so it defaults to {} = {}, an unspecified address \
                         other nodes and clients cannot dial; set `grpc.advertised` to a host:port they can reach",
                        self.described("grpc.listen"),
                        self.config.grpc_listen
                    );
                }
                self.config.grpc_listen.to_string()
            }
        };

        let peers = match self.peers.clone() {
            Some(peers) => {
                let Some(own) = peers.get(&self.config.node_id) else {
                    anyhow::bail!(
                        "{} does not list {} = {}; peers must include this node",
                        self.described("peers"),
                        self.described("node.id"),
                        self.config.node_id
                    );
                };
                if *own != grpc_advertised {
                    anyhow::bail!(
                        "{} gives node {} the address {own}, but {} is {grpc_advertised}; they must be equal",
                        self.described("peers"),
                        self.config.node_id,
                        self.described("grpc.advertised")
                    );
                }
                peers
            }
            None => BTreeMap::from([(self.config.node_id, grpc_advertised.clone())]),
        };

        let limit = self.config.store.max_payload_bytes().saturating_sub(MESSAGE_FRAMING_BYTES);
        if usize::try_from(self.config.max_message_bytes).unwrap_or(usize::MAX) > limit {
            anyhow::bail!(
                "{} = {} does not fit a segment: {} = {} holds payloads up to {} bytes, less {MESSAGE_FRAMING_BYTES} \
                 bytes of framing leaves {limit}; lower `max.message.bytes` or raise `segment.bytes`",
                self.described("max.message.bytes"),
                self.config.max_message_bytes,
                self.described("segment.bytes"),
                self.config.store.segment_bytes,
                self.config.store.max_payload_bytes()
            );
        }

        let reserve_bytes = self.reserve_bytes.unwrap_or(default_reserve_bytes(self.config.store.segment_bytes));

        self.config.tls = self.tls_files()?;
        self.config.node_id_given = self.origins.contains_key("node.id");
        self.config.grpc_advertised = grpc_advertised;
        self.config.peers = peers;
        self.config.reserve_bytes = reserve_bytes;
        Ok(self.config)
    }

    /// The three `tls.*` files, read and checked; `None` when none is set.
    fn tls_files(&self) -> anyhow::Result<Option<TlsFiles>> {
        let named = [("tls.cert", &self.tls_cert), ("tls.key", &self.tls_key), ("tls.ca", &self.tls_ca)];
        let set: Vec<&str> = named.iter().filter(|(_, p)| p.is_some()).map(|(k, _)| *k).collect();
        if set.is_empty() {
            return Ok(None);
        }
        if let Some((missing, _)) = named.iter().find(|(_, p)| p.is_none()) {
            let given: Vec<String> = set.iter().map(|k| self.described(k)).collect();
            anyhow::bail!(
                "`{missing}` is not set, but {} {}; TLS needs all three of tls.cert, tls.key and tls.ca \
                 (or none of them for plaintext)",
                given.join(" and "),
                if given.len() == 1 { "is" } else { "are" }
            );
        }
        let read = |key: &str, path: &Option<PathBuf>, check: fn(&[u8]) -> Result<(), String>| {
            let path = path.clone().expect("checked above: all three are set");
            let pem = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("{} = {}: cannot read it: {e}", self.described(key), path.display()))?;
            check(&pem).map_err(|why| anyhow::anyhow!("{} = {}: {why}", self.described(key), path.display()))?;
            Ok::<_, anyhow::Error>(PemFile { path, pem })
        };
        let certificates = |pem: &[u8]| keel_client::count_certificates(pem).map(|_| ());
        Ok(Some(TlsFiles {
            cert: read("tls.cert", &self.tls_cert, certificates)?,
            key: read("tls.key", &self.tls_key, values::check_private_key)?,
            ca: read("tls.ca", &self.tls_ca, certificates)?,
        }))
    }
}

/// Every key with its effective value, sorted by key, as `keel config check`
/// prints it. The token itself is never shown.
pub fn effective(config: &NodeConfig) -> BTreeMap<&'static str, String> {
    KEYS.iter().map(|key| (key.name, (key.show)(config))).collect()
}

/// A store configuration with one key set as a node would parse it, so a
/// tool (`keel bench storage`) accepts exactly what a node does.
pub fn store_with(key: &str, value: &str) -> anyhow::Result<StoreConfig> {
    let mut builder = Builder::new();
    builder.set(&Setting { key: key.to_string(), value: value.to_string(), origin: Origin::Flag(flag_name(key)) })?;
    Ok(builder.config.store)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use keel_raft_log::FlushPolicy;

    use super::*;

    fn file(text: &str) -> Vec<Setting> {
        parse_properties(text, "node.properties").expect("test file parses")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<Setting> {
        env_settings(pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)))).expect("test env is UTF-8")
    }

    fn flags(argv: &[&str]) -> Vec<Setting> {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: NodeArgs,
        }
        let argv = std::iter::once("keel-node").chain(argv.iter().copied());
        Wrap::try_parse_from(argv).expect("test flags parse").args.keys.settings
    }

    fn from_file(text: &str) -> anyhow::Result<NodeConfig> {
        resolve(parse_properties(text, "node.properties")?, Vec::new(), Vec::new())
    }

    fn err_of(result: anyhow::Result<NodeConfig>) -> String {
        format!("{:#}", result.expect_err("configuration accepted"))
    }

    fn assert_names(message: &str, parts: &[&str]) {
        for part in parts {
            assert!(message.contains(part), "{message:?} does not name {part:?}");
        }
    }

    #[test]
    fn defaults() {
        // Nothing set: every key has the documented default.
        let c = resolve(Vec::new(), Vec::new(), Vec::new()).expect("defaults are valid");
        assert_eq!(c.node_id, 1);
        assert_eq!(c.grpc_listen, "127.0.0.1:9091".parse().expect("literal"));
        assert_eq!(c.grpc_advertised, "127.0.0.1:9091");
        assert_eq!(c.admin_listen, "127.0.0.1:9191".parse().expect("literal"));
        assert_eq!(c.peers, BTreeMap::from([(1, "127.0.0.1:9091".to_string())]));
        assert!(!c.cluster_bootstrap);
        assert_eq!(c.store, StoreConfig::new("./keel-data"));
        assert_eq!(c.retention_ms, 604_800_000);
        assert_eq!(c.retention_bytes, -1);
        assert_eq!(c.max_message_bytes, 1_048_576);
        assert_eq!(c.producer_id_expiry_ms, 86_400_000);
        assert_eq!(c.admin_token, None);

        // The derived defaults follow the keys they derive from.
        let c = resolve(file("node.id=3\ngrpc.listen=10.0.0.3:7000"), Vec::new(), Vec::new()).expect("valid");
        assert_eq!(c.grpc_advertised, "10.0.0.3:7000");
        assert_eq!(c.peers, BTreeMap::from([(3, "10.0.0.3:7000".to_string())]));
    }

    #[test]
    fn file_parsing_skips_comments_and_accepts_both_separators() {
        // `#` and `!` comments, blank lines, `=` and `:`, whitespace, CRLF.
        let text = "# a comment\n! another\n\n  flush.disk.type = BATCH_FLUSH  \r\n\
                    grpc.listen: 127.0.0.1:7001\npeers=1@127.0.0.1:7001\nadmin.token=\n";
        let settings = file(text);
        let got: Vec<(&str, &str, String)> =
            settings.iter().map(|s| (s.key.as_str(), s.value.as_str(), s.origin.to_string())).collect();
        assert_eq!(
            got,
            [
                ("flush.disk.type", "BATCH_FLUSH", "node.properties:4".to_string()),
                ("grpc.listen", "127.0.0.1:7001", "node.properties:5".to_string()),
                ("peers", "1@127.0.0.1:7001", "node.properties:6".to_string()),
                ("admin.token", "", "node.properties:7".to_string()),
            ]
        );

        // Applied, the file gives the configuration it describes.
        let c = from_file(text).expect("valid file");
        assert_eq!(c.store.flush.policy, FlushPolicy::BatchFlush);
        assert_eq!(c.grpc_advertised, "127.0.0.1:7001");
        assert_eq!(c.admin_token, None, "an empty token means none");

        // A line without a separator is an error naming the line.
        let e = parse_properties("node.id=2\nflush.disk.type SYNC_FLUSH\n", "node.properties")
            .expect_err("line without separator accepted");
        assert_names(&e.to_string(), &["node.properties:2", "flush.disk.type SYNC_FLUSH"]);
        let e = parse_properties("=5\n", "node.properties").expect_err("empty key accepted");
        assert_names(&e.to_string(), &["node.properties:1", "missing key"]);
    }

    #[test]
    fn precedence_is_flag_over_env_over_file() {
        let f = file("flush.disk.type=BATCH_FLUSH\nflush.batch.size=7\nnode.id=2\npeers=2@127.0.0.1:9091");
        let e = env(&[("KEEL_FLUSH_DISK_TYPE", "ASYNC_FLUSH"), ("KEEL_FLUSH_BATCH_SIZE", "8")]);
        let g = flags(&["--flush-disk-type", "SYNC_FLUSH"]);

        // Env overrides the file; the flag overrides both; untouched keys keep
        // the file's value.
        let c = resolve(f.clone(), e.clone(), g.clone()).expect("valid");
        assert_eq!(c.store.flush.policy, FlushPolicy::SyncFlush);
        assert_eq!(c.store.flush.batch_size, 8);
        assert_eq!(c.node_id, 2);

        let c = resolve(f.clone(), e, Vec::new()).expect("valid");
        assert_eq!(c.store.flush.policy, FlushPolicy::AsyncFlush);

        let c = resolve(f, Vec::new(), g).expect("valid");
        assert_eq!(c.store.flush.policy, FlushPolicy::SyncFlush);
        assert_eq!(c.store.flush.batch_size, 7);
    }

    #[test]
    fn the_reserve_defaults_to_two_segments_or_64_mib_and_bad_values_are_named() {
        // Phase: the default follows segment.bytes, with a floor.
        assert_eq!(from_file("").expect("defaults").reserve_bytes, 128 << 20);
        assert_eq!(from_file("segment.bytes=2097152").expect("valid").reserve_bytes, 64 << 20);
        assert_eq!(from_file("segment.bytes=536870912").expect("valid").reserve_bytes, 1 << 30);
        // Phase: set explicitly, 0 included (off), and shown by `keel config check`.
        let c = from_file("store.reserve.bytes=0").expect("valid");
        assert_eq!(c.reserve_bytes, 0);
        assert_eq!(effective(&c)["store.reserve.bytes"], "0");
        // Phase: a bad value names the key, the value and the source.
        for bad in ["-1", "lots", "1.5"] {
            let err = err_of(from_file(&format!("store.reserve.bytes={bad}")));
            assert_names(&err, &["store.reserve.bytes", &format!("{bad:?}"), "node.properties:1"]);
        }
    }

    #[test]
    fn env_reads_only_variables_that_name_a_key() {
        // KEEL_CLUSTER belongs to the client commands; PATH to nobody here.
        let e = env(&[
            ("KEEL_CLUSTER", "127.0.0.1:9091"),
            ("KEEL_TEST_SEED", "7"),
            ("PATH", "/bin"),
            ("KEEL_ADMIN_TOKEN", "s3cret"),
            ("KEEL_STORE_PATH_COMMITLOG", "/var/lib/keel"),
        ]);
        let names: Vec<String> = e.iter().map(|s| s.origin.to_string()).collect();
        assert_eq!(names, ["environment variable KEEL_STORE_PATH_COMMITLOG", "environment variable KEEL_ADMIN_TOKEN"]);
        let c = resolve(Vec::new(), e, Vec::new()).expect("valid");
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(c.store.dir, PathBuf::from("/var/lib/keel"));

        // A bad value from the environment names the variable.
        let err = err_of(resolve(Vec::new(), env(&[("KEEL_FLUSH_DISK_TYPE", "FAST")]), Vec::new()));
        assert_names(&err, &["KEEL_FLUSH_DISK_TYPE", "\"FAST\"", "`flush.disk.type`"]);

        // A non-UTF-8 value of a key's variable is an error, of any other
        // variable is ignored.
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt as _;
            let bad = OsString::from_vec(vec![0xff, 0xfe]);
            assert!(env_settings([(OsString::from("KEEL_OTHER"), bad.clone())]).is_ok());
            let err = env_settings([(OsString::from("KEEL_NODE_ID"), bad)]).expect_err("non-UTF-8 accepted");
            assert_names(&err.to_string(), &["KEEL_NODE_ID", "`node.id`"]);
        }
    }

    #[test]
    fn every_key_has_a_flag_and_a_variable_named_after_it() {
        // Each key's flag and variable reach that key and no other.
        let keys: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(keys.len(), 26);
        for key in &keys {
            let flag = flag_name(key);
            let got = flags(&[&flag, "x"]);
            assert_eq!(got.len(), 1, "{flag}");
            assert_eq!(got[0].key, *key);
            assert_eq!(got[0].origin, Origin::Flag(flag.clone()));

            let name = env_var_name(key);
            let got = env(&[(&name, "x")]);
            assert_eq!(got.len(), 1, "{name}");
            assert_eq!(got[0].key, *key);
        }
        assert_eq!(env_var_name("flush.disk.type"), "KEEL_FLUSH_DISK_TYPE");
        assert_eq!(flag_name("store.path.commitlog"), "--store-path-commitlog");
        assert!(flags(&[]).is_empty());
    }

    #[test]
    fn unknown_key_in_file_names_key_and_line() {
        let err = err_of(from_file("node.id=1\n\nflush.nope=3\n"));
        assert_names(&err, &["node.properties:3", "unknown configuration key `flush.nope`"]);
    }

    #[test]
    fn bad_values_name_key_value_and_line() {
        // The article's example, word for word.
        let err = err_of(from_file("# comment\n\n\n\n\nnode.id=1\nflush.disk.type=FAST\n"));
        assert_eq!(
            err,
            "node.properties:7: invalid value \"FAST\" for `flush.disk.type`: \
             expected SYNC_FLUSH, BATCH_FLUSH or ASYNC_FLUSH"
        );

        // Every node key, and some store keys, with a value it must refuse.
        for (key, value) in [
            ("node.id", "0"),
            ("node.id", "one"),
            ("grpc.listen", "localhost:9091"),
            ("grpc.listen", "127.0.0.1"),
            ("grpc.advertised", "0.0.0.0:9091"),
            ("grpc.advertised", "[::]:9091"),
            ("grpc.advertised", "node-1"),
            ("grpc.advertised", "::1:9091"),
            ("grpc.advertised", "node 1:9091"),
            ("admin.listen", "9191"),
            ("cluster.bootstrap", "yes"),
            ("retention.ms", "0"),
            ("retention.ms", "-2"),
            ("retention.bytes", "1GB"),
            ("max.message.bytes", "0"),
            ("max.message.bytes", "4294967296"),
            ("producer.id.expiry.ms", "0"),
            ("segment.bytes", "100"),
            ("flush.batch.size", "-1"),
            ("segment.preheat", "1"),
            ("log.color", "sometimes"),
        ] {
            let err = err_of(from_file(&format!("# line 1\n{key} = {value}\n")));
            assert_names(&err, &["node.properties:2", &format!("`{key}`"), &format!("{value:?}")]);
        }

        // A flag's bad value names the flag.
        let err = err_of(resolve(Vec::new(), Vec::new(), flags(&["--retention-ms", "soon"])));
        assert_names(&err, &["flag --retention-ms", "`retention.ms`", "\"soon\""]);

        // A bad value fails even when a higher source overrides it.
        let err =
            err_of(resolve(file("segment.preallocate=maybe"), Vec::new(), flags(&["--segment-preallocate", "zero"])));
        assert_names(&err, &["node.properties:1", "`segment.preallocate`"]);
    }

    #[test]
    fn peers_parse_and_must_list_this_node_at_its_advertised_address() {
        // A three-node list; whitespace tolerated, addresses normalised.
        let c = from_file(
            "node.id=2\ngrpc.listen=0.0.0.0:9091\ngrpc.advertised=Node-2:9091\n\
             peers = 1@node-1:9091, 2@node-2:9091 ,3@[::1]:9093\n",
        )
        .expect("valid peers");
        assert_eq!(
            c.peers,
            BTreeMap::from([
                (1, "node-1:9091".to_string()),
                (2, "node-2:9091".to_string()),
                (3, "[::1]:9093".to_string())
            ])
        );
        assert_eq!(c.grpc_advertised, "node-2:9091");

        // Malformed lists name the key and the offending part.
        for (value, part) in [
            ("", "at least one"),
            ("1@a:1,,2@b:2", "\"\""),
            ("1-a:1", "\"1-a:1\""),
            ("0@a:1", "start at 1"),
            ("x@a:1", "\"x@a:1\""),
            ("1@a:1,1@b:2", "node 1 is listed twice"),
            ("1@a", "host:port"),
            ("1@0.0.0.0:1", "unspecified"),
        ] {
            let err = err_of(from_file(&format!("peers={value}")));
            assert_names(&err, &["node.properties:1", "`peers`", part]);
        }

        // This node missing, or at another address: both keys are named.
        let err = err_of(from_file("node.id=3\npeers=1@a:1,2@b:2"));
        assert_names(&err, &["`peers` (from node.properties:2)", "`node.id` (from node.properties:1)", "3"]);
        let err = err_of(resolve(file("peers=1@a:1,2@b:2"), env(&[("KEEL_GRPC_ADVERTISED", "c:1")]), Vec::new()));
        assert_names(
            &err,
            &[
                "`peers` (from node.properties:1)",
                "a:1",
                "`grpc.advertised` (from environment variable KEEL_GRPC_ADVERTISED)",
                "c:1",
            ],
        );

        // Listening on every interface needs an explicit advertised address.
        let err = err_of(from_file("grpc.listen=0.0.0.0:9091"));
        assert_names(&err, &["`grpc.advertised`", "`grpc.listen` (from node.properties:1)", "0.0.0.0:9091"]);
    }

    #[test]
    fn max_message_bytes_must_fit_a_segment() {
        // An 8 KiB segment cannot hold the default 1 MiB message.
        let err = err_of(from_file("segment.bytes=8192"));
        assert_names(
            &err,
            &["`max.message.bytes` (default)", "1048576", "`segment.bytes` (from node.properties:1)", "8192"],
        );

        // The bound is the segment's largest payload less the framing.
        let limit =
            StoreConfig { segment_bytes: 8192, ..StoreConfig::new("x") }.max_payload_bytes() - MESSAGE_FRAMING_BYTES;
        let c = from_file(&format!("segment.bytes=8192\nmax.message.bytes={limit}")).expect("fits exactly");
        assert_eq!(c.max_message_bytes as usize, limit);
        let err = err_of(from_file(&format!("segment.bytes=8192\nmax.message.bytes={}", limit + 1)));
        assert_names(&err, &["`max.message.bytes` (from node.properties:2)", "`segment.bytes`"]);
    }

    /// A file of the test certificates (node/tests/data/tls, see gen.sh there).
    fn tls_data(name: &str) -> String {
        format!("{}/tests/data/tls/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn tls_keys_go_together_and_their_files_are_checked() {
        let (cert, key, ca) = (tls_data("node.pem"), tls_data("node.key"), tls_data("ca.pem"));
        // Phase: none set is plaintext; all three read the files.
        assert!(from_file("").expect("valid").tls.is_none());
        let c = from_file(&format!("tls.cert={cert}\ntls.key={key}\ntls.ca={ca}")).expect("valid TLS");
        let tls = c.tls.as_ref().expect("TLS on");
        assert_eq!(tls.cert.path, PathBuf::from(&cert));
        assert_eq!(tls.key.pem, std::fs::read(&key).expect("test key"));
        assert!(!format!("{c:?}").contains("PRIVATE KEY"), "the key's bytes must not print");
        assert_eq!(effective(&c)["tls.ca"], ca);
        assert_eq!(effective(&from_file("").expect("valid"))["tls.ca"], "");

        // Phase: a certificate without its key (or without the CA) names what is missing and what was set.
        let err = err_of(from_file(&format!("tls.cert={cert}")));
        assert_names(&err, &["`tls.key` is not set", "`tls.cert` (from node.properties:1)"]);
        let err = err_of(from_file(&format!("tls.cert={cert}\ntls.key={key}")));
        assert_names(&err, &["`tls.ca` is not set", "`tls.key` (from node.properties:2)"]);
        let err = err_of(resolve(Vec::new(), env(&[("KEEL_TLS_CA", &ca)]), Vec::new()));
        assert_names(&err, &["`tls.cert` is not set", "environment variable KEEL_TLS_CA"]);

        // Phase: an unreadable file, and files holding the wrong kind of PEM, name the key and the file.
        let err = err_of(from_file(&format!("tls.cert=/nonexistent/node.pem\ntls.key={key}\ntls.ca={ca}")));
        assert_names(&err, &["`tls.cert` (from node.properties:1)", "/nonexistent/node.pem", "cannot read"]);
        let err = err_of(from_file(&format!("tls.cert={key}\ntls.key={key}\ntls.ca={ca}")));
        assert_names(&err, &["`tls.cert`", &key, "no PEM CERTIFICATE"]);
        let err = err_of(from_file(&format!("tls.cert={cert}\ntls.key={cert}\ntls.ca={ca}")));
        assert_names(&err, &["`tls.key` (from node.properties:2)", &cert, "no PEM private key"]);
        let dir = tempfile::tempdir().expect("temp dir");
        let torn = dir.path().join("torn.pem");
        std::fs::write(&torn, "-----BEGIN CERTIFICATE-----\nAAAA\n").expect("write");
        let err = err_of(from_file(&format!("tls.cert={cert}\ntls.key={key}\ntls.ca={}", torn.display())));
        assert_names(&err, &["`tls.ca`", &torn.display().to_string(), "not valid PEM"]);
    }

    #[test]
    fn a_token_must_be_printable_ascii_and_is_never_echoed() {
        let err = err_of(from_file("admin.token=two words"));
        assert_names(&err, &["node.properties:1", "`admin.token`", "printable ASCII"]);
        assert!(!err.contains("two words"), "{err}");
        assert_eq!(
            from_file("admin.token=s3cr3t-T0ken_/+=").expect("valid").admin_token.as_deref(),
            Some("s3cr3t-T0ken_/+=")
        );
    }

    #[test]
    fn duplicate_key_in_a_file_names_both_lines() {
        let err = parse_properties("flush.batch.size=1\nnode.id=1\nflush.batch.size = 2\n", "node.properties")
            .expect_err("duplicate accepted");
        assert_eq!(
            err.to_string(),
            "node.properties:3: duplicate key `flush.batch.size` (first set at node.properties:1)"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.properties");
        let err = load_with_env(Some(&path), Vec::new(), Vec::new()).expect_err("missing file accepted");
        assert_names(&format!("{err:#}"), &[&path.display().to_string()]);
    }

    #[test]
    fn a_listen_address_with_an_ipv6_zone_prints_a_config_that_reads_back() {
        // grpc.listen takes a zone; the default grpc.advertised (and the
        // default peers) are its text, which must read back too.
        let c = from_file("grpc.listen=[fe80::1%2]:9091").expect("a zone in grpc.listen is valid");
        let printed = effective(&c);
        assert_eq!(printed["grpc.advertised"], "[fe80::1%2]:9091");
        let text: String =
            printed.iter().filter(|(k, _)| **k != "admin.token").map(|(k, v)| format!("{k}={v}\n")).collect();
        let back = from_file(&text).expect("printed configuration reads back");
        assert_eq!(effective(&back), printed);
        // A zone still needs a dialable address and a numeric zone.
        assert!(from_file("grpc.advertised=[::%2]:9091").is_err());
        assert!(from_file("grpc.advertised=[fe80::1%eth0]:9091").is_err());
    }

    #[test]
    fn check_output_lists_every_key_and_reads_back_as_the_same_config() {
        // `keel config check` prints every key once, sorted, token hidden.
        let c = from_file("node.id=2\npeers=1@a:1,2@127.0.0.1:9091\nadmin.token=s3cret\nsegment.preallocate=fallocate")
            .expect("valid");
        let printed = effective(&c);
        assert!(printed.keys().copied().eq({
            let mut keys: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
            keys.sort_unstable();
            keys
        }));
        assert_eq!(printed["admin.token"], "(set)");
        assert_eq!(printed["peers"], "1@a:1,2@127.0.0.1:9091");
        let unset = effective(&resolve(Vec::new(), Vec::new(), Vec::new()).expect("defaults"));
        assert_eq!(unset["admin.token"], "(unset)");

        // The output, token line aside, is a properties file for the same
        // configuration.
        let text: String =
            printed.iter().filter(|(k, _)| **k != "admin.token").map(|(k, v)| format!("{k}={v}\n")).collect();
        let back = from_file(&text).expect("printed configuration reads back");
        for (key, value) in effective(&back) {
            if key != "admin.token" {
                assert_eq!(printed[key], value, "{key}");
            }
        }
    }
}
