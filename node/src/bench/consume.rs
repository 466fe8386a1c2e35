//! `keel bench consume`: read a topic from the beginning as fast as the
//! cluster serves it.
//!
//! One reader per partition fetches from the partition's start offset
//! (`--max-bytes` per fetch, 1 MiB by default) until it reaches the end
//! offset the topic had when the bench began, the run has read `--count`
//! records, or `--duration` passes, whichever comes first. The rate is over
//! the time actually spent reading.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use keel_client::{Client, Fetch};
use serde::Serialize;
use tokio::time::Instant;

use super::produce::parse_count;
use super::{Latency, human_us, micros, new_histogram, parse_duration_s, thousands};
use crate::cli::ClusterOpt;

const MAX_FETCH_BYTES: usize = 64 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    cluster: ClusterOpt,
    /// Topic to read
    #[arg(long, value_name = "T", default_value = "bench")]
    topic: String,
    /// Longest run, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_duration_s)]
    duration: f64,
    /// Stop after this many records [default: the whole topic as it was at start]
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Bytes asked for per fetch (a node answers at most 4 MiB − 64 KiB)
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = parse_count::<MAX_FETCH_BYTES>)]
    max_bytes: usize,
    /// Also print the results as one JSON object, the last line of stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    msgs_per_s: f64,
    mib_per_s: f64,
    fetches_per_s: f64,
    messages: u64,
    /// Key and value bytes read.
    bytes: u64,
    fetches: u64,
    fetch_p50_us: u64,
    fetch_p99_us: u64,
    fetch_p999_us: u64,
    errors: u64,
    elapsed_s: f64,
    topic: String,
    partitions: u32,
    max_bytes: usize,
    duration_s: f64,
    fetch_latency: Latency,
}

#[derive(Default)]
struct Live {
    messages: AtomicU64,
    bytes: AtomicU64,
    fetches: AtomicU64,
    errors: AtomicU64,
}

pub async fn run(args: ConsumeArgs) -> Result<()> {
    let addrs = args.cluster.addrs();
    let options = args.cluster.options(CALL_TIMEOUT)?;
    let client = Client::with_options(addrs.clone(), options).context("connect")?;
    let info = client.describe_topic(&args.topic).await.with_context(|| format!("describe topic {}", args.topic))?;
    let total_records: u64 = info.partition_info.iter().map(|p| p.end_offset.saturating_sub(p.start_offset)).sum();
    eprintln!(
        "keel bench consume: topic {} ({} partition(s), {} records) at {}; up to {:.1} s, {} B per fetch",
        args.topic,
        info.partitions,
        thousands(total_records),
        addrs.join(","),
        args.duration,
        args.max_bytes
    );
    let limit = args.count.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let live = Arc::new(Live::default());
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let max_bytes = u32::try_from(args.max_bytes).expect("--max-bytes is at most 64 MiB");

    let mut readers = Vec::new();
    for p in &info.partition_info {
        let (client, live, histogram) = (client.clone(), Arc::clone(&live), Arc::clone(&histogram));
        let (topic, partition, mut offset, end) = (args.topic.clone(), p.partition, p.start_offset, p.end_offset);
        readers.push(tokio::spawn(async move {
            let mut local: Histogram<u64> = new_histogram();
            // Bounded by the end offset, the record limit and the deadline.
            while offset < end && live.messages.load(Ordering::Relaxed) < limit && Instant::now() < deadline {
                let sent = Instant::now();
                let fetch = Fetch::new(topic.clone(), partition, offset).max_bytes(max_bytes);
                match client.fetch(fetch).await {
                    Ok(f) => {
                        local.saturating_record(micros(sent.elapsed()).max(1));
                        live.fetches.fetch_add(1, Ordering::Relaxed);
                        let bytes: usize = f.records.iter().map(|r| r.key.len() + r.value.len()).sum();
                        live.messages.fetch_add(f.records.len() as u64, Ordering::Relaxed);
                        live.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                        let next = f.next_offset.max(f.records.last().map_or(offset, |r| r.offset + 1));
                        if next <= offset {
                            // Nothing new where records were promised (a lagging
                            // node): a short pause instead of a spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        offset = next.max(offset);
                    }
                    Err(e) => {
                        live.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("fetch {topic}/{partition} at {offset}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            histogram.lock().expect("no panic while holding the histogram").add(&local).ok();
        }));
    }

    let reporter = {
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            // Aborted when the readers are done.
            let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            let (mut last_messages, mut last_bytes) = (0, 0);
            loop {
                let now = tick.tick().await;
                let (m, b) = (live.messages.load(Ordering::Relaxed), live.bytes.load(Ordering::Relaxed));
                eprintln!(
                    "t={}s {} msg/s {:.1} MiB/s",
                    (now - start).as_secs(),
                    thousands(m - last_messages),
                    (b - last_bytes) as f64 / f64::from(1u32 << 20)
                );
                (last_messages, last_bytes) = (m, b);
            }
        })
    };
    for r in readers {
        r.await.context("a reader task panicked")?;
    }
    reporter.abort();
    let elapsed = start.elapsed().as_secs_f64().max(f64::EPSILON);

    let latency = Latency::of(&histogram.lock().expect("no panic while holding the histogram"));
    let messages = live.messages.load(Ordering::Relaxed).min(limit);
    let bytes = live.bytes.load(Ordering::Relaxed);
    let fetches = live.fetches.load(Ordering::Relaxed);
    let report = Report {
        msgs_per_s: messages as f64 / elapsed,
        mib_per_s: bytes as f64 / elapsed / f64::from(1u32 << 20),
        fetches_per_s: fetches as f64 / elapsed,
        messages,
        bytes,
        fetches,
        fetch_p50_us: latency.p50_us,
        fetch_p99_us: latency.p99_us,
        fetch_p999_us: latency.p999_us,
        errors: live.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        topic: args.topic.clone(),
        partitions: info.partitions,
        max_bytes: args.max_bytes,
        duration_s: args.duration,
        fetch_latency: latency,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).context("encode the JSON report")?);
    } else {
        println!(
            "consume: {} msg/s, {:.1} MiB/s ({} records in {:.2} s, {} fetches)",
            thousands(report.msgs_per_s as u64),
            report.mib_per_s,
            thousands(report.messages),
            report.elapsed_s,
            thousands(report.fetches)
        );
        println!(
            "fetch latency: p50 {}  p99 {}  p99.9 {}  max {}; errors: {}",
            human_us(latency.p50_us),
            human_us(latency.p99_us),
            human_us(latency.p999_us),
            human_us(latency.max_us),
            report.errors
        );
    }
    Ok(())
}
