//! `keel bench ...`: measurements that back the design decisions in
//! ARCHITECTURE.md with numbers from the machine at hand.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;

mod consume;
mod engine;
mod produce;
mod raw_disk;
mod scale;
mod storage;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The disk's fdatasync limit against the log store under SYNC_FLUSH,
    /// BATCH_FLUSH and ASYNC_FLUSH, and mmap read-back, in one run.
    Storage(storage::StorageArgs),
    /// Produce load against a running cluster: N idempotent producers, each
    /// with a window of requests in flight; throughput and request latency.
    Produce(produce::ProduceArgs),
    /// Read a topic from the beginning (all partitions) as fast as the
    /// cluster serves it: throughput and fetch latency.
    Consume(consume::ConsumeArgs),
    /// Fill a three-node cluster of its own to each of --sizes records and
    /// measure at each: memory per node, restart after kill -9 of all,
    /// key and timestamp lookups, fetch from the start.
    Scale(scale::ScaleArgs),
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Storage(a) => storage::run(a).await,
        BenchCommand::Produce(a) => produce::run(a).await,
        BenchCommand::Consume(a) => consume::run(a).await,
        BenchCommand::Scale(a) => scale::run(a).await,
    }
}

/// Highest latency a histogram holds (one hour): anything slower is clamped,
/// and a bench that sees it has bigger problems than the p99.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Latency {
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    samples: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            samples: h.len(),
        }
    }
}

/// Longest `--duration` / `--warmup` of the cluster benches.
const MAX_CLUSTER_BENCH_S: f64 = 3600.0;

/// Seconds for the cluster benches: positive, finite, at most an hour.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let d: f64 = s.trim().parse().map_err(|_| "expected a number of seconds".to_string())?;
    if !d.is_finite() || d < 0.0 {
        return Err("must be a non-negative number of seconds".into());
    }
    if d > MAX_CLUSTER_BENCH_S {
        return Err(format!("must be at most {MAX_CLUSTER_BENCH_S} seconds"));
    }
    Ok(d)
}

/// `--duration` of the cluster benches: as [`parse_seconds`], and above zero.
fn parse_duration_s(s: &str) -> Result<f64, String> {
    match parse_seconds(s)? {
        d if d > 0.0 => Ok(d),
        _ => Err("must be above zero".into()),
    }
}

/// `41230` → `41,230`, for the human-readable lines.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as a short human figure: `850us`, `1.8ms`, `1.20s`.
fn human_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(41_230), "41,230");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_us(850), "850us");
        assert_eq!(human_us(1_800), "1.8ms");
        assert_eq!(human_us(1_200_000), "1.20s");
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
    }
}
