//! Conversions between openraft's messages and keel-proto's Raft transport
//! types. Entries cross the wire as the store keeps them (header fields and
//! the opaque payload), using the same record conversion as the log store.

use bytes::Bytes;
use keel_proto::raft as pb;
use keel_raft_log::{Record, RecordKind, entry_to_record, record_to_entry};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use tonic::Status;

use super::types::{Entry, LeaderId, LogId, SnapshotMeta, TypeConfig, Vote};

/// Largest gRPC message either side accepts (a Raft append of several
/// produce groups, or a snapshot chunk).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 512 << 20;

pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, leader: id.leader_id.node_id, index: id.index }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId {
    LogId::new(LeaderId { term: id.term, node_id: id.leader }, id.index)
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
}

pub fn vote_from_pb(v: Option<&pb::Vote>) -> Result<Vote, Status> {
    let v = v.ok_or_else(|| Status::invalid_argument("missing vote"))?;
    Ok(Vote { leader_id: LeaderId { term: v.term, node_id: v.node_id }, committed: v.committed })
}

fn entry_to_pb(e: &Entry) -> Result<pb::Entry, Status> {
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

fn entry_from_pb(e: pb::Entry) -> Result<Entry, Status> {
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

pub fn append_resp_to_pb(r: &AppendEntriesResponse<TypeConfig>) -> pb::AppendEntriesResponse {
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

pub fn append_resp_from_pb(r: pb::AppendEntriesResponse) -> Result<AppendEntriesResponse<TypeConfig>, String> {
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

/// What one streamed append covered: its answer means something only
/// against it (a success acknowledges `last`, a conflict is at `prev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRange {
    pub prev: Option<LogId>,
    pub last: Option<LogId>,
}

impl AppendRange {
    pub fn of(req: &AppendEntriesRequest<TypeConfig>) -> Self {
        let last = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
        Self { prev: req.prev_log_id, last }
    }
}

/// The follower's answer to one streamed append: the log id it now holds
/// up to, exactly as openraft gave it (a `partial_success`), so the leader
/// need not guess whether the whole request was taken.
pub fn stream_result_to_pb(r: &StreamAppendResult<TypeConfig>) -> pb::AppendEntriesResponse {
    let resp = match r {
        Ok(matching) => AppendEntriesResponse::PartialSuccess(*matching),
        Err(StreamAppendError::Conflict(_)) => AppendEntriesResponse::Conflict,
        Err(StreamAppendError::HigherVote(v)) => AppendEntriesResponse::HigherVote(*v),
    };
    append_resp_to_pb(&resp)
}

/// The leader's reading of the answer to the streamed append that covered
/// `sent` (answers come in the order of the requests).
pub fn stream_result_from_pb(
    r: pb::AppendEntriesResponse,
    sent: &AppendRange,
) -> Result<StreamAppendResult<TypeConfig>, String> {
    let resp = append_resp_from_pb(r)?;
    // openraft takes a conflict to be at `prev`; there is none to conflict
    // with before the first entry, so such an answer is a broken peer.
    if resp.is_conflict() && sent.prev.is_none() {
        return Err("a conflict answered to an append from the start of the log".into());
    }
    Ok(resp.into_stream_result(sent.prev, sent.last))
}

pub fn vote_req_to_pb(r: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
        leadership_transfer: r.leadership_transfer,
    }
}

pub fn vote_req_from_pb(r: pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, Status> {
    Ok(VoteRequest {
        vote: vote_from_pb(r.vote.as_ref())?,
        last_log_id: r.last_log_id.as_ref().map(log_id_from_pb),
        leadership_transfer: r.leadership_transfer,
    })
}

pub fn vote_resp_to_pb(r: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub fn vote_resp_from_pb(r: pb::VoteResponse) -> Result<VoteResponse<TypeConfig>, Status> {
    Ok(VoteResponse {
        vote: vote_from_pb(r.vote.as_ref())?,
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_from_pb),
    })
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> Result<pb::SnapshotMeta, Status> {
    let membership = serde_json::to_vec(&m.last_membership)
        .map_err(|e| Status::internal(format!("encode snapshot membership: {e}")))?;
    Ok(pb::SnapshotMeta {
        last_log_id: m.last_log_id.as_ref().map(log_id_to_pb),
        last_membership: Bytes::from(membership),
    })
}

pub fn snapshot_meta_from_pb(m: pb::SnapshotMeta) -> Result<SnapshotMeta, Status> {
    let last_membership = serde_json::from_slice(&m.last_membership)
        .map_err(|e| Status::invalid_argument(format!("snapshot membership: {e}")))?;
    Ok(SnapshotMeta { last_log_id: m.last_log_id.as_ref().map(log_id_from_pb), last_membership })
}

pub fn snapshot_resp_to_pb(r: &SnapshotResponse<TypeConfig>) -> pb::InstallSnapshotResponse {
    pb::InstallSnapshotResponse { vote: Some(vote_to_pb(&r.vote)) }
}

pub fn snapshot_resp_from_pb(r: pb::InstallSnapshotResponse) -> Result<SnapshotResponse<TypeConfig>, Status> {
    Ok(SnapshotResponse { vote: vote_from_pb(r.vote.as_ref())? })
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::*;
    use crate::server::types::Request;

    fn id(term: u64, leader: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id: leader }, index)
    }

    fn vote(term: u64, node_id: u64, committed: bool) -> Vote {
        Vote { leader_id: LeaderId { term, node_id }, committed }
    }

    fn append(prev: Option<LogId>, entries: &[LogId]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: vote(2, 1, true),
            prev_log_id: prev,
            entries: entries
                .iter()
                .map(|&log_id| Entry {
                    log_id,
                    payload: EntryPayload::Normal(Request {
                        timestamp_ms: 7,
                        payload: Bytes::from(format!("entry {}", log_id.index)),
                    }),
                })
                .collect(),
            leader_commit: Some(id(2, 1, 1)),
        }
    }

    #[test]
    fn messages_cross_the_wire_unchanged() {
        // Appends, with and without entries and prev.
        for req in [append(Some(id(1, 3, 4)), &[id(2, 1, 5), id(2, 1, 6)]), append(None, &[])] {
            let back = append_from_pb(append_to_pb(&req).expect("encode")).expect("decode");
            assert_eq!(format!("{back:?}"), format!("{req:?}"));
        }
        // Every append outcome.
        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(id(2, 1, 5))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote(3, 2, false)),
        ] {
            assert_eq!(append_resp_from_pb(append_resp_to_pb(&resp)), Ok(resp));
        }
        assert!(append_resp_from_pb(pb::AppendEntriesResponse::default()).is_err(), "an answer must name an outcome");
        // Votes.
        let req = VoteRequest { vote: vote(3, 2, false), last_log_id: Some(id(2, 1, 6)), leadership_transfer: true };
        assert_eq!(vote_req_from_pb(vote_req_to_pb(&req)).expect("decode"), req);
        let resp = VoteResponse { vote: vote(3, 2, true), vote_granted: true, last_log_id: None };
        assert_eq!(vote_resp_from_pb(vote_resp_to_pb(&resp)).expect("decode"), resp);
        // Snapshot meta and answer.
        let meta = SnapshotMeta { last_log_id: Some(id(2, 1, 6)), last_membership: Default::default() };
        assert_eq!(snapshot_meta_from_pb(snapshot_meta_to_pb(&meta).expect("encode")).expect("decode"), meta);
        let resp = SnapshotResponse { vote: vote(2, 1, true) };
        assert_eq!(snapshot_resp_from_pb(snapshot_resp_to_pb(&resp)).expect("decode"), resp);
    }

    #[test]
    fn streamed_answers_map_to_the_appends_they_answer() {
        // The leader pipelines three appends and a heartbeat; the follower
        // answers each in order with what openraft made of it.
        let sent = [
            append(Some(id(1, 1, 4)), &[id(2, 1, 5), id(2, 1, 6)]),
            append(Some(id(2, 1, 6)), &[id(2, 1, 7)]),
            append(Some(id(2, 1, 7)), &[]),
        ];
        let ranges: Vec<AppendRange> = sent.iter().map(AppendRange::of).collect();
        assert_eq!(ranges[0], AppendRange { prev: Some(id(1, 1, 4)), last: Some(id(2, 1, 6)) });
        assert_eq!(
            ranges[2],
            AppendRange { prev: Some(id(2, 1, 7)), last: Some(id(2, 1, 7)) },
            "a heartbeat ends at prev"
        );
        let answered: Vec<StreamAppendResult<TypeConfig>> =
            vec![Ok(Some(id(2, 1, 6))), Ok(Some(id(2, 1, 7))), Err(StreamAppendError::Conflict(id(2, 1, 7)))];
        let read: Vec<_> = answered
            .iter()
            .zip(&ranges)
            .map(|(r, range)| stream_result_from_pb(stream_result_to_pb(r), range).expect("an outcome"))
            .collect();
        assert_eq!(read, answered);

        // A higher vote comes back as it is.
        let higher = Err(StreamAppendError::HigherVote(vote(5, 3, false)));
        assert_eq!(stream_result_from_pb(stream_result_to_pb(&higher), &ranges[1]), Ok(higher));

        // A unary-style success means the whole request; a partial one
        // names how far.
        let success = append_resp_to_pb(&AppendEntriesResponse::Success);
        assert_eq!(stream_result_from_pb(success, &ranges[0]), Ok(Ok(Some(id(2, 1, 6)))));
        assert_eq!(stream_result_from_pb(stream_result_to_pb(&Ok(None)), &ranges[0]), Ok(Ok(None)));

        // A conflict where there is nothing to conflict with is refused,
        // not a panic in openraft.
        let from_start = AppendRange::of(&append(None, &[id(1, 1, 1)]));
        let conflict = append_resp_to_pb(&AppendEntriesResponse::Conflict);
        assert!(stream_result_from_pb(conflict, &from_start).is_err());
    }
}
