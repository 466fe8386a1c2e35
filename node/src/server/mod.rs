//! `keel node`: one node of a keel cluster, as a few actors around openraft.
//!
//! - **network**: one gRPC port serving the client API ([`client_service`])
//!   and the peer API ([`peer`]); the Raft client side ([`network`]) keeps one
//!   connection per peer. Optional TLS ([`tls`]); `admin.token` guards admin
//!   mutations and peer RPCs ([`auth`]).
//! - **raft**: the openraft `Raft` with the log store (`keel-raft-log`, whose
//!   **flusher** actor owns fsync) and the state machine ([`state_machine`]
//!   over [`state`]).
//! - **proposer** ([`proposer`]): packs concurrent produce batches into one
//!   Raft entry.
//! - **durable** ([`durable`]): the durable index.
//! - **retention** ([`retention`]): trims partitions, snapshots, deletes
//!   segments.
//! - **admin** ([`admin`]): the HTTP API on `admin.listen` (status, cluster,
//!   topics, digest, membership, snapshots, `/metrics`, health, the page).
//!
//! Start-up repairs damaged log ranges from a peer ([`repair`]), recovers
//! the store (torn tails cut, corruption refused), loads
//! the newest checkpoint and lets openraft re-apply the committed entries
//! after it. SIGTERM or SIGINT stops the server, then Raft, then closes the
//! store (its flusher syncs what was written).

pub mod admin;
mod auth;
pub mod client_service;
mod codec;
mod describe;
pub mod disk;
mod durable;
pub mod entry;
mod grpc_status;
pub(crate) mod identity;
pub mod index;
mod metrics;
#[cfg(test)]
mod module_graph;
mod network;
mod peer;
mod proposer;
mod raft_errors;
pub mod repair;
pub(crate) mod reserve;
mod retention;
pub mod state;
mod state_machine;
mod tls;
pub mod types;
mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use keel_proto::client::keel_server::KeelServer;
use keel_proto::raft::raft_peer_server::RaftPeerServer;
use keel_raft_log::Store;
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, SnapshotPolicy};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use crate::config::NodeConfig;

fn raft_config() -> Result<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "keel".into(),
        heartbeat_interval: 150,
        election_timeout_min: 800,
        election_timeout_max: 1600,
        install_snapshot_timeout: 10_000,
        // Entries are produce groups of up to about 1 MiB plus one batch of
        // at most 16 MiB: 16 of them stay below wire::MAX_GRPC_MESSAGE_BYTES.
        max_payload_entries: 16,
        // Retention decides when to snapshot and purge (DESIGN.md, openraft notes).
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        snapshot_max_chunk_size: 4 << 20,
        // Replication reads an entry as soon as the leader's append of it
        // returns (written, not yet fsynced): the leader's fsync runs beside
        // the followers' (Raft thesis §10.2.1); it counts toward a commit
        // only once its own append completed, after its fsync.
        broadcast_submitted_on_append: Some(true),
        // A follower's log may go back after a power cut under ASYNC_FLUSH
        // (unsynced entries lost), and repair may rewrite a damaged range:
        // the leader then replicates from where the follower really is.
        allow_log_reversion: Some(true),
        // A restarted leader must win an election (see `start`).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    c.validate().context("raft configuration")
}

/// The log goes to stderr, coloured only where `log.color` says: a log
/// file or a pipe (`keel node 2>node.log`, `keel dev`'s children) gets no
/// escape codes.
fn init_tracing(color: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error,openraft::replication=off"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(color).with_writer(std::io::stderr).try_init();
}

/// Every partition keeps three index files open (`index`): raise the soft
/// limit on open files to the hard one, as servers that hold many files do,
/// so a topic of 1,024 partitions does not meet a soft limit of 1,024.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(to = ?limit.maximum, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, current = ?limit.current, "could not raise the open-file limit"),
        }
    }
}

