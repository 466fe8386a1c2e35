//! The Raft client side of the network: one gRPC connection per peer
//! (tonic reconnects a lazy channel on demand), with a backoff after a
//! failed connection so an unreachable peer is not dialled on every
//! heartbeat.
//!
//! The server side (the `RaftPeer` service) is in [`super::peer`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_proto::raft::raft_peer_client::RaftPeerClient;
use keel_raft_log::{Store, log_id};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode, LogId};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::auth::PeerCredentials;
use super::types::TypeConfig;
use super::wire;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A peer RPC client: every call carries this node's credentials.
pub type PeerRpc = RaftPeerClient<InterceptedService<Channel, PeerCredentials>>;

/// Shared among the per-peer clients: channels by address, so a peer's
/// channel (and its HTTP/2 connection) is reused by every Raft stream and by
/// the durable-index reporter.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Mutex<HashMap<String, PeerConn>>>,
    /// When each node last answered an AppendEntries (heartbeats included):
    /// the admin status shows the time since.
    acks: Arc<Mutex<HashMap<u64, Instant>>>,
    /// `Some`: peers are dialled over TLS (mutual: this node's certificate
    /// is presented).
    tls: Option<ClientTlsConfig>,
    /// The token every peer call carries when `admin.token` is set.
    credentials: PeerCredentials,
}

#[derive(Clone)]
struct PeerConn {
    channel: Channel,
    /// Connection attempts fail fast until then.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Peers {
    pub fn new(tls: Option<ClientTlsConfig>, credentials: PeerCredentials) -> Self {
        Self { inner: Arc::default(), acks: Arc::default(), tls, credentials }
    }

    /// A client for node `target` at `addr`, or `None` while the peer is in
    /// backoff. Every call names `target`, so a node that is not it refuses.
    pub fn client(&self, addr: &str, target: u64) -> Result<PeerRpc, String> {
        let mut peers = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            if c.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(format!("{addr} is unreachable (backing off)"));
            }
            return Ok(self.rpc(c.channel.clone(), target));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| format!("bad peer address {addr}: {e}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| format!("TLS for peer {addr}: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        peers.insert(addr.to_string(), PeerConn { channel: channel.clone(), retry_at: None, backoff: BACKOFF_MIN });
        Ok(self.rpc(channel, target))
    }

    fn rpc(&self, channel: Channel, target: u64) -> PeerRpc {
        RaftPeerClient::with_interceptor(channel, self.credentials.to(target))
            .max_decoding_message_size(super::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(super::MAX_GRPC_MESSAGE_BYTES)
    }

    fn failed(&self, addr: &str) {
        let mut peers = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get_mut(addr) {
            c.retry_at = Some(Instant::now() + c.backoff);
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn acked(&self, node: u64) {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).insert(node, Instant::now());
    }

    /// When node `node` last answered an AppendEntries from this node.
    pub fn last_ack(&self, node: u64) -> Option<Instant> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).get(&node).copied()
    }

    fn succeeded(&self, addr: &str) {
        let mut peers = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get_mut(addr) {
            c.retry_at = None;
            c.backoff = BACKOFF_MIN;
        }
    }
}

impl Peers {
    /// The admin status document of node `target` at `addr`, within `timeout`.
    pub async fn node_status(&self, addr: &str, target: u64, timeout: Duration) -> Result<String, String> {
        let mut c = self.client(addr, target)?;
        let req = keel_proto::raft::NodeStatusRequest {};
        match tokio::time::timeout(timeout, c.node_status(req)).await {
            Err(_) => Err(format!("{addr}: no answer within {timeout:?}")),
            Ok(Err(s)) => {
                if s.code() == tonic::Code::Unavailable {
                    self.failed(addr);
                }
                Err(format!("{addr}: {}", s.message()))
            }
            Ok(Ok(r)) => Ok(r.into_inner().json),
        }
    }

