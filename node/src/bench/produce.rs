//! `keel bench produce`: produce load against a running cluster.
//!
//! `--producers` tasks, each an idempotent producer of its own (own id),
//! each keeping `--inflight` records of `--size` bytes in flight, spread
//! round-robin over the topic's partitions. By default (`--batch 0`) each
//! record is sent on its own through keel-client's [`Batcher`], which packs
//! what queues up while a partition's request is out into the next request
//! (as a Kafka producer does); `--batch N` instead keeps `--inflight`
//! requests of N records each in flight. The
//! first `--warmup` seconds are not measured; then for `--duration`
//! seconds every request completed counts: its latency (send to ack) goes
//! into a histogram and its records into the throughput. A line on stderr
//! every second shows the rate and p99 of that second.
//!
//! Bounds: requests stop being issued at the end of the run (and after
//! `MAX_REQUESTS_PER_PRODUCER`); those still in flight are awaited (the
//! client's call deadline bounds each) but not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use keel_client::proto::TopicConfig;
use keel_client::{BatchOptions, Batcher, Client, Durability, Error, ErrorCode, Record};
use serde::Serialize;
use tokio::time::Instant;

use super::{Latency, human_us, micros, new_histogram, parse_duration_s, parse_seconds, thousands};
use crate::cli::ClusterOpt;

const MAX_PRODUCERS: usize = 1024;
const MAX_INFLIGHT: usize = 4096;
const MAX_BATCH: usize = 100_000;
const MAX_SIZE: usize = 16 << 20;
/// Safety bound on requests per producer, far above what an hour reaches.
const MAX_REQUESTS_PER_PRODUCER: u64 = 1_000_000_000;
/// Deadline of one produce call in the bench: long enough to ride out an
/// election, short enough that a stuck cluster ends the run soon after
/// `--duration`.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    cluster: ClusterOpt,
    /// Topic to produce to (created with --partitions when missing)
    #[arg(long, value_name = "T", default_value = "bench")]
    topic: String,
    /// Partitions of the topic when the bench creates it
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    partitions: u32,
    /// Concurrent producers, each with its own producer id
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_count::<MAX_PRODUCERS>)]
    producers: usize,
    /// Requests in flight per producer
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = parse_count::<MAX_INFLIGHT>)]
    inflight: usize,
    /// Records per request. 0 (the default): records are sent one by one
    /// through keel-client's batching producer, which packs the records
    /// queued while a partition's request is in flight into the next one
    /// (as Kafka's producer does); `--inflight` then counts records, and
    /// latency is per record
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_batch)]
    batch: usize,
    /// Value bytes per record
    #[arg(long, value_name = "BYTES", default_value_t = 1024, value_parser = parse_count::<MAX_SIZE>)]
    size: usize,
    /// Measured seconds (after the warm-up)
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_duration_s)]
    duration: f64,
    /// Seconds of load before measuring
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = parse_seconds)]
    warmup: f64,
    /// Also print the results as one JSON object, the last line of stdout
    #[arg(long)]
    json: bool,
}

pub(super) fn parse_count<const MAX: usize>(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) if n > MAX => Err(format!("must be at most {MAX}")),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number".into()),
    }
}

fn parse_batch(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > MAX_BATCH => Err(format!("must be at most {MAX_BATCH}")),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number (0: client-side batching)".into()),
    }
}

/// One acknowledged request (or record, with client-side batching).
struct Acked {
    count: u32,
    duplicate: bool,
    durability: Durability,
}

/// What `--json` prints; the summary shows the same numbers.
#[derive(Debug, Serialize)]
struct Report {
    msgs_per_s: f64,
    mib_per_s: f64,
    requests_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// Requests that failed (after the client's own retries).
    errors: u64,
    /// Of those, how many ended "outcome unknown".
    outcome_unknown: u64,
    messages: u64,
    requests: u64,
    /// Records acknowledged as duplicates (a retry of a stored batch).
    duplicates: u64,
    /// The weakest durability any ack stated.
    durability: String,
    topic: String,
    partitions: u32,
    producers: usize,
    inflight: usize,
    batch: usize,
    size: usize,
    duration_s: f64,
    warmup_s: f64,
    latency: Latency,
}

/// Counters the progress line reads while the producers run.
#[derive(Default)]
struct Live {
    messages: AtomicU64,
    errors: AtomicU64,
    /// Request latencies since the last progress line.
    interval: Mutex<Option<Histogram<u64>>>,
}

/// One producer's tally of the measured window.
struct Tally {
    histogram: Histogram<u64>,
    messages: u64,
    requests: u64,
    errors: u64,
    unknown: u64,
    duplicates: u64,
    weakest: Option<Durability>,
}

