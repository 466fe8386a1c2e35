//! `keel`: the node binary, its CLI and its benchmarks (the code is in the
//! `keel_node` library, which the fuzz targets use too).

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use keel_node::{bench, cli, config, dev, server};

/// mimalloc rather than glibc's malloc: at one record per produce request
/// glibc's allocator took a quarter of the load generator's CPU and a tenth
/// of the leader's (arena locking, consolidation of freed request buffers);
/// see ARCHITECTURE.md "Where one-record-per-request time goes".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "keel", version, about = "keel: a replicated, durable message log")]
struct Cli {
    /// On an error, print its backtrace too (and capture one: as if
    /// RUST_LIB_BACKTRACE=1). Without it an error is one line, its causes
    /// joined, whatever RUST_BACKTRACE says.
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one keel node (configured by file, KEEL_* variables and flags).
    Node(config::NodeArgs),
    /// Start a local three-node cluster, each node its own child process.
    Dev(dev::DevArgs),
    /// Check a node configuration file without starting a node.
    Config(config::ConfigArgs),
    /// Create, list, describe and delete topics.
    Topic(cli::TopicArgs),
    /// Append records to a topic (stdin lines, or generated records).
    Produce(cli::ProduceArgs),
    /// Read records from a topic.
    Consume(cli::ConsumeArgs),
    /// Commit and show consumer-group offsets.
    Group(cli::GroupArgs),
    /// Find records by key, or the first offset at or after a timestamp.
    Lookup(cli::LookupArgs),
    /// Show the cluster and change its membership.
    Cluster(cli::ClusterArgs),
    /// Check a node's health over its admin HTTP port (/healthz, or /readyz
    /// with --ready); exit 0 when healthy. The container health check.
    Health(cli::HealthArgs),
    /// Measure this machine, keel's components and a running cluster.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    if verbose {
        // SAFETY: at start-up, before any thread exists to read the
        // environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "1") };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error chain on one line (`outer: cause: root`), the way
            // a user error reads; the backtrace only when asked for, since
            // an inherited RUST_BACKTRACE=1 would otherwise bury the message.
            // `Error: ` as Rust's own report starts, which scripts match.
            if verbose {
                eprintln!("Error: {e:?}");
            } else {
                eprintln!("Error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Node(_) | Command::Dev(_)) {
        // A client command whose output is cut short (`keel consume t | head`)
        // ends quietly, as Unix tools do, instead of panicking on EPIPE. The
        // node and the dev supervisor keep Rust's default (EPIPE as an error).
        quiet_on_closed_stdout();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Node(args) => {
                let config = config::load(&args)?;
                server::run(config).await
            }
            Command::Dev(args) => dev::run(args).await,
            Command::Config(args) => config::run(args),
            Command::Topic(args) => cli::topic(args).await,
            Command::Produce(args) => cli::produce(args).await,
            Command::Consume(args) => cli::consume(args).await,
            Command::Group(args) => cli::group(args).await,
            Command::Lookup(args) => cli::lookup(args).await,
            Command::Cluster(args) => cli::cluster(args).await,
            Command::Health(args) => cli::health(args),
            Command::Bench(args) => bench::run(args).await,
        }
    })
}

/// SIGPIPE ends the process as the default disposition would, but only when
/// stdout is a pipe whose reader has gone. A SIGPIPE from a socket (hyper
/// writes with `writev`, which has no MSG_NOSIGNAL: a plaintext client
/// talking to a TLS-only node gets one when the node hangs up) is ignored,
/// so the write fails with EPIPE and the command reports the failure instead
/// of dying silently with status 141.
fn quiet_on_closed_stdout() {
    extern "C" fn on_sigpipe(_: libc::c_int) {
        let mut stdout = libc::pollfd { fd: libc::STDOUT_FILENO, events: 0, revents: 0 };
        // SAFETY: poll, signal and raise are async-signal-safe; `stdout`
        // lives on this handler's stack for the duration of the call.
        unsafe {
            if libc::poll(&mut stdout, 1, 0) == 1 && stdout.revents & libc::POLLERR != 0 {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
    }
    // SAFETY: installs a handler for one signal at start-up, before any
    // thread is spawned; the handler only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigpipe as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGPIPE, &action, std::ptr::null_mut());
    }
}
