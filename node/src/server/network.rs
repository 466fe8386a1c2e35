//! The Raft client side of the network: one gRPC connection per peer
//! (tonic reconnects a lazy channel on demand), with a backoff after a
//! failed connection so an unreachable peer is not dialled on every
//! heartbeat.
//!
//! Replication runs as a pipelined gRPC stream (`AppendEntriesStream`): each
//! request goes out as openraft produces it, and answers come back in order
//! as the follower fsyncs. A snapshot is one client stream of file chunks.
//!
//! The server side (the `RaftPeer` service) is in [`super::peer`].

use std::collections::{HashMap, VecDeque};
use std::io::SeekFrom;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use keel_proto::raft as pb;
use keel_proto::raft::raft_peer_client::RaftPeerClient;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ErrorSubject, ErrorVerb, RaftNetworkV2, StorageError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::auth::PeerCredentials;
use super::types::{Snapshot, TypeConfig, Vote};
use super::wire::{self, AppendRange};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Snapshot bytes per InstallSnapshot message when openraft names no size
/// (it passes `snapshot_max_chunk_size`, which `raft_config` sets to this).
const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;
/// Streamed appends sent and not yet answered, at most: past it the stream
/// waits for answers before it takes more from openraft. As deep as the
/// follower's own pipeline (`Raft::stream_append` buffers 64).
const STREAM_INFLIGHT_MAX: usize = 64;
/// How long an append sent on a stream may wait for its answer before the
/// stream is taken for broken (openraft then backs off and reopens it).
const STREAM_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Room in a gRPC message for the vote and meta beside a chunk.
const SNAPSHOT_CHUNK_MAX_BYTES: usize = wire::MAX_GRPC_MESSAGE_BYTES / 2;
const _: () = assert!(SNAPSHOT_CHUNK_BYTES <= SNAPSHOT_CHUNK_MAX_BYTES);
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

/// Why a call to a peer got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// The peer failed a moment ago; calls wait out its backoff.
    #[error("{addr} is unreachable (backing off)")]
    BackingOff { addr: String },
    #[error("bad peer address {addr}: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("TLS for peer {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    /// An answer that breaks the protocol (a missing entry, a bad checksum).
    #[error("{0}")]
    BadAnswer(String),
}

impl Peers {
    pub fn new(tls: Option<ClientTlsConfig>, credentials: PeerCredentials) -> Self {
        Self { inner: Arc::default(), acks: Arc::default(), tls, credentials }
    }

