//! The client against in-process fake nodes (tonic servers on port 0 that
//! answer Produce from a script): it follows NOT_LEADER to the leader, moves
//! on from nodes that cannot help, resends the same producer id and sequence
//! on every retry, and reports a write whose fate it cannot know as
//! `OutcomeUnknown`, never as a plain failure. Against a fake that judges
//! producer sequences as the leader does, the producer retries a batch that
//! arrived ahead of one still in flight, takes a refused last range again,
//! and moves a partition whose gap can no longer be filled (or whose
//! leader expects a sequence past the batch) onto a fresh producer id; a
//! new id sends its first batch of a partition alone. A fetch whose node is
//! behind its min_index is asked of another node.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::proto::keel_server::{Keel, KeelServer};
use keel_client::proto::{
    AddNodeRequest, ClusterInfoRequest, ClusterInfoResponse, CommitOffsetRequest, CommitOffsetResponse,
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeTopicRequest,
    FetchOffsetRequest, FetchOffsetResponse, FetchRequest, FetchResponse, InitClusterRequest, ListTopicsRequest,
    ListTopicsResponse, LookupByKeyRequest, LookupByKeyResponse, MembershipResponse, OffsetForTimestampRequest,
    OffsetForTimestampResponse, ProduceRequest, ProduceResponse, RemoveNodeRequest, TopicInfo,
};
use keel_client::{
    Client, ClientOptions, Durability, ERROR_CODE_KEY, Error, ErrorCode, LEADER_ADDR_KEY, LEADER_ID_KEY, Producer,
    Record,
};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// One scripted answer to a Produce.
#[derive(Clone)]
enum Answer {
    Ok {
        base_offset: u64,
        duplicate: bool,
    },
    /// A keel error status; NOT_LEADER may name the leader.
    Err {
        code: &'static str,
        leader: Option<(u64, String)>,
    },
    /// Answer `Ok` only after this long (longer than the client waits).
    Slow {
        delay: Duration,
        base_offset: u64,
    },
    /// Judge the batch as the leader does: per producer id and partition
    /// the next sequence it expects (any for an id it has not seen), else
    /// OUT_OF_ORDER_SEQUENCE with `keel-expected-sequence`; stored at the
    /// next offset (one counter for all partitions). A record valued `too-large` is refused
    /// MESSAGE_TOO_LARGE; a batch whose first record is valued `late` is
    /// judged 300 ms after it arrived.
    Sequenced,
}

/// What a `Sequenced` fake leader has stored.
#[derive(Default)]
struct Log {
    /// (producer id, topic, partition) → the sequence it must send next.
    expected: HashMap<(u64, String, u32), u64>,
    end_offset: u64,
}

/// What a fake node saw: (producer id, first sequence, record count) per Produce.
type Seen = Arc<Mutex<Vec<(u64, u64, usize)>>>;

struct FakeNode {
    /// Answers in order; the last one repeats.
    script: Mutex<VecDeque<Answer>>,
    seen: Seen,
    log: Mutex<Log>,
}

impl FakeNode {
    fn next_answer(&self) -> Answer {
        let mut script = self.script.lock().expect("test lock");
        let answer = if script.len() > 1 { script.pop_front() } else { script.front().cloned() };
        answer.expect("every fake node has a script")
    }

    fn judge(&self, r: &ProduceRequest) -> Result<Response<ProduceResponse>, Status> {
        if r.records.iter().any(|x| &x.value[..] == b"too-large") {
            return Err(keel_status("MESSAGE_TOO_LARGE", None));
        }
        let mut log = self.log.lock().expect("test lock");
        let key = (r.producer_id, r.topic.clone(), r.partition);
        if let Some(&expected) = log.expected.get(&key)
            && expected != r.first_sequence
        {
            let mut status = keel_status("OUT_OF_ORDER_SEQUENCE", None);
            status.metadata_mut().insert("keel-expected-sequence", expected.to_string().parse().expect("digits"));
            return Err(status);
        }
        log.expected.insert(key, r.first_sequence + r.records.len() as u64);
        let base_offset = log.end_offset;
        log.end_offset += r.records.len() as u64;
        ok(base_offset, r.records.len(), false)
    }
}

fn keel_status(code: &'static str, leader: Option<(u64, String)>) -> Status {
    let mut status = Status::failed_precondition(format!("fake node says {code}"));
    status.metadata_mut().insert(ERROR_CODE_KEY, code.parse().expect("code names are ASCII"));
    if let Some((id, addr)) = leader {
        status.metadata_mut().insert(LEADER_ID_KEY, id.to_string().parse().expect("digits are ASCII"));
        status.metadata_mut().insert(LEADER_ADDR_KEY, addr.parse().expect("addresses are ASCII"));
    }
    status
}

