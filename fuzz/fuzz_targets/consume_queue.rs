//! The consume queue: its decoder (a queue as a checkpoint holds it, from
//! arbitrary bytes), the tag-filter parser, and a state machine driven by
//! arbitrary commands and produce batches (encoded and decoded as entries,
//! as the log carries them), whose queue reads are checked against a scan
//! of every entry the slow way.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use keel_node::server::client_service::parse_tag_filter;
use keel_node::server::entry::{self, Command, Decoded, GroupEncoder, NewRecord};
use keel_node::server::state::{Applied, ConsumeQueue, CqEntry, IndexRoot, State, tag_hash};
use libfuzzer_sys::fuzz_target;

const TOPICS: [&str; 3] = ["orders", "audit", "t"];
const TAGS: [&str; 4] = ["", "A", "B", "TagA"];

#[derive(Arbitrary, Debug)]
enum Op {
    Create { topic: u8, partitions: u8 },
    Delete { topic: u8 },
    Produce { topic: u8, partition: u8, producer_id: u8, first_sequence: u64, records: Vec<Rec> },
    Trim { topic: u8, partition: u8, start_offset: u64 },
    Commit { topic: u8, partition: u8, offset: u64 },
    Expire { idle_before_ms: u64 },
    Scan { topic: u8, partition: u8, offset: u64, max_bytes: u64, max_records: u8, filter: Filter },
    AtTime { topic: u8, partition: u8, ts: u64 },
    Key { topic: u8, partition: u8, key: u8 },
}

#[derive(Arbitrary, Debug)]
struct Rec {
    timestamp_ms: u64,
    key: u8,
    tag: u8,
    value_len: u8,
}

#[derive(Arbitrary, Debug)]
enum Filter {
    Known(u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// A queue as a checkpoint holds it (bincode), decoded on its own.
    raw_queue: Vec<u8>,
    offsets: Vec<u64>,
    ops: Vec<Op>,
}

fn topic(t: u8) -> &'static str {
    TOPICS[usize::from(t) % TOPICS.len()]
}

/// Every entry of a queue (a checkpoint's, or a partition's index files),
/// read one offset at a time.
fn all_entries(start: u64, end: u64, get: impl Fn(u64) -> Option<CqEntry>) -> Vec<CqEntry> {
    (start..end).map(|o| get(o).expect("every offset in start..end has an entry")).collect()
}

