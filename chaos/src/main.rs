//! `keel-chaos`: drives load against a three-node keel cluster, breaks it the
//! ways real clusters break (kills, pauses, partitions, power loss,
//! restarts), heals it, reads everything back and checks that nothing
//! acknowledged was lost, duplicated, reordered or diverged.

mod backend;
mod bitflip;
mod checker;
mod http;
mod run;
mod scenario;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::backend::Backend;
use crate::scenario::Scenario;

#[derive(Parser)]
#[command(name = "keel-chaos", about = "Break a keel cluster under load and check that nothing acknowledged is lost")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the scenarios.
    List,
    /// Run one scenario.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// `process` (local `keel node` processes) or `docker` (the compose cluster).
    #[arg(long, default_value = "process")]
    backend: String,
    /// A scenario from `keel-chaos list`.
    #[arg(long)]
    scenario: String,
    /// Which node single-node faults hit: leader, random, or mixed (a coin flip per cycle).
    #[arg(long, default_value = "mixed")]
    target: String,
    /// Flush policy of the nodes: SYNC_FLUSH, BATCH_FLUSH or ASYNC_FLUSH.
    #[arg(long, default_value = "SYNC_FLUSH")]
    flush: String,
    /// Fault cycles.
    #[arg(long, default_value_t = 20)]
    cycles: u32,
    /// Stop starting cycles after this many seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seed of the fault schedule (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent producers (each its own partition, one send at a time).
    #[arg(long, default_value_t = 6)]
    producers: u32,
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// The `keel` binary of the process backend [default: `keel` next to this program].
    #[arg(long)]
    keel_bin: Option<PathBuf>,
    /// The compose file of the docker backend.
    #[arg(long, default_value = "docker-compose.yml")]
    compose_file: PathBuf,
    /// Keep the cluster's files (process) or containers (docker) afterwards.
    #[arg(long)]
    keep: bool,
    /// Also print the report as one JSON object, the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Every Nth cycle, and always the last, stops the load at the fault
    /// (sends in flight abandoned) and, once the cluster is back, reads
    /// every partition before anything new is written: each acknowledged
    /// message must already be readable then (0: only the last cycle).
    #[arg(long, default_value_t = 2)]
    read_back_every: u32,
    /// `flush.interval.ms` of the nodes (process backend) [default: keel's,
    /// 100]. Under BATCH_FLUSH an ack waits for its batch's fsync, at most
    /// this long after the oldest unsynced message, so producers sending
    /// one message at a time send about 1000/N a second each: bitflip needs
    /// a few sealed segments per cycle, and a small N gives them.
    #[arg(long, value_name = "N")]
    flush_interval_ms: Option<u64>,
}

/// The size of each node's volume in the disk-full scenario.
const DISK_FULL_VOLUME_BYTES: u64 = 256 << 20;

fn main() -> ExitCode {
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("keel-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::List => {
            for s in scenario::ALL {
                println!("{:<20} {}", s.name(), s.describe());
            }
            Ok(true)
        }
        Cmd::Run(a) => {
            let scenario = Scenario::parse(&a.scenario)?;
            let target = scenario::Target::parse(&a.target)?;
            if !["SYNC_FLUSH", "BATCH_FLUSH", "ASYNC_FLUSH"].contains(&a.flush.as_str()) {
                bail!("--flush {:?}: expected SYNC_FLUSH, BATCH_FLUSH or ASYNC_FLUSH", a.flush);
            }
            if a.flush_interval_ms == Some(0) {
                bail!("--flush-interval-ms must be at least 1");
            }
            if a.cycles == 0 || a.producers == 0 || a.partitions == 0 {
                bail!("--cycles, --producers and --partitions must be at least 1");
            }
            let seed = a.seed.unwrap_or_else(rand::random);
            let backend: Arc<dyn Backend> = match a.backend.as_str() {
                "process" => {
                    let keel = match a.keel_bin {
                        Some(p) => p,
                        None => std::env::current_exe()?.with_file_name("keel"),
                    };
                    // disk-full: each node's data on a tmpfs of its own.
                    let volume = (scenario == Scenario::DiskFull).then_some(DISK_FULL_VOLUME_BYTES);
                    // partition: each node in a network namespace of its own.
                    let netns = scenario == Scenario::Partition;
                    // disk-full: 256 KiB segments, a roll (which needs new
                    // space) about every second; bitflip: 1 MiB ones, so that
                    // segments are sealed early and the active one lives long
                    // enough to hold records its meta file says committed.
                    let segment_bytes = if volume.is_some() {
                        Some(256 << 10)
                    } else if scenario == Scenario::Bitflip {
                        Some(1 << 20)
                    } else {
                        None
                    };
                    Arc::new(backend::process::Process::start_cluster(
                        &keel,
                        &a.flush,
                        a.keep,
                        volume,
                        netns,
                        segment_bytes,
                        a.flush_interval_ms,
                    )?)
                }
                "docker" if a.flush_interval_ms.is_some() => {
                    bail!(
                        "--flush-interval-ms is for the process backend (the compose file sets the docker nodes' keys)"
                    )
                }
                "docker" => Arc::new(backend::docker::Docker::start_cluster(&a.compose_file, &a.flush, a.keep)?),
                other => bail!("--backend {other:?}: expected process or docker"),
            };
            let options = run::Options {
                scenario,
                target,
                flush: a.flush,
                cycles: a.cycles,
                duration: Duration::from_secs(a.duration),
                seed,
                producers: a.producers,
                partitions: a.partitions,
                json: a.json,
                read_back_every: a.read_back_every,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(run::run(backend.clone(), &options));
            backend.shutdown();
            let report = report.map_err(|e| anyhow::anyhow!("{e:#} (seed {seed})"))?;
            if options.json {
                println!("{}", report.json);
            }
            Ok(report.passed)
        }
    }
}