    /// A client for node `target` at `addr`, or `None` while the peer is in
    /// backoff. Every call names `target`, so a node that is not it refuses.
    pub fn client(&self, addr: &str, target: u64) -> Result<PeerRpc, PeerCallError> {
        let mut peers = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            if c.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(PeerCallError::BackingOff { addr: addr.to_string() });
            }
            return Ok(self.rpc(c.channel.clone(), target));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|source| PeerCallError::Address { addr: addr.to_string(), source })?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|source| PeerCallError::Tls { addr: addr.to_string(), source })?;
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
            .max_decoding_message_size(wire::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(wire::MAX_GRPC_MESSAGE_BYTES)
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
    pub async fn node_status(&self, addr: &str, target: u64, timeout: Duration) -> Result<String, PeerCallError> {
        let mut c = self.client(addr, target)?;
        let req = pb::NodeStatusRequest {};
        match tokio::time::timeout(timeout, c.node_status(req)).await {
            Err(_) => Err(PeerCallError::Timeout(timeout)),
            Ok(Err(s)) => {
                if s.code() == tonic::Code::Unavailable {
                    self.failed(addr);
                }
                Err(PeerCallError::Refused(s))
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
    ) -> Result<Vec<keel_raft_log::Record>, PeerCallError> {
        let mut c = self.client(addr, target)?;
        let req = pb::ReadEntriesRequest { from, to, max_bytes: max_bytes as u64 };
        let entries = match tokio::time::timeout(timeout, c.read_entries(req)).await {
            Err(_) => return Err(PeerCallError::Timeout(timeout)),
            Ok(Err(s)) => {
                if s.code() == tonic::Code::Unavailable {
                    self.failed(addr);
                }
                return Err(PeerCallError::Refused(s));
            }
            Ok(Ok(r)) => r.into_inner().entries,
        };
        entries
            .into_iter()
            .map(|e| {
                let crc = e.crc32c;
                let entry = e.entry.ok_or_else(|| PeerCallError::BadAnswer("an answer without its entry".into()))?;
                let r = super::wire::record_from_pb(entry)
                    .map_err(|s| PeerCallError::BadAnswer(s.message().to_string()))?;
                if super::wire::record_crc(&r) != crc {
                    return Err(PeerCallError::BadAnswer(format!("entry {} fails its checksum", r.index)));
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
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient { target, addr: node.addr.clone(), peers: self.peers.clone() }
    }
}

/// The Raft client for one peer. Cloned into the streams it returns, so a
/// stream does not borrow it.
#[derive(Clone)]
pub struct PeerClient {
    target: u64,
    addr: String,
    peers: Peers,
}

/// Why a call did not get an answer: either the peer could not be reached
/// (openraft backs off) or it answered with an error status.
enum CallError {
    Unreachable(String),
    Status(tonic::Status),
}

impl PeerClient {
    fn rpc_error(&self, e: CallError) -> RPCError<TypeConfig> {
        match e {
            CallError::Unreachable(msg) => RPCError::Unreachable(Unreachable::from_string(msg)),
            CallError::Status(s) => {
                // A remote Raft error travels as JSON in the status details.
                // Under openraft 0.10 it can only be fatal (the peer's Raft
                // stopped), and asking again at once cannot help: let
                // openraft back off as from a peer that is down.
                if s.code() == tonic::Code::FailedPrecondition
                    && let Ok(err) = serde_json::from_slice::<RaftError<TypeConfig>>(s.details())
                {
                    return RPCError::Unreachable(Unreachable::from_string(format!(
                        "node {} at {}: {err}",
                        self.target, self.addr
                    )));
                }
                RPCError::Network(NetworkError::from_string(format!(
                    "node {} at {}: {}",
                    self.target,
                    self.addr,
                    s.message()
                )))
            }
        }
    }

    /// An error status from the peer, sorted: the ones that say it cannot
    /// be reached (or will not talk to this node) start the backoff.
    fn status_error(&self, s: tonic::Status) -> CallError {
        match s.code() {
            // The peer refuses this node's credentials (another
            // admin.token, or no certificate from its tls.ca), or is not
            // the node the call was meant for, or belongs to another
            // cluster: a configuration mistake no retry cures, so say it
            // loudly; the backoff bounds the repeats.
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                tracing::warn!(peer = self.target, addr = %self.addr, error = %s.message(), "a peer refused this node");
                self.peers.failed(&self.addr);
                CallError::Unreachable(format!("node {} at {}: {}", self.target, self.addr, s.message()))
            }
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                self.peers.failed(&self.addr);
                CallError::Unreachable(format!("node {} at {}: {}", self.target, self.addr, s.message()))
            }
            _ => CallError::Status(s),
        }
    }

    fn timed_out(&self) -> CallError {
        CallError::Unreachable(format!("node {} at {}: timed out", self.target, self.addr))
    }

    async fn call<T, F, Fut>(&self, option: &RPCOption, f: F) -> Result<T, CallError>
    where
        F: FnOnce(PeerRpc) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let c = self.peers.client(&self.addr, self.target).map_err(|e| CallError::Unreachable(e.to_string()))?;
        match tokio::time::timeout(option.hard_ttl(), f(c)).await {
            Err(_) => Err(self.timed_out()),
            Ok(Ok(r)) => {
                self.peers.succeeded(&self.addr);
                Ok(r.into_inner())
            }
            Ok(Err(s)) => Err(self.status_error(s)),
        }
    }
}

fn network_error(msg: impl ToString) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(msg))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = tokio::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = wire::append_to_pb(&rpc).map_err(|s| network_error(s.message()))?;
        let resp = self.call(&option, |mut c| async move { c.append_entries(req).await }).await;
        let resp = resp.map_err(|e| self.rpc_error(e))?;
        self.peers.acked(self.target);
        wire::append_resp_from_pb(resp).map_err(network_error)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let this = self.clone();
        Box::pin(async move {
            let stream = this.open_append_stream(input, &option).await.map_err(|e| this.rpc_error(e))?;
            Ok(stream)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = wire::vote_req_to_pb(&rpc);
        let resp = self.call(&option, |mut c| async move { c.vote(req).await }).await;
        let resp = resp.map_err(|e| self.rpc_error(e))?;
        wire::vote_resp_from_pb(resp).map_err(|s| network_error(s.message()))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let chunk_bytes =
            option.snapshot_chunk_size().unwrap_or(SNAPSHOT_CHUNK_BYTES).clamp(1, SNAPSHOT_CHUNK_MAX_BYTES);
        let Snapshot { meta, snapshot: mut file } = snapshot;
        let read_error = |e: std::io::Error| {
            StorageError::from_io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Read, e)
        };
        // The state machine may have read or written the file before.
        file.seek(SeekFrom::Start(0)).await.map_err(read_error)?;
        let first = pb::InstallSnapshotRequest {
            vote: Some(wire::vote_to_pb(&vote)),
            meta: Some(wire::snapshot_meta_to_pb(&meta).map_err(|s| network_error(s.message()))?),
            ..Default::default()
        };
        let chunks = SnapshotChunks::new(file, first, chunk_bytes);
        let (progress, failed) = (Arc::clone(&chunks.progress), Arc::clone(&chunks.failed));
        let c = self.peers.client(&self.addr, self.target).map_err(|e| Unreachable::from_string(e.to_string()))?;
        let ttl = option.hard_ttl();
        let call = async move {
            let mut c = c;
            c.install_snapshot(chunks.into_stream()).await
        };
        // A snapshot may be far larger than one timeout's worth of bytes:
        // what must not take longer than the timeout is each step (a chunk
        // read and handed to the connection, or, after the last, the
        // peer's install and answer).
        let stalled = async move {
            let mut tick = tokio::time::interval((ttl / 4).max(Duration::from_millis(1)));
            loop {
                tick.tick().await;
                if progress.lock().unwrap_or_else(|p| p.into_inner()).elapsed() > ttl {
                    return;
                }
            }
        };
        let resp = tokio::select! {
            r = call => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
            () = stalled => return Err(self.rpc_error(self.timed_out()).into()),
        };
        // The file failing to read ends the stream early: the peer's
        // complaint about that is not the news.
        if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(read_error(e).into());
        }
        match resp {
            Ok(r) => {
                self.peers.succeeded(&self.addr);
                wire::snapshot_resp_from_pb(r.into_inner()).map_err(|s| network_error(s.message()).into())
            }
            Err(s) => {
                let e = self.status_error(s);
                Err(self.rpc_error(e).into())
            }
        }
    }
}

