//! The `Keel` gRPC service: produce, fetch, lookups, topics, consumer
//! groups and membership.
//!
//! Every error is a gRPC status whose `keel-error` metadata names the
//! `ErrorCode` (keel.proto), and whose message names what was wrong.
//! Requests are checked here before anything is proposed; the state
//! machine checks again when it applies (a topic may go away meanwhile).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use keel_proto::client::{self as pb, ErrorCode, keel_server::Keel};
use keel_raft_log::{FlushPolicy, Store};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::describe::{members_of, topic_info};
use super::durable::DurableHandle;
use super::entry::{self, Command, NewRecord};
use super::grpc_status::{error, not_leader, propose_status, reject_status};
use super::proposer::{MAX_BATCH_BYTES, ProposerHandle, SequenceOrder};
use super::raft_errors::{leader_addr, propose_error};
use super::reserve::DiskReserve;
use super::state::{self, BatchOutcome, CqEntry, Reject};
use super::state_machine::Raft;
use super::state_machine::Shared;
use super::types::{Request as RaftRequest, now_ms};

mod membership;

const DEFAULT_FETCH_BYTES: u32 = 1 << 20;
/// Largest encoded Fetch or LookupByKey answer (keel.proto, next to
/// `max_bytes`): under gRPC's default 4 MiB message limit, which a client
/// built from keel.proto alone keeps, with 64 KiB to spare. A record larger
/// than this alone is still returned, alone.
pub const MAX_RESPONSE_BYTES: usize = (4 << 20) - (64 << 10);
const _: () = assert!(MAX_RESPONSE_BYTES < 4 << 20);
const _: () = assert!((DEFAULT_FETCH_BYTES as usize) < MAX_RESPONSE_BYTES);
const MAX_FETCH_RECORDS: usize = 100_000;
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a fetch waits for this node to apply its `min_index` when
/// neither `max_wait_ms` nor the call's deadline bounds it (keel.proto).
pub const DEFAULT_CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// Kept back from the caller's deadline (`grpc-timeout`): a tenth of it,
/// within these bounds, so that NOT_CAUGHT_UP, or what a long-poll found,
/// reaches the caller before it gives up (and before tonic's own timeout
/// answers for the handler with a bare CANCELLED).
const DEADLINE_MARGIN_MIN: Duration = Duration::from_millis(10);
const DEADLINE_MARGIN_MAX: Duration = Duration::from_millis(250);
const _: () = assert!(DEADLINE_MARGIN_MIN.as_nanos() < DEADLINE_MARGIN_MAX.as_nanos());
const _: () = assert!(DEFAULT_CATCH_UP_WAIT.as_nanos() <= MAX_WAIT.as_nanos());
const MAX_BATCH_RECORDS: usize = 100_000;
const DEFAULT_LOOKUP_LIMIT: u32 = 100;
const MAX_TAG_BYTES: usize = 255;
/// How long a membership change waits for the current membership to be
/// durable before it gives up (SYNC_FLUSH; see `membership_turn`).
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);
// A client waits `MEMBERSHIP_CHANGE_WAIT` for a membership change: longer
// than the leader's longest path through `Change::add` (its turn, two
// resolutions, a connection, the learner's entry, the catch-up, and the
// two-part removal again), so that the client hears why a change failed
// instead of timing out on a change whose outcome it then cannot know.
const _: () = assert!(
    keel_client::MEMBERSHIP_CHANGE_WAIT.as_secs()
        > MEMBERSHIP_WAIT.as_secs()
            + 2 * membership::RESOLVE_TIMEOUT.as_secs()
            + membership::CONNECT_TIMEOUT.as_secs()
            + membership::CHANGE_TIMEOUT.as_secs()
            + membership::CATCH_UP_TIMEOUT.as_secs()
            + 2 * membership::CHANGE_TIMEOUT.as_secs()
);

/// Node-wide defaults and limits the service applies.
#[derive(Debug, Clone)]
pub struct Limits {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: u32,
    pub commitlog_timeout: Duration,
    pub policy: FlushPolicy,
    pub advertised: String,
}

/// The `Keel` service of one node. Built by `server::start` only; public so
/// the fuzz targets can call its handlers (through `server::in_process`).
pub struct ClientService {
    pub(crate) node_id: u64,
    pub(crate) raft: Raft,
    pub(crate) store: Store,
    pub(crate) shared: Arc<Shared>,
    pub(crate) proposer: ProposerHandle,
    pub(crate) durable: DurableHandle,
    pub(crate) limits: Limits,
    pub(crate) reserve: DiskReserve,
    /// `admin.token`: topic and membership changes need it (see `auth.rs`
    /// for why produce, commit-offset and reads do not).
    pub(crate) token: Option<Arc<str>>,
    /// One membership change at a time (see `membership_turn`).
    pub(crate) membership: Arc<tokio::sync::Mutex<()>>,
    /// InitCluster draws the new cluster's id.
    pub(crate) identity: super::identity::Identity,
}

fn invalid(message: impl Into<String>) -> Status {
    error(ErrorCode::InvalidArgument, message)
}

