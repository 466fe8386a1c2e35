//! The node's configuration: the article's flush keys plus the node's own,
//! read from a `.properties` file, `KEEL_*` environment variables and flags.
//!
//! (Parsing is being written; see `load`.)

use std::collections::BTreeMap;
use std::net::SocketAddr;

use keel_raft_log::StoreConfig;

/// Everything `keel node` needs, validated.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `node.id`: this node's Raft id, at least 1.
    pub node_id: u64,
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
}

/// `keel node` flags. (Being written: one flag per key.)
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// A `.properties` file.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// `keel config check FILE`. (Being written.)
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {}

pub fn load(_args: &NodeArgs) -> anyhow::Result<NodeConfig> {
    anyhow::bail!("configuration loading is not written yet")
}

pub fn run(_args: ConfigArgs) -> anyhow::Result<()> {
    anyhow::bail!("keel config is not written yet")
}