fn ok(base_offset: u64, count: usize, duplicate: bool) -> Result<Response<ProduceResponse>, Status> {
    Ok(Response::new(ProduceResponse {
        base_offset,
        count: count as u32,
        durability: Durability::QuorumFsynced as i32,
        durable_index: 7,
        log_index: 7,
        duplicate,
    }))
}

#[tonic::async_trait]
impl Keel for FakeNode {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let r = request.into_inner();
        self.seen.lock().expect("test lock").push((r.producer_id, r.first_sequence, r.records.len()));
        match self.next_answer() {
            Answer::Ok { base_offset, duplicate } => ok(base_offset, r.records.len(), duplicate),
            Answer::Err { code, leader } => Err(keel_status(code, leader)),
            Answer::Slow { delay, base_offset } => {
                tokio::time::sleep(delay).await;
                ok(base_offset, r.records.len(), false)
            }
            Answer::Sequenced => {
                if r.records.first().is_some_and(|x| &x.value[..] == b"late") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                self.judge(&r)
            }
        }
    }

    /// Answers from the same script: `Ok` is an empty answer whose
    /// `next_offset` is `base_offset`.
    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        match self.next_answer() {
            Answer::Ok { base_offset, .. } => {
                Ok(Response::new(FetchResponse { next_offset: base_offset, ..FetchResponse::default() }))
            }
            Answer::Err { code, leader } => Err(keel_status(code, leader)),
            Answer::Slow { .. } | Answer::Sequenced => Err(Status::unimplemented("fake")),
        }
    }
    async fn lookup_by_key(&self, _: Request<LookupByKeyRequest>) -> Result<Response<LookupByKeyResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn offset_for_timestamp(
        &self,
        _: Request<OffsetForTimestampRequest>,
    ) -> Result<Response<OffsetForTimestampResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn create_topic(&self, _: Request<CreateTopicRequest>) -> Result<Response<CreateTopicResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_topic(&self, _: Request<DeleteTopicRequest>) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_topics(&self, _: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn describe_topic(&self, _: Request<DescribeTopicRequest>) -> Result<Response<TopicInfo>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn commit_offset(&self, _: Request<CommitOffsetRequest>) -> Result<Response<CommitOffsetResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn fetch_offset(&self, _: Request<FetchOffsetRequest>) -> Result<Response<FetchOffsetResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn cluster_info(&self, _: Request<ClusterInfoRequest>) -> Result<Response<ClusterInfoResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn init_cluster(&self, _: Request<InitClusterRequest>) -> Result<Response<MembershipResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn add_node(&self, _: Request<AddNodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn remove_node(&self, _: Request<RemoveNodeRequest>) -> Result<Response<MembershipResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Binds port 0 first, so a script can name this node's address before it serves.
async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("bound").to_string();
    (listener, addr)
}

fn serve(listener: tokio::net::TcpListener, script: Vec<Answer>) -> Seen {
    let seen = Seen::default();
    let node = FakeNode { script: Mutex::new(script.into()), seen: Arc::clone(&seen), log: Mutex::default() };
    tokio::spawn(async move {
        let served =
            Server::builder().add_service(KeelServer::new(node)).serve_with_incoming(TcpIncoming::from(listener));
        if let Err(e) = served.await {
            eprintln!("fake node stopped: {e}");
        }
    });
    seen
}

fn seen(s: &Seen) -> Vec<(u64, u64, usize)> {
    s.lock().expect("test lock").clone()
}

fn quick(call_timeout_ms: u64) -> ClientOptions {
    ClientOptions { call_timeout: Duration::from_millis(call_timeout_ms), ..ClientOptions::default() }
}

#[tokio::test]
async fn follows_not_leader_and_retries_with_the_same_producer_id_and_sequence() {
    // Phase: node A is a follower that names B as leader; B's first answer
    // is OUTCOME_UNKNOWN (it stored the batch but could not tell in time),
    // then it answers the retry as a duplicate, then takes a fresh batch.
    let (la, a) = bind().await;
    let (lb, b) = bind().await;
    let seen_a = serve(la, vec![Answer::Err { code: "NOT_LEADER", leader: Some((2, b.clone())) }]);
    let seen_b = serve(
        lb,
        vec![
            Answer::Err { code: "OUTCOME_UNKNOWN", leader: None },
            Answer::Ok { base_offset: 100, duplicate: true },
            Answer::Ok { base_offset: 103, duplicate: false },
        ],
    );
    let client = Client::connect(vec![a.clone()]).expect("valid address");
    let producer = client.producer();

    // Phase: the first produce reaches B through A and ends with B's original offsets.
    let records = vec![Record::new("a"), Record::new("b").key("k"), Record::new("c")];
    let ack = producer.produce("orders", 0, records).await.expect("B stored it");
    assert_eq!((ack.base_offset, ack.count, ack.duplicate), (100, 3, true));
    assert_eq!(ack.durability, Durability::QuorumFsynced);
    assert_eq!(client.leader().as_deref(), Some(b.as_str()));
    assert!(client.addrs().contains(&b), "the leader's address was added");

    // Phase: every attempt carried the same producer id and sequence 0.
    let id = producer.id();
    assert_eq!(seen(&seen_a), vec![(id, 0, 3)]);
    assert_eq!(seen(&seen_b), vec![(id, 0, 3), (id, 0, 3)]);

    // Phase: the next batch goes straight to the known leader, at the next sequence.
    let ack = producer.produce("orders", 0, vec![Record::new("d")]).await.expect("B takes it");
    assert_eq!((ack.base_offset, ack.duplicate), (103, false));
    assert_eq!(seen(&seen_a).len(), 1, "A is not asked again");
    assert_eq!(seen(&seen_b).last(), Some(&(id, 3, 1)));
}

#[tokio::test]
async fn a_lost_answer_is_retried_and_answered_without_storing_twice() {
    // Phase: B holds its first answer past the client's attempt timeout.
    let (lb, b) = bind().await;
    let seen_b = serve(
        lb,
        vec![
            Answer::Slow { delay: Duration::from_millis(600), base_offset: 5 },
            Answer::Ok { base_offset: 5, duplicate: true },
        ],
    );
    let options = ClientOptions { request_timeout: Duration::from_millis(150), ..quick(5_000) };
    let client = Client::with_options(vec![b], options).expect("valid");
    let producer = client.producer();
    // Phase: the client gives up on the first attempt, resends, and gets the first offsets.
    let ack = producer.produce("t", 1, vec![Record::new("x")]).await.expect("answered on retry");
    assert_eq!((ack.base_offset, ack.duplicate), (5, true));
    let s = seen(&seen_b);
    assert_eq!(s.len(), 2);
    assert!(s.iter().all(|&(id, seq, n)| id == producer.id() && seq == 0 && n == 1), "{s:?}");
}

#[tokio::test]
async fn a_deadline_after_an_unknown_outcome_is_outcome_unknown() {
    // Phase: the leader never learns whether the batch is durable.
    let (l, addr) = bind().await;
    serve(l, vec![Answer::Err { code: "OUTCOME_UNKNOWN", leader: None }]);
    let client = Client::with_options(vec![addr], quick(300)).expect("valid");
    let err = client.producer().produce("t", 0, vec![Record::new("x")]).await.expect_err("never confirmed");
    assert!(matches!(err, Error::OutcomeUnknown { attempts, .. } if attempts >= 2), "{err}");
    assert!(err.is_outcome_unknown());
}

#[tokio::test]
async fn no_leader_until_the_deadline_is_unavailable_not_unknown() {
    // Phase: an election that never ends; nothing was ever proposed.
    let (l, addr) = bind().await;
    let seen_n = serve(l, vec![Answer::Err { code: "NO_LEADER", leader: None }]);
    let client = Client::with_options(vec![addr], quick(300)).expect("valid");
    let err = client.producer().produce("t", 0, vec![Record::new("x")]).await.expect_err("no leader");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    // Phase: the backoff kept the attempts few (10 ms doubling within 300 ms).
    let n = seen(&seen_n).len();
    assert!((2..=12).contains(&n), "{n} attempts");
}

#[tokio::test]
async fn a_definite_refusal_is_returned_at_once() {
    let (l, addr) = bind().await;
    let seen_n = serve(l, vec![Answer::Err { code: "UNKNOWN_TOPIC", leader: None }]);
    let client = Client::connect(vec![addr]).expect("valid");
    let err = client.producer().produce("nope", 0, vec![Record::new("x")]).await.expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
    assert_eq!(seen(&seen_n).len(), 1, "no retry of a definite refusal");
}

#[tokio::test]
async fn a_refusal_after_an_attempt_that_may_have_stored_the_batch_is_outcome_unknown() {
    // Phase: the first attempt's answer is lost (it may have been stored);
    // the retry is refused as UNKNOWN_TOPIC, as by a new leader that has not
    // applied the topic yet (found by keel-chaos under kill -9 of leaders).
    let (l, addr) = bind().await;
    serve(
        l,
        vec![
            Answer::Slow { delay: Duration::from_millis(600), base_offset: 0 },
            Answer::Err { code: "UNKNOWN_TOPIC", leader: None },
        ],
    );
    let options = ClientOptions { request_timeout: Duration::from_millis(150), ..quick(5_000) };
    let client = Client::with_options(vec![addr], options).expect("valid");
    let err = client.producer().produce("t", 0, vec![Record::new("x")]).await.expect_err("refused on retry");
    assert!(err.is_outcome_unknown(), "the first attempt may have stored it: {err}");
    assert!(err.to_string().contains("UNKNOWN_TOPIC"), "{err}");
}

#[tokio::test]
async fn not_leader_without_an_address_and_dead_nodes_move_on_to_the_next_node() {
    // Phase: the list holds a dead address, a follower that does not know
    // the leader, and the leader.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("bound").to_string()
    };
    let (lf, follower) = bind().await;
    let (ll, leader) = bind().await;
    serve(lf, vec![Answer::Err { code: "NOT_LEADER", leader: None }]);
    let seen_l = serve(ll, vec![Answer::Ok { base_offset: 0, duplicate: false }]);
    let client = Client::with_options(vec![dead, follower, leader.clone()], quick(5_000)).expect("valid");
    // Phase: the produce lands on the leader, which the client then remembers.
    let ack = client.producer().produce("t", 0, vec![Record::new("x")]).await.expect("leader reached");
    assert_eq!(ack.base_offset, 0);
    assert_eq!(seen(&seen_l).len(), 1);
    assert_eq!(client.leader().as_deref(), Some(leader.as_str()));
}