fuzz_target!(|input: Input| {
    // The decoder: any bytes give a queue or an error, and a queue answers
    // for any offset.
    if let Ok(cq) = keel_raft_log::codec::decode::<ConsumeQueue>(&input.raw_queue) {
        assert!(cq.start() <= cq.end());
        for &o in input.offsets.iter().chain(&[cq.start(), cq.end(), cq.end().wrapping_sub(1), 0, u64::MAX]) {
            if let Some(e) = cq.get(o) {
                assert_eq!(e.offset, o);
                assert!((cq.start()..cq.end()).contains(&o));
            }
        }
    }

    // Small sets of index files, so inputs cross from one to the next.
    let mut state = State::new(IndexRoot::temp(8));
    let mut log_index = 0u64;
    for op in input.ops {
        log_index += 1;
        let apply = |state: &mut State, decoded: Decoded, index: u64| {
            state.apply(index, 1_000 + index, decoded).expect("index files in a temporary directory")
        };
        match op {
            Op::Create { topic: t, partitions } => {
                let c = Command::CreateTopic {
                    name: topic(t).into(),
                    partitions: u32::from(partitions % 5),
                    retention_ms: -1,
                    retention_bytes: -1,
                    max_message_bytes: 1 << 20,
                };
                let payload = Bytes::from(entry::encode_command(&c));
                let decoded = entry::decode(payload).expect("an encoded command decodes");
                apply(&mut state, decoded, log_index);
            }
            Op::Delete { topic: t } => {
                apply(&mut state, Decoded::Command(Command::DeleteTopic { name: topic(t).into() }), log_index);
            }
            Op::Produce { topic: t, partition, producer_id, first_sequence, records } => {
                if records.is_empty() {
                    continue;
                }
                let incarnation = state.topic(topic(t)).map_or(0, |x| x.incarnation);
                let new: Vec<NewRecord> = records
                    .iter()
                    .map(|r| NewRecord {
                        timestamp_ms: r.timestamp_ms,
                        key: if r.key % 4 == 0 { Bytes::new() } else { Bytes::from(vec![r.key; 3]) },
                        tag: TAGS[usize::from(r.tag) % TAGS.len()].to_string(),
                        headers: Vec::new(),
                        value: Bytes::from(vec![0x5A; usize::from(r.value_len)]),
                    })
                    .collect();
                let mut batch = Vec::new();
                let partition = u32::from(partition % 5);
                let pid = u64::from(producer_id % 3);
                entry::encode_batch(&mut batch, topic(t), incarnation, partition, pid, first_sequence, &new);
                let mut group = GroupEncoder::new();
                group.push_encoded(&batch);
                let payload = Bytes::from(group.finish());
                let decoded = entry::decode(payload.clone()).expect("an encoded group decodes");
                if let Applied::Batches(out) = apply(&mut state, decoded, log_index)
                    && let Some(keel_node::server::state::BatchOutcome::Stored { count, .. }) = out.first()
                {
                    assert_eq!(*count as usize, new.len());
                }
                for (slot, want) in new.iter().enumerate() {
                    let got = entry::record_at(&payload, slot as u32).expect("every slot of a group reads back");
                    assert_eq!(got.value, want.value);
                    assert_eq!(&got.tag[..], want.tag.as_bytes());
                }
            }
            Op::Trim { topic: t, partition, start_offset } => {
                let incarnation = state.topic(topic(t)).map_or(0, |x| x.incarnation);
                let c = Command::Trim {
                    topic: topic(t).into(),
                    incarnation,
                    partition: u32::from(partition),
                    start_offset,
                };
                apply(&mut state, Decoded::Command(c), log_index);
            }
            Op::Commit { topic: t, partition, offset } => {
                let c = Command::CommitOffset {
                    group: "g".into(),
                    topic: topic(t).into(),
                    partition: u32::from(partition),
                    offset,
                };
                apply(&mut state, Decoded::Command(c), log_index);
            }
            Op::Expire { idle_before_ms } => {
                apply(&mut state, Decoded::Command(Command::ExpireProducers { idle_before_ms }), log_index);
            }
            Op::Scan { topic: t, partition, offset, max_bytes, max_records, filter } => {
                let text = match filter {
                    Filter::Known(k) => ["", "*", "A", "A || B", "TagA||B", " B "][usize::from(k) % 6].to_string(),
                    Filter::Text(s) => s,
                };
                let Ok(tags) = parse_tag_filter(&text) else { continue };
                assert!(tags.iter().all(|t| !t.is_empty() && !t.contains("||")), "{text:?} parsed as {tags:?}");
                let hashes: Vec<u32> = tags.iter().map(|t| tag_hash(t.as_bytes())).collect();
                let Ok(p) = state.partition(topic(t), u32::from(partition)) else { continue };
                let all = all_entries(p.cq.start(), p.cq.end(), |o| p.cq.get(o));
                // Mostly in range, sometimes anywhere.
                let offset = if offset % 8 == 0 { offset } else { p.cq.start() + offset % (all.len() as u64 + 1) };
                let max_records = usize::from(max_records) + 1;
                let Ok((got, next)) =
                    state.scan(topic(t), u32::from(partition), offset, max_bytes, max_records, &hashes)
                else {
                    assert!(offset < p.cq.start() || offset > p.cq.end(), "scan refused offset {offset} in range");
                    continue;
                };
                assert!(next >= offset && next <= p.cq.end());
                assert!(got.len() <= max_records);
                // Exactly the matching entries of offset..next, in order.
                let want: Vec<CqEntry> = all
                    .iter()
                    .filter(|e| e.offset >= offset && e.offset < next)
                    .filter(|e| hashes.is_empty() || hashes.contains(&e.tag_hash))
                    .copied()
                    .collect();
                assert_eq!(got, want, "scan from {offset} with tags {tags:?}");
            }
            Op::AtTime { topic: t, partition, ts } => {
                let Ok(got) = state.offset_for_timestamp(topic(t), u32::from(partition), ts) else { continue };
                let p = state.partition(topic(t), u32::from(partition)).expect("answered above");
                let want = all_entries(p.cq.start(), p.cq.end(), |o| p.cq.get(o)).into_iter().find(|e| e.timestamp_ms >= ts);
                assert_eq!(got, want, "offset_for_timestamp({ts})");
            }
            Op::Key { topic: t, partition, key } => {
                let key = vec![key; 3];
                let Ok(got) = state.key_candidates(topic(t), u32::from(partition), &key) else { continue };
                let p = state.partition(topic(t), u32::from(partition)).expect("answered above");
                assert!(got.iter().all(|e| (p.cq.start()..p.cq.end()).contains(&e.offset)));
                assert!(got.windows(2).all(|w| w[0].offset < w[1].offset));
            }
        }
    }
});
