//! `keel produce TOPIC`: stdin lines (or generated records) to a topic.
//!
//! Records are grouped per partition into batches (up to 1,000 records or
//! 1 MiB per request). Each partition has its own sender task that sends its
//! batches one after another, so a partition stores the records in input
//! order (concurrent requests of one producer may be applied in any order);
//! the partitions' senders run at the same time, and reading stdin goes on
//! while they send. A failed batch stops its partition (later lines to it
//! are not sent, which keeps the order), and the command names every line
//! that was not stored or whose outcome is unknown.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use keel_client::{Durability, Error, ProduceAck, Producer, Record, partition_for};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::{ClusterOpt, check_partition, parse_header, ranges};

const MAX_BATCH_RECORDS: usize = 1_000;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Full batches waiting per partition while one is in flight.
const QUEUED_BATCHES: usize = 2;
/// Generated records: at most this many (a typo should not run for a day).
const MAX_GENERATED: u64 = 1_000_000_000;
const MAX_GENERATED_SIZE: usize = 64 << 20;
/// Failed line ranges printed per partition.
const MAX_RANGES_SHOWN: usize = 20;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    cluster: ClusterOpt,
    /// Topic to append to
    topic: String,
    /// Key of every record (records with a key go to partition crc32c(key) mod partitions)
    #[arg(long, value_name = "K")]
    key: Option<String>,
    /// Tag of every record (consumers can filter on it)
    #[arg(long, value_name = "T")]
    tag: Option<String>,
    /// Send every record to this partition [default: by key, else round-robin]
    #[arg(long, value_name = "P")]
    partition: Option<u32>,
    /// Header of every record (repeat for more)
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Instead of reading stdin, produce N generated records
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_GENERATED))]
    count: Option<u64>,
    /// Value size of generated records, in bytes ("record 0000000001 abcdef..." cut or padded)
    #[arg(long, value_name = "BYTES", requires = "count", default_value_t = 100, value_parser = parse_size)]
    size: usize,
}

fn parse_size(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) if n > MAX_GENERATED_SIZE => Err(format!("must be at most {MAX_GENERATED_SIZE}")),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of bytes".into()),
    }
}

/// A generated value of `size` bytes that says which record it is.
pub(crate) fn generated_value(number: u64, size: usize) -> Bytes {
    const FILL: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut v = format!("record {number:010} ").into_bytes();
    v.truncate(size);
    while v.len() < size {
        let take = (size - v.len()).min(FILL.len());
        v.extend_from_slice(&FILL[..take]);
    }
    Bytes::from(v)
}

/// Records of one request and the input lines (or generated numbers) they came from.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    lines: Vec<u64>,
    bytes: usize,
}

impl Batch {
    fn would_overflow(&self, r: &Record) -> bool {
        !self.records.is_empty()
            && (self.records.len() >= MAX_BATCH_RECORDS || self.bytes + r.approx_bytes() > MAX_BATCH_BYTES)
    }
}

/// What one partition's sender did.
#[derive(Default)]
struct PartitionReport {
    first_offset: Option<u64>,
    last_offset: Option<u64>,
    stored: u64,
    duplicates: u64,
    /// The weakest durability of its acks.
    durability: Option<Durability>,
    durable_index: u64,
    /// (lines, error, outcome unknown)
    failed: Vec<(Vec<u64>, String, bool)>,
    /// Lines not sent because an earlier batch of the partition failed.
    skipped: Vec<u64>,
}

impl PartitionReport {
    fn add(&mut self, ack: &ProduceAck) {
        if let Some(last) = ack.last_offset() {
            self.first_offset = Some(self.first_offset.map_or(ack.base_offset, |f| f.min(ack.base_offset)));
            self.last_offset = Some(self.last_offset.map_or(last, |l| l.max(last)));
        }
        self.stored += u64::from(ack.count);
        self.duplicates += u64::from(ack.duplicate) * u64::from(ack.count);
        self.durable_index = self.durable_index.max(ack.durable_index);
        self.durability = Some(match self.durability {
            None => ack.durability,
            Some(d) => weakest(d, ack.durability),
        });
    }
}

