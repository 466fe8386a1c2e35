//! The `RaftPeer` gRPC service: openraft's three RPCs from the leader,
//! followers' fsynced-index reports for the durable index, this node's
//! admin status for a peer's `/api/v1/cluster`, and log entries for a peer
//! repairing a damaged range (see [`super::repair`]).
//!
//! A Raft error from openraft travels back as FAILED_PRECONDITION with the
//! error as JSON in the status details, so the sender can rebuild it (see
//! [`super::network`]).

use std::sync::Arc;

use keel_proto::raft as pb;
use keel_proto::raft::raft_peer_server::RaftPeer;
use keel_raft_log::{LogPos, Store};
use tonic::{Request, Response, Status};

use super::admin::Admin;
use super::durable::DurableHandle;
use super::identity::Identity;
use super::types::Raft;
use super::wire;

pub struct PeerService {
    pub raft: Raft,
    pub store: Store,
    pub durable: DurableHandle,
    pub admin: Arc<Admin>,
    /// The peer guard checked that the call is meant for this node of this
    /// cluster; a new member adopts its leader's cluster id here.
    pub identity: Identity,
}

fn raft_status<E: serde::Serialize + std::fmt::Display>(e: E) -> Status {
    let details = serde_json::to_vec(&e).unwrap_or_default();
    Status::with_details(tonic::Code::FailedPrecondition, e.to_string(), details.into())
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let theirs = self.identity.check_call(req.metadata())?;
        self.identity.adopt(&self.store, theirs).await?;
        let req = req.into_inner();
        // True of the cluster whoever sent it: learn it even if the append
        // is refused or waits.
        if req.durable_index > 0 {
            self.durable.learned(req.durable_index);
        }
        let req = wire::append_from_pb(req)?;
        let resp = self.raft.append_entries(req).await.map_err(raft_status)?;
        Ok(Response::new(wire::append_resp_to_pb(&resp)))
    }

    async fn vote(&self, req: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let req = wire::vote_req_from_pb(req.into_inner())?;
        let resp = self.raft.vote(req).await.map_err(raft_status)?;
        Ok(Response::new(wire::vote_resp_to_pb(&resp)))
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let theirs = self.identity.check_call(req.metadata())?;
        self.identity.adopt(&self.store, theirs).await?;
        let req = wire::snapshot_req_from_pb(req.into_inner())?;
        let resp = self.raft.install_snapshot(req).await.map_err(raft_status)?;
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
        let json = serde_json::to_string(&self.admin.status())
            .map_err(|e| Status::internal(format!("cannot encode the status: {e}")))?;
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