pub async fn run(config: NodeConfig) -> Result<()> {
    init_tracing(config.log_color.enabled());
    raise_open_file_limit();
    // Before the store opens, so its first fsyncs are counted too.
    let _ = metrics::handle();
    // Both ports first: one in use stops the node before it touches anything.
    let admin_listener = admin::bind(config.admin_listen)?;
    let node_id = config.node_id;
    if let Some(files) = &config.tls {
        tls::check(files)?;
    }
    let identity = identity::Identity::new(node_id);
    let peers = network::Peers::new(
        config.tls.as_ref().map(tls::peer_client_config),
        auth::PeerCredentials::new(config.admin_token.as_deref(), identity.clone())?,
    );
    let Started { raft, sm, store, shared, durable, reserve, repairs, client_service } =
        start(&config, &peers, &identity).await?;
    let admin = Arc::new(admin::Admin::new(
        admin::NodeHandles {
            node_id,
            raft: raft.clone(),
            store: store.clone(),
            shared: shared.clone(),
            durable: durable.clone(),
            peers: peers.clone(),
            reserve,
            identity: identity.clone(),
        },
        admin::AdminSettings {
            flush_config: crate::config::effective(&config)
                .into_iter()
                .filter(|(k, _)| k.starts_with("flush."))
                .collect(),
            advertised: config.grpc_advertised.clone(),
            token: config.admin_token.clone(),
            client_tls: config.tls.as_ref().map(tls::client_options).transpose()?,
        },
        repairs,
    ));
    let peer_service = peer::PeerService {
        raft: raft.clone(),
        sm: sm.clone(),
        store: store.clone(),
        durable,
        status: {
            let admin = admin.clone();
            Arc::new(move || serde_json::to_string(&admin.status()))
        },
        identity: identity.clone(),
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let incoming = tonic::transport::server::TcpIncoming::bind(config.grpc_listen)
        .with_context(|| format!("listen on grpc.listen {}", config.grpc_listen))?
        .with_nodelay(Some(true));
    let mut server_shutdown = shutdown_rx.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(files) = &config.tls {
        builder = builder.tls_config(tls::server_config(files)).context("TLS on the gRPC port")?;
    }
    let peer_guard = auth::PeerGuard {
        token: config.admin_token.as_deref().map(Arc::from),
        require_client_cert: config.tls.is_some(),
        identity: identity.clone(),
    };
    let server = tokio::spawn(
        builder
            .add_service(
                KeelServer::new(client_service)
                    .max_decoding_message_size(wire::MAX_GRPC_MESSAGE_BYTES)
                    .max_encoding_message_size(wire::MAX_GRPC_MESSAGE_BYTES),
            )
            .add_service(InterceptedService::new(
                RaftPeerServer::new(peer_service)
                    .max_decoding_message_size(wire::MAX_GRPC_MESSAGE_BYTES)
                    .max_encoding_message_size(wire::MAX_GRPC_MESSAGE_BYTES),
                peer_guard,
            ))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_shutdown.wait_for(|&s| s).await;
            }),
    );
    tracing::info!(
        node_id,
        grpc = %config.grpc_listen,
        advertised = %config.grpc_advertised,
        tls = config.tls.is_some(),
        token = config.admin_token.is_some(),
        dir = %config.store.dir.display(),
        flush = %config.store.flush.policy,
        "keel node started"
    );

    let admin_server = tokio::spawn(admin::serve(admin, admin_listener, shutdown_rx.clone()));

    if config.cluster_bootstrap {
        bootstrap(&raft, &config, &store, &identity).await?;
    }

    let retention = tokio::spawn(
        retention::Retention {
            node_id,
            raft: raft.clone(),
            store: store.clone(),
            shared,
            sm: sm.clone(),
            producer_id_expiry_ms: config.producer_id_expiry_ms,
            shutdown: shutdown_rx.clone(),
        }
        .run(),
    );

    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut metrics = raft.metrics();
    let mut admin_server = admin_server;
    let failure = loop {
        tokio::select! {
            r = &mut admin_server => {
                break Some(match r {
                    Ok(Ok(())) => "the admin HTTP server stopped".to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => format!("the admin HTTP server panicked: {e}"),
                });
            }
            // Fail-stop: a store that failed an fsync or a write refuses
            // every later write, and openraft notices only when it next
            // appends. Until then the node would heartbeat and vote as a
            // zombie (a follower idle under BATCH_FLUSH, say), so it stops
            // as soon as the store fails. Restart recovers from the files.
            e = store.wait_failed() => break Some(e.to_string()),
            _ = sigterm.recv() => break None,
            _ = sigint.recv() => break None,
            r = metrics.changed() => {
                if r.is_err() {
                    break Some("raft stopped".to_string());
                }
                if let Err(e) = &metrics.borrow_watched().running_state {
                    break Some(format!("raft stopped: {e}"));
                }
            }
        }
    };
    // Raft stops on the same storage error, perhaps first; the store's own
    // words name the operation and the file.
    let failure = match store.failure() {
        Some(e) => Some(e.to_string()),
        None => failure,
    };
    match &failure {
        Some(f) => tracing::error!(node_id, failure = %f, "shutting down"),
        None => tracing::info!(node_id, "shutting down"),
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if !admin_server.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut admin_server).await;
    }
    let _ = retention.await;
    let _ = raft.shutdown().await;
    drop(raft);
    // A clean stop leaves a checkpoint of everything applied: the next
    // start replays nothing (not after a failure: the files may be what failed).
    if failure.is_none()
        && let Err(e) = sm.checkpoint(None).await
    {
        tracing::warn!(node_id, error = %e, "no checkpoint at shutdown; the next start replays from the last one");
    }
    let closed = store.close().await;
    if let Some(f) = failure {
        anyhow::bail!("node {node_id} stopped: {f}");
    }
    closed.context("close the log store")?;
    tracing::info!(node_id, "stopped");
    Ok(())
}

