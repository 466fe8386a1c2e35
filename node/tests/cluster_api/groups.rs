//! Consumer-group offsets, bad requests refused naming what was wrong, and
//! deleted-and-recreated topics: stored data stays exact throughout.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn groups_bad_requests_and_recreated_topics_leave_stored_data_exact() {
    // Phase 1: a cluster with topics of every kind: two partitions kept
    // forever; a 100-byte message limit; a one-hour retention; and the
    // accepted limits: partitions 0 (one partition, as keel.proto says),
    // 1024 partitions, and a 249-character name.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes, one leader");
    let client = cluster_client(&cluster);
    let producer = client.producer();
    let nodes = node_clients(&cluster);
    client.create_topic("ledger", keep_forever(2)).await.expect("create ledger");
    let mut ledger = [Expected::default(), Expected::default()];
    let records =
        (0..5u64).map(|i| Record::new(format!("entry {i}")).key(format!("acct-{}", i % 2)).timestamp_ms(T0 + i));
    produce_checked(&producer, &mut ledger[0], "ledger", 0, records.collect()).await;
    let records = vec![Record::new("p1 first").timestamp_ms(T0), Record::new("p1 second").timestamp_ms(T0 + 1)];
    produce_checked(&producer, &mut ledger[1], "ledger", 1, records).await;

    let small = client
        .create_topic("small", TopicConfig { max_message_bytes: 100, ..TopicConfig::default() })
        .await
        .expect("create small");
    assert_eq!(small.max_message_bytes, 100);
    // Exactly at the limit: key 10 + value 80 + header name 2 and value 8.
    let at_limit = Record::new(vec![b'v'; 80]).key("0123456789").header("h1", "12345678");
    produce_checked(&producer, &mut Expected::default(), "small", 0, vec![at_limit]).await;

    let hour = TopicConfig { retention_ms: 3_600_000, ..TopicConfig::default() };
    client.create_topic("aged", hour).await.expect("create aged");
    let old = (0..3u64).map(|i| Record::new(format!("old {i}")).timestamp_ms(T0 + i));
    let mut aged = Expected::default();
    produce_checked(&producer, &mut aged, "aged", 0, old.collect()).await;
    let fresh = vec![Record::new("fresh 3"), Record::new("fresh 4")];
    produce_checked(&producer, &mut aged, "aged", 0, fresh).await;

    let defaulted = client.create_topic("defaulted", TopicConfig::default()).await.expect("create with partitions 0");
    assert_eq!((defaulted.partitions, defaulted.partition_info.len()), (1, 1), "partitions 0 means 1");
    let wide = client.create_topic("wide", keep_forever(1024)).await.expect("create 1024 partitions");
    assert_eq!((wide.partitions, wide.partition_info.len()), (1024, 1024));
    let long_name = "n".repeat(249);
    client.create_topic(&long_name, TopicConfig::default()).await.expect("create a 249-character name");

    // Phase 2: retention trims the three records older than an hour (the
    // leader checks every 2 s), so `aged` starts at offset 3.
    // Asked of the leader, which has applied both batches: a follower may
    // apply a trim proposed between them before the second one.
    let on_leader = node_client(&cluster, leader);
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let info = on_leader.describe_topic("aged").await.expect("describe aged");
        let p = &info.partition_info[0];
        if p.start_offset == 3 {
            assert_eq!(p.end_offset, 5, "retention moves the start, never the end");
            break;
        }
        assert_eq!(p.start_offset, 0, "retention trims all three old records at once: {p:?}");
        assert!(Instant::now() < deadline, "retention did not trim aged/0 within {SYNC_TIMEOUT:?}: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Phase 3: a committed group offset reads back from every node; the end
    // offset itself can be committed; past the end is refused with
    // OFFSET_OUT_OF_RANGE naming the offset and the range, and the
    // committed offset stays; a group that never committed has none.
    client.commit_offset("billing", "ledger", 0, 3).await.expect("commit 3");
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        assert_eq!(node.fetch_offset("billing", "ledger", 0).await.expect("fetch offset"), Some(3), "node{id}");
    }
    client.commit_offset("billing", "ledger", 0, 5).await.expect("commit the end offset");
    client.commit_offset("billing", "ledger", 1, 0).await.expect("commit the start offset");
    refused(
        client.commit_offset("billing", "ledger", 0, 6).await,
        ErrorCode::OffsetOutOfRange,
        &["offset 6", "ledger/0", "0..5"],
    );
    refused(client.commit_offset("billing", "missing", 0, 0).await, ErrorCode::UnknownTopic, &["missing"]);
    refused(
        client.commit_offset("billing", "ledger", 2, 0).await,
        ErrorCode::UnknownPartition,
        &["ledger", "partition 2"],
    );
    refused(client.commit_offset("bad group", "ledger", 0, 0).await, ErrorCode::InvalidArgument, &["bad group"]);
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        assert_eq!(node.fetch_offset("billing", "ledger", 0).await.expect("fetch offset"), Some(5), "node{id}");
        assert_eq!(node.fetch_offset("billing", "ledger", 1).await.expect("fetch offset"), Some(0), "node{id}");
        assert_eq!(node.fetch_offset("audit", "ledger", 0).await.expect("fetch offset"), None, "node{id}");
        refused(node.fetch_offset("billing", "missing", 0).await, ErrorCode::UnknownTopic, &["missing"]);
        let groups = node.describe_topic("ledger").await.expect("describe ledger").groups;
        let lags: Vec<(&str, u32, u64, u64)> =
            groups.iter().map(|g| (g.group.as_str(), g.partition, g.committed, g.lag)).collect();
        assert_eq!(lags, [("billing", 0, 5, 0), ("billing", 1, 0, 2)], "node{id}: committed offsets and lag");
    }

    // Phase 4: every node holds the same topics and records; this is what
    // the refused requests below must leave unchanged.
    sync_all(&cluster).await;
    let before = snapshot(&nodes[0].1).await;
    for (id, node) in &nodes[1..] {
        assert_eq!(snapshot(node).await, before, "node{id} differs from node1 before the bad requests");
    }
    let names: Vec<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(names, ["aged", "defaulted", "ledger", long_name.as_str(), "small", "wide"]);
    assert_holds("ledger/0", &before["ledger"].1[0], &ledger[0]);
    assert_holds("ledger/1", &before["ledger"].1[1], &ledger[1]);

    // Phase 5: an unknown topic is refused by name by every call, on a
    // follower too.
    let on_follower = node_client(&cluster, follower);
    let one = || vec![Record::new("x")];
    refused(producer.produce("missing", 0, one()).await, ErrorCode::UnknownTopic, &["missing"]);
    for reader in [&client, &on_follower] {
        refused(reader.fetch(Fetch::new("missing", 0, 0)).await, ErrorCode::UnknownTopic, &["missing"]);
        refused(reader.describe_topic("missing").await, ErrorCode::UnknownTopic, &["missing"]);
        refused(reader.lookup_by_key("missing", 0, "k", 0).await, ErrorCode::UnknownTopic, &["missing"]);
        refused(reader.offset_for_timestamp("missing", 0, 0).await, ErrorCode::UnknownTopic, &["missing"]);
    }
    refused(client.delete_topic("missing").await, ErrorCode::UnknownTopic, &["missing"]);

    // Phase 6: a partition the topic does not have is refused naming it and
    // the partition count.
    let named = ["ledger", "partition 2", "2 partitions"];
    refused(producer.produce("ledger", 2, one()).await, ErrorCode::UnknownPartition, &named);
    for reader in [&client, &on_follower] {
        refused(reader.fetch(Fetch::new("ledger", 2, 0)).await, ErrorCode::UnknownPartition, &named);
        refused(reader.lookup_by_key("ledger", 2, "acct-0", 0).await, ErrorCode::UnknownPartition, &named);
        refused(reader.offset_for_timestamp("ledger", 2, 0).await, ErrorCode::UnknownPartition, &named);
    }

    // Phase 7: a record over the topic's max_message_bytes (key + value +
    // headers) is refused naming the record, its size and the limit, and
    // nothing of its batch is stored; so is one over the node's 1 MiB
    // default on an ordinary topic.
    let ok = Record::new("fits");
    let over = Record::new(vec![b'v'; 81]).key("0123456789").header("h1", "12345678");
    refused(
        producer.produce("small", 0, vec![ok.clone(), over]).await,
        ErrorCode::MessageTooLarge,
        &["record 1", "101 bytes", "100", "small"],
    );
    let headers_only = Record::new("").header("h", vec![b'h'; 200]);
    refused(
        producer.produce("small", 0, vec![headers_only]).await,
        ErrorCode::MessageTooLarge,
        &["record 0", "201 bytes", "100"],
    );
    refused(
        producer.produce("ledger", 0, vec![Record::new(vec![0u8; (1 << 20) + 1])]).await,
        ErrorCode::MessageTooLarge,
        &["record 0", "1048577 bytes", "1048576", "ledger"],
    );

    // Phase 8: invalid topic names and settings are refused naming them:
    // empty (the client refuses it before sending; the node does too),
    // a space, ".", "..", a non-ASCII letter, 250 characters; 5000
    // partitions; a max_message_bytes above the node's; retention -2.
    let empty = matches!(client.create_topic("", TopicConfig::default()).await, Err(Error::InvalidArgument(_)));
    assert!(empty, "keel-client sends a topic without a name");
    let mut raw = cluster.client(leader).await;
    let create = |name: &str| proto::CreateTopicRequest { name: name.to_string(), config: None };
    refused_raw(raw.create_topic(create("")).await, ErrorCode::InvalidArgument, &["1 to 249", "got 0"]);
    for (name, needles) in [
        ("a b", &["`a b`", "' '"][..]),
        (".", &["`.`"]),
        ("..", &["`..`"]),
        ("caf\u{e9}", &["caf\u{e9}"]),
        (&"n".repeat(250), &["1 to 249", "got 250"]),
    ] {
        refused(client.create_topic(name, TopicConfig::default()).await, ErrorCode::InvalidArgument, needles);
    }
    let config = TopicConfig { partitions: 5000, ..TopicConfig::default() };
    refused(client.create_topic("many", config).await, ErrorCode::InvalidArgument, &["5000", "1024"]);
    let config = TopicConfig { max_message_bytes: 2 << 20, ..TopicConfig::default() };
    refused(client.create_topic("huge", config).await, ErrorCode::InvalidArgument, &["2097152", "1048576"]);
    let config = TopicConfig { retention_ms: -2, ..TopicConfig::default() };
    refused(client.create_topic("negative", config).await, ErrorCode::InvalidArgument, &["retention_ms", "-2"]);

    // Phase 9: creating an existing topic again, with other settings, is
    // refused with TOPIC_EXISTS, and the topic keeps its own.
    refused(client.create_topic("ledger", keep_forever(7)).await, ErrorCode::TopicExists, &["ledger"]);

    // Phase 10: a fetch below the start (trimmed by retention) or past the
    // end is OFFSET_OUT_OF_RANGE naming the offset and the retained range,
    // on any node; at the end offset it is an empty answer.
    for reader in [&client, &on_follower] {
        refused(
            reader.fetch(Fetch::new("ledger", 0, 6)).await,
            ErrorCode::OffsetOutOfRange,
            &["offset 6", "ledger/0", "0..5"],
        );
        refused(
            reader.fetch(Fetch::new("ledger", 0, u64::MAX)).await,
            ErrorCode::OffsetOutOfRange,
            &[&u64::MAX.to_string(), "0..5"],
        );
        refused(
            reader.fetch(Fetch::new("aged", 0, 0)).await,
            ErrorCode::OffsetOutOfRange,
            &["offset 0", "aged/0", "3..5"],
        );
        let at_end = reader.fetch(Fetch::new("ledger", 0, 5)).await.expect("fetch at the end offset");
        assert_eq!((at_end.records.len(), at_end.next_offset, at_end.end_offset), (0, 5, 5));
        let kept = reader.fetch(Fetch::new("aged", 0, 3)).await.expect("fetch at the start offset");
        assert_holds("what retention kept of aged/0", &kept.records, &Expected { records: aged.records[3..].to_vec() });
        let first = reader.offset_for_timestamp("aged", 0, 0).await.expect("offset for timestamp 0");
        assert_eq!((first.found, first.offset), (true, 3), "the first retained record");
    }

    // Phase 11: malformed requests are refused saying what is wrong: an
    // empty batch, a tag containing `||`, a tag filter with an empty tag,
    // a lookup without a key.
    let empty_batch = proto::ProduceRequest { topic: "ledger".into(), ..proto::ProduceRequest::default() };
    refused_raw(raw.produce(empty_batch).await, ErrorCode::InvalidArgument, &["no records"]);
    refused(
        producer.produce("ledger", 0, vec![Record::new("x").tag("A||B")]).await,
        ErrorCode::InvalidArgument,
        &["record 0", "tag", "||"],
    );
    refused(
        client.fetch(Fetch::new("ledger", 0, 0).tags("A || ")).await,
        ErrorCode::InvalidArgument,
        &["A || ", "tag"],
    );
    refused(client.lookup_by_key("ledger", 0, Bytes::new(), 0).await, ErrorCode::InvalidArgument, &["key"]);

    // Phase 12: after all of that, every node holds exactly what it held
    // before: the same topics, settings, offsets, groups and records.
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        let after = snapshot(node).await;
        assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "node{id}: topics");
        for (name, (info, records)) in &before {
            assert_eq!(&after[name].0, info, "node{id}: topic {name} changed");
            assert_eq!(&after[name].1, records, "node{id}: the records of {name} changed");
        }
    }

    // Phase 13: a topic with records, a group offset and producer state is
    // deleted: every node forgets it.
    let first = client.create_topic("cycle", keep_forever(2)).await.expect("create cycle");
    let old = |i: u64| Record::new(format!("old {i}")).key("old-key").tag("old").timestamp_ms(T0 + i);
    produce_checked(&producer, &mut Expected::default(), "cycle", 0, (0..3).map(old).collect()).await;
    produce_checked(&producer, &mut Expected::default(), "cycle", 1, vec![old(3)]).await;
    client.commit_offset("cg", "cycle", 0, 2).await.expect("commit on cycle");
    client.delete_topic("cycle").await.expect("delete cycle");
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        refused(node.describe_topic("cycle").await, ErrorCode::UnknownTopic, &["cycle"]);
        refused(node.fetch(Fetch::new("cycle", 0, 0)).await, ErrorCode::UnknownTopic, &["cycle"]);
        let listed = node.list_topics().await.expect("list topics");
        assert!(listed.iter().all(|t| t.name != "cycle"), "node{id} still lists cycle");
    }

    // Phase 14: created again with the same settings it is a new, empty
    // topic on every node: no records, no key or time index entries, no
    // group offset, offsets starting at 0 again.
    let second = client.create_topic("cycle", keep_forever(2)).await.expect("create cycle again");
    assert!(second.incarnation > first.incarnation, "{second:?} after {first:?}");
    sync_all(&cluster).await;
    for (id, node) in &nodes {
        let info = node.describe_topic("cycle").await.expect("describe cycle");
        assert_eq!(info.incarnation, second.incarnation, "node{id}");
        let spans: Vec<(u64, u64, u64)> =
            info.partition_info.iter().map(|p| (p.start_offset, p.end_offset, p.bytes)).collect();
        assert_eq!(spans, [(0, 0, 0), (0, 0, 0)], "node{id}: the re-created partitions");
        assert_eq!(info.groups, [], "node{id}: groups of the deleted topic");
        for p in 0..2 {
            let fetched = node.fetch(Fetch::new("cycle", p, 0)).await.expect("fetch the new cycle");
            assert_eq!((fetched.records.len(), fetched.end_offset), (0, 0), "node{id} cycle/{p}");
            let fetched = node.fetch(Fetch::new("cycle", p, 0).tags("old")).await.expect("fetch tag old");
            assert_eq!(fetched.records, [], "node{id} cycle/{p} tag old");
            refused(node.fetch(Fetch::new("cycle", p, 1)).await, ErrorCode::OffsetOutOfRange, &["offset 1", "0..0"]);
            assert_eq!(node.lookup_by_key("cycle", p, "old-key", 0).await.expect("lookup"), [], "node{id}");
            let at = node.offset_for_timestamp("cycle", p, 0).await.expect("offset for timestamp");
            assert_eq!((at.found, at.offset), (false, 0), "node{id} cycle/{p}");
        }
        assert_eq!(node.fetch_offset("cg", "cycle", 0).await.expect("fetch offset"), None, "node{id}");
    }

    // Phase 15: records produced to the new topic (by the same producer,
    // whose sequences go on) start at offset 0 and are all it returns.
    let mut cycle = Expected::default();
    let new = vec![Record::new("new 0").key("old-key").timestamp_ms(T0 + 50), Record::new("new 1")];
    let ack = produce_checked(&producer, &mut cycle, "cycle", 0, new).await;
    for (id, node) in &nodes {
        let read = read_from(node, "cycle", 0, 0, ack.log_index).await;
        assert_holds(&format!("node{id} cycle/0 re-created"), &read.records, &cycle);
        let keyed = node.lookup_by_key("cycle", 0, "old-key", 0).await.expect("lookup");
        assert_eq!(offsets(&keyed), [0], "node{id}: only the new record has old-key");
    }
}
