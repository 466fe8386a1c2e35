//! What a failed proposal means to a client.

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};

use super::state_machine::Raft;
use super::types::TypeConfig;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader")]
    NotLeader { leader_id: Option<u64>, leader_addr: Option<String> },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the entry was not applied in time; it may or may not be stored")]
    OutcomeUnknown,
    #[error("{0}")]
    Internal(String),
}

pub type WriteError = RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

pub fn propose_error(raft: &Raft, e: WriteError) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr).or_else(|| leader_addr(raft, f.leader_id)),
        },
        // The entry was appended, then replaced by another leader's log:
        // it may still commit through that leader.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => ProposeError::OutcomeUnknown,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => ProposeError::Internal(c.to_string()),
        RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => ProposeError::Internal(p.to_string()),
        RaftError::Fatal(f) => match f {
            openraft::error::Fatal::Stopped => ProposeError::ShuttingDown,
            other => ProposeError::Internal(format!("raft stopped: {other}")),
        },
    }
}

/// What a write whose answer Raft dropped means: Raft stopped, on request
/// (shutting down) or on a fatal error (named).
pub fn stopped_error(raft: &Raft) -> ProposeError {
    match raft.metrics().borrow_watched().running_state.clone() {
        Ok(()) | Err(openraft::error::Fatal::Stopped) => ProposeError::ShuttingDown,
        Err(other) => ProposeError::Internal(format!("raft stopped: {other}")),
    }
}

pub fn leader_addr(raft: &Raft, leader: Option<u64>) -> Option<String> {
    let m = raft.metrics().borrow_watched().clone();
    let id = leader.or(m.current_leader)?;
    m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
}