fn weakest(a: Durability, b: Durability) -> Durability {
    let rank = |d: Durability| match d {
        Durability::QuorumFsynced => 2,
        Durability::QuorumWritten => 1,
        Durability::Unspecified => 0,
    };
    if rank(a) <= rank(b) { a } else { b }
}

async fn send_partition(
    producer: Producer,
    topic: String,
    partition: u32,
    mut batches: mpsc::Receiver<Batch>,
) -> PartitionReport {
    let mut report = PartitionReport::default();
    while let Some(batch) = batches.recv().await {
        if !report.failed.is_empty() {
            report.skipped.extend(batch.lines);
            continue;
        }
        match producer.produce(&topic, partition, batch.records).await {
            Ok(ack) => report.add(&ack),
            Err(e) => {
                let unknown = matches!(e, Error::OutcomeUnknown { .. });
                report.failed.push((batch.lines, e.to_string(), unknown));
            }
        }
    }
    report
}

pub async fn produce(args: ProduceArgs) -> Result<()> {
    let client = args.cluster.client()?;
    let topic = args.topic.clone();
    // Learn the partition count (and that the topic exists) before reading input.
    let partitions = client.partitions(&topic).await.with_context(|| format!("look up topic {topic}"))?;
    if let Some(p) = args.partition {
        check_partition(&topic, p, partitions)?;
    }
    let producer = client.producer();
    let key = args.key.as_ref().map(|k| Bytes::from(k.clone().into_bytes()));
    let template = {
        let mut r = Record::default();
        if let Some(k) = &key {
            r = r.key(k.clone());
        }
        if let Some(t) = &args.tag {
            r = r.tag(t.clone());
        }
        for (k, v) in &args.headers {
            r = r.header(k.clone(), v.clone().into_bytes());
        }
        r
    };
    let fixed_partition = args.partition.or_else(|| key.as_ref().map(|k| partition_for(k, partitions)));

    let mut senders: BTreeMap<u32, mpsc::Sender<Batch>> = BTreeMap::new();
    let mut tasks = Vec::new();
    let mut pending: BTreeMap<u32, Batch> = BTreeMap::new();
    let mut round_robin: u32 = 0;
    let mut total: u64 = 0;

    // Sends a partition's full batch to its sender task (spawned on first use).
    macro_rules! ship {
        ($partition:expr, $batch:expr) => {{
            let p: u32 = $partition;
            let tx = senders.entry(p).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
                tasks.push((p, tokio::spawn(send_partition(producer.clone(), topic.clone(), p, rx))));
                tx
            });
            if tx.send($batch).await.is_err() {
                bail!("the sender of partition {p} stopped early");
            }
        }};
    }

    let mut push = |record: Record, line: u64| {
        let partition = fixed_partition.unwrap_or_else(|| {
            let p = round_robin % partitions;
            round_robin = round_robin.wrapping_add(1);
            p
        });
        let batch = pending.entry(partition).or_default();
        let full = batch.would_overflow(&record).then(|| std::mem::take(batch));
        batch.bytes += record.approx_bytes();
        batch.records.push(record);
        batch.lines.push(line);
        full.map(|b| (partition, b))
    };

    if let Some(count) = args.count {
        for n in 1..=count {
            let record = Record { value: generated_value(n, args.size), ..template.clone() };
            total += 1;
            if let Some((p, full)) = push(record, n) {
                ship!(p, full);
            }
        }
    } else {
        let mut stdin = tokio::io::BufReader::with_capacity(1 << 20, tokio::io::stdin());
        let mut line = Vec::new();
        let mut number: u64 = 0;
        loop {
            line.clear();
            let n = stdin.read_until(b'\n', &mut line).await.context("read stdin")?;
            if n == 0 {
                break;
            }
            number += 1;
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            let record = Record { value: Bytes::copy_from_slice(&line), ..template.clone() };
            total += 1;
            if let Some((p, full)) = push(record, number) {
                ship!(p, full);
            }
        }
    }
    for (p, batch) in std::mem::take(&mut pending) {
        if !batch.records.is_empty() {
            ship!(p, batch);
        }
    }
    drop(senders);

    let mut failed_lines: u64 = 0;
    let mut unknown_lines: u64 = 0;
    for (p, task) in tasks {
        let report = task.await.with_context(|| format!("the sender of partition {p} panicked"))?;
        if let (Some(first), Some(last)) = (report.first_offset, report.last_offset) {
            let durability = report.durability.unwrap_or(Durability::Unspecified).as_str_name();
            let mut line = format!(
                "{topic}/{p} offsets {first}..{last} durability={durability} durable_index={}",
                report.durable_index
            );
            if report.stored != last - first + 1 {
                line.push_str(&format!(" ({} records; other producers wrote in between)", report.stored));
            }
            if report.duplicates > 0 {
                line.push_str(&format!(" ({} already stored by an earlier attempt)", report.duplicates));
            }
            println!("{line}");
        }
        for (lines, error, unknown) in &report.failed {
            let what = if *unknown { "outcome unknown (may or may not be stored)" } else { "not stored" };
            let label = if args.count.is_some() { "records" } else { "lines" };
            eprintln!("{topic}/{p}: {label} {} {what}: {error}", ranges(lines, MAX_RANGES_SHOWN));
            if *unknown {
                unknown_lines += lines.len() as u64;
            } else {
                failed_lines += lines.len() as u64;
            }
        }
        if !report.skipped.is_empty() {
            let label = if args.count.is_some() { "records" } else { "lines" };
            eprintln!(
                "{topic}/{p}: {label} {} not sent (an earlier batch to this partition failed)",
                ranges(&report.skipped, MAX_RANGES_SHOWN)
            );
            failed_lines += report.skipped.len() as u64;
        }
    }
    if total == 0 {
        eprintln!("no input: nothing produced");
    }
    if failed_lines + unknown_lines > 0 {
        bail!(
            "{failed_lines} of {total} records not stored, {unknown_lines} with unknown outcome (listed above by {})",
            if args.count.is_some() { "record number" } else { "input line" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_have_the_size_and_name_their_record() {
        let v = generated_value(42, 40);
        assert_eq!(v.len(), 40);
        assert!(v.starts_with(b"record 0000000042 abcdefghijklmnopqrstuv"));
        assert_eq!(&generated_value(7, 3)[..], b"rec");
        assert_eq!(generated_value(1, 1000).len(), 1000);
    }

    #[test]
    fn batches_close_at_the_record_or_byte_limit() {
        let mut b = Batch::default();
        let small = Record::new("x");
        assert!(!b.would_overflow(&small), "an empty batch takes anything");
        for _ in 0..MAX_BATCH_RECORDS {
            b.bytes += small.approx_bytes();
            b.records.push(small.clone());
        }
        assert!(b.would_overflow(&small));
        let big = Record::new(vec![0u8; MAX_BATCH_BYTES]);
        let one = Batch { records: vec![small.clone()], lines: vec![1], bytes: small.approx_bytes() };
        assert!(one.would_overflow(&big));
        assert!(!Batch::default().would_overflow(&big), "an oversized record goes alone");
    }

    #[test]
    fn the_report_keeps_the_weakest_durability_and_the_offset_span() {
        let ack = |base, count, d| ProduceAck {
            topic: "t".into(),
            partition: 0,
            base_offset: base,
            count,
            durability: d,
            durable_index: base,
            log_index: base,
            duplicate: false,
        };
        let mut r = PartitionReport::default();
        r.add(&ack(10, 5, Durability::QuorumFsynced));
        r.add(&ack(0, 10, Durability::QuorumWritten));
        assert_eq!((r.first_offset, r.last_offset, r.stored), (Some(0), Some(14), 15));
        assert_eq!(r.durability, Some(Durability::QuorumWritten));
        assert_eq!(r.durable_index, 10);
    }
}
