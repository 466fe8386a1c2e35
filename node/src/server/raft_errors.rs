//! What a failed proposal means to a client.

use openraft::error::{ClientWriteError, RaftError};

use super::types::Raft;

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

pub fn propose_error(raft: &Raft, e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr).or_else(|| leader_addr(raft, f.leader_id)),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => ProposeError::Internal(c.to_string()),
        RaftError::Fatal(f) => match f {
            openraft::error::Fatal::Stopped => ProposeError::ShuttingDown,
            other => ProposeError::Internal(format!("raft stopped: {other}")),
        },
    }
}

/// What a write whose answer Raft dropped means: Raft stopped, on request
/// (shutting down) or on a fatal error (named).
pub fn stopped_error(raft: &Raft) -> ProposeError {
    match raft.metrics().borrow().running_state.clone() {
        Ok(()) | Err(openraft::error::Fatal::Stopped) => ProposeError::ShuttingDown,
        Err(other) => ProposeError::Internal(format!("raft stopped: {other}")),
    }
}

pub fn leader_addr(raft: &Raft, leader: Option<u64>) -> Option<String> {
    let m = raft.metrics().borrow().clone();
    let id = leader.or(m.current_leader)?;
    m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
}