/// The node's storage, Raft and client service, started but not yet on the
/// network: [`run`] serves them, [`in_process`] hands the client service to
/// a caller in this process.
struct Started {
    raft: state_machine::Raft,
    sm: state_machine::StateMachine,
    store: Store,
    shared: Arc<state_machine::Shared>,
    durable: durable::DurableHandle,
    reserve: reserve::DiskReserve,
    repairs: Vec<repair::Repaired>,
    client_service: client_service::ClientService,
}

async fn start(config: &NodeConfig, peers: &network::Peers, identity: &identity::Identity) -> Result<Started> {
    let node_id = config.node_id;
    // Before anything touches the data directory: it must be this node's.
    identity
        .check_data_dir(&config.store.dir, config.node_id_given)
        .with_context(|| format!("check whose data {} holds", config.store.dir.display()))?;
    // Before the store opens and before Raft starts: a log that lacks
    // entries it held must not vote or lead.
    let repairs = repair::repair_log(config, peers).await.context("repair the log from a peer")?;
    let store =
        open_store(config).await.with_context(|| format!("open the log store in {}", config.store.dir.display()))?;
    identity.record(&store).await.context("record this node's id in the log store")?;
    // Every node restarts without a leader it trusts: its saved vote, if
    // committed, is saved again as merely cast (still a vote for the same
    // node in the same term, so it cannot vote twice in that term).
    // - A node that was the leader would otherwise lead the same term again.
    //   Its log may have lost entries it had written but not fsynced (the
    //   leader replicates before its own fsync) that followers hold durably
    //   under the same log ids: staying leader of that term, it would issue
    //   those log ids again for other entries, and Raft, which tells entries
    //   apart by log id, would never repair the divergence. Found by
    //   keel-chaos power-loss under BATCH_FLUSH (an acknowledged message
    //   lost, replicas diverged). So it must win an election in a higher
    //   term, which only a node holding every majority-fsynced entry can.
    // - A follower would otherwise report its old leader as current at once
    //   (openraft 0.10 restores a committed vote's leader), and reads would
    //   take its state, re-applied only up to the committed id on disk, for
    //   current (issue 16, item 1): it waits to hear from a leader instead.
    if let Some(v) = store.read_vote()
        && v.committed
    {
        store
            .save_vote(keel_raft_log::format::MetaVote { committed: false, ..v })
            .await
            .context("forget the leadership known before the restart")?;
    }
    let (sm, shared) = state_machine::StateMachine::open(store.clone()).await.context("open the state machine")?;
    // Under SYNC_FLUSH and BATCH_FLUSH the committed id on disk is one the
    // cluster had fsynced on a majority (`Store::committed_on_disk`).
    let fsync_rule = durable::waits_for_fsync(config.store.flush.policy);
    let known_durable = if fsync_rule { store.read_committed().map_or(0, |c| c.index) } else { 0 };
    let log_store = types::LogStore::new(store.clone());
    let network = network::Network { peers: peers.clone() };
    let raft = state_machine::Raft::new(node_id, Arc::new(raft_config()?), network, log_store, sm.clone())
        .await
        .context("start raft")?;
    sm.raft_started();

    let durable = durable::DurableHandle::start(node_id, raft.clone(), store.clone(), peers.clone(), known_durable);
    // The store writes to disk only the committed id the cluster has fsynced
    // on a majority.
    {
        let (mut rx, store) = (durable.subscribe(), store.clone());
        store.note_durable(*rx.borrow_and_update());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let d = *rx.borrow_and_update();
                store.note_durable(d);
            }
        });
    }
    let proposer = proposer::ProposerHandle::start(
        raft.clone(),
        store.max_payload_bytes(),
        config.store.flush.commitlog_timeout(),
    );
    let reserve = reserve::DiskReserve::new(config.store.dir.clone(), config.reserve_bytes);
    let limits = client_service::Limits {
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        max_message_bytes: config.max_message_bytes,
        commitlog_timeout: config.store.flush.commitlog_timeout(),
        policy: config.store.flush.policy,
        advertised: config.grpc_advertised.clone(),
    };
    let client_service = client_service::ClientService {
        node_id,
        raft: raft.clone(),
        store: store.clone(),
        shared: shared.clone(),
        proposer,
        durable: durable.clone(),
        limits,
        reserve: reserve.clone(),
        token: config.admin_token.as_deref().map(Arc::from),
        membership: Arc::default(),
        identity: identity.clone(),
    };
    Ok(Started { raft, sm, store, shared, durable, reserve, repairs, client_service })
}