#[tokio::test]
async fn a_definite_refusal_of_the_last_range_is_taken_again_by_the_next_batch() {
    // Phase: a leader that judges sequences; one batch is stored, the next
    // refused MESSAGE_TOO_LARGE (nothing stored, a hole at sequence 1).
    let (l, addr) = bind().await;
    let seen_l = serve(l, vec![Answer::Sequenced]);
    let client = Client::connect(vec![addr]).expect("valid address");
    let producer = client.producer();
    producer.produce("t", 0, vec![Record::new("a")]).await.expect("first batch");
    let err = producer.produce("t", 0, vec![Record::new("too-large")]).await.expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge), "{err}");
    // Phase: the refused range was the last one reserved, so the next batch
    // takes sequence 1 again and is stored, under the same producer id.
    let ack = producer.produce("t", 0, vec![Record::new("b")]).await.expect("the next batch fills the hole");
    assert_eq!(ack.base_offset, 1);
    let id = producer.id();
    assert_eq!(seen(&seen_l), vec![(id, 0, 1), (id, 1, 1), (id, 1, 1)]);
}

#[tokio::test]
async fn a_batch_that_arrives_ahead_of_one_in_flight_is_retried_once_that_one_lands() {
    // Phase: one batch stored; then two concurrent batches of one producer,
    // the first (sequence 1) held 300 ms by the leader, so the second
    // (sequence 2) reaches it first and is refused as a gap.
    let (l, addr) = bind().await;
    let seen_l = serve(l, vec![Answer::Sequenced]);
    let client = Client::connect(vec![addr]).expect("valid address");
    let producer = client.producer();
    producer.produce("t", 0, vec![Record::new("a")]).await.expect("first batch");
    let (late, second) = tokio::join!(
        producer.produce("t", 0, vec![Record::new("late")]),
        producer.produce("t", 0, vec![Record::new("b")])
    );
    // Phase: both are stored in sequence order, under the same producer id;
    // the second was sent again after its gap refusal.
    assert_eq!(late.expect("the held batch").base_offset, 1);
    assert_eq!(second.expect("the batch that came early").base_offset, 2);
    let s = seen(&seen_l);
    let id = producer.id();
    assert!(s.iter().all(|&(pid, _, _)| pid == id), "{s:?}");
    assert!(s.iter().filter(|&&(_, seq, _)| seq == 2).count() >= 2, "the gap was not retried: {s:?}");
}

