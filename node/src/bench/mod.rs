//! `keel bench ...`: measurements that back the design decisions in
//! ARCHITECTURE.md with numbers from the machine at hand.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;

mod engine;
mod raw_disk;
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
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Storage(a) => storage::run(a).await,
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
