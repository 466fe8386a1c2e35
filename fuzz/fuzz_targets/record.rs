//! Record and entry decoding, on arbitrary bytes. The first byte picks what
//! the rest is:
//!
//! - 0: a log record after a 4-byte segment salt ([`format::check_record`],
//!   its header, the torn-write test, the resync scan); one that checks out
//!   must encode back to the same bytes.
//! - 1: a segment header; 2: a meta file (each must round-trip).
//! - 3: a node entry payload (produce group or command): decoded, every
//!   slot addressed, and a produce group re-encoded to the same bytes.
//! - 4: an openraft entry from a record of each kind (membership records
//!   are bincode), and back.

#![no_main]

use bytes::Bytes;
use keel_node::server::entry::{self, Decoded, GroupEncoder, NewRecord};
use keel_node::server::types::Request;
use keel_raft_log::format::{self, Meta, RECORD_HEADER_BYTES, RecordMeta, SegmentHeader};
use keel_raft_log::{Record, RecordKind, entry_to_record, record_to_entry};
use libfuzzer_sys::fuzz_target;

fn log_record(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let salt = u32::from_le_bytes(data[..4].try_into().expect("4 bytes"));
    let b = &data[4..];
    let max = format::max_payload_in(format::MIN_SEGMENT_BYTES.max(b.len() as u64 + 64));
    let _ = format::decode_header(b, max);
    let _ = format::looks_torn(b, u64::from(salt % 8192), salt & 1 == 0);
    if let Some((at, h)) = format::find_valid_record(b, 0, max, salt) {
        assert!(format::check_record(&b[at..], max, salt).is_ok_and(|again| again == h));
    }
    let Ok(h) = format::check_record(b, max, salt) else { return };
    let meta =
        RecordMeta { kind: h.kind, term: h.term, leader: h.leader, index: h.index, timestamp_ms: h.timestamp_ms };
    let end = h.record_bytes();
    if h.synced_before <= h.index {
        let mut again = Vec::new();
        format::encode_record(&mut again, &meta, h.synced_before, salt, &b[RECORD_HEADER_BYTES..end]);
        assert_eq!(&again[..], &b[..end], "a valid record did not encode back to its bytes");
    }
}

fn segment_header(b: &[u8]) {
    if let Ok(SegmentHeader::Valid { first_index, generation, salt }) = format::decode_segment_header(b) {
        let again = format::encode_segment_header(first_index, generation, salt);
        assert_eq!(&again[..], &b[..format::SEGMENT_HEADER_BYTES]);
    }
}

fn meta(b: &[u8]) {
    if let Ok(m) = Meta::decode(b) {
        assert_eq!(Meta::decode(&m.encode()), Ok(m), "meta did not round-trip");
    }
}

fn node_entry(b: &[u8]) {
    let payload = Bytes::copy_from_slice(b);
    let decoded = entry::decode(payload.clone());
    for slot in [0, 1, 2, 7, u32::MAX] {
        let _ = entry::record_at(&payload, slot);
    }
    let Ok(Decoded::Produce(batches)) = decoded else { return };
    let mut slot = 0u32;
    let mut group = GroupEncoder::new();
    let mut all_utf8 = true;
    for b in &batches {
        let mut records = Vec::new();
        for r in &b.records {
            let got = entry::record_at(&payload, slot).expect("a slot of a decoded group reads");
            assert_eq!(&got, r, "record_at({slot}) and decode disagree");
            slot += 1;
            let tag = String::from_utf8(r.tag.to_vec());
            let headers: Result<Vec<(String, Bytes)>, _> =
                r.headers.iter().map(|(k, v)| String::from_utf8(k.to_vec()).map(|k| (k, v.clone()))).collect();
            match (tag, headers) {
                (Ok(tag), Ok(headers)) => records.push(NewRecord {
                    timestamp_ms: r.timestamp_ms,
                    key: r.key.clone(),
                    tag,
                    headers,
                    value: r.value.clone(),
                }),
                _ => all_utf8 = false,
            }
        }
        let mut out = Vec::new();
        if all_utf8 {
            entry::encode_batch(
                &mut out,
                &b.topic,
                b.incarnation,
                b.partition,
                b.producer_id,
                b.first_sequence,
                &records,
            );
            group.push_encoded(&out);
        }
    }
    if all_utf8 {
        assert_eq!(&group.finish()[..], b, "a decoded produce group did not encode back to its bytes");
    }
}

fn raft_entry(b: &[u8]) {
    for kind in [RecordKind::Blank, RecordKind::Normal, RecordKind::Membership] {
        let r = Record { term: 3, leader: 1, index: 9, timestamp_ms: 5, kind, payload: Bytes::copy_from_slice(b) };
        let Ok(e) = record_to_entry::<Request>(r) else { continue };
        let back = entry_to_record(&e).expect("a decoded entry encodes");
        let r2 = Record {
            term: back.meta.term,
            leader: back.meta.leader,
            index: back.meta.index,
            timestamp_ms: back.meta.timestamp_ms,
            kind: back.meta.kind,
            payload: back.payload.into(),
        };
        let e2 = record_to_entry::<Request>(r2).expect("a re-encoded entry decodes");
        assert_eq!(format!("{e:?}"), format!("{e2:?}"), "entry did not round-trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 5 {
        0 => log_record(rest),
        1 => segment_header(rest),
        2 => meta(rest),
        3 => node_entry(rest),
        _ => raft_entry(rest),
    }
});