/// A single-node cluster in `dir`, running in this process and off the
/// network (no port is bound, no peer dialled, no retention): the fuzz
/// targets (`fuzz/`) drive its client service with arbitrary requests.
pub struct InProcess {
    client: client_service::ClientService,
    raft: state_machine::Raft,
    store: Store,
}

impl InProcess {
    /// The `Keel` gRPC service, to call its handlers directly.
    pub fn client(&self) -> &client_service::ClientService {
        &self.client
    }

    /// Stop Raft and close the store (its flusher syncs what was written).
    pub async fn shutdown(self) -> Result<()> {
        let Self { client, raft, store } = self;
        drop(client);
        let _ = raft.shutdown().await;
        drop(raft);
        store.close().await.context("close the log store")
    }
}

/// Start node 1 of a one-node cluster on `dir` with small segments and
/// SYNC_FLUSH, and wait until it leads.
pub async fn in_process(dir: &std::path::Path) -> Result<InProcess> {
    let text = format!(
        "store.path.commitlog={}\nsegment.bytes={}\nmax.message.bytes={}\nstore.reserve.bytes=0\n",
        dir.display(),
        1 << 20,
        256 << 10
    );
    let file = crate::config::parse_properties(&text, "in_process")?;
    let config = crate::config::resolve(file, Vec::new(), Vec::new())?;
    let identity = identity::Identity::new(config.node_id);
    let peers = network::Peers::new(None, auth::PeerCredentials::new(None, identity.clone())?);
    let Started { raft, store, client_service, .. } = start(&config, &peers, &identity).await?;
    bootstrap(&raft, &config, &store, &identity).await?;
    raft.wait(Some(Duration::from_secs(30)))
        .current_leader(config.node_id, "the one node leads")
        .await
        .context("wait for the one node to lead")?;
    Ok(InProcess { client: client_service, raft, store })
}