    /// Entries `from..=to` (a first part of them, about `max_bytes`) as the
    /// node at `addr` holds them, each checked against its checksum.
    pub async fn read_entries(
        &self,
        addr: &str,
        target: u64,
        from: u64,
        to: u64,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<keel_raft_log::Record>, String> {
        let mut c = self.client(addr, target)?;
        let req = keel_proto::raft::ReadEntriesRequest { from, to, max_bytes: max_bytes as u64 };
        let entries = match tokio::time::timeout(timeout, c.read_entries(req)).await {
            Err(_) => return Err(format!("no answer within {timeout:?}")),
            Ok(Err(s)) => {
                if s.code() == tonic::Code::Unavailable {
                    self.failed(addr);
                }
                return Err(format!("{:?}: {}", s.code(), s.message()));
            }
            Ok(Ok(r)) => r.into_inner().entries,
        };
        entries
            .into_iter()
            .map(|e| {
                let crc = e.crc32c;
                let entry = e.entry.ok_or("an answer without its entry")?;
                let r = super::wire::record_from_pb(entry).map_err(|s| s.message().to_string())?;
                if super::wire::record_crc(&r) != crc {
                    return Err(format!("entry {} fails its checksum", r.index));
                }
                Ok(r)
            })
            .collect()
    }
}

/// openraft's factory: one [`PeerClient`] per target.
#[derive(Clone)]
pub struct Network {
    pub peers: Peers,
    /// Under SYNC_FLUSH and BATCH_FLUSH, this node's store and the durable
    /// index: AppendEntries then carry the log id at the durable index as
    /// the commit (`durable.rs`, the durability rule).
    pub durable: Option<(Store, watch::Receiver<u64>)>,
    /// The highest durable index sent (the durable actor's nudge reads it).
    pub durable_sent: Arc<AtomicU64>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            durable: self.durable.clone(),
            durable_sent: Arc::clone(&self.durable_sent),
        }
    }
}

pub struct PeerClient {
    target: u64,
    addr: String,
    peers: Peers,
    durable: Option<(Store, watch::Receiver<u64>)>,
    durable_sent: Arc<AtomicU64>,
}

/// Why a call did not get an answer: either the peer could not be reached
/// (openraft backs off) or it answered with an error status.
enum CallError {
    Unreachable(String),
    Status(tonic::Status),
}

impl PeerClient {
    fn rpc_error<E: std::error::Error + serde::de::DeserializeOwned>(
        &self,
        e: CallError,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        match e {
            CallError::Unreachable(msg) => RPCError::Unreachable(Unreachable::new(&AnyError::error(msg))),
            CallError::Status(s) => {
                // A remote Raft error travels as JSON in the status details.
                if s.code() == tonic::Code::FailedPrecondition
                    && let Ok(err) = serde_json::from_slice::<RaftError<u64, E>>(s.details())
                {
                    return RPCError::RemoteError(RemoteError::new(self.target, err));
                }
                RPCError::Network(NetworkError::new(&AnyError::error(format!(
                    "node {} at {}: {}",
                    self.target,
                    self.addr,
                    s.message()
                ))))
            }
        }
    }

    async fn call<T, F, Fut>(&self, option: &RPCOption, f: F) -> Result<T, CallError>
    where
        F: FnOnce(PeerRpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let c = self.peers.client(&self.addr, self.target).map_err(CallError::Unreachable)?;
        match tokio::time::timeout(option.hard_ttl(), f(c)).await {
            Err(_) => Err(CallError::Unreachable(format!("node {} at {}: timed out", self.target, self.addr))),
            Ok(Ok(r)) => {
                self.peers.succeeded(&self.addr);
                Ok(r.into_inner())
            }
            // The peer refuses this node's credentials (another admin.token,
            // or no certificate from its tls.ca), or is not the node the
            // call was meant for, or belongs to another cluster: a
            // configuration mistake no retry cures, so say it loudly; the
            // backoff bounds the repeats.
            Ok(Err(s)) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
                tracing::warn!(peer = self.target, addr = %self.addr, error = %s.message(), "a peer refused this node");
                self.peers.failed(&self.addr);
                Err(CallError::Unreachable(format!("node {} at {}: {}", self.target, self.addr, s.message())))
            }
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown => {
                self.peers.failed(&self.addr);
                Err(CallError::Unreachable(format!("node {} at {}: {}", self.target, self.addr, s.message())))
            }
            Ok(Err(s)) => Err(CallError::Status(s)),
        }
    }
}

