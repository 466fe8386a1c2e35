//! gRPC statuses as keel answers them: every error a status whose
//! `keel-error` metadata names the `ErrorCode` (keel.proto) and whose
//! message names what was wrong. Shared by the `Keel` service, the
//! credential checks and the peer service. The metadata keys are
//! keel-client's constants, so both ends spell them the same.

use keel_client::{ERROR_CODE_KEY, EXPECTED_SEQUENCE_KEY, LEADER_ADDR_KEY, LEADER_ID_KEY};
use keel_proto::client::ErrorCode;
use tonic::Status;
use tonic::metadata::MetadataValue;

use super::raft_errors::ProposeError;
use super::state::Reject;

/// The status of an error `code`: its gRPC code, and `keel-error` naming it.
pub fn error(code: ErrorCode, message: impl Into<String>) -> Status {
    let grpc = match code {
        ErrorCode::NotLeader | ErrorCode::OutOfOrderSequence => tonic::Code::FailedPrecondition,
        ErrorCode::NoLeader | ErrorCode::ShuttingDown | ErrorCode::NotCaughtUp => tonic::Code::Unavailable,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => tonic::Code::NotFound,
        ErrorCode::TopicExists => tonic::Code::AlreadyExists,
        ErrorCode::InvalidArgument | ErrorCode::MessageTooLarge => tonic::Code::InvalidArgument,
        ErrorCode::OffsetOutOfRange => tonic::Code::OutOfRange,
        ErrorCode::OutcomeUnknown => tonic::Code::DeadlineExceeded,
        ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorCode::StorageFailed | ErrorCode::Unspecified => tonic::Code::Internal,
    };
    let mut s = Status::new(grpc, message);
    s.metadata_mut().insert(ERROR_CODE_KEY, MetadataValue::from_static(code.as_str_name()));
    s
}

/// The state machine's refusal as a status (a gap also names the
/// sequence expected next).
pub fn reject_status(r: Reject) -> Status {
    let code = match &r {
        Reject::UnknownTopic(_) => ErrorCode::UnknownTopic,
        Reject::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        Reject::TopicExists(_) => ErrorCode::TopicExists,
        Reject::Invalid(_) => ErrorCode::InvalidArgument,
        Reject::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
        Reject::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
    };
    let mut status = error(code, r.to_string());
    if let Reject::OutOfOrderSequence { expected, .. } = r {
        status.metadata_mut().insert(EXPECTED_SEQUENCE_KEY, MetadataValue::from(expected));
    }
    status
}

/// NOT_LEADER naming the leader when it is known, else NO_LEADER.
pub fn not_leader(leader_id: Option<u64>, addr: Option<String>) -> Status {
    match (leader_id, addr) {
        (Some(id), Some(addr)) => {
            let mut s = error(ErrorCode::NotLeader, format!("not the leader; the leader is node {id} at {addr}"));
            if let Ok(v) = MetadataValue::try_from(id.to_string()) {
                s.metadata_mut().insert(LEADER_ID_KEY, v);
            }
            if let Ok(v) = MetadataValue::try_from(addr) {
                s.metadata_mut().insert(LEADER_ADDR_KEY, v);
            }
            s
        }
        _ => error(ErrorCode::NoLeader, "no leader is known yet (an election may be under way); retry shortly"),
    }
}

/// Why a proposal failed, as a status.
pub fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { leader_id, leader_addr } => not_leader(leader_id, leader_addr),
        ProposeError::ShuttingDown => error(ErrorCode::ShuttingDown, "the node is shutting down"),
        ProposeError::OutcomeUnknown => error(ErrorCode::OutcomeUnknown, ProposeError::OutcomeUnknown.to_string()),
        ProposeError::Internal(m) => error(ErrorCode::StorageFailed, m),
    }
}