impl ClientService {
    /// Refuses an admin mutation without the token, before anything else is
    /// looked at (a follower does not even redirect it).
    fn admin_only<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        super::auth::check_metadata(self.token.as_deref(), req.metadata(), what)
    }

    fn leader_check(&self) -> Result<(), Status> {
        // First: a leader whose store failed still shows as leader until
        // it exits, and must propose nothing more.
        if let Some(e) = self.store.failure() {
            return Err(error(ErrorCode::StorageFailed, format!("this node stopped on a storage error: {e}")));
        }
        let leader = self.raft.metrics().borrow_watched().current_leader;
        if leader == Some(self.node_id) {
            return Ok(());
        }
        Err(not_leader(leader, leader_addr(&self.raft, leader)))
    }

    /// The leader refuses writes that grow the log while its volume is
    /// below `store.reserve.bytes` (see `reserve.rs`), before proposing.
    fn reserve_check(&self) -> Result<(), Status> {
        self.reserve.check().map_err(|below| error(ErrorCode::ResourceExhausted, below.to_string()))
    }

    /// A read refused because this node does not know the topic or
    /// partition. A follower may simply not have applied its creation yet:
    /// it sends the client to the leader, whose answer is authoritative.
    fn read_reject(&self, r: Reject) -> Status {
        if matches!(r, Reject::UnknownTopic(_) | Reject::UnknownPartition { .. }) {
            let leader = self.raft.metrics().borrow_watched().current_leader;
            if leader != Some(self.node_id) {
                // Without a known leader (a node just restarted, an election)
                // the topic may well exist: NO_LEADER, which clients retry.
                let redirect = not_leader(leader, leader_addr(&self.raft, leader));
                let message = match leader {
                    Some(id) => {
                        format!("{r} on this follower, which may not have applied it yet; ask the leader, node {id}")
                    }
                    None => format!("{r} on this node, which may be behind and knows no leader yet; retry shortly"),
                };
                return Status::with_metadata(redirect.code(), message, redirect.metadata().clone());
            }
        }
        reject_status(r)
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, super::state_machine::Machine> {
        self.shared.read()
    }

    /// A read-index round: a quorum confirms this node still leads, and it
    /// has applied everything committed before the call.
    async fn read_index(&self) -> Result<(), Status> {
        let linearizable = tokio::time::timeout(
            self.limits.commitlog_timeout,
            self.raft.ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex),
        )
        .await;
        match linearizable {
            Err(_) => Err(error(ErrorCode::NoLeader, "leadership could not be confirmed in time; retry")),
            Ok(Err(openraft::error::RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(
                f,
            )))) => Err(not_leader(f.leader_id, f.leader_node.map(|n| n.addr))),
            Ok(Err(e)) => Err(error(ErrorCode::NoLeader, format!("leadership could not be confirmed: {e}"))),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The incarnation and message size limit of a partition to produce to.
    fn produce_target(&self, topic: &str, partition: u32) -> Result<(u64, u32), Reject> {
        let m = self.state();
        let t = m.state.topic(topic)?;
        if partition >= t.config.partitions {
            return Err(Reject::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: t.config.partitions,
            });
        }
        Ok((t.incarnation, t.config.max_message_bytes))
    }

    /// Propose a command and wait (bounded) for it to apply.
    async fn command(&self, c: Command) -> Result<u64, Status> {
        self.leader_check()?;
        let req = RaftRequest { timestamp_ms: now_ms(), payload: entry::encode_command(&c).into() };
        let write = self.raft.client_write(req);
        let resp = match tokio::time::timeout(self.limits.commitlog_timeout, write).await {
            Err(_) => {
                return Err(error(
                    ErrorCode::OutcomeUnknown,
                    format!(
                        "no quorum within flush.commitlog.timeout ({:?}); the change may or may not apply",
                        self.limits.commitlog_timeout
                    ),
                ));
            }
            Ok(r) => r.map_err(|e| propose_status(propose_error(&self.raft, e)))?,
        };
        match resp.data {
            state::Applied::Command(Ok(())) => Ok(resp.log_id.index),
            state::Applied::Command(Err(r)) => Err(reject_status(r)),
            other => Err(error(ErrorCode::StorageFailed, format!("command applied as {other:?}"))),
        }
    }

    /// Wait (until `deadline`) for this node's state to be current: it has
    /// applied an entry of the current leader's term. After a restart or an
    /// election, what a node has applied can end before entries the
    /// cluster acknowledged under an earlier term (the committed id on disk
    /// lags, and a new leader commits earlier terms' entries only with its
    /// first own entry); once it has applied an entry of the current term,
    /// it has applied everything acknowledged before. Reads wait for that,
    /// so a consumer never takes a stale end for the end (issue 16, item 1).
    /// Err: NOT_CAUGHT_UP (retryable) past the deadline.
    async fn wait_current(&self, deadline: Instant, bound: &str) -> Result<(), Status> {
        let mut rx = self.raft.metrics();
        if tokio::time::timeout_at(deadline, super::types::wait_metrics(&mut rx, current))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return Ok(());
        }
        let m = rx.borrow_watched().clone();
        Err(error(
            ErrorCode::NotCaughtUp,
            format!(
                "this node has not yet applied an entry of the current term {} (applied {}, leader {}): after a \
                 restart or an election what it holds may end before what the cluster acknowledged; not reached \
                 within {bound}; retry, here or on another node",
                m.current_term,
                m.last_applied
                    .map_or("nothing".to_string(), |l| format!("index {} of term {}", l.index, l.leader_id.term)),
                m.current_leader.map_or("unknown".to_string(), |l| format!("node {l}")),
            ),
        ))
    }

    /// [`Self::wait_current`] for a read without a wait of its own: bounded
    /// by the call's deadline, else DEFAULT_CATCH_UP_WAIT.
    async fn read_current(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        if current(&self.raft.metrics().borrow_watched()) {
            return Ok(());
        }
        let (wait, bound) = match call_budget(metadata) {
            Some(b) => (b.min(DEFAULT_CATCH_UP_WAIT), "the call's deadline less a margin"),
            None => (DEFAULT_CATCH_UP_WAIT, "the default bound"),
        };
        self.wait_current(Instant::now() + wait, bound).await
    }

    /// Wait until this node has applied `index`, or `deadline`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> bool {
        let mut rx = self.shared.applied.subscribe();
        tokio::time::timeout_at(deadline, rx.wait_for(|&a| a >= index)).await.is_ok_and(|r| r.is_ok())
    }

    /// Read the records of consume-queue entries from the log.
    fn read_records(&self, entries: &[CqEntry], tags: &[String]) -> Result<Vec<pb::FetchedRecord>, Status> {
        let mut out = Vec::with_capacity(entries.len());
        // The entries of one log entry come in slot order: one cursor walks them.
        let mut cursor: Option<(u64, entry::RecordCursor)> = None;
        for e in entries {
            let malformed = |err: entry::Malformed| {
                error(ErrorCode::StorageFailed, format!("offset {} (log index {}): {err}", e.offset, e.log_index))
            };
            if cursor.as_ref().is_none_or(|(i, _)| *i != e.log_index) {
                let recs = self.store.read_range(e.log_index, e.log_index + 1, 0).map_err(|err| {
                    error(ErrorCode::OffsetOutOfRange, format!("offset {} is no longer in the log: {err}", e.offset))
                })?;
                let r = recs.into_iter().next().filter(|r| r.index == e.log_index).ok_or_else(|| {
                    error(ErrorCode::OffsetOutOfRange, format!("offset {} is no longer in the log", e.offset))
                })?;
                cursor = Some((e.log_index, entry::RecordCursor::new(r.payload).map_err(malformed)?));
            }
            let (_, c) = cursor.as_mut().expect("just set");
            let rec = c.record(e.slot).map_err(malformed)?;
            if !tags.is_empty() && !tags.iter().any(|t| t.as_bytes() == &rec.tag[..]) {
                continue; // tag hash collision: confirmed away on the record
            }
            out.push(fetched(e.offset, rec));
        }
        Ok(out)
    }
}

