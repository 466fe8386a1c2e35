//! Conversions between openraft's messages and keel-proto's Raft transport
//! types. Entries cross the wire as the store keeps them (header fields and
//! the opaque payload), using the same record conversion as the log store.

use bytes::Bytes;
use keel_proto::raft as pb;
use keel_raft_log::{Record, RecordKind, entry_to_record, record_to_entry};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{CommittedLeaderId, Entry, LeaderId, LogId, SnapshotMeta, Vote};
use tonic::Status;

use super::types::TypeConfig;

pub fn log_id_to_pb(id: &LogId<u64>) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, leader: id.leader_id.node_id, index: id.index }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(id.term, id.leader), id.index)
}

pub fn vote_to_pb(v: &Vote<u64>) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
}

pub fn vote_from_pb(v: Option<&pb::Vote>) -> Result<Vote<u64>, Status> {
    let v = v.ok_or_else(|| Status::invalid_argument("missing vote"))?;
    Ok(Vote { leader_id: LeaderId::new(v.term, v.node_id), committed: v.committed })
}

fn entry_to_pb(e: &Entry<TypeConfig>) -> Result<pb::Entry, Status> {
    let r = entry_to_record(e).map_err(|err| Status::internal(format!("encode entry: {err}")))?;
    let m = r.meta;
    Ok(record_to_pb(m.term, m.leader, m.index, m.kind, m.timestamp_ms, Bytes::from(r.payload)))
}

fn record_to_pb(term: u64, leader: u64, index: u64, kind: RecordKind, timestamp_ms: u64, payload: Bytes) -> pb::Entry {
    let kind = match kind {
        RecordKind::Blank => pb::EntryKind::Blank,
        RecordKind::Normal => pb::EntryKind::Normal,
        RecordKind::Membership => pb::EntryKind::Membership,
    };
    pb::Entry { log_id: Some(pb::LogId { term, leader, index }), kind: kind as i32, timestamp_ms, payload }
}

/// A log entry as the store keeps it, from the wire.
pub fn record_from_pb(e: pb::Entry) -> Result<Record, Status> {
    let id = e.log_id.ok_or_else(|| Status::invalid_argument("entry without log id"))?;
    let kind = match pb::EntryKind::try_from(e.kind) {
        Ok(pb::EntryKind::Blank) => RecordKind::Blank,
        Ok(pb::EntryKind::Normal) => RecordKind::Normal,
        Ok(pb::EntryKind::Membership) => RecordKind::Membership,
        _ => return Err(Status::invalid_argument(format!("entry {} has unknown kind {}", id.index, e.kind))),
    };
    Ok(Record {
        term: id.term,
        leader: id.leader,
        index: id.index,
        timestamp_ms: e.timestamp_ms,
        kind,
        payload: e.payload,
    })
}

/// A stored record with its end-to-end checksum, for a peer's repair.
pub fn checked_to_pb(r: Record) -> pb::CheckedEntry {
    let crc32c = record_crc(&r);
    pb::CheckedEntry { entry: Some(record_to_pb(r.term, r.leader, r.index, r.kind, r.timestamp_ms, r.payload)), crc32c }
}

/// crc32c over a record's header fields and payload (see `CheckedEntry`).
pub fn record_crc(r: &Record) -> u32 {
    let mut head = Vec::with_capacity(40);
    for v in [r.term, r.leader, r.index, r.timestamp_ms, r.kind as u64] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    crc32c::crc32c_append(crc32c::crc32c(&head), &r.payload)
}

fn entry_from_pb(e: pb::Entry) -> Result<Entry<TypeConfig>, Status> {
    let r = record_from_pb(e)?;
    let id = r.index;
    record_to_entry(r).map_err(|err| Status::invalid_argument(format!("entry {id}: {err}")))
}

pub fn append_to_pb(req: &AppendEntriesRequest<TypeConfig>) -> Result<pb::AppendEntriesRequest, Status> {
    Ok(pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&req.vote)),
        prev_log_id: req.prev_log_id.as_ref().map(log_id_to_pb),
        entries: req.entries.iter().map(entry_to_pb).collect::<Result<_, _>>()?,
        leader_commit: req.leader_commit.as_ref().map(log_id_to_pb),
        durable_index: 0,
    })
}

pub fn append_from_pb(req: pb::AppendEntriesRequest) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(req.vote.as_ref())?,
        prev_log_id: req.prev_log_id.as_ref().map(log_id_from_pb),
        entries: req.entries.into_iter().map(entry_from_pb).collect::<Result<_, _>>()?,
        leader_commit: req.leader_commit.as_ref().map(log_id_from_pb),
    })
}