/// A snapshot file as InstallSnapshot messages: the first carries the vote
/// and the meta, each a chunk, the last `done`.
struct SnapshotChunks {
    file: tokio::fs::File,
    first: Option<pb::InstallSnapshotRequest>,
    offset: u64,
    chunk_bytes: usize,
    done: bool,
    /// When the last message was handed over (the stall timeout's clock).
    progress: Arc<Mutex<Instant>>,
    /// Why the stream ended before `done`: the file would not read.
    failed: Arc<Mutex<Option<std::io::Error>>>,
}

impl SnapshotChunks {
    fn new(file: tokio::fs::File, first: pb::InstallSnapshotRequest, chunk_bytes: usize) -> Self {
        Self {
            file,
            first: Some(first),
            offset: 0,
            chunk_bytes,
            done: false,
            progress: Arc::new(Mutex::new(Instant::now())),
            failed: Arc::default(),
        }
    }

    fn into_stream(self) -> impl Stream<Item = pb::InstallSnapshotRequest> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move {
            if s.done {
                return None;
            }
            let data = match read_chunk(&mut s.file, s.chunk_bytes).await {
                Ok(data) => data,
                Err(e) => {
                    *s.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return None;
                }
            };
            // A short chunk is the end of the file.
            s.done = data.len() < s.chunk_bytes;
            let mut msg = s.first.take().unwrap_or_default();
            msg.offset = s.offset;
            msg.done = s.done;
            s.offset += data.len() as u64;
            msg.data = data.into();
            *s.progress.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            Some((msg, s))
        })
    }
}