fn fetched(offset: u64, r: entry::StoredRecord) -> pb::FetchedRecord {
    pb::FetchedRecord {
        offset,
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        value: r.value,
        tag: String::from_utf8_lossy(&r.tag).into_owned(),
        headers: r
            .headers
            .into_iter()
            .map(|(k, v)| pb::Header { key: String::from_utf8_lossy(&k).into_owned(), value: v })
            .collect(),
    }
}

/// How many of `records`, taken in the order given, an answer whose other
/// fields encode to `fixed` bytes holds within MAX_RESPONSE_BYTES; at least
/// one, however large, so a record larger than the cap can still be read.
fn records_that_fit<'a>(fixed: usize, records: impl Iterator<Item = &'a pb::FetchedRecord>) -> usize {
    let mut total = fixed;
    let mut fit = 0;
    for r in records {
        // `records` is field 1 of both answers.
        total += prost::encoding::message::encoded_len(1, r);
        if fit > 0 && total > MAX_RESPONSE_BYTES {
            break;
        }
        fit += 1;
    }
    fit
}

/// Trims a fetch answer from the end to MAX_RESPONSE_BYTES encoded, and
/// points `next_offset` at the first record dropped, so the consumer's next
/// fetch reads on from there and gets every record exactly once.
fn cap_fetch(answer: &mut pb::FetchResponse) {
    let fixed = prost::Message::encoded_len(&pb::FetchResponse { records: Vec::new(), ..*answer });
    let fit = records_that_fit(fixed, answer.records.iter());
    if let Some(first_dropped) = answer.records.get(fit) {
        // Smaller than the scan's next offset, so it takes no more bytes.
        answer.next_offset = first_dropped.offset;
        answer.records.truncate(fit);
    }
}

/// The two waits of one fetch, both counted from the call's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FetchWaits {
    /// Until this node has applied `min_index`; past it, NOT_CAUGHT_UP.
    catch_up: Duration,
    /// What bounds `catch_up`, for the error message.
    catch_up_bound: &'static str,
    /// The long-poll for a record at the offset.
    poll: Duration,
}

impl FetchWaits {
    /// `max_wait_ms` bounds both waits when set; the caller's deadline
    /// (`budget`, already less its margin) bounds both always; with neither,
    /// catching up takes at most DEFAULT_CATCH_UP_WAIT and there is no
    /// long-poll.
    fn new(max_wait_ms: u32, budget: Option<Duration>) -> Self {
        let max_wait = Duration::from_millis(u64::from(max_wait_ms)).min(MAX_WAIT);
        let within_budget = |d: Duration| budget.map_or(d, |b| d.min(b));
        let (catch_up, catch_up_bound) = match (max_wait_ms, budget) {
            (0, None) => (DEFAULT_CATCH_UP_WAIT, "the default bound, as neither max_wait_ms nor a deadline was set"),
            (0, Some(b)) => (b.min(MAX_WAIT), "the call's deadline less a margin"),
            (_, Some(b)) if b < max_wait => (b, "the call's deadline less a margin"),
            _ => (max_wait, "max_wait_ms"),
        };
        Self { catch_up, catch_up_bound, poll: within_budget(max_wait) }
    }
}

/// Whether a node's applied state is current: it knows a leader and has
/// applied an entry of that leader's term (see `ClientService::wait_current`).
fn current(m: &super::types::Metrics) -> bool {
    m.current_leader.is_some() && m.last_applied.is_some_and(|a| a.leader_id.term == m.current_term)
}

/// What the caller's deadline leaves for the handler: its `grpc-timeout`
/// less a margin (see DEADLINE_MARGIN_MIN); `None` without one, or with
/// one that does not parse (tonic then enforces none either).
fn call_budget(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    let margin = (timeout / 10).clamp(DEADLINE_MARGIN_MIN, DEADLINE_MARGIN_MAX);
    Some(timeout.saturating_sub(margin))
}

/// A `grpc-timeout` value as the gRPC HTTP/2 protocol writes it: at most
/// eight digits and a unit (H, M, S, m, u, n). tonic parses it too, but
/// only for its own timeout layer.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() || value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Eight digits: no unit below overflows.
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parse `TagA || TagB` into tag names.
pub fn parse_tag_filter(filter: &str) -> Result<Vec<String>, Status> {
    let f = filter.trim();
    if f.is_empty() || f == "*" {
        return Ok(Vec::new());
    }
    let tags: Vec<String> = f.split("||").map(|t| t.trim().to_string()).collect();
    if let Some(bad) = tags.iter().find(|t| t.is_empty() || t.len() > MAX_TAG_BYTES) {
        return Err(invalid(format!(
            "tag filter {filter:?} has an empty or over-long tag {bad:?}; write it as `TagA || TagB`"
        )));
    }
    Ok(tags)
}