#[tokio::test]
async fn a_gap_that_can_no_longer_be_filled_moves_the_partition_to_a_fresh_producer_id() {
    // Phase: one batch stored; then two concurrent batches: the first
    // (sequence 1) is refused MESSAGE_TOO_LARGE while the second (sequence
    // 2) is reserved, so sequence 1 stays a hole the leader refuses to skip.
    let (l, addr) = bind().await;
    let seen_l = serve(l, vec![Answer::Sequenced]);
    let client = Client::connect(vec![addr]).expect("valid address");
    let producer = client.producer();
    producer.produce("t", 0, vec![Record::new("a")]).await.expect("first batch");
    let (refused, after) = tokio::join!(
        producer.produce("t", 0, vec![Record::new("too-large")]),
        producer.produce("t", 0, vec![Record::new("b")])
    );
    assert_eq!(refused.expect_err("too large").code(), Some(ErrorCode::MessageTooLarge));
    // Phase: the second batch, refused as a gap with nothing left in flight
    // to fill it, is sent again under a fresh producer id from sequence 0
    // (it was not stored, so this cannot duplicate it) and stored; the next
    // batch follows it on the new id.
    assert_eq!(after.expect("moved to a fresh producer id").base_offset, 1);
    let ack = producer.produce("t", 0, vec![Record::new("c")]).await.expect("the next batch");
    assert_eq!(ack.base_offset, 2);
    let s = seen(&seen_l);
    let id = producer.id();
    let fresh = s.last().expect("requests were seen").0;
    assert!(fresh != id && fresh != 0, "{s:?}");
    assert_eq!(&s[s.len() - 2..], [(fresh, 0, 1), (fresh, 1, 1)], "{s:?}");
    // Phase: another partition keeps the producer's own id; sequences of
    // that id can no longer be reserved for the moved one.
    producer.produce("t", 1, vec![Record::new("d")]).await.expect("another partition");
    assert_eq!(seen(&seen_l).last(), Some(&(id, 0, 1)));
    let err = producer.reserve("t", 0, 1).expect_err("the moved partition's sequences are not the id's");
    assert!(err.to_string().contains(&fresh.to_string()), "{err}");
    assert_eq!(producer.reserve("t", 1, 1).ok(), Some(1));
}

