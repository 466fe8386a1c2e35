//! The client's one error type, and how a gRPC status from a node maps onto
//! it (and onto what the retry loop does next).
//!
//! A node names every error in the `keel-error` metadata key (an
//! [`ErrorCode`] name), so nothing here parses messages. A status without
//! that key did not come from keel's handlers: the transport failed, or a
//! layer under them (tonic's own limits, a proxy) answered.

use std::error::Error as _;

use keel_proto::client::ErrorCode;
use tonic::{Code, Status};

/// Metadata key holding the [`ErrorCode`] name of an error status.
pub const ERROR_CODE_KEY: &str = "keel-error";
/// Metadata key of a NOT_LEADER status: the leader's node id.
pub const LEADER_ID_KEY: &str = "keel-leader-id";
/// Metadata key of a NOT_LEADER status: the leader's client address (host:port).
pub const LEADER_ADDR_KEY: &str = "keel-leader-addr";
/// Metadata key of an OUT_OF_ORDER_SEQUENCE status: the sequence the
/// producer id must send next on that partition (below the refused one: a
/// gap).
pub const EXPECTED_SEQUENCE_KEY: &str = "keel-expected-sequence";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A node refused the request and said why; retrying it unchanged would
    /// fail the same way. `message` is the node's own words (it names what
    /// was wrong).
    #[error("{message} ({})", code.as_str_name())]
    Server { code: ErrorCode, message: String },
    /// The deadline passed after an attempt whose fate is unknown (it timed
    /// out, the connection broke after the request was sent, or the leader
    /// answered OUTCOME_UNKNOWN). The write may or may not have been applied;
    /// for a produce, sending the same producer id and sequence again finds
    /// out without storing twice.
    #[error(
        "outcome unknown after {attempts} attempt(s): the request may or may not have been applied; last error: {last}"
    )]
    OutcomeUnknown { attempts: u32, last: String },
    /// No node gave an answer before the deadline, and nothing that was sent
    /// can have been applied (or the call only reads).
    #[error("no node answered before the deadline ({attempts} attempt(s)); last error: {last}")]
    Unavailable { attempts: u32, last: String },
    /// Refused before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A node's answer lacked something the proto promises.
    #[error("malformed answer from a node: {0}")]
    Protocol(String),
    /// A status without a keel error code that retrying will not cure (for
    /// example tonic's message size limit, or a node that lacks the RPC).
    #[error("gRPC status {code:?}: {message}")]
    Rpc { code: Code, message: String },
}

impl Error {
    /// The keel error code, when a node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the request may have been applied although it is reported as
    /// failed.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }
}

/// The leader a NOT_LEADER status points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaderHint {
    pub id: Option<u64>,
    pub addr: String,
}

/// What one failed attempt means for the call it belongs to.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Not applied: this node is not the leader. Go to the leader when known,
    /// else to the next node.
    NotLeader { leader: Option<LeaderHint>, why: String },
    /// Worth another attempt after a pause. `maybe_applied`: the request may
    /// have taken effect (so a write that runs out of time is "outcome
    /// unknown"). `same_node`: this node is the right one to ask again (it
    /// is the leader and merely could not tell yet).
    Retry { maybe_applied: bool, same_node: bool, why: String },
    /// Final: retrying would not change the answer.
    Fatal(Error),
}

/// Reads the `keel-error` metadata: `None` when absent, `Err(raw)` when it
/// holds a name this client does not know (a newer server).
pub(crate) fn error_code(status: &Status) -> Option<Result<ErrorCode, String>> {
    let raw = status.metadata().get(ERROR_CODE_KEY)?;
    let Ok(name) = raw.to_str() else {
        return Some(Err(String::from_utf8_lossy(raw.as_encoded_bytes()).into_owned()));
    };
    let name = name.trim();
    Some(ErrorCode::from_str_name(name).ok_or_else(|| name.to_string()))
}

/// The expected sequence an OUT_OF_ORDER_SEQUENCE status names, if it
/// names one that parses.
pub(crate) fn expected_sequence(status: &Status) -> Option<u64> {
    status.metadata().get(EXPECTED_SEQUENCE_KEY)?.to_str().ok()?.trim().parse().ok()
}

fn leader_hint(status: &Status) -> Option<LeaderHint> {
    let addr = status.metadata().get(LEADER_ADDR_KEY)?.to_str().ok()?.trim();
    if addr.is_empty() {
        return None;
    }
    let id = status.metadata().get(LEADER_ID_KEY).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    Some(LeaderHint { id, addr: addr.to_string() })
}