#[tonic::async_trait]
impl Keel for ClientService {
    async fn produce(&self, req: Request<pb::ProduceRequest>) -> Result<Response<pb::ProduceResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        // A follower's state may lag the leader's (a topic just created):
        // send the client to the leader before judging the request.
        self.leader_check()?;
        self.reserve_check()?;
        if req.records.is_empty() {
            return Err(invalid("produce request has no records"));
        }
        if req.producer_id != 0 && req.first_sequence.checked_add(req.records.len() as u64).is_none() {
            return Err(invalid(format!(
                "first_sequence {} leaves no room for {} records in the 64-bit sequence space",
                req.first_sequence,
                req.records.len()
            )));
        }
        if req.records.len() > MAX_BATCH_RECORDS {
            return Err(invalid(format!("{} records in one request; at most {MAX_BATCH_RECORDS}", req.records.len())));
        }
        let (incarnation, max_message_bytes) = match self.produce_target(&req.topic, req.partition) {
            Ok(target) => target,
            // A leader fresh from an election may not have applied the
            // topic's creation yet (found by the chaos harness: a retry of a
            // produce the old leader had stored was refused as UNKNOWN_TOPIC).
            // Judge only after catching up with everything committed.
            Err(Reject::UnknownTopic(_) | Reject::UnknownPartition { .. }) => {
                self.read_index().await?;
                self.produce_target(&req.topic, req.partition).map_err(reject_status)?
            }
            Err(r) => return Err(reject_status(r)),
        };
        let now = now_ms();
        let mut records = Vec::with_capacity(req.records.len());
        let mut total = 0usize;
        for (i, r) in req.records.into_iter().enumerate() {
            if r.tag.len() > MAX_TAG_BYTES || r.tag.contains("||") {
                return Err(invalid(format!("record {i}: tag must be at most {MAX_TAG_BYTES} bytes without `||`")));
            }
            if r.headers.len() > u16::MAX as usize {
                return Err(invalid(format!("record {i}: {} headers; at most {}", r.headers.len(), u16::MAX)));
            }
            if let Some(h) = r.headers.iter().find(|h| h.key.len() > u16::MAX as usize) {
                return Err(invalid(format!("record {i}: header name of {} bytes is too long", h.key.len())));
            }
            let rec = NewRecord {
                timestamp_ms: if r.timestamp_ms == 0 { now } else { r.timestamp_ms },
                key: r.key,
                tag: r.tag,
                headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                value: r.value,
            };
            let size =
                rec.key.len() + rec.value.len() + rec.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            if size > max_message_bytes as usize {
                return Err(error(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "record {i} is {size} bytes (key + value + headers); topic `{}` takes at most {max_message_bytes} (max.message.bytes)",
                        req.topic
                    ),
                ));
            }
            total += rec.encoded_len();
            records.push(rec);
        }
        let limit = self.store.max_payload_bytes().min(MAX_BATCH_BYTES);
        if total + 64 + req.topic.len() > limit {
            return Err(error(
                ErrorCode::MessageTooLarge,
                format!("the batch is {total} bytes encoded; one request carries at most {limit}: split it"),
            ));
        }
        let mut batch = Vec::with_capacity(total + 64);
        entry::encode_batch(
            &mut batch,
            &req.topic,
            incarnation,
            req.partition,
            req.producer_id,
            req.first_sequence,
            &records,
        );
        let deadline = started + self.limits.commitlog_timeout;
        let unknown = || {
            error(
                ErrorCode::OutcomeUnknown,
                format!(
                    "not acknowledged within flush.commitlog.timeout ({} ms): the records may or may not be stored; \
                     retry with the same producer id and sequence to find out without duplicating",
                    self.limits.commitlog_timeout.as_millis()
                ),
            )
        };
        let order = (req.producer_id != 0).then(|| SequenceOrder {
            producer_id: req.producer_id,
            topic: req.topic.clone(),
            partition: req.partition,
            first_sequence: req.first_sequence,
            count: records.len() as u64,
            applied_next: self.state().state.producer_next_sequence(req.producer_id, &req.topic, req.partition),
        });
        let outcome = match tokio::time::timeout_at(deadline, self.proposer.propose(batch, order)).await {
            Err(_) => return Err(unknown()),
            Ok(r) => r.map_err(propose_status)?,
        };
        let (base_offset, count, duplicate, log_index) = match outcome {
            BatchOutcome::Stored { base_offset, count, duplicate, log_index } => {
                (base_offset, count, duplicate, log_index)
            }
            BatchOutcome::Rejected(r) => return Err(reject_status(r)),
        };
        let (durability, durable_index) = if super::durable::waits_for_fsync(self.limits.policy) {
            // Applied, so durable: the state machine's gate waited for it.
            (pb::Durability::QuorumFsynced, self.durable.durable_index().max(log_index))
        } else {
            (pb::Durability::QuorumWritten, self.durable.durable_index())
        };
        if !duplicate {
            super::metrics::produced(u64::from(count));
        }
        Ok(Response::new(pb::ProduceResponse {
            base_offset,
            count,
            durability: durability as i32,
            durable_index,
            log_index,
            duplicate,
        }))
    }

    async fn fetch(&self, req: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        let started = Instant::now();
        let budget = call_budget(req.metadata());
        let req = req.into_inner();
        let tags = parse_tag_filter(&req.tag_filter)?;
        let tag_hashes: Vec<u32> = tags.iter().map(|t| state::tag_hash(t.as_bytes())).collect();
        // The scan counts the records' sizes in the log, close to what they
        // take in the answer; `cap_fetch` trims the answer to the cap exactly.
        let max_bytes = match req.max_bytes {
            0 => DEFAULT_FETCH_BYTES as usize,
            n => (n as usize).min(MAX_RESPONSE_BYTES),
        };
        let waits = FetchWaits::new(req.max_wait_ms, budget);
        // One clock for both waits: the time spent catching up with
        // min_index counts against max_wait_ms.
        let deadline = started + waits.poll;
        if req.min_index > *self.shared.applied.borrow()
            && !self.wait_applied(req.min_index, started + waits.catch_up).await
        {
            // Not OFFSET_OUT_OF_RANGE: on that a consumer resets its
            // position, while this node (or another) will get there.
            return Err(error(
                ErrorCode::NotCaughtUp,
                format!(
                    "this node has applied up to log index {}; min_index {} was not reached within {} ms ({}); \
                     retry, on another node or the leader",
                    *self.shared.applied.borrow(),
                    req.min_index,
                    waits.catch_up.as_millis(),
                    waits.catch_up_bound
                ),
            ));
        }
        if !current(&self.raft.metrics().borrow_watched()) {
            self.wait_current(started + waits.catch_up, waits.catch_up_bound).await?;
        }
        let mut applied_rx = self.shared.applied.subscribe();
        let mut offset = req.offset;
        loop {
            // Marked seen before the scan, so an apply that lands during the
            // scan still wakes the wait below.
            applied_rx.borrow_and_update();
            let (entries, next, start, end) = {
                let m = self.state();
                let (entries, next) = m
                    .state
                    .scan(&req.topic, req.partition, offset, max_bytes as u64, MAX_FETCH_RECORDS, &tag_hashes)
                    .map_err(|r| self.read_reject(r))?;
                let p = m.state.partition(&req.topic, req.partition).map_err(|r| self.read_reject(r))?;
                (entries, next, p.cq.start(), p.cq.end())
            };
            let records = self.read_records(&entries, &tags)?;
            let done = !records.is_empty() || next < end || Instant::now() >= deadline;
            if done {
                let mut answer = pb::FetchResponse {
                    records,
                    next_offset: next,
                    start_offset: start,
                    end_offset: end,
                    applied_index: *self.shared.applied.borrow(),
                };
                cap_fetch(&mut answer);
                let bytes = answer.records.iter().map(|r| r.value.len() + r.key.len()).sum::<usize>();
                super::metrics::fetched(answer.records.len() as u64, bytes as u64);
                return Ok(Response::new(answer));
            }
            // Nothing (matching) yet: wait for the next apply, then read on from `next`.
            offset = next;
            if tokio::time::timeout_at(deadline, applied_rx.changed()).await.is_err() {
                // Deadline: one last scan returns what is there.
                continue;
            }
        }
    }

    async fn lookup_by_key(
        &self,
        req: Request<pb::LookupByKeyRequest>,
    ) -> Result<Response<pb::LookupByKeyResponse>, Status> {
        self.read_current(req.metadata()).await?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(invalid("lookup needs a non-empty key"));
        }
        let limit = if req.limit == 0 { DEFAULT_LOOKUP_LIMIT } else { req.limit } as usize;
        let candidates =
            self.state().state.key_candidates(&req.topic, req.partition, &req.key).map_err(|r| self.read_reject(r))?;
        let mut records = self.read_records(&candidates, &[])?;
        records.retain(|r| r.key == req.key);
        if records.len() > limit {
            records.drain(..records.len() - limit);
        }
        // Like `limit`, the cap keeps the newest records.
        let fit = records_that_fit(0, records.iter().rev());
        records.drain(..records.len() - fit);
        Ok(Response::new(pb::LookupByKeyResponse { records }))
    }

    async fn offset_for_timestamp(
        &self,
        req: Request<pb::OffsetForTimestampRequest>,
    ) -> Result<Response<pb::OffsetForTimestampResponse>, Status> {
        self.read_current(req.metadata()).await?;
        let req = req.into_inner();
        let m = self.state();
        let found = m
            .state
            .offset_for_timestamp(&req.topic, req.partition, req.timestamp_ms)
            .map_err(|r| self.read_reject(r))?;
        let end = m.state.partition(&req.topic, req.partition).map_err(|r| self.read_reject(r))?.cq.end();
        Ok(Response::new(match found {
            Some(e) => pb::OffsetForTimestampResponse { found: true, offset: e.offset, timestamp_ms: e.timestamp_ms },
            None => pb::OffsetForTimestampResponse { found: false, offset: end, timestamp_ms: 0 },
        }))
    }

    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        self.admin_only(&req, "CreateTopic")?;
        let req = req.into_inner();
        state::check_name("topic", &req.name).map_err(reject_status)?;
        self.leader_check()?;
        self.reserve_check()?;
        let c = req.config.unwrap_or_default();
        let partitions = if c.partitions == 0 { 1 } else { c.partitions };
        if partitions > state::MAX_PARTITIONS {
            return Err(invalid(format!("partitions must be 1 to {}, got {partitions}", state::MAX_PARTITIONS)));
        }
        let retention = |v: i64, default: i64, what: &str| match v {
            0 => Ok(default),
            -1 => Ok(-1),
            v if v > 0 => Ok(v),
            v => Err(invalid(format!("{what} must be -1 (unlimited), 0 (node default) or positive, got {v}"))),
        };
        let retention_ms = retention(c.retention_ms, self.limits.retention_ms, "retention_ms")?;
        let retention_bytes = retention(c.retention_bytes, self.limits.retention_bytes, "retention_bytes")?;
        let max_message_bytes = match c.max_message_bytes {
            0 => self.limits.max_message_bytes,
            n if n > self.limits.max_message_bytes => {
                return Err(invalid(format!(
                    "max_message_bytes {n} exceeds this cluster's max.message.bytes ({})",
                    self.limits.max_message_bytes
                )));
            }
            n => n,
        };
        if self.state().state.topics.contains_key(&req.name) {
            return Err(reject_status(Reject::TopicExists(req.name)));
        }
        self.command(Command::CreateTopic {
            name: req.name.clone(),
            partitions,
            retention_ms,
            retention_bytes,
            max_message_bytes,
        })
        .await?;
        let topic = topic_info(&self.state().state, &req.name)?;
        Ok(Response::new(pb::CreateTopicResponse { topic: Some(topic) }))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        self.admin_only(&req, "DeleteTopic")?;
        let req = req.into_inner();
        self.leader_check()?;
        self.state().state.topic(&req.name).map_err(reject_status)?;
        self.command(Command::DeleteTopic { name: req.name }).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        req: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        self.read_current(req.metadata()).await?;
        let m = self.state();
        let topics = m.state.topics.keys().map(|name| topic_info(&m.state, name)).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn describe_topic(&self, req: Request<pb::DescribeTopicRequest>) -> Result<Response<pb::TopicInfo>, Status> {
        self.read_current(req.metadata()).await?;
        let req = req.into_inner();
        let m = self.state();
        m.state.topic(&req.name).map_err(|r| self.read_reject(r))?;
        Ok(Response::new(topic_info(&m.state, &req.name)?))
    }

    async fn commit_offset(
        &self,
        req: Request<pb::CommitOffsetRequest>,
    ) -> Result<Response<pb::CommitOffsetResponse>, Status> {
        let req = req.into_inner();
        state::check_name("group", &req.group).map_err(reject_status)?;
        self.leader_check()?;
        {
            let m = self.state();
            let p = m.state.partition(&req.topic, req.partition).map_err(reject_status)?;
            if req.offset > p.cq.end() {
                return Err(reject_status(Reject::OffsetOutOfRange {
                    topic: req.topic,
                    partition: req.partition,
                    offset: req.offset,
                    start: p.cq.start(),
                    end: p.cq.end(),
                }));
            }
        }
        self.command(Command::CommitOffset {
            group: req.group,
            topic: req.topic,
            partition: req.partition,
            offset: req.offset,
        })
        .await?;
        Ok(Response::new(pb::CommitOffsetResponse {}))
    }

    async fn fetch_offset(
        &self,
        req: Request<pb::FetchOffsetRequest>,
    ) -> Result<Response<pb::FetchOffsetResponse>, Status> {
        let req = req.into_inner();
        // Served by the leader after a read-index round (a quorum confirms
        // its leadership, and it has applied everything committed before the
        // read): a follower that has not applied a commit yet, or a deposed
        // leader, would answer an older offset and a consumer would read
        // records twice.
        self.leader_check()?;
        self.read_index().await?;
        let m = self.state();
        m.state.partition(&req.topic, req.partition).map_err(reject_status)?;
        Ok(Response::new(match m.state.group_offset(&req.group, &req.topic, req.partition) {
            Some(offset) => pb::FetchOffsetResponse { found: true, offset },
            None => pb::FetchOffsetResponse { found: false, offset: 0 },
        }))
    }

    async fn cluster_info(
        &self,
        _req: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let members = members_of(membership);
        let leader_id = m.current_leader.unwrap_or(0);
        let leader_addr =
            m.current_leader.and_then(|l| membership.get_node(&l)).map(|n| n.addr.clone()).unwrap_or_default();
        Ok(Response::new(pb::ClusterInfoResponse {
            node_id: self.node_id,
            leader_id,
            leader_addr,
            term: m.current_term,
            members,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: self.store.read_committed().map_or(0, |c| c.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            durable_index: self.durable.durable_index(),
            flush_policy: self.limits.policy.as_str().to_string(),
        }))
    }

    async fn init_cluster(
        &self,
        req: Request<pb::InitClusterRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin_only(&req, "InitCluster")?;
        let req = req.into_inner();
        let mut listed = Vec::with_capacity(req.members.len());
        for m in &req.members {
            if m.id == 0 {
                return Err(invalid(format!("member {}@{:?}: node ids start at 1", m.id, m.addr)));
            }
            membership::check_host_port(&m.addr).map_err(|e| invalid(format!("member {}: {e}", m.id)))?;
            let sockets = membership::resolve(&m.addr).await.map_err(|e| invalid(format!("member {}: {e}", m.id)))?;
            listed.push(membership::Addressed { id: m.id, addr: m.addr.clone(), sockets: Some(sockets) });
        }
        membership::check_distinct(&listed).map_err(|e| invalid(e.to_string()))?;
        let mut members: BTreeMap<u64, BasicNode> =
            listed.into_iter().map(|m| (m.id, BasicNode { addr: m.addr })).collect();
        if members.is_empty() {
            members.insert(self.node_id, BasicNode { addr: self.limits.advertised.clone() });
        }
        if !members.contains_key(&self.node_id) {
            return Err(invalid(format!("the members must include this node ({})", self.node_id)));
        }
        let initialized =
            self.raft.is_initialized().await.map_err(|e| error(ErrorCode::StorageFailed, e.to_string()))?;
        if initialized {
            return Err(invalid("cannot initialise: this node already belongs to an initialised cluster"));
        }
        self.identity
            .create_cluster(&self.store)
            .await
            .map_err(|e| error(ErrorCode::StorageFailed, format!("record the new cluster's id: {e:#}")))?;
        self.raft.initialize(members.clone()).await.map_err(|e| {
            error(ErrorCode::InvalidArgument, format!("cannot initialise: {e} (is the cluster already initialised?)"))
        })?;
        Ok(Response::new(pb::MembershipResponse {
            members: members.into_iter().map(|(id, n)| pb::Member { id, addr: n.addr, voter: true }).collect(),
            log_index: 0,
        }))
    }

    async fn add_node(&self, req: Request<pb::AddNodeRequest>) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin_only(&req, "AddNode")?;
        let req = req.into_inner();
        if req.id == 0 {
            return Err(invalid("add-node needs a node id ≥ 1"));
        }
        membership::check_host_port(&req.addr).map_err(|e| invalid(format!("add-node: {e}")))?;
        self.leader_check()?;
        let turn = self.membership_turn().await?;
        // The rest runs as its own task: openraft drives the second half of
        // a joint change from the caller's future, and a learner that does
        // not catch up must be removed again, so neither may stop halfway
        // because the client gave up and tonic dropped this handler.
        let change = Change { raft: self.raft.clone(), node_id: self.node_id, _turn: turn };
        let answer = tokio::spawn(change.add(req.id, req.addr, req.promote))
            .await
            .map_err(|e| error(ErrorCode::Unspecified, format!("the membership change task failed: {e}")))??;
        Ok(Response::new(answer))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        self.admin_only(&req, "RemoveNode")?;
        let req = req.into_inner();
        self.leader_check()?;
        let turn = self.membership_turn().await?;
        let change = Change { raft: self.raft.clone(), node_id: self.node_id, _turn: turn };
        let answer = tokio::spawn(change.remove(req.id, req.force))
            .await
            .map_err(|e| error(ErrorCode::Unspecified, format!("the membership change task failed: {e}")))??;
        Ok(Response::new(answer))
    }
}

