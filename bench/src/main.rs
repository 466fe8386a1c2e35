//! keel-bench: keel side by side with etcd, NATS JetStream and RabbitMQ
//! quorum queues, on one machine, in one run, with one load generator.
//!
//! `bench/compare` installs the systems and builds this binary; `keel-bench
//! compare` then, in order:
//!
//! 1. describes the machine and measures its disk (fio: 4 KiB write +
//!    fdatasync, sequential 1 MiB writes; `keel bench storage`);
//! 2. for each system, starts a three-node cluster on loopback with data in
//!    the scratch directory (`cluster/`), configured so that an ack means
//!    "fsynced on a majority", drives every load point through it
//!    (`load.rs`) and stops it; keel twice, as two series: one record per
//!    Produce request, and keel-client's batching `Batcher`;
//! 3. runs both keel series again under BATCH_FLUSH and ASYNC_FLUSH
//!    (labelled with their guarantees, reported apart);
//! 4. writes `results/<date>.md`, `results/latest.json`, `results/latest.svg`
//!    (`report.rs`, `plot.rs`).
//!
//! Every child process runs in a process group of its own, recorded in
//! `<scratch>/pids` before it runs, and is stopped when its cluster is done,
//! on an error, and on SIGINT/SIGTERM (`procs.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The load generator drives every system's client; mimalloc (as in the
/// `keel` binary) keeps glibc's allocator out of all of them alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster;
mod disk;
mod load;
mod machine;
mod plot;
mod procs;
mod report;
mod run;

#[derive(Debug, Parser)]
#[command(name = "keel-bench", about = "keel side by side with etcd, NATS JetStream and RabbitMQ")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole comparison (bench/compare calls this after installing
    /// and building what it needs).
    Compare(CompareArgs),
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The `keel` release binary
    #[arg(long, value_name = "PATH")]
    keel_bin: PathBuf,
    /// How the keel under test is named in the results (version and commit)
    #[arg(long, value_name = "TEXT", default_value = "unknown")]
    keel_version: String,
    /// A nats-server that knows `sync_interval` (2.10 or newer)
    #[arg(long, value_name = "PATH")]
    nats_bin: PathBuf,
    /// Scratch directory for every cluster's data (on the disk under test);
    /// emptied as each cluster stops
    #[arg(long, value_name = "DIR")]
    scratch: PathBuf,
    /// Where `<date>.md`, `latest.json` and `latest.svg` go
    #[arg(long, value_name = "DIR")]
    results: PathBuf,
    /// Date in the results file name (YYYY-MM-DD)
    #[arg(long, value_name = "DATE")]
    date: String,
    /// Shorter points and fewer of them (see bench/README.md)
    #[arg(long)]
    quick: bool,
    /// Only these systems (comma-separated: keel, etcd, nats, rabbitmq; keel
    /// means both its series), for trying one out; the results then say
    /// which were left out
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    only: Vec<String>,
    /// Skip fio and `keel bench storage` (for trying a system out)
    #[arg(long)]
    skip_disk: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel-bench: error: start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result: Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Compare(args) => run::compare(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