impl Tally {
    fn new() -> Self {
        Self {
            histogram: new_histogram(),
            messages: 0,
            requests: 0,
            errors: 0,
            unknown: 0,
            duplicates: 0,
            weakest: None,
        }
    }
}

/// Creates the topic when it does not exist; returns its partition count.
pub(super) async fn ensure_topic(client: &Client, topic: &str, partitions: u32) -> Result<u32> {
    match client.describe_topic(topic).await {
        Ok(info) => {
            if info.partitions != partitions {
                eprintln!("topic {topic} exists with {} partition(s); using them", info.partitions);
            }
            Ok(info.partitions)
        }
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
            let config = TopicConfig { partitions, ..TopicConfig::default() };
            match client.create_topic(topic, config).await {
                Ok(info) => Ok(info.partitions),
                // Another bench created it meanwhile.
                Err(e) if e.code() == Some(ErrorCode::TopicExists) => {
                    Ok(client.describe_topic(topic).await?.partitions)
                }
                Err(e) => Err(e).with_context(|| format!("create topic {topic}")),
            }
        }
        Err(e) => Err(e).with_context(|| format!("describe topic {topic}")),
    }
}

fn durability_rank(d: Durability) -> u8 {
    match d {
        Durability::QuorumFsynced => 2,
        Durability::QuorumWritten => 1,
        Durability::Unspecified => 0,
    }
}