/// The environment variable that arms an EIO failpoint in the log's I/O
/// layer: `fsync:after=N`, `fsync:when=PATH`, `write:after=N` or
/// `write:when=PATH`. Honoured only by test builds (keel-raft-log's
/// `fault-injection` feature, which `cargo test` turns on through this
/// crate's dev-dependencies, as does the `power-loss` build); any other
/// build refuses to start with it set, so it cannot strike in a release.
pub const FAULT_EIO_ENV: &str = "KEEL_FAULT_EIO";

async fn open_store(config: &NodeConfig) -> Result<Store> {
    let spec = match std::env::var(FAULT_EIO_ENV) {
        Ok(spec) => Some(spec),
        Err(std::env::VarError::NotPresent) => None,
        Err(e) => anyhow::bail!("{FAULT_EIO_ENV}: {e}"),
    };
    let fs = keel_raft_log::io::with_eio_failpoint(base_fs(), spec.as_deref())
        .map_err(|e| anyhow::anyhow!("{FAULT_EIO_ENV}: {e}"))?;
    Ok(Store::open_with(config.store.clone(), fs).await?)
}

#[cfg(not(feature = "power-loss"))]
fn base_fs() -> Arc<dyn keel_raft_log::FileSystem> {
    Arc::new(keel_raft_log::RealFs)
}

/// The test-only power-loss build: unsynced writes stay in memory until the
/// store syncs them, so killing the process loses exactly what a power cut
/// would (directory changes excepted: they reach the real directory at once).
#[cfg(feature = "power-loss")]
fn base_fs() -> Arc<dyn keel_raft_log::FileSystem> {
    tracing::warn!(
        "power-loss test build: unsynced writes live in this process's memory until fdatasync; never use it in \
         production"
    );
    Arc::new(keel_raft_log::fault::FaultFs::new())
}

/// Initialise a fresh cluster from `peers` (only when this node's store has
/// never seen a vote or an entry), under a new cluster id.
async fn bootstrap(
    raft: &state_machine::Raft,
    config: &NodeConfig,
    store: &Store,
    identity: &identity::Identity,
) -> Result<()> {
    if raft.is_initialized().await.context("ask raft whether it is initialised")? {
        return Ok(());
    }
    identity.create_cluster(store).await.context("record the new cluster's id")?;
    let members: BTreeMap<u64, BasicNode> =
        config.peers.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(peers = ?config.peers, "cluster initialised (cluster.bootstrap)"),
        // Another node of the same fresh cluster may have won an election already.
        Err(e) => tracing::warn!(error = %e, "cluster.bootstrap: not initialised"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use keel_proto::client::{self as pb, keel_server::Keel as _};
    use tonic::Request;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_process_node_serves_its_handlers_without_a_network() {
        // The fuzz targets' harness (not built by CI): it starts, leads,
        // takes a topic and a produce, and reads the record back.
        let dir = tempfile::tempdir().expect("tempdir");
        let node = super::in_process(dir.path()).await.expect("starts");
        let c = node.client();
        c.create_topic(Request::new(pb::CreateTopicRequest { name: "t".into(), config: None }))
            .await
            .expect("create topic");
        let record = pb::Record { value: b"v".to_vec().into(), ..Default::default() };
        let r = c
            .produce(Request::new(pb::ProduceRequest {
                topic: "t".into(),
                records: vec![record],
                ..Default::default()
            }))
            .await
            .expect("produce")
            .into_inner();
        assert_eq!((r.base_offset, r.count), (0, 1));
        let f = c
            .fetch(Request::new(pb::FetchRequest { topic: "t".into(), ..Default::default() }))
            .await
            .expect("fetch")
            .into_inner();
        assert_eq!(f.records.len(), 1);
        assert_eq!(&f.records[0].value[..], b"v");
        node.shutdown().await.expect("shuts down");
    }
}
