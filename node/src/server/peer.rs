//! The `RaftPeer` gRPC service: openraft's RPCs from the leader (appends,
//! unary and as a pipelined stream; votes; a whole snapshot as one client
//! stream), followers' fsynced-index reports for the durable index
//! (ASYNC_FLUSH), this node's admin status for a peer's `/api/v1/cluster`,
//! and log entries for a peer repairing a damaged range (see
//! [`super::repair`]).
//!
//! A Raft error from openraft travels back as FAILED_PRECONDITION with the
//! error as JSON in the status details, so the sender can rebuild it (see
//! [`super::network`]).

use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use keel_proto::raft as pb;
use keel_proto::raft::raft_peer_server::RaftPeer;
use keel_raft_log::{LogPos, Store};
use openraft::error::RaftError;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tonic::{Request, Response, Status, Streaming};

use super::durable::DurableHandle;
use super::identity::Identity;
use super::state_machine::{Raft, StateMachine};
use super::types::{Snapshot, TypeConfig};
use super::wire;

/// This node's admin status as JSON (what its `/api/v1/status` shows), for
/// a peer's `/api/v1/cluster`.
pub type StatusSource = Arc<dyn Fn() -> serde_json::Result<String> + Send + Sync>;

pub struct PeerService {
    pub raft: Raft,
    pub store: Store,
    pub durable: DurableHandle,
    pub status: StatusSource,
    /// The peer guard checked that the call is meant for this node of this
    /// cluster; a new member adopts its leader's cluster id here.
    pub identity: Identity,
    /// Gives the file a leader's snapshot is received into.
    pub sm: StateMachine,
}

/// The answers of an `AppendEntriesStream`, one per request, in order.
pub type AppendAnswers = Pin<Box<dyn Stream<Item = Result<pb::AppendEntriesResponse, Status>> + Send + 'static>>;

fn raft_status<E: serde::Serialize + std::fmt::Display>(e: E) -> Status {
    let details = serde_json::to_vec(&e).unwrap_or_default();
    Status::with_details(tonic::Code::FailedPrecondition, e.to_string(), details.into())
}