pub async fn run(args: ProduceArgs) -> Result<()> {
    let addrs = args.cluster.addrs();
    let options = args.cluster.options(CALL_TIMEOUT)?;
    let client = Client::with_options(addrs.clone(), options).context("connect")?;
    let partitions = ensure_topic(&client, &args.topic, args.partitions).await?;
    eprintln!(
        "keel bench produce: {} producer(s) × {} in flight, {} record(s) of {} B per request, topic {} ({} partition(s)) \
         at {}; {:.1} s warm-up, {:.1} s measured",
        args.producers,
        args.inflight,
        args.batch,
        args.size,
        args.topic,
        partitions,
        addrs.join(","),
        args.warmup,
        args.duration
    );

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let live = Arc::new(Live { interval: Mutex::new(Some(new_histogram())), ..Live::default() });
    let value = Bytes::from(vec![b'k'; args.size]);
    let topic: Arc<str> = Arc::from(args.topic.as_str());

    let mut producers = Vec::new();
    for i in 0..args.producers {
        let producer = client.producer();
        let batcher = Batcher::new(producer.clone(), BatchOptions::default());
        let (live, value, topic) = (Arc::clone(&live), value.clone(), Arc::clone(&topic));
        let (inflight, batch) = (args.inflight, args.batch);
        producers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut pending = FuturesUnordered::new();
            let mut issued: u64 = 0;
            let mut next_partition = i as u32;
            loop {
                while pending.len() < inflight && Instant::now() < end && issued < MAX_REQUESTS_PER_PRODUCER {
                    let partition = next_partition % partitions;
                    next_partition = next_partition.wrapping_add(1);
                    issued += 1;
                    let (producer, batcher, topic, value) =
                        (producer.clone(), batcher.clone(), Arc::clone(&topic), value.clone());
                    pending.push(async move {
                        let sent = Instant::now();
                        let result = if batch == 0 {
                            batcher.send(&topic, partition, Record::new(value)).await.map(|a| Acked {
                                count: 1,
                                duplicate: a.duplicate,
                                durability: a.durability,
                            })
                        } else {
                            let records: Vec<Record> = (0..batch).map(|_| Record::new(value.clone())).collect();
                            producer.produce(&topic, partition, records).await.map(|a| Acked {
                                count: a.count,
                                duplicate: a.duplicate,
                                durability: a.durability,
                            })
                        };
                        (sent, Instant::now(), result)
                    });
                }
                let Some((sent, done, result)) = pending.next().await else { break };
                let latency_us = micros(done - sent).max(1);
                let measured = done >= measure_from && done <= end;
                match result {
                    Ok(ack) => {
                        live.messages.fetch_add(u64::from(ack.count), Ordering::Relaxed);
                        if let Some(h) =
                            live.interval.lock().expect("no panic while holding the interval histogram").as_mut()
                        {
                            h.saturating_record(latency_us);
                        }
                        if measured {
                            tally.histogram.saturating_record(latency_us);
                            tally.messages += u64::from(ack.count);
                            tally.requests += 1;
                            if ack.duplicate {
                                tally.duplicates += u64::from(ack.count);
                            }
                            tally.weakest = Some(match tally.weakest {
                                Some(w) if durability_rank(w) <= durability_rank(ack.durability) => w,
                                _ => ack.durability,
                            });
                        }
                    }
                    Err(e @ Error::Server { .. }) | Err(e @ Error::InvalidArgument(_)) | Err(e @ Error::Rpc { .. }) => {
                        // A refusal that no retry cures: the bench itself is wrong.
                        return Err(e);
                    }
                    Err(e) => {
                        live.errors.fetch_add(1, Ordering::Relaxed);
                        if measured {
                            tally.errors += 1;
                            tally.unknown += u64::from(e.is_outcome_unknown());
                        }
                    }
                }
            }
            Ok(tally)
        }));
    }

    let reporter = {
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            // Aborted when the producers are done; never outlives the run.
            let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            let mut last_messages = 0;
            loop {
                let now = tick.tick().await;
                let messages = live.messages.load(Ordering::Relaxed);
                let errors = live.errors.load(Ordering::Relaxed);
                let p99 = {
                    let mut slot = live.interval.lock().expect("no panic while holding the interval histogram");
                    let h = slot.replace(new_histogram());
                    h.filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(0.99))
                };
                let phase = if now < measure_from { " (warm-up)" } else { "" };
                let errors = if errors > 0 { format!(" errors={}", thousands(errors)) } else { String::new() };
                eprintln!(
                    "t={}s {} msg/s p99={}{errors}{phase}",
                    (now - start).as_secs(),
                    thousands(messages - last_messages),
                    p99.map_or_else(|| "-".to_string(), human_us)
                );
                last_messages = messages;
            }
        })
    };

    let mut total = Tally::new();
    let mut failure = None;
    for p in producers {
        match p.await.context("a producer task panicked")? {
            Ok(t) => {
                total.histogram.add(&t.histogram).context("merge latency histograms")?;
                total.messages += t.messages;
                total.requests += t.requests;
                total.errors += t.errors;
                total.unknown += t.unknown;
                total.duplicates += t.duplicates;
                total.weakest = match (total.weakest, t.weakest) {
                    (Some(a), Some(b)) => Some(if durability_rank(a) <= durability_rank(b) { a } else { b }),
                    (a, b) => a.or(b),
                };
            }
            Err(e) => failure = Some(e),
        }
    }
    reporter.abort();
    if let Some(e) = failure {
        bail!("the cluster refused the bench's requests: {e}");
    }

    let seconds = args.duration.max(f64::EPSILON);
    let latency = Latency::of(&total.histogram);
    let report = Report {
        msgs_per_s: total.messages as f64 / seconds,
        mib_per_s: (total.messages as f64 * args.size as f64) / seconds / f64::from(1u32 << 20),
        requests_per_s: total.requests as f64 / seconds,
        p50_us: latency.p50_us,
        p99_us: latency.p99_us,
        p999_us: latency.p999_us,
        max_us: latency.max_us,
        errors: total.errors,
        outcome_unknown: total.unknown,
        messages: total.messages,
        requests: total.requests,
        duplicates: total.duplicates,
        durability: total.weakest.unwrap_or(Durability::Unspecified).as_str_name().to_string(),
        topic: args.topic.clone(),
        partitions,
        producers: args.producers,
        inflight: args.inflight,
        batch: args.batch,
        size: args.size,
        duration_s: args.duration,
        warmup_s: args.warmup,
        latency,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).context("encode the JSON report")?);
    } else {
        let unit = if report.batch == 0 { "record" } else { "request" };
        if report.batch == 0 {
            println!(
                "produce: {} msg/s, {:.1} MiB/s of {} B records, sent one by one through the batching producer, \
                 over {:.1} s",
                thousands(report.msgs_per_s as u64),
                report.mib_per_s,
                report.size,
                report.duration_s
            );
        } else {
            println!(
                "produce: {} msg/s, {:.1} MiB/s ({} requests/s of {} record(s) × {} B) over {:.1} s",
                thousands(report.msgs_per_s as u64),
                report.mib_per_s,
                thousands(report.requests_per_s as u64),
                report.batch,
                report.size,
                report.duration_s
            );
        }
        println!(
            "latency per {unit}: p50 {}  p99 {}  p99.9 {}  max {}  ({} {unit}s)",
            human_us(report.p50_us),
            human_us(report.p99_us),
            human_us(report.p999_us),
            human_us(report.max_us),
            thousands(report.requests)
        );
        println!(
            "errors: {} ({} outcome unknown); durability: {}; duplicates: {}",
            report.errors, report.outcome_unknown, report.durability, report.duplicates
        );
    }
    Ok(())
}