impl ClientService {
    /// Wait for this node's turn to change the membership, and under
    /// SYNC_FLUSH and BATCH_FLUSH until the current membership is fsynced on
    /// a majority. openraft allows a change once the previous one is
    /// *committed*, and its commit may count the leader's unsynced copy
    /// (`durable.rs`, the durability rule): were the leader's power to fail
    /// then, the old and the new voters could each elect a leader. Each
    /// change returns only once applied, so durable; the lock keeps two
    /// concurrent calls from chaining on a change not yet durable.
    async fn membership_turn(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, Status> {
        let turn = self.membership.clone().lock_owned().await;
        if !super::durable::waits_for_fsync(self.limits.policy) {
            return Ok(turn);
        }
        let index = self.raft.metrics().borrow_watched().membership_config.log_id().map_or(0, |l| l.index);
        let mut durable = self.durable.subscribe();
        match tokio::time::timeout(MEMBERSHIP_WAIT, durable.wait_for(|&d| d >= index)).await {
            Ok(Ok(_)) => Ok(turn),
            _ => Err(error(
                ErrorCode::NoLeader,
                format!(
                    "the current membership (log index {index}) is not yet fsynced on a majority after {} s; retry",
                    MEMBERSHIP_WAIT.as_secs()
                ),
            )),
        }
    }
}

/// One membership change, run to its end by its own task while it holds
/// the membership turn.
struct Change {
    raft: Raft,
    /// This node, the leader when the change began.
    node_id: u64,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Change {
    fn members(&self) -> Vec<pb::Member> {
        members_of(self.raft.metrics().borrow_watched().membership_config.membership())
    }

    /// Every member with its address resolved (`None` where it does not
    /// resolve: see `membership.rs`).
    async fn addressed_members(&self) -> Vec<membership::Addressed> {
        let members = self.members();
        let resolved = futures::future::join_all(members.iter().map(|m| membership::resolve(&m.addr))).await;
        members
            .into_iter()
            .zip(resolved)
            .map(|(m, r)| {
                if let Err(e) = &r {
                    tracing::warn!(node = m.id, error = %e, "a member's address does not resolve; compared as written only");
                }
                membership::Addressed { id: m.id, addr: m.addr, sockets: r.ok() }
            })
            .collect()
    }

    /// One membership change (both halves of a joint one), bounded.
    async fn commit(&self, change: ChangeMembers<u64, BasicNode>) -> Result<u64, Status> {
        let what = format!("{change:?}");
        let bound = 2 * membership::CHANGE_TIMEOUT;
        match tokio::time::timeout(bound, self.raft.change_membership(change.clone(), false)).await {
            Ok(Ok(r)) => Ok(r.log_id.index),
            Ok(Err(e)) if lost_lead(&self.raft, &e) => self.settle(&change).await,
            Ok(Err(e)) => Err(membership_status(&self.raft, e)),
            Err(_) => Err(error(
                ErrorCode::OutcomeUnknown,
                format!(
                    "the membership change {what} was not committed within {} s (has the cluster lost its quorum?); \
                     it may still apply: look at the members before retrying",
                    bound.as_secs()
                ),
            )),
        }
    }

    /// The change's fate after this node lost the lead with it in flight
    /// (openraft then drops its reply, which reads as a stopped Raft): once
    /// a leader is known and this node has applied its latest membership
    /// entry, that entry says whether the change was committed. If not, it
    /// was lost with the lead, and the client is sent to the new leader to
    /// ask again; only if nothing settles is the outcome unknown. Without
    /// this a retry finds the change made ("node 3 is not a member") and the
    /// client cannot tell that its own attempt made it.
    async fn settle(&self, change: &ChangeMembers<u64, BasicNode>) -> Result<u64, Status> {
        let mut metrics = self.raft.metrics();
        let settled = tokio::time::timeout(
            membership::CHANGE_TIMEOUT,
            super::types::wait_metrics(&mut metrics, |m| {
                let applied = m.last_applied.map(|l| l.index);
                m.current_leader.is_some() && m.membership_config.log_id().map(|l| l.index) <= applied
            }),
        )
        .await;
        let Ok(Ok(m)) = settled else {
            return Err(error(
                ErrorCode::OutcomeUnknown,
                format!(
                    "this node lost the lead while the membership change {change:?} was in flight, and no leader \
                     settled it within {} s; it may still apply: look at the members before retrying",
                    membership::CHANGE_TIMEOUT.as_secs()
                ),
            ));
        };
        if membership::made(change, m.membership_config.membership()) {
            return Ok(m.membership_config.log_id().map_or(0, |l| l.index));
        }
        let status = not_leader(m.current_leader, leader_addr(&self.raft, m.current_leader));
        let message =
            format!("this node lost the lead and the membership change with it; ask again: {}", status.message());
        Err(Status::with_metadata(status.code(), message, status.metadata().clone()))
    }

    async fn add(self, id: u64, addr: String, promote: bool) -> Result<pb::MembershipResponse, Status> {
        let membership = self.raft.metrics().borrow_watched().membership_config.membership().clone();
        let voter = membership.voter_ids().any(|v| v == id);
        let existing = membership.get_node(&id).map(|n| n.addr.clone());
        if let Some(existing) = &existing {
            // Only one re-add means something: promoting a learner at the
            // address it already has. Anything else would silently do
            // nothing or move a node, and a node moves by removal and a new add.
            let refusal = match (voter, *existing == addr, promote) {
                (true, _, _) => Some(("a voter", "remove it first to add it anew")),
                (false, false, _) => Some(("a learner", "remove it first to give it another address")),
                (false, true, false) => Some(("a learner", "add it with promote to make it a voter")),
                (false, true, true) => None,
            };
            if let Some((role, why)) = refusal {
                return Err(invalid(format!("node {id} is already a member, {role} at {existing}; {why}")));
            }
        }
        let members = self.addressed_members().await;
        let sockets = membership::resolve(&addr).await.map_err(|e| invalid(format!("node {id}: {e}")))?;
        let new = membership::Addressed { id, addr: addr.clone(), sockets: Some(sockets.clone()) };
        membership::check_clash(&new, &members).map_err(|e| invalid(e.to_string()))?;
        if existing.is_some() {
            let index = self.raft.metrics().borrow_watched().membership_config.log_id().map_or(0, |l| l.index);
            if let Err(e) = membership::wait_caught_up(&self.raft, self.node_id, id, index).await {
                return Err(self.not_caught_up(id, &addr, e, "it stays a learner"));
            }
            let log_index = self.commit(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
            return Ok(pb::MembershipResponse { members: self.members(), log_index });
        }
        membership::check_listening(&addr, &sockets).await.map_err(|e| invalid(format!("node {id}: {e}")))?;
        let learner = BasicNode { addr: addr.clone() };
        let added =
            match tokio::time::timeout(membership::CHANGE_TIMEOUT, self.raft.add_learner(id, learner, false)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(membership_status(&self.raft, e)),
                Err(_) => {
                    return Err(error(
                        ErrorCode::OutcomeUnknown,
                        format!(
                            "adding node {id} as a learner was not committed within {} s; it may still apply",
                            membership::CHANGE_TIMEOUT.as_secs()
                        ),
                    ));
                }
            };
        let mut log_index = added.log_id.index;
        if let Err(e) = membership::wait_caught_up(&self.raft, self.node_id, id, log_index).await {
            // Never leave behind, let alone promote, a node that has not
            // caught up: the leader would replicate to it forever.
            let removed = match self.commit(ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await {
                Ok(_) => "it was removed again".to_string(),
                Err(r) => format!(
                    "removing it again failed ({}); remove it with `keel cluster remove-node {id}`",
                    r.message()
                ),
            };
            return Err(self.not_caught_up(id, &addr, e, &removed));
        }
        if promote {
            log_index = self.commit(ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
        }
        Ok(pb::MembershipResponse { members: self.members(), log_index })
    }

    fn not_caught_up(&self, id: u64, addr: &str, e: membership::NotCaughtUp, then: &str) -> Status {
        match e {
            membership::NotCaughtUp::Behind(matched) => invalid(format!(
                "node {id} did not catch up from {addr} within {} s (it holds the log up to {}, not yet the entry \
                 that added it); is node {id} the one listening there, and reachable from the leader? {then}",
                membership::CATCH_UP_TIMEOUT.as_secs(),
                matched.map_or_else(|| "no entry".to_string(), |i| format!("index {i}")),
            )),
            membership::NotCaughtUp::LostLead => {
                let leader = self.raft.metrics().borrow_watched().current_leader;
                let status = not_leader(leader, leader_addr(&self.raft, leader));
                let message =
                    format!("this node stopped leading while node {id} caught up ({then}): {}", status.message());
                Status::with_metadata(status.code(), message, status.metadata().clone())
            }
            membership::NotCaughtUp::Stopped => error(ErrorCode::ShuttingDown, "the node is shutting down"),
        }
    }

    async fn remove(self, id: u64, force: bool) -> Result<pb::MembershipResponse, Status> {
        let membership = self.raft.metrics().borrow_watched().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Err(invalid(format!("node {id} is not a member")));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership::check_removal(&voters, id, force).map_err(|e| invalid(e.to_string()))?;
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let log_index = self.commit(change).await?;
        Ok(pb::MembershipResponse { members: self.members(), log_index })
    }
}

/// Whether `e` means this node stopped leading with the change in flight
/// (a reply dropped with its leader state, or a forward), not that Raft stopped.
fn lost_lead(raft: &Raft, e: &super::raft_errors::WriteError) -> bool {
    let running = raft.metrics().borrow_watched().running_state.is_ok();
    running && matches!(e, RaftError::Fatal(_) | RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
}

/// A refused or failed membership change: openraft's refusals of the change
/// itself (another in progress, a learner not found, an empty membership)
/// are the caller's to fix, not storage failures.
fn membership_status(raft: &Raft, e: super::raft_errors::WriteError) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            invalid(format!("the membership cannot be changed now: {c}"))
        }
        other => propose_status(propose_error(raft, other)),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn records(offsets: std::ops::Range<u64>, value_bytes: usize) -> Vec<pb::FetchedRecord> {
        let value = Bytes::from(vec![7u8; value_bytes]);
        offsets.map(|offset| pb::FetchedRecord { offset, value: value.clone(), ..Default::default() }).collect()
    }

    fn answer(records: Vec<pb::FetchedRecord>, next_offset: u64) -> pb::FetchResponse {
        pb::FetchResponse { records, next_offset, start_offset: 0, end_offset: 100, applied_index: 9 }
    }

    #[test]
    fn a_fetch_answer_is_trimmed_from_the_end_to_the_cap_and_reads_on_from_the_first_dropped() {
        use prost::Message as _;
        // Phase: six records of 1 MiB: three fit under 4 MiB − 64 KiB, and
        // the next fetch starts at the fourth.
        let mut a = answer(records(10..16, 1 << 20), 16);
        cap_fetch(&mut a);
        assert_eq!(a.records.iter().map(|r| r.offset).collect::<Vec<_>>(), [10, 11, 12]);
        assert_eq!(a.next_offset, 13);
        assert!(a.encoded_len() <= MAX_RESPONSE_BYTES, "{} bytes", a.encoded_len());
        // Phase: one record above the cap is still returned, alone.
        let mut a = answer(records(10..12, 5 << 20), 12);
        cap_fetch(&mut a);
        assert_eq!((a.records.len(), a.next_offset), (1, 11));
        // Phase: what fits is left alone, next_offset included (a tag
        // filter may have skipped records past the last one returned).
        let mut a = answer(records(10..13, 1000), 40);
        cap_fetch(&mut a);
        assert_eq!((a.records.len(), a.next_offset), (3, 40));
        // Phase: an answer exactly at the cap keeps both of its records;
        // one byte more drops the second.
        let fixed = answer(Vec::new(), 1).encoded_len();
        let first = records(0..1, 1000).remove(0);
        let room = MAX_RESPONSE_BYTES - fixed - prost::encoding::message::encoded_len(1, &first);
        let second = (room - 16..=room)
            .rev()
            .map(|v| records(1..2, v).remove(0))
            .find(|r| prost::encoding::message::encoded_len(1, r) == room)
            .expect("a value size that fills the cap exactly");
        let both = [first, second];
        assert_eq!(records_that_fit(fixed, both.iter()), 2);
        assert_eq!(records_that_fit(fixed + 1, both.iter()), 1);
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_nonsense_is_none() {
        // Phase: each unit the gRPC protocol names.
        let cases = [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("1500m", Duration::from_millis(1500)),
            ("250u", Duration::from_micros(250)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_grpc_timeout(text), Some(want), "{text}");
        }
        // Phase: no unit, an unknown unit, nine digits, a sign, nothing: no deadline.
        for text in ["", "5", "5x", "123456789S", "-5S", "S", "1.5S", "\u{e9}S"] {
            assert_eq!(parse_grpc_timeout(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_deadline_keeps_back_a_margin_so_the_answer_beats_the_caller() {
        let budget = |value: &'static str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", tonic::metadata::MetadataValue::from_static(value));
            call_budget(&m)
        };
        // Phase: a tenth of the deadline, at least 10 ms and at most 250 ms.
        assert_eq!(budget("1S"), Some(Duration::from_millis(900)));
        assert_eq!(budget("50m"), Some(Duration::from_millis(40)));
        assert_eq!(budget("30S"), Some(Duration::from_millis(29_750)));
        // Phase: a deadline shorter than the margin leaves nothing; none leaves no bound.
        assert_eq!(budget("5m"), Some(Duration::ZERO));
        assert_eq!(call_budget(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn catching_up_is_bounded_by_max_wait_else_the_deadline_else_five_seconds() {
        let ms = Duration::from_millis;
        // Phase: neither set: 5 s to catch up, no long-poll.
        let w = FetchWaits::new(0, None);
        assert_eq!((w.catch_up, w.poll), (DEFAULT_CATCH_UP_WAIT, Duration::ZERO));
        assert!(w.catch_up_bound.contains("default"), "{}", w.catch_up_bound);
        // Phase: the deadline alone bounds catching up, and there is still no long-poll.
        let w = FetchWaits::new(0, Some(ms(900)));
        assert_eq!((w.catch_up, w.poll), (ms(900), Duration::ZERO));
        // Phase: max_wait_ms bounds both, and the deadline when it is shorter.
        let w = FetchWaits::new(300, None);
        assert_eq!((w.catch_up, w.poll, w.catch_up_bound), (ms(300), ms(300), "max_wait_ms"));
        let w = FetchWaits::new(300, Some(ms(5000)));
        assert_eq!((w.catch_up, w.poll), (ms(300), ms(300)));
        let w = FetchWaits::new(3000, Some(ms(900)));
        assert_eq!((w.catch_up, w.poll), (ms(900), ms(900)));
        assert!(w.catch_up_bound.contains("deadline"), "{}", w.catch_up_bound);
        // Phase: nothing waits past MAX_WAIT.
        let w = FetchWaits::new(u32::MAX, Some(Duration::from_secs(3600)));
        assert_eq!((w.catch_up, w.poll), (MAX_WAIT, MAX_WAIT));
    }
}