#[tokio::test]
async fn a_fetch_whose_node_is_not_caught_up_is_asked_of_another_node() {
    // Phase: the first node is behind the fetch's min_index; the second answers.
    let (la, a) = bind().await;
    let (lb, b) = bind().await;
    serve(la, vec![Answer::Err { code: "NOT_CAUGHT_UP", leader: None }]);
    serve(lb, vec![Answer::Ok { base_offset: 9, duplicate: false }]);
    let client = Client::with_options(vec![a, b], quick(5_000)).expect("valid");
    let fetched =
        client.fetch(keel_client::Fetch::new("t", 0, 0).min_index(42)).await.expect("the second node answers");
    assert_eq!(fetched.next_offset, 9);
}

#[tokio::test]
async fn a_new_producer_id_sends_its_first_batch_of_a_partition_alone() {
    // Phase: two concurrent batches of a fresh producer; the leader holds
    // the first 300 ms. Sent side by side, the second would reach it first
    // and become the id's start there, and the first would be refused.
    let (l, addr) = bind().await;
    let seen_l = serve(l, vec![Answer::Sequenced]);
    let client = Client::connect(vec![addr]).expect("valid address");
    let producer = client.producer();
    let (first, second) = tokio::join!(
        producer.produce("t", 0, vec![Record::new("late")]),
        producer.produce("t", 0, vec![Record::new("b")])
    );
    // Phase: the second waited for the first to be stored: both are, in
    // sequence order, under the producer's id, each sent once.
    assert_eq!(first.expect("the held batch").base_offset, 0);
    assert_eq!(second.expect("the batch behind it").base_offset, 1);
    let id = producer.id();
    assert_eq!(seen(&seen_l), vec![(id, 0, 1), (id, 1, 1)]);
}

#[tokio::test]
async fn a_batch_behind_the_expected_sequence_moves_to_a_fresh_producer_id() {
    // Phase: the leader expects sequence 100 of producer 42 on t/0 (say the
    // id was forgotten and taken up again by a later batch); a producer
    // with that id starts its own count at 0.
    let (l, addr) = bind().await;
    let seen_l = serve(l, vec![Answer::Sequenced]);
    let client = Client::connect(vec![addr]).expect("valid address");
    let other = Producer::with_id(client.clone(), 42).expect("a non-zero id");
    other.produce_at("t", 0, 96, (0..4).map(|i| Record::new(format!("o{i}"))).collect()).await.expect("seed");
    let producer = Producer::with_id(client, 42).expect("a non-zero id");
    // Phase: refused behind 100, the batch (not stored) goes again under a
    // fresh id from sequence 0, and is stored.
    let ack = producer.produce("t", 0, vec![Record::new("x")]).await.expect("moved to a fresh producer id");
    assert_eq!(ack.base_offset, 4);
    let s = seen(&seen_l);
    let fresh = s.last().expect("requests were seen").0;
    assert!(fresh != 42 && fresh != 0, "{s:?}");
    assert_eq!(s[1..], [(42, 0, 1), (fresh, 0, 1)], "{s:?}");
}