/// Up to `max` bytes: fewer only at the end of the file.
async fn read_chunk(file: &mut tokio::fs::File, max: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; max];
    let mut filled = 0;
    while filled < max {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// A streamed append sent and not yet answered.
enum InFlight {
    Sent {
        range: AppendRange,
        at: Instant,
        /// A place in the window of [`STREAM_INFLIGHT_MAX`]; freed with the answer.
        _permit: OwnedSemaphorePermit,
    },
    /// The request would not encode, so the stream ended before it: what
    /// the leader hears once the answers to the ones before are in.
    Unsent(String),
}

type InFlightQueue = Arc<Mutex<VecDeque<InFlight>>>;

impl PeerClient {
    async fn open_append_stream<S>(
        &self,
        input: S,
        option: &RPCOption,
    ) -> Result<BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, CallError>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let queue: InFlightQueue = Arc::default();
        let window = Arc::new(Semaphore::new(STREAM_INFLIGHT_MAX));
        let requests = futures::stream::unfold((input, Arc::clone(&queue)), move |(mut input, queue)| {
            let window = Arc::clone(&window);
            async move {
                let req = input.next().await?;
                // The semaphore is never closed.
                let permit = window.acquire_owned().await.ok()?;
                let range = AppendRange::of(&req);
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                debug_assert!(q.len() < STREAM_INFLIGHT_MAX, "the window bounds the queue");
                match wire::append_to_pb(&req) {
                    Ok(msg) => {
                        q.push_back(InFlight::Sent { range, at: Instant::now(), _permit: permit });
                        drop(q);
                        Some((msg, (input, queue)))
                    }
                    Err(s) => {
                        q.push_back(InFlight::Unsent(s.message().to_string()));
                        None
                    }
                }
            }
        });
        let ttl = option.hard_ttl();
        let mut c = self.peers.client(&self.addr, self.target).map_err(|e| CallError::Unreachable(e.to_string()))?;
        let answers = match tokio::time::timeout(ttl, c.append_entries_stream(requests)).await {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(s)) => return Err(self.status_error(s)),
            Ok(Ok(r)) => r.into_inner(),
        };
        self.peers.succeeded(&self.addr);
        let state = Some((self.clone(), answers, queue));
        let stream = futures::stream::unfold(state, move |state| async move {
            let (this, mut answers, queue) = state?;
            // A follower answers an append once it is fsynced (BATCH_FLUSH:
            // with the batch, up to `flush.interval.ms` later), so an
            // answer may take longer than a heartbeat's round trip.
            let answer_ttl = ttl.max(STREAM_ANSWER_TIMEOUT);
            let (item, go_on) = this.next_answer(&mut answers, &queue, answer_ttl).await?;
            Some((item, go_on.then_some((this, answers, queue))))
        });
        Ok(Box::pin(stream))
    }

    /// The result for the oldest append in flight, and whether the stream
    /// goes on after it; `None` at the end of the stream.
    async fn next_answer(
        &self,
        answers: &mut tonic::Streaming<pb::AppendEntriesResponse>,
        queue: &InFlightQueue,
        ttl: Duration,
    ) -> Option<(Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>, bool)> {
        let answer = loop {
            match tokio::time::timeout(ttl, answers.message()).await {
                Ok(answer) => break answer,
                // An idle stream (nothing in flight) may wait for openraft
                // as long as it likes; an append may not wait for its
                // answer longer than a unary call would.
                Err(_) => {
                    let q = queue.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(InFlight::Sent { at, .. }) = q.front()
                        && at.elapsed() >= ttl
                    {
                        drop(q);
                        return Some((Err(self.rpc_error(self.timed_out())), false));
                    }
                }
            }
        };
        let front = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        match (answer, front) {
            (Err(s), _) => {
                let e = self.status_error(s);
                Some((Err(self.rpc_error(e)), false))
            }
            // The peer ended the stream: after the last request, or after
            // a result that ends it (then nothing more was due).
            (Ok(None), Some(InFlight::Unsent(msg))) => Some((Err(network_error(msg)), false)),
            (Ok(None), _) => None,
            (Ok(Some(_)), None | Some(InFlight::Unsent(_))) => {
                Some((Err(network_error(format!("node {}: an answer to no append", self.target))), false))
            }
            (Ok(Some(answer)), Some(InFlight::Sent { range, .. })) => {
                self.peers.acked(self.target);
                match wire::stream_result_from_pb(answer, &range) {
                    Err(msg) => Some((Err(network_error(format!("node {}: {msg}", self.target))), false)),
                    Ok(result) => {
                        // Like openraft's sequential stream: after a
                        // refusal, or an append taken only in part, the
                        // requests behind it no longer follow on.
                        let go_on = matches!(&result, Ok(matching) if *matching == range.last);
                        Some((Ok(result), go_on))
                    }
                }
            }
        }
    }
}