pub fn append_resp_to_pb(r: &AppendEntriesResponse<u64>) -> pb::AppendEntriesResponse {
    let mut out = pb::AppendEntriesResponse::default();
    match r {
        AppendEntriesResponse::Success => out.success = true,
        AppendEntriesResponse::PartialSuccess(Some(id)) => out.partial_success = Some(log_id_to_pb(id)),
        AppendEntriesResponse::PartialSuccess(None) => out.partial_success_none = true,
        AppendEntriesResponse::Conflict => out.conflict = true,
        AppendEntriesResponse::HigherVote(v) => out.higher_vote = Some(vote_to_pb(v)),
    }
    out
}

pub fn append_resp_from_pb(r: pb::AppendEntriesResponse) -> Result<AppendEntriesResponse<u64>, String> {
    if r.success {
        Ok(AppendEntriesResponse::Success)
    } else if let Some(id) = r.partial_success {
        Ok(AppendEntriesResponse::PartialSuccess(Some(log_id_from_pb(&id))))
    } else if r.partial_success_none {
        Ok(AppendEntriesResponse::PartialSuccess(None))
    } else if r.conflict {
        Ok(AppendEntriesResponse::Conflict)
    } else if let Some(v) = r.higher_vote {
        Ok(AppendEntriesResponse::HigherVote(vote_from_pb(Some(&v)).map_err(|s| s.message().to_string())?))
    } else {
        Err("append-entries response names no outcome".into())
    }
}

pub fn vote_req_to_pb(r: &VoteRequest<u64>) -> pb::VoteRequest {
    pb::VoteRequest { vote: Some(vote_to_pb(&r.vote)), last_log_id: r.last_log_id.as_ref().map(log_id_to_pb) }
}

pub fn vote_req_from_pb(r: pb::VoteRequest) -> Result<VoteRequest<u64>, Status> {
    Ok(VoteRequest { vote: vote_from_pb(r.vote.as_ref())?, last_log_id: r.last_log_id.as_ref().map(log_id_from_pb) })
}

pub fn vote_resp_to_pb(r: &VoteResponse<u64>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn vote_resp_from_pb(r: pb::VoteResponse) -> Result<VoteResponse<u64>, Status> {
    Ok(VoteResponse {
        vote: vote_from_pb(r.vote.as_ref())?,
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_from_pb),
    })
}

pub fn snapshot_req_to_pb(r: &InstallSnapshotRequest<TypeConfig>) -> Result<pb::InstallSnapshotRequest, Status> {
    let membership = serde_json::to_vec(&r.meta.last_membership)
        .map_err(|e| Status::internal(format!("encode snapshot membership: {e}")))?;
    Ok(pb::InstallSnapshotRequest {
        vote: Some(vote_to_pb(&r.vote)),
        meta: Some(pb::SnapshotMeta {
            last_log_id: r.meta.last_log_id.as_ref().map(log_id_to_pb),
            last_membership: Bytes::from(membership),
            snapshot_id: r.meta.snapshot_id.clone(),
        }),
        offset: r.offset,
        data: Bytes::from(r.data.clone()),
        done: r.done,
    })
}

pub fn snapshot_req_from_pb(r: pb::InstallSnapshotRequest) -> Result<InstallSnapshotRequest<TypeConfig>, Status> {
    let meta = r.meta.ok_or_else(|| Status::invalid_argument("snapshot chunk without meta"))?;
    let last_membership = serde_json::from_slice(&meta.last_membership)
        .map_err(|e| Status::invalid_argument(format!("snapshot membership: {e}")))?;
    Ok(InstallSnapshotRequest {
        vote: vote_from_pb(r.vote.as_ref())?,
        meta: SnapshotMeta {
            last_log_id: meta.last_log_id.as_ref().map(log_id_from_pb),
            last_membership,
            snapshot_id: meta.snapshot_id,
        },
        offset: r.offset,
        data: r.data.to_vec(),
        done: r.done,
    })
}

pub fn snapshot_resp_to_pb(r: &InstallSnapshotResponse<u64>) -> pb::InstallSnapshotResponse {
    pb::InstallSnapshotResponse { vote: Some(vote_to_pb(&r.vote)) }
}

pub fn snapshot_resp_from_pb(r: pb::InstallSnapshotResponse) -> Result<InstallSnapshotResponse<u64>, Status> {
    Ok(InstallSnapshotResponse { vote: vote_from_pb(r.vote.as_ref())? })
}