/// openraft's fatal error as the unary calls' `RaftError` carries it, so the
/// sender reads every remote Raft error the same way.
fn fatal_status(e: openraft::error::Fatal<TypeConfig>) -> Status {
    raft_status(RaftError::<TypeConfig>::Fatal(e))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let theirs = self.identity.check_call(req.metadata())?;
        self.identity.adopt(&self.store, theirs).await?;
        let req = wire::append_from_pb(req.into_inner())?;
        let resp = self.raft.append_entries(req).await.map_err(raft_status)?;
        Ok(Response::new(wire::append_resp_to_pb(&resp)))
    }

    type AppendEntriesStreamStream = AppendAnswers;

    async fn append_entries_stream(
        &self,
        req: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        let theirs = self.identity.check_call(req.metadata())?;
        self.identity.adopt(&self.store, theirs).await?;
        // openraft takes the appends as they come and answers each once it
        // is fsynced, in order, while it reads on (`Raft::stream_append`).
        // A request that does not decode, or the stream failing, ends what
        // openraft reads; the leader hears why after the answers to the
        // appends before it.
        let broken: Arc<Mutex<Option<Status>>> = Arc::default();
        let requests =
            futures::stream::unfold((req.into_inner(), Arc::clone(&broken)), |(mut incoming, broken)| async move {
                let failed = match incoming.message().await {
                    Ok(None) => return None,
                    Ok(Some(req)) => match wire::append_from_pb(req) {
                        Ok(req) => return Some((req, (incoming, broken))),
                        Err(s) => s,
                    },
                    Err(s) => s,
                };
                *lock(&broken) = Some(failed);
                None
            });
        let answers = self.raft.stream_append(requests).map(|r| match r {
            Ok(result) => Ok(wire::stream_result_to_pb(&result)),
            Err(fatal) => Err(fatal_status(fatal)),
        });
        let why_ended =
            futures::stream::once(async move { lock(&broken).take() }).filter_map(|s| async move { s.map(Err) });
        Ok(Response::new(Box::pin(answers.chain(why_ended))))
    }

    async fn vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let req = wire::vote_req_from_pb(req.into_inner())?;
        let resp = self.raft.vote(req).await.map_err(raft_status)?;
        Ok(Response::new(wire::vote_resp_to_pb(&resp)))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::InstallSnapshotRequest>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let theirs = self.identity.check_call(req.metadata())?;
        self.identity.adopt(&self.store, theirs).await?;
        let mut chunks = req.into_inner();
        let first =
            chunks.message().await?.ok_or_else(|| Status::invalid_argument("a snapshot stream without a message"))?;
        let vote = wire::vote_from_pb(first.vote.as_ref())?;
        let meta = first.meta.clone().ok_or_else(|| Status::invalid_argument("a snapshot stream without its meta"))?;
        let meta = wire::snapshot_meta_from_pb(meta)?;
        let io = |what: &str, e: std::io::Error| Status::internal(format!("{what} the received snapshot: {e}"));
        let mut file = self.sm.begin_receiving_snapshot().await.map_err(|e| io("open a file for", e))?;
        let mut chunk = first;
        let mut offset = 0u64;
        loop {
            if chunk.offset != offset {
                return Err(Status::invalid_argument(format!(
                    "a snapshot chunk at offset {} where {offset} was due",
                    chunk.offset
                )));
            }
            file.write_all(&chunk.data).await.map_err(|e| io("write", e))?;
            offset += chunk.data.len() as u64;
            if chunk.done {
                break;
            }
            chunk = chunks.message().await?.ok_or_else(|| {
                Status::invalid_argument(format!("the snapshot stream ended at {offset} bytes, before its last chunk"))
            })?;
        }
        // tokio's file finishes a write in the background: wait for it
        // before the state machine reads the file from the start.
        file.flush().await.map_err(|e| io("write", e))?;
        file.seek(SeekFrom::Start(0)).await.map_err(|e| io("rewind", e))?;
        let resp =
            self.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: file }).await.map_err(fatal_status)?;
        Ok(Response::new(wire::snapshot_resp_to_pb(&resp)))
    }

    async fn report_synced(
        &self,
        req: Request<pb::ReportSyncedRequest>,
    ) -> Result<Response<pb::ReportSyncedResponse>, Status> {
        let req = req.into_inner();
        let synced = req.synced.ok_or_else(|| Status::invalid_argument("report without a log id"))?;
        self.durable.report(req.node_id, LogPos::new(synced.term, synced.leader, synced.index)).await;
        Ok(Response::new(pb::ReportSyncedResponse { durable_index: self.durable.durable_index() }))
    }

    async fn node_status(
        &self,
        _req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        let json = (self.status)().map_err(|e| Status::internal(format!("cannot encode the status: {e}")))?;
        Ok(Response::new(pb::NodeStatusResponse { json }))
    }

    async fn read_entries(
        &self,
        req: Request<pb::ReadEntriesRequest>,
    ) -> Result<Response<pb::ReadEntriesResponse>, Status> {
        let pb::ReadEntriesRequest { from, to, max_bytes } = req.into_inner();
        if to < from {
            return Err(Status::invalid_argument(format!("to {to} is below from {from}")));
        }
        let end = to.saturating_add(1);
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX).clamp(1, REPAIR_MAX_BYTES);
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || store.read_range(from, end, max))
            .await
            .map_err(|e| Status::internal(format!("read task: {e}")))?
            .map_err(|e| Status::internal(format!("read log indexes {from}..={to}: {e}")))?;
        // `read_range` skips gaps; a repair needs exactly `from`.. .
        if records.first().map(|r| r.index) != Some(from) {
            let first = self.store.first_present_index();
            return Err(Status::not_found(format!(
                "node holds no entry {from} (its log starts at {})",
                first.map_or("nothing".to_string(), |f| f.to_string())
            )));
        }
        Ok(Response::new(pb::ReadEntriesResponse { entries: records.into_iter().map(wire::checked_to_pb).collect() }))
    }
}

/// Most payload bytes one ReadEntries answer carries.
pub const REPAIR_MAX_BYTES: usize = 16 << 20;