/// Under SYNC_FLUSH and BATCH_FLUSH (`LogStore::leader_acks_on_write`)
/// openraft's commit index may count the leader's copy before its fsync:
/// the durable index (`durable.rs`) is what a majority has fsynced. The
/// index followers get as the commit, and the log id there: never past the
/// durable index, since Raft takes a follower's committed entries as
/// permanent, and an entry only the leader's unsynced copy made committed
/// may yet be lost to a power cut of the leader and replaced.
fn durable_commit(store: &Store, commit: &LogId<u64>, durable: u64) -> (u64, Option<LogId<u64>>) {
    let index = durable.min(commit.index);
    if index == commit.index {
        return (index, Some(*commit));
    }
    let at = store.log_pos_at(index).ok().flatten();
    // Below the first entry read: the purge point, if that is where it is.
    let at = at.or_else(|| store.log_state().0.filter(|p| p.index == index));
    match at {
        Some(at) => (index, Some(log_id(at))),
        // Nothing durable to name: tell followers nothing new.
        None => (0, None),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let mut req = wire::append_to_pb(&rpc)
            .map_err(|s| RPCError::Network(NetworkError::new(&AnyError::error(s.message()))))?;
        if let (Some((store, durable)), Some(commit)) = (&self.durable, &rpc.leader_commit) {
            let (durable, at) = durable_commit(store, commit, *durable.borrow());
            req.durable_index = durable;
            req.leader_commit = at.as_ref().map(wire::log_id_to_pb);
            self.durable_sent.fetch_max(durable, Ordering::AcqRel);
        }
        let resp = self.call(&option, |mut c| async move { c.append_entries(req).await }).await;
        let resp = resp.map_err(|e| self.rpc_error(e))?;
        self.peers.acked(self.target);
        wire::append_resp_from_pb(resp).map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e))))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        let req = wire::snapshot_req_to_pb(&rpc)
            .map_err(|s| RPCError::Network(NetworkError::new(&AnyError::error(s.message()))))?;
        let resp = self.call(&option, |mut c| async move { c.install_snapshot(req).await }).await;
        let resp = resp.map_err(|e| self.rpc_error(e))?;
        wire::snapshot_resp_from_pb(resp)
            .map_err(|s| RPCError::Network(NetworkError::new(&AnyError::error(s.message()))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let req = wire::vote_req_to_pb(&rpc);
        let resp = self.call(&option, |mut c| async move { c.vote(req).await }).await;
        let resp = resp.map_err(|e| self.rpc_error(e))?;
        wire::vote_resp_from_pb(resp).map_err(|s| RPCError::Network(NetworkError::new(&AnyError::error(s.message()))))
    }
}

#[cfg(test)]
mod tests {
    use keel_raft_log::{NewRecord, RecordKind, RecordMeta, StoreConfig};
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, leader: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, leader), index)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_get_as_commit_only_what_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).await.expect("open store");
        assert_eq!(durable_commit(&store, &id(1, 1, 3), 2), (0, None), "nothing in the log yet: nothing to tell");
        let records = (1..=5)
            .map(|index| NewRecord {
                meta: RecordMeta { kind: RecordKind::Blank, term: 1 + index / 4, leader: 2, index, timestamp_ms: 0 },
                payload: Vec::new(),
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.append(records, Box::new(move |r| drop(tx.send(r)))).await.expect("append");
        rx.await.expect("flushed").expect("flush ok");
        // Committed at or below the durable index: the commit as it is.
        assert_eq!(durable_commit(&store, &id(1, 2, 3), 5), (3, Some(id(1, 2, 3))));
        assert_eq!(durable_commit(&store, &id(2, 2, 5), 5), (5, Some(id(2, 2, 5))));
        // Committed past it (a copy counted before its fsync): the log id
        // of the last durable entry instead.
        assert_eq!(durable_commit(&store, &id(3, 2, 9), 5), (5, Some(id(2, 2, 5))));
        assert_eq!(durable_commit(&store, &id(2, 2, 5), 2), (2, Some(id(1, 2, 2))));
        store.close().await.expect("close");
    }
}
