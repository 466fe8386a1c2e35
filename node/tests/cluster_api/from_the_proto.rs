//! What a client written from keel.proto alone meets (issue 16, item 5):
//! min_index waits, undecodable bodies, sequence gaps, the 4 MiB limit.

use super::*;

/// A raw client to node `id` with tonic's defaults, as a client generated
/// from keel.proto alone would have: no per-call timeout (so no
/// `grpc-timeout` header unless a request sets one) and the default 4 MiB
/// decoding limit.
async fn default_client(cluster: &Cluster, id: u64) -> KeelClient<Channel> {
    let addr = format!("http://{}", cluster.grpc(id));
    KeelClient::connect(addr.clone()).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// A codec that sends and receives message bodies as they are, so a test
/// can send bytes no protobuf encoder would write, as a foreign client
/// might.
#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls `method` of the Keel service on node `id` with `body` as the
/// request's bytes, and returns the answer's bytes.
async fn raw_call(cluster: &Cluster, id: u64, method: &str, body: Bytes) -> Result<Bytes, tonic::Status> {
    let addr = format!("http://{}", cluster.grpc(id));
    let channel = Endpoint::from_shared(addr.clone())
        .expect("host:port makes a valid URI")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap_or_else(|e| panic!("channel to {addr} not ready: {e}"));
    let path = format!("/keel.client.v1.Keel/{method}");
    let path = PathAndQuery::try_from(path.as_str()).expect("a valid gRPC path");
    grpc.unary(tonic::Request::new(body), path, RawBytes).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_ahead_of_its_node_waits_for_min_index_then_answers_not_caught_up() {
    // Phase 1: a cluster with a topic holding one record, applied everywhere,
    // and a raw client to a follower.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes, one leader");
    let client = cluster_client(&cluster);
    let producer = client.producer();
    client.create_topic("reads", keep_forever(1)).await.expect("create reads");
    client.create_topic("other", keep_forever(1)).await.expect("create other");
    producer.produce("reads", 0, vec![Record::new("r0")]).await.expect("produce r0");
    sync_all(&cluster).await;
    let raw = default_client(&cluster, follower).await;

    // Phase 2: with the default max_wait_ms (0), a fetch whose min_index is
    // the next log index waits for it, instead of answering OUT_OF_RANGE (on
    // which a Kafka-style consumer resets its position); it answers once a
    // write lands 500 ms later, and the write then reads back from there.
    let applied = applied_index(&cluster, follower, Instant::now() + SYNC_TIMEOUT).await;
    let fetch = proto::FetchRequest {
        topic: "reads".into(),
        partition: 0,
        offset: 1,
        min_index: applied + 1,
        ..proto::FetchRequest::default()
    };
    let mut behind = raw.clone();
    let (fetched, ack) = tokio::join!(behind.fetch(fetch), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        producer.produce("reads", 0, vec![Record::new("r1")]).await.expect("produce r1")
    });
    let fetched = fetched
        .unwrap_or_else(|s| panic!("a fetch one write ahead of node{follower} (applied {applied}): {s:?}"))
        .into_inner();
    assert!(fetched.applied_index > applied, "answered below its min_index: {fetched:?}");
    let fetch = proto::FetchRequest {
        topic: "reads".into(),
        partition: 0,
        offset: 1,
        min_index: ack.log_index,
        ..proto::FetchRequest::default()
    };
    let fetched = raw.clone().fetch(fetch).await.expect("fetch r1 at its log index").into_inner();
    assert_eq!(fetched.records.iter().map(|r| &r.value[..]).collect::<Vec<_>>(), [b"r1"]);

    // Phase 3: a min_index no node will reach is answered UNAVAILABLE with
    // NOT_CAUGHT_UP naming min_index and the applied index, after the
    // bound: max_wait_ms (300 ms) when set; else the call's deadline less a
    // margin (grpc-timeout 1 s), so the answer beats the caller's timeout;
    // else 5 s.
    let far = fetched.applied_index + 1_000_000;
    let ahead = |max_wait_ms: u32| proto::FetchRequest {
        topic: "reads".into(),
        partition: 0,
        offset: 0,
        max_wait_ms,
        min_index: far,
        ..proto::FetchRequest::default()
    };
    let timed = |request: tonic::Request<proto::FetchRequest>| {
        let mut raw = raw.clone();
        async move {
            let started = Instant::now();
            let answer = raw.fetch(request).await;
            (answer, started.elapsed())
        }
    };
    let mut with_deadline = tonic::Request::new(ahead(0));
    with_deadline.set_timeout(Duration::from_secs(1));
    let (max_wait, deadline, neither) = tokio::join!(
        timed(tonic::Request::new(ahead(300))),
        timed(with_deadline),
        timed(tonic::Request::new(ahead(0))),
    );
    let far_text = far.to_string();
    for (what, (answer, took), at_least, below) in [
        ("max_wait_ms 300", max_wait, Duration::from_millis(280), Duration::from_secs(3)),
        ("grpc-timeout 1 s", deadline, Duration::from_millis(500), Duration::from_secs(1)),
        ("neither", neither, Duration::from_millis(4_500), Duration::from_secs(10)),
    ] {
        let status = refused_raw(answer, ErrorCode::NotCaughtUp, &[&far_text, "applied"]);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{what}: {status:?}");
        assert!(
            took >= at_least && took < below,
            "{what}: answered after {took:?}, not within {at_least:?}..{below:?}"
        );
    }

    // Phase 4: keel-client retries NOT_CAUGHT_UP (on the other nodes) until
    // its deadline, and then reports Unavailable, not a final refusal.
    let options = ClientOptions { call_timeout: Duration::from_secs(2), ..ClientOptions::default() };
    let impatient = Client::with_options(cluster.addrs(), options).expect("valid options");
    let error = impatient.fetch(Fetch::new("reads", 0, 0).min_index(far)).await.expect_err("no node reaches it");
    assert!(matches!(error, Error::Unavailable { attempts, .. } if attempts >= 2), "{error}");

    // Phase 5: the time spent waiting for min_index counts against
    // max_wait_ms: a fetch at the end of `reads`, one write ahead of its
    // node with max_wait_ms 3000, whose min_index a write to `other`
    // reaches 600 ms later, long-polls only for the rest of the 3000 ms
    // (not 600 + 3000).
    let applied = applied_index(&cluster, follower, Instant::now() + SYNC_TIMEOUT).await;
    let fetch = proto::FetchRequest {
        topic: "reads".into(),
        partition: 0,
        offset: 2,
        max_wait_ms: 3000,
        min_index: applied + 1,
        ..proto::FetchRequest::default()
    };
    let started = Instant::now();
    let mut behind = raw.clone();
    let (fetched, _) = tokio::join!(behind.fetch(fetch), async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        producer.produce("other", 0, vec![Record::new("o0")]).await.expect("produce o0")
    });
    let took = started.elapsed();
    let fetched = fetched.expect("a long poll at the end of reads").into_inner();
    assert_eq!((fetched.records.len(), fetched.next_offset), (0, 2), "{fetched:?}");
    assert!(
        took >= Duration::from_millis(2_700) && took < Duration::from_millis(3_500),
        "the long poll took {took:?}: max_wait_ms 3000 must count the wait for min_index"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_request_body_is_invalid_argument_naming_the_problem() {
    // Phase 1: a cluster with a topic holding one record.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic("bodies", keep_forever(1)).await.expect("create bodies");
    client.producer().produce("bodies", 0, vec![Record::new("b0")]).await.expect("produce b0");

    // Phase 2: bodies that are no protobuf of any request type (a truncated
    // varint, a length past the end, both in a field number no request
    // has, and wire type 7), sent as a foreign client would, are each
    // answered INVALID_ARGUMENT with `keel-error: INVALID_ARGUMENT`, naming
    // the request type and what did not decode, as keel.proto promises for
    // every error.
    let bodies: [(&str, &'static [u8]); 3] = [
        ("invalid varint", &[15 << 3, 0xff]),
        ("buffer underflow", &[(15 << 3) | 2, 0x05, b'a']),
        ("invalid wire type value: 7", &[(1 << 3) | 7]),
    ];
    for method in ["Produce", "Fetch", "CreateTopic"] {
        for (problem, body) in bodies {
            let answer = raw_call(&cluster, leader, method, Bytes::from_static(body)).await;
            let request_type = format!("keel.client.v1.{method}Request");
            let status = refused_raw(answer, ErrorCode::InvalidArgument, &[&request_type, problem]);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{method} with {body:?}: {status:?}");
        }
    }

    // Phase 3: the same route serves a body that decodes, and the bad ones
    // stored nothing.
    let fetch = proto::FetchRequest { topic: "bodies".into(), ..proto::FetchRequest::default() };
    let answer = raw_call(&cluster, leader, "Fetch", fetch.encode_to_vec().into()).await.expect("a valid body");
    let fetched = proto::FetchResponse::decode(answer).expect("a FetchResponse");
    assert_eq!(fetched.records.iter().map(|r| &r.value[..]).collect::<Vec<_>>(), [b"b0"]);
    assert_eq!(fetched.end_offset, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_sequence_gap_is_refused_naming_the_expected_sequence_and_stores_nothing() {
    // Phase 1: a cluster with an empty topic, and a raw client to the leader.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    client.create_topic("seq", keep_forever(1)).await.expect("create seq");
    let mut raw = cluster.client(leader).await;
    let batch = |producer_id: u64, first_sequence: u64, count: u64| proto::ProduceRequest {
        topic: "seq".into(),
        partition: 0,
        records: (first_sequence..first_sequence + count)
            .map(|s| proto::Record { value: format!("p{producer_id}/s{s}").into(), ..proto::Record::default() })
            .collect(),
        producer_id,
        first_sequence,
    };
    let end_offset = |raw: &mut KeelClient<Channel>| {
        let mut raw = raw.clone();
        async move {
            let info = raw.describe_topic(proto::DescribeTopicRequest { name: "seq".into() }).await;
            info.expect("describe seq").into_inner().partition_info[0].end_offset
        }
    };

    // Phase 2: producer 77 stores sequences 0..4; a batch at sequence 100
    // is refused OUT_OF_ORDER_SEQUENCE naming the expected (5) and the
    // received sequence, with `keel-expected-sequence: 5`, and stores
    // nothing.
    let stored = raw.produce(batch(77, 0, 5)).await.expect("sequences 0..4").into_inner();
    assert_eq!((stored.base_offset, stored.count, stored.duplicate), (0, 5, false));
    let status = refused_raw(raw.produce(batch(77, 100, 1)).await, ErrorCode::OutOfOrderSequence, &["5", "100"]);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let expected = status.metadata().get("keel-expected-sequence").and_then(|v| v.to_str().ok());
    assert_eq!(expected, Some("5"), "the expected sequence of {status:?}");
    assert_eq!(end_offset(&mut raw).await, 5, "the refused batch was stored");

    // Phase 3: an exact retry of the stored batch is a duplicate with its
    // offsets; an overlap (sequence 3) is refused; the expected sequence (5)
    // is stored at offset 5.
    let retry = raw.produce(batch(77, 0, 5)).await.expect("an exact retry").into_inner();
    assert_eq!((retry.base_offset, retry.count, retry.duplicate), (0, 5, true));
    refused_raw(raw.produce(batch(77, 3, 4)).await, ErrorCode::OutOfOrderSequence, &["5", "3"]);
    let next = raw.produce(batch(77, 5, 1)).await.expect("the expected sequence").into_inner();
    assert_eq!((next.base_offset, next.duplicate), (5, false));

    // Phase 4: a producer id the cluster does not know may start at any
    // sequence, and then goes on from there.
    let fresh = raw.produce(batch(78, 1000, 1)).await.expect("a new producer at 1000").into_inner();
    assert_eq!(fresh.base_offset, 6);
    refused_raw(raw.produce(batch(78, 1002, 1)).await, ErrorCode::OutOfOrderSequence, &["1001", "1002"]);

    // Phase 5: keel-client's Producer goes on after a definite refusal of
    // its last batch: the refused range is taken again by the next batch,
    // which is stored.
    let producer = client.producer();
    producer.produce("seq", 0, vec![Record::new("ok 1")]).await.expect("produce ok 1");
    refused(
        producer.produce("seq", 0, vec![Record::new(vec![0u8; (1 << 20) + 1])]).await,
        ErrorCode::MessageTooLarge,
        &["1048577"],
    );
    let ack = producer.produce("seq", 0, vec![Record::new("ok 2")]).await.expect("produce after a refusal");
    assert_eq!(ack.base_offset, 8);

    // Phase 6: 64 batches of one producer sent side by side to the
    // partition reach the leader in any order, yet all are stored, once,
    // in the order they took their sequences (the leader stores no other).
    let sends = (0..64).map(|i| {
        let producer = producer.clone();
        async move { producer.produce("seq", 0, vec![Record::new(format!("c{i}"))]).await }
    });
    let acks = futures::future::join_all(sends).await;
    let mut last_index = ack.log_index;
    for (i, ack) in acks.into_iter().enumerate() {
        let ack = ack.unwrap_or_else(|e| panic!("concurrent batch {i}: {e}"));
        assert_eq!((ack.base_offset, ack.duplicate), (9 + i as u64, false), "concurrent batch {i}");
        last_index = last_index.max(ack.log_index);
    }

    // Phase 7: every node holds exactly what was acknowledged, once.
    let mut want: Vec<String> = (0..6).map(|s| format!("p77/s{s}")).collect();
    want.extend(["p78/s1000".to_string(), "ok 1".into(), "ok 2".into()]);
    want.extend((0..64).map(|i| format!("c{i}")));
    for (id, node) in &node_clients(&cluster) {
        let read = read_from(node, "seq", 0, 0, last_index).await;
        let values: Vec<String> = read.records.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()).collect();
        assert_eq!(values, want, "node{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_with_a_huge_max_bytes_fits_a_client_with_the_default_4_mib_limit() {
    // Phase 1: a partition holding 6 MiB: 96 records of 64 KiB, all with
    // the same key.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let client = cluster_client(&cluster);
    let producer = client.producer();
    client.create_topic("big", keep_forever(1)).await.expect("create big");
    let value = |i: u64| binary(64 << 10, i as u32);
    for first in (0..96u64).step_by(16) {
        let records = (first..first + 16).map(|i| Record::new(value(i)).key("blob")).collect();
        producer.produce("big", 0, records).await.expect("produce 16 records of 64 KiB");
    }

    // Phase 2: a client with tonic's default 4 MiB decoding limit fetches
    // with max_bytes u32::MAX from offset 0, then from each next_offset:
    // every answer decodes and is under 4 MiB yet holds many records, and
    // together they return every record exactly once, in order.
    let mut raw = default_client(&cluster, leader).await;
    let mut offset = 0;
    let mut got = Vec::new();
    let mut fetches = 0;
    loop {
        let request =
            proto::FetchRequest { topic: "big".into(), offset, max_bytes: u32::MAX, ..proto::FetchRequest::default() };
        let fetched = raw
            .fetch(request)
            .await
            .unwrap_or_else(|s| panic!("fetch at {offset} with max_bytes u32::MAX: {s:?}"))
            .into_inner();
        fetches += 1;
        assert!(fetched.encoded_len() < 4 << 20, "a {}-byte answer", fetched.encoded_len());
        assert!(fetched.records.len() > 1, "an answer of {} record(s) at {offset}", fetched.records.len());
        assert_eq!(fetched.next_offset, fetched.records.last().map_or(offset, |r| r.offset + 1));
        got.extend(fetched.records);
        offset = fetched.next_offset;
        if offset >= fetched.end_offset {
            break;
        }
        assert!(fetches < 10, "no end after {fetches} fetches");
    }
    assert!(fetches >= 2, "6 MiB came in one answer");
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..96).collect::<Vec<_>>());
    for r in &got {
        assert_eq!(r.value, value(r.offset), "offset {}", r.offset);
    }

    // Phase 3: a lookup matching all 6 MiB also fits, and keeps the newest
    // records (as its limit does), oldest first.
    let request =
        proto::LookupByKeyRequest { topic: "big".into(), key: Bytes::from_static(b"blob"), ..Default::default() };
    let found = raw.lookup_by_key(request).await.expect("a lookup matching 6 MiB").into_inner();
    assert!(found.encoded_len() < 4 << 20, "a {}-byte lookup answer", found.encoded_len());
    let offsets: Vec<u64> = found.records.iter().map(|r| r.offset).collect();
    assert!(offsets.len() > 1 && offsets.last() == Some(&95), "{offsets:?}");
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
}
