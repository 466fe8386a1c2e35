//! Produced records read back exactly, in order, from every node, and are
//! found by key, by time and by tag filter.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn produced_records_read_back_exactly_and_are_found_by_key_time_and_tag() {
    // Phase 1: a three-node cluster elects a leader; a topic of three
    // partitions is created.
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(ELECTION).await;
    let follower = cluster.ids().find(|&id| id != leader).expect("three nodes, one leader");
    let client = cluster_client(&cluster);
    let producer = client.producer();
    let created = client.create_topic("orders", keep_forever(3)).await.expect("create orders");
    assert_eq!((created.name.as_str(), created.partitions, created.partition_info.len()), ("orders", 3, 3));

    // Phase 2: batches with keys, tags, headers (repeated names, empty and
    // binary values), explicit timestamps, binary, empty and large values
    // are acknowledged at dense offsets, quorum-fsynced.
    let mut expected: Vec<Expected> = (0..3).map(|_| Expected::default()).collect();
    let mut acks = Vec::new();
    acks.push(
        produce_checked(
            &producer,
            &mut expected[0],
            "orders",
            0,
            vec![
                Record::new("order 1 placed")
                    .key("user-1")
                    .tag("created")
                    .header("trace", "t-1")
                    .header("bin", Bytes::from_static(&[0, 255, 1]))
                    .timestamp_ms(T0),
                Record::new(Bytes::from_static(&[0x00, 0xff, 0xfe, 0x80, 0x00]))
                    .key(Bytes::from_static(&[0x00, 0x01, 0xff]))
                    .tag("binary")
                    .timestamp_ms(T0 + 1),
                Record::new("no key, no tag, no header").timestamp_ms(T0 + 2),
            ],
        )
        .await,
    );
    acks.push(
        produce_checked(
            &producer,
            &mut expected[1],
            "orders",
            1,
            vec![
                Record::new("stamped by the leader").key("user-2").tag("créé").header("clé", "valeur"),
                Record::new("also stamped").header("empty", Bytes::new()),
            ],
        )
        .await,
    );
    let batch = vec![
        Record::new(binary(300_000, 7)).key("blob").tag("blob").timestamp_ms(T0 + 20),
        Record::new("after the blob").timestamp_ms(T0 + 21),
    ];
    acks.push(produce_checked(&producer, &mut expected[2], "orders", 2, batch).await);
    let many: Vec<Record> = (0..50u64)
        .map(|i| {
            let r = Record::new(format!("record {i}")).timestamp_ms(T0 + 100 + i);
            if i % 3 == 0 { r.tag("third") } else { r }
        })
        .collect();
    acks.push(produce_checked(&producer, &mut expected[2], "orders", 2, many).await);

    // Phase 3: a follower refuses a produce with NOT_LEADER naming the
    // leader (id and address); a client that knows only that follower
    // follows it there and stores the batch.
    let mut raw = cluster.client(follower).await;
    let not_leader = proto::ProduceRequest {
        topic: "orders".into(),
        partition: 0,
        records: vec![proto::Record { value: Bytes::from_static(b"must not be stored"), ..proto::Record::default() }],
        producer_id: 0,
        first_sequence: 0,
    };
    let status = refused_raw(raw.produce(not_leader).await, ErrorCode::NotLeader, &[]);
    let hint_id: u64 = status
        .metadata()
        .get(LEADER_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("NOT_LEADER without a leader id: {status:?}"));
    assert_ne!(hint_id, follower, "a follower named itself as the leader");
    let hint_addr = status.metadata().get(LEADER_ADDR_KEY).and_then(|v| v.to_str().ok());
    assert_eq!(hint_addr, Some(cluster.grpc(hint_id).as_str()), "the leader address of {status:?}");
    let via_follower = node_client(&cluster, follower).producer();
    acks.push(
        produce_checked(
            &via_follower,
            &mut expected[0],
            "orders",
            0,
            vec![
                Record::new("order 1 paid")
                    .key("user-1")
                    .tag("paid")
                    .header("trace", "t-2")
                    .header("trace", "t-2 again")
                    .timestamp_ms(T0 + 10),
                Record::new(Bytes::new()).key("user-1").timestamp_ms(T0 + 11),
            ],
        )
        .await,
    );

    // Phase 4: a batch sent again at the same producer sequence (a retry
    // after a lost answer) is answered with the first attempt's offsets,
    // marked duplicate, and stored once; the same sequence with another
    // record count is refused as OUT_OF_ORDER_SEQUENCE.
    let sequence = producer.reserve("orders", 1, 2).expect("reserve two sequences");
    let retried =
        vec![Record::new("sent twice").timestamp_ms(T0 + 30), Record::new("also twice").timestamp_ms(T0 + 31)];
    let first = producer.produce_at("orders", 1, sequence, retried.clone()).await.expect("first attempt");
    let again = producer.produce_at("orders", 1, sequence, retried.clone()).await.expect("retry");
    assert_eq!((first.base_offset, first.count, first.duplicate), (expected[1].end(), 2, false));
    assert_eq!((again.base_offset, again.count, again.duplicate), (first.base_offset, 2, true));
    assert_eq!(again.log_index, first.log_index, "the retry points at the first attempt's entry");
    for (i, r) in retried.iter().enumerate() {
        expected[1].records.push((stored(first.base_offset + i as u64, r, T0 + 30 + i as u64), None));
    }
    acks.push(first);
    refused(
        producer.produce_at("orders", 1, sequence, retried[..1].to_vec()).await,
        ErrorCode::OutOfOrderSequence,
        &["sequence"],
    );

    // Phase 5: every node, followers included (reading at the acks' log
    // index), returns every partition exactly: offsets, keys, values, tags,
    // headers and timestamps, in order; the leader's stamps lie within the
    // produce calls, and all nodes return the same bytes.
    let min_index = acks.iter().map(|a| a.log_index).max().expect("acks");
    let nodes = node_clients(&cluster);
    let mut first_view: Option<Vec<Vec<FetchedRecord>>> = None;
    for (id, node) in &nodes {
        let mut view = Vec::new();
        for (p, want) in expected.iter().enumerate() {
            let read = read_from(node, "orders", p as u32, 0, min_index).await;
            assert_holds(&format!("node{id} orders/{p}"), &read.records, want);
            assert_eq!((read.start, read.end), (0, want.end()), "node{id} orders/{p} start and end offsets");
            view.push(read.records);
        }
        match &first_view {
            None => first_view = Some(view),
            Some(first) => assert_eq!(&view, first, "node{id} differs from node1"),
        }
    }

    // Phase 6: every node describes the topic with each partition's start
    // (0) and end offset, the same incarnation, and lists it.
    let mut incarnations = Vec::new();
    for (id, node) in &nodes {
        let info = node.describe_topic("orders").await.expect("describe orders");
        assert_eq!(info.partitions, 3, "node{id}");
        assert_eq!(info.retention_ms, -1, "node{id}");
        let spans: Vec<(u32, u64, u64)> =
            info.partition_info.iter().map(|p| (p.partition, p.start_offset, p.end_offset)).collect();
        assert_eq!(spans, [(0, 0, 5), (1, 0, 4), (2, 0, 52)], "node{id} partition offsets");
        assert!(info.partition_info.iter().all(|p| p.bytes > 0), "node{id} counts no bytes: {info:?}");
        assert!(info.partition_info[2].bytes > 300_000, "node{id} does not count the large value's bytes");
        incarnations.push(info.incarnation);
        let listed = node.list_topics().await.expect("list topics");
        assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["orders"], "node{id}");
    }
    assert!(incarnations.iter().all(|&i| i == created.incarnation), "incarnations {incarnations:?}");
    let first_view = first_view.expect("three nodes were read");

    // Phase 7: lookups by key return exactly the records with that key,
    // oldest first, from every node: not those whose key extends it (k1x)
    // or is a prefix of it (k), nor those of another partition.
    let keyed: Vec<(Bytes, u64)> = vec![
        (Bytes::from_static(b"k1"), T0 + 1000),
        (Bytes::from_static(b"k2"), T0 + 3000),
        (Bytes::from_static(b"k1"), T0 + 2000),
        (Bytes::new(), T0 + 5000),
        (Bytes::from_static(b"k1"), T0 + 4000),
        (Bytes::from_static(b"k1x"), T0 + 6000),
        (Bytes::from_static(b"k"), T0 + 6000),
        (Bytes::from_static(&[0, 1, 0]), T0 + 7000),
    ];
    client.create_topic("keyed", keep_forever(2)).await.expect("create keyed");
    let mut keyed_expected = Expected::default();
    let records: Vec<Record> = keyed
        .iter()
        .enumerate()
        .map(|(i, (key, ts))| Record::new(format!("value {i}")).key(key.clone()).timestamp_ms(*ts))
        .collect();
    let (first, second) = records.split_at(3);
    produce_checked(&producer, &mut keyed_expected, "keyed", 0, first.to_vec()).await;
    let last = produce_checked(&producer, &mut keyed_expected, "keyed", 0, second.to_vec()).await;
    let other = produce_checked(
        &producer,
        &mut Expected::default(),
        "keyed",
        1,
        vec![Record::new("elsewhere").key("k2").timestamp_ms(T0)],
    )
    .await;
    let keys: [&[u8]; 6] = [b"k1", b"k2", b"k1x", b"k", &[0, 1, 0], b"absent"];
    for (id, node) in &nodes {
        let read = read_from(node, "keyed", 0, 0, last.log_index.max(other.log_index)).await;
        assert_holds(&format!("node{id} keyed/0"), &read.records, &keyed_expected);
        for key in keys {
            let found = node.lookup_by_key("keyed", 0, Bytes::copy_from_slice(key), 0).await.expect("lookup");
            let want = keyed_expected.filtered(|r| r.key == key);
            assert_eq!(found, want, "node{id}: records of keyed/0 with key {key:?}");
        }
        let in_other = node.lookup_by_key("keyed", 1, "k1", 0).await.expect("lookup in keyed/1");
        assert_eq!(in_other, [], "node{id}: k1 was never produced to keyed/1");
        let limited = node.lookup_by_key("keyed", 0, "k1", 2).await.expect("lookup with a limit");
        assert_eq!(limited.len(), 2, "node{id}: limit 2 of k1's 3 records: {limited:?}");
        assert!(limited.iter().all(|r| &r.key[..] == b"k1"), "node{id}: {limited:?}");
        assert!(limited.windows(2).all(|w| w[0].offset < w[1].offset), "node{id}: oldest first: {limited:?}");
    }

    // Phase 8: the offset for a timestamp T is the first offset whose
    // record's timestamp is at least T (timestamps here go back and forth,
    // so that is not the closest one); past every record it is not found
    // and the end offset.
    let stamps: Vec<u64> = keyed.iter().map(|(_, ts)| *ts).collect();
    let probes = [
        0,
        T0,
        T0 + 1000,
        T0 + 1001,
        T0 + 2000,
        T0 + 2500,
        T0 + 3000,
        T0 + 3001,
        T0 + 4500,
        T0 + 5000,
        T0 + 5001,
        T0 + 6000,
        T0 + 6001,
        T0 + 7000,
        T0 + 7001,
        u64::MAX,
    ];
    for (id, node) in &nodes {
        for t in probes {
            let got = node.offset_for_timestamp("keyed", 0, t).await.expect("offset for timestamp");
            let want = match stamps.iter().position(|&ts| ts >= t) {
                Some(o) => proto::OffsetForTimestampResponse { found: true, offset: o as u64, timestamp_ms: stamps[o] },
                None => {
                    proto::OffsetForTimestampResponse { found: false, offset: stamps.len() as u64, timestamp_ms: 0 }
                }
            };
            assert_eq!(got, want, "node{id}: keyed/0 at timestamp {t}");
        }
        // Timestamps the leader stamped are indexed the same way (orders/1
        // holds two, then two explicit ones from 2023).
        let orders1 = &first_view[1];
        for record in orders1 {
            let got = node.offset_for_timestamp("orders", 1, record.timestamp_ms).await.expect("offset for timestamp");
            let first = orders1.iter().find(|r| r.timestamp_ms >= record.timestamp_ms).expect("the record itself");
            let want = (true, first.offset, first.timestamp_ms);
            assert_eq!((got.found, got.offset, got.timestamp_ms), want, "node{id}: orders/1 at a stamped time");
        }
    }

    // Phase 9: a tag filter returns exactly the records with one of its
    // tags (no prefix, case or substring matches), paging by `max_bytes`
    // one record at a time gives the same; a tag no record has returns
    // nothing and moves next_offset to the end; no filter returns all.
    client.create_topic("tagged", keep_forever(1)).await.expect("create tagged");
    let tags = ["A", "B", "", "C", "A", "B", "AB", "a", "A", "B", "BA", "C"];
    let records: Vec<Record> = tags
        .iter()
        .enumerate()
        .map(|(i, tag)| Record::new(format!("m{i}")).tag(*tag).timestamp_ms(T0 + i as u64))
        .collect();
    let mut tagged = Expected::default();
    let ack = produce_checked(&producer, &mut tagged, "tagged", 0, records).await;
    let filters: [(&str, &[&str]); 6] = [
        ("A", &["A"]),
        ("A || B", &["A", "B"]),
        ("B||C", &["B", "C"]),
        ("  C  ||  A  ", &["A", "C"]),
        ("Z", &[]),
        ("", &["A", "B", "", "C", "AB", "a", "BA"]),
    ];
    for (id, node) in &nodes {
        // Read your writes: the node has applied the batch before the filters.
        read_from(node, "tagged", 0, 0, ack.log_index).await;
        for (filter, matching) in filters {
            let want = tagged.filtered(|r| matching.contains(&r.tag.as_str()));
            for max_bytes in [0, 1] {
                let mut got = Vec::new();
                let mut offset = 0;
                for _ in 0..MAX_FETCHES {
                    let fetch = Fetch::new("tagged", 0, offset).tags(filter).max_bytes(max_bytes);
                    let fetched = node.fetch(fetch).await.expect("filtered fetch");
                    assert!(
                        max_bytes == 0 || fetched.records.len() <= 1,
                        "node{id}: max_bytes 1 returned {} records",
                        fetched.records.len()
                    );
                    got.extend(fetched.records);
                    assert!(fetched.next_offset > offset, "node{id}: filter {filter:?} stuck at {offset}");
                    offset = fetched.next_offset;
                    if offset == fetched.end_offset {
                        break;
                    }
                }
                assert_eq!(offset, tagged.end(), "node{id}: filter {filter:?} ends at the end offset");
                assert_eq!(
                    got,
                    want,
                    "node{id}: filter {filter:?} (max_bytes {max_bytes}) returned {:?}",
                    offsets(&got)
                );
            }
        }
        // From the middle, a filter starts there.
        let fetched = node.fetch(Fetch::new("tagged", 0, 5).tags("A")).await.expect("filtered fetch from 5");
        assert_eq!(offsets(&fetched.records), [8], "node{id}: tag A from offset 5");
        // A tag nothing has: one fetch, nothing, and the next offset is the end.
        let fetched = node.fetch(Fetch::new("tagged", 0, 0).tags("Z")).await.expect("fetch of an unused tag");
        assert_eq!((fetched.records.len(), fetched.next_offset, fetched.end_offset), (0, 12, 12), "node{id}");
    }

    // Phase 10: a filtered fetch waiting at the end skips a record with
    // another tag produced meanwhile and returns the one that matches.
    let waiting = {
        let reader = node_client(&cluster, follower);
        tokio::spawn(async move { reader.fetch(Fetch::new("tagged", 0, 12).tags("C").max_wait(READ_WAIT)).await })
    };
    produce_checked(&producer, &mut tagged, "tagged", 0, vec![Record::new("m12").tag("B").timestamp_ms(T0 + 12)]).await;
    produce_checked(&producer, &mut tagged, "tagged", 0, vec![Record::new("m13").tag("C").timestamp_ms(T0 + 13)]).await;
    let fetched = waiting.await.expect("the waiting fetch task").expect("the waiting fetch");
    let want = tagged.filtered(|r| r.offset >= 12 && r.tag == "C");
    assert_eq!(fetched.records, want, "the long poll at 12 for tag C");
    assert_eq!(fetched.next_offset, 14, "the long poll moves past what it skipped");
}