/// Whether the status was made from a failure to connect: then the request
/// was never sent.
fn is_connect_error(status: &Status) -> bool {
    let mut source = status.source();
    // The chain is short (tonic's transport error, hyper's, io's); the bound
    // only guards against a cyclic chain.
    for _ in 0..16 {
        let Some(err) = source else { return false };
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Decides what a failed attempt means. Only codes the proto documents as
/// transient are retried; everything else is final at once.
pub(crate) fn classify(status: &Status) -> Failure {
    let why = describe(status);
    match error_code(status) {
        Some(Ok(code)) => classify_code(code, status, why),
        Some(Err(raw)) => Failure::Fatal(Error::Server {
            code: ErrorCode::Unspecified,
            message: format!("{} (unrecognised keel-error {raw:?})", status.message()),
        }),
        None => classify_transport(status, why),
    }
}

fn classify_code(code: ErrorCode, status: &Status, why: String) -> Failure {
    match code {
        ErrorCode::NotLeader => Failure::NotLeader { leader: leader_hint(status), why },
        // Refused before anything was proposed: an election is under way.
        ErrorCode::NoLeader => Failure::Retry { maybe_applied: false, same_node: false, why },
        // A read whose node has not applied its min_index yet (only Fetch
        // answers it): another node, the leader above all, may have.
        ErrorCode::NotCaughtUp => Failure::Retry { maybe_applied: false, same_node: false, why },
        // The leader proposed it but could not see it durable in time: ask it
        // again (the same producer id and sequence make that safe).
        ErrorCode::OutcomeUnknown => Failure::Retry { maybe_applied: true, same_node: true, why },
        // A node that stops (or failed-stop on an I/O error) may have
        // proposed the request before it did; another node takes over.
        ErrorCode::ShuttingDown | ErrorCode::StorageFailed => {
            Failure::Retry { maybe_applied: true, same_node: false, why }
        }
        ErrorCode::Unspecified
        | ErrorCode::UnknownTopic
        | ErrorCode::UnknownPartition
        | ErrorCode::TopicExists
        | ErrorCode::InvalidArgument
        | ErrorCode::MessageTooLarge
        | ErrorCode::OffsetOutOfRange
        // Resending the same sequence cannot cure it: an overlap, a batch
        // older than the leader's window, or a gap only another batch can
        // fill (`Producer::produce` handles gaps itself, producer.rs).
        | ErrorCode::OutOfOrderSequence
        // The leader's volume is below its disk reserve: refused before
        // anything was proposed. Retrying cannot help until an operator or
        // retention frees space, so the caller hears it at once (the
        // message names free bytes, the reserve and store.reserve.bytes).
        | ErrorCode::ResourceExhausted
        | ErrorCode::Unauthenticated => {
            Failure::Fatal(Error::Server { code, message: status.message().to_string() })
        }
    }
}

fn classify_transport(status: &Status, why: String) -> Failure {
    if is_connect_error(status) {
        return Failure::Retry { maybe_applied: false, same_node: false, why };
    }
    match status.code() {
        // The connection broke, timed out or was reset with the request
        // possibly delivered: nothing tells whether the node acted on it.
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Aborted => Failure::Retry { maybe_applied: true, same_node: false, why },
        code => Failure::Fatal(Error::Rpc { code, message: status.message().to_string() }),
    }
}

/// One line for logs and for `Error::*::last`: the keel code (or gRPC code)
/// and the message.
fn describe(status: &Status) -> String {
    let code = match error_code(status) {
        Some(Ok(code)) => code.as_str_name().to_string(),
        Some(Err(raw)) => raw,
        None => format!("{:?}", status.code()),
    };
    if status.message().is_empty() { code } else { format!("{code}: {}", status.message()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(code: Code, message: &str, meta: &[(&'static str, &str)]) -> Status {
        let mut status = Status::new(code, message);
        for (key, value) in meta {
            status.metadata_mut().insert(*key, value.parse().expect("test metadata is ASCII"));
        }
        status
    }

    #[test]
    fn every_error_code_name_maps_back_to_its_code() {
        // Phase: the metadata carries the proto's enum names, and each one
        // parses to its own variant.
        for n in 0..=15 {
            let code = ErrorCode::try_from(n).expect("codes 0..=15 are defined");
            let status = status_with(Code::Unknown, "x", &[(ERROR_CODE_KEY, code.as_str_name())]);
            assert_eq!(error_code(&status), Some(Ok(code)));
        }
        // Phase: absent and unknown names are told apart.
        assert_eq!(error_code(&Status::unavailable("down")), None);
        let status = status_with(Code::Unknown, "x", &[(ERROR_CODE_KEY, "NEW_CODE")]);
        assert_eq!(error_code(&status), Some(Err("NEW_CODE".to_string())));
    }

    #[test]
    fn definite_rejections_are_final_server_errors_with_the_message() {
        let status =
            status_with(Code::NotFound, "topic \"orders\" does not exist", &[(ERROR_CODE_KEY, "UNKNOWN_TOPIC")]);
        match classify(&status) {
            Failure::Fatal(Error::Server { code, message }) => {
                assert_eq!(code, ErrorCode::UnknownTopic);
                assert_eq!(message, "topic \"orders\" does not exist");
            }
            other => panic!("expected a final server error, got {other:?}"),
        }
        for name in
            ["INVALID_ARGUMENT", "MESSAGE_TOO_LARGE", "OFFSET_OUT_OF_RANGE", "TOPIC_EXISTS", "RESOURCE_EXHAUSTED"]
        {
            let status = status_with(Code::InvalidArgument, "bad", &[(ERROR_CODE_KEY, name)]);
            assert!(matches!(classify(&status), Failure::Fatal(Error::Server { .. })), "{name} must be final");
        }
        // An unknown code is final too: this client cannot know it is safe to retry.
        let status = status_with(Code::Unknown, "new", &[(ERROR_CODE_KEY, "SOMETHING_NEW")]);
        assert!(matches!(classify(&status), Failure::Fatal(Error::Server { code: ErrorCode::Unspecified, .. })));
    }

    #[test]
    fn not_leader_carries_the_leader_when_known() {
        let status = status_with(
            Code::FailedPrecondition,
            "not the leader",
            &[(ERROR_CODE_KEY, "NOT_LEADER"), (LEADER_ID_KEY, "2"), (LEADER_ADDR_KEY, "10.0.0.2:9092")],
        );
        match classify(&status) {
            Failure::NotLeader { leader: Some(hint), .. } => {
                assert_eq!(hint, LeaderHint { id: Some(2), addr: "10.0.0.2:9092".into() });
            }
            other => panic!("expected NotLeader with a hint, got {other:?}"),
        }
        let status = status_with(Code::FailedPrecondition, "not the leader", &[(ERROR_CODE_KEY, "NOT_LEADER")]);
        assert!(matches!(classify(&status), Failure::NotLeader { leader: None, .. }));
    }

    #[test]
    fn transient_codes_retry_and_say_whether_the_write_may_have_happened() {
        let cases = [
            ("NO_LEADER", Code::Unavailable, false, false),
            ("OUTCOME_UNKNOWN", Code::DeadlineExceeded, true, true),
            ("SHUTTING_DOWN", Code::Unavailable, true, false),
            ("STORAGE_FAILED", Code::Internal, true, false),
            // A fetch's node is behind min_index: a read, never applied; try elsewhere.
            ("NOT_CAUGHT_UP", Code::Unavailable, false, false),
        ];
        for (name, code, applied, same) in cases {
            let status = status_with(code, "x", &[(ERROR_CODE_KEY, name)]);
            match classify(&status) {
                Failure::Retry { maybe_applied, same_node, .. } => {
                    assert_eq!(maybe_applied, applied, "{name}");
                    assert_eq!(same_node, same, "{name}");
                }
                other => panic!("{name}: expected Retry, got {other:?}"),
            }
        }
        let status = status_with(Code::FailedPrecondition, "overlap", &[(ERROR_CODE_KEY, "OUT_OF_ORDER_SEQUENCE")]);
        assert!(matches!(classify(&status), Failure::Fatal(Error::Server { code: ErrorCode::OutOfOrderSequence, .. })));
    }

    #[test]
    fn statuses_without_a_keel_code_are_transport_failures_or_final() {
        // A broken connection may have delivered the request.
        assert!(matches!(classify(&Status::unavailable("reset")), Failure::Retry { maybe_applied: true, .. }));
        assert!(matches!(classify(&Status::cancelled("timeout")), Failure::Retry { maybe_applied: true, .. }));
        // A failure to connect never did.
        let mut status = Status::unavailable("tcp connect error");
        status.set_source(std::sync::Arc::new(tonic::ConnectError("refused".into())));
        assert!(matches!(classify(&status), Failure::Retry { maybe_applied: false, .. }));
        // tonic's own refusals do not get better by retrying.
        assert!(matches!(
            classify(&Status::unimplemented("no such method")),
            Failure::Fatal(Error::Rpc { code: Code::Unimplemented, .. })
        ));
    }

    #[test]
    fn the_expected_sequence_is_read_from_its_metadata_when_it_parses() {
        let gap = status_with(Code::FailedPrecondition, "gap", &[(ERROR_CODE_KEY, "OUT_OF_ORDER_SEQUENCE")]);
        assert_eq!(expected_sequence(&gap), None);
        for (raw, want) in [("5", Some(5)), (" 18446744073709551615 ", Some(u64::MAX)), ("-1", None), ("x", None)] {
            let status = status_with(Code::FailedPrecondition, "gap", &[(EXPECTED_SEQUENCE_KEY, raw)]);
            assert_eq!(expected_sequence(&status), want, "{raw:?}");
        }
    }

    #[test]
    fn server_errors_print_the_nodes_message_and_the_code() {
        let e = Error::Server { code: ErrorCode::UnknownTopic, message: "topic \"x\" does not exist".into() };
        assert_eq!(e.to_string(), "topic \"x\" does not exist (UNKNOWN_TOPIC)");
        assert_eq!(e.code(), Some(ErrorCode::UnknownTopic));
    }
}
