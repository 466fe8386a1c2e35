//! `keel`: the node binary, its CLI and its benchmarks.
//!
//! Only `keel bench storage` exists so far; `node`, `dev`, `produce` and the
//! rest become further variants of [`Command`], each in its own module.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "keel: a replicated, durable message log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure this machine and keel's components.
    Bench(bench::BenchArgs),
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::run(args).await,
    }
}
