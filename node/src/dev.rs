//! `keel dev`: a local cluster in one command, each node its own child process.
//!
//! For node `i` in `1..=N` (`--nodes`, default 3) it runs
//! `<this binary> node --config D/node{i}/node.properties`, where `D` is
//! `--dir` (default `./keel-data`):
//!
//! ```text
//! D/dev.lock                  flock'ed while a `keel dev` runs on D, so two never share it
//! D/node{i}/node.properties   written on the first start, never overwritten: edit it to tune a node
//! D/node{i}/data              the node's log (store.path.commitlog)
//! ```
//!
//! Node `i` serves gRPC (clients and peers) on `127.0.0.1:P+i-1` and admin
//! HTTP on `127.0.0.1:P+100+i-1`, `P` = `--base-port` (9091). Only node 1's
//! file says `cluster.bootstrap=true`, and a node initialises the membership
//! only when its store is empty, so running `keel dev` again on the same `D`
//! restarts the same cluster with its data; remove `D` to start afresh. Once
//! a file exists it is the truth: its addresses are the ones checked,
//! printed and polled, whatever the flags say now.
//!
//! `keel node` lets `KEEL_*` variables override its file: they pass through
//! to every node (`KEEL_FLUSH_DISK_TYPE=BATCH_FLUSH keel dev`), except those
//! of the keys `keel dev` writes itself (ids, addresses, peers, bootstrap,
//! data path), which one value for all nodes would break.
//!
//! Before starting anything `keel dev` refuses, with the reason, when a port
//! is taken (it binds each one first) or a directory is unusable, rather than
//! leaving a node to fail in a corner of the output.
//!
//! Output: every line a node writes to stdout or stderr is forwarded to our
//! stderr as `node{i} | line`; `keel dev`'s own lines (addresses,
//! `cluster ready: leader node{k}`, exits) go to stdout.
//!
//! Lifetime: a node that exits is reported (`node2 exited: signal 9
//! (SIGKILL)`) and the others keep running, so `kill -9` on a node's pid
//! shows a failover. `keel dev` ends when every node is gone (exit status 1),
//! or on Ctrl-C / SIGTERM: SIGTERM to each node, SIGKILL to those still
//! running after 10 s (a second Ctrl-C kills at once), then one line per
//! node saying how it ended. Nodes run in their own process group, so a
//! terminal's Ctrl-C reaches only `keel dev`, which stops them in that order;
//! and each gets SIGKILL if `keel dev` itself dies (`PR_SET_PDEATHSIG`), so
//! no node outlives it holding its ports.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use keel_proto::client::keel_client::KeelClient;
use keel_proto::client::{ClusterInfoRequest, ClusterInfoResponse};
use rustix::process::Signal as ProcessSignal;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, sleep_until, timeout};
use tonic::transport::Endpoint;

use crate::{config, launch};

const DEFAULT_BASE_PORT: u16 = 9091;
/// Node i's admin port is its gRPC port plus this.
const ADMIN_PORT_OFFSET: u16 = 100;
const MAX_NODES: u8 = 9;
// The gRPC ports P..P+N-1 must not run into the admin ports P+100...
const _: () = assert!(MAX_NODES as u16 <= ADMIN_PORT_OFFSET);

const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(200);
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Bounds one `ClusterInfo` call, connect included, so a paused node cannot
/// stall the leader poll.
const CLUSTER_INFO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a node has to stop after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// After SIGKILL a process ends at once unless stuck in the kernel (a hung
/// disk); past this we report it and stop waiting.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long an exit report waits for the node's last lines (often the reason
/// it exited) to be printed first.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);
/// A node's line longer than this is forwarded in pieces, so one runaway
/// line cannot take unbounded memory.
const MAX_LINE_BYTES: u64 = 64 * 1024;
/// Lines waiting for the stderr writer; a full queue slows the readers, and
/// through their pipes the nodes, instead of growing.
const OUTPUT_QUEUE_LINES: usize = 1024;

/// `keel dev`: a local cluster, each node its own child process.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for every node's properties file and data (created if missing; reused when present).
    #[arg(long, value_name = "D", default_value = "./keel-data")]
    pub dir: PathBuf,
    /// Node i serves gRPC on 127.0.0.1:P+i-1 and admin HTTP on 127.0.0.1:P+100+i-1.
    #[arg(long, value_name = "P", default_value_t = DEFAULT_BASE_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    pub base_port: u16,
    /// Number of nodes.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=MAX_NODES as i64))]
    pub nodes: u8,
    /// Add KEY=VALUE to every node's properties file when it is first written (repeatable),
    /// e.g. --set flush.disk.type=BATCH_FLUSH.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub set: Vec<Setting>,
}

/// One `--set KEY=VALUE`.
#[derive(Debug, Clone)]
pub struct Setting {
    key: String,
    value: String,
}

fn parse_setting(text: &str) -> Result<Setting, String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() || key.contains(char::is_whitespace) || key.starts_with(['#', '!']) {
        return Err(format!("`{key}` is not a property key"));
    }
    if value.contains(['\n', '\r']) {
        return Err(format!("the value of `{key}` spans lines"));
    }
    let Some(row) = config::keys::key(key) else {
        return Err(format!("`{key}` is not a configuration key (`keel config keys` lists them)"));
    };
    if row.dev_managed {
        return Err(format!("`{key}` is written by keel dev itself (see --dir, --base-port and --nodes)"));
    }
    Ok(Setting { key: key.to_owned(), value: value.to_owned() })
}

/// One node as `keel dev` runs it.
#[derive(Debug)]
struct Node {
    id: u64,
    /// `grpc.listen`: checked free before the start.
    grpc_listen: SocketAddr,
    /// `grpc.advertised`: what clients (and our leader poll) dial.
    grpc_addr: String,
    /// `admin.listen`.
    admin_listen: SocketAddr,
    /// `D/node{i}`: the node's working directory.
    dir: PathBuf,
    properties: PathBuf,
    /// `store.path.commitlog`.
    data: PathBuf,
    bootstrap: bool,
    /// The properties file was there already (and so `--set` did not apply).
    reused: bool,
    /// The properties file sets `log.color`: the user chose, not us.
    log_color_in_file: bool,
}

pub async fn run(args: DevArgs) -> Result<()> {
    let root = prepare_root(&args.dir)?;
    // Held until we return: a second `keel dev` on the same directory would
    // fight this one over ports and store locks.
    let _lock = lock_root(&root)?;
    let nodes = prepare_nodes(&root, &args)?;
    check_ports(&nodes)?;
    let exe = std::env::current_exe().context("find the keel binary to run the nodes")?;

    // Registered before the first spawn so that an early Ctrl-C still stops
    // the nodes in order instead of killing only us.
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;

    print_banner(&root, &nodes, &args);
    let output = start_output_writer();
    let (exit_tx, mut exits) = mpsc::channel(nodes.len());
    let mut running = BTreeMap::new();
    for node in &nodes {
        // Spawned from `run`'s own future, which `main` polls on the main
        // thread: PR_SET_PDEATHSIG fires when the *thread* that spawned a
        // child ends, and the main thread lives as long as the process.
        match spawn_node(&exe, node, &output, exit_tx.clone()) {
            Ok(signals) => {
                running.insert(node.id, signals);
            }
            Err(error) => {
                println!("node{} could not be started; stopping the others", node.id);
                let _ = stop_all(&mut running, &mut exits, &mut interrupt).await;
                return Err(error);
            }
        }
    }
    // Only the nodes' tasks hold senders now, so `exits` ends when they do.
    drop(exit_tx);
    drop(output);

    let poll = tokio::spawn(announce_leader(nodes.iter().map(|n| (n.id, n.grpc_addr.clone())).collect()));
    let reason = loop {
        tokio::select! {
            exit = exits.recv() => {
                let Some((id, status)) = exit else { break None };
                running.remove(&id);
                println!("node{id} exited: {}", describe(&status));
                if running.is_empty() {
                    break None;
                }
            }
            _ = interrupt.recv() => break Some("interrupted"),
            _ = terminate.recv() => break Some("SIGTERM received"),
        }
    };
    poll.abort();
    match reason {
        None => bail!("all {} nodes exited", nodes.len()),
        Some(reason) => {
            println!(
                "{reason}: stopping {} node(s) (SIGTERM, SIGKILL after {} s)",
                running.len(),
                STOP_GRACE.as_secs()
            );
            stop_all(&mut running, &mut exits, &mut interrupt).await
        }
    }
}

/// Creates `D` and returns its absolute path, so the properties files work
/// from any working directory.
fn prepare_root(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create the directory {}", dir.display()))?;
    std::fs::canonicalize(dir).with_context(|| format!("resolve the directory {}", dir.display()))
}

fn lock_root(root: &Path) -> Result<File> {
    let path = root.join("dev.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {} (is the directory writable?)", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            bail!("another keel dev is running on {}; stop it, or pick another --dir", root.display())
        }
        Err(e) => return Err(io::Error::from(e)).with_context(|| format!("lock {}", path.display())),
    }
    Ok(file)
}

/// Makes each node's directories, writes the properties files that are
/// missing and reads back the ones that exist.
fn prepare_nodes(root: &Path, args: &DevArgs) -> Result<Vec<Node>> {
    let count = u16::from(args.nodes);
    let highest_port = u32::from(args.base_port) + u32::from(ADMIN_PORT_OFFSET) + u32::from(count) - 1;
    if highest_port > u32::from(u16::MAX) {
        bail!("--base-port {} is too high: node{count}'s admin port would be {highest_port}", args.base_port);
    }
    let grpc = |id: u16| SocketAddr::from(([127, 0, 0, 1], args.base_port + id - 1));
    let admin = |id: u16| SocketAddr::from(([127, 0, 0, 1], args.base_port + id - 1 + ADMIN_PORT_OFFSET));
    let layouts: Vec<launch::NodeLayout> = (1..=count)
        .map(|id| launch::NodeLayout {
            id: u64::from(id),
            grpc: grpc(id).to_string(),
            admin: admin(id).to_string(),
            data: root.join(format!("node{id}")).join("data"),
        })
        .collect();
    let peers = launch::peers(&layouts);
    let log_color_set = args.set.iter().any(|s| s.key == "log.color");

    let mut nodes = Vec::with_capacity(usize::from(count));
    for (id, layout) in (1..=count).zip(&layouts) {
        let dir = root.join(format!("node{id}"));
        let data = layout.data.clone();
        std::fs::create_dir_all(&data).with_context(|| format!("create the data directory {}", data.display()))?;
        for writable in [&dir, &data] {
            // An unnamed temporary file: proves we can write there and
            // leaves nothing behind for the store to trip over.
            tempfile::tempfile_in(writable)
                .with_context(|| format!("the directory {} is not writable", writable.display()))?;
        }
        let mut node = Node {
            id: layout.id,
            grpc_listen: grpc(id),
            grpc_addr: layout.grpc.clone(),
            admin_listen: admin(id),
            properties: dir.join("node.properties"),
            dir,
            data,
            bootstrap: id == 1,
            reused: false,
            log_color_in_file: log_color_set,
        };
        if node.properties.exists() {
            node.reused = true;
            adopt_existing(&mut node)?;
        } else {
            write_properties(&node, layout, &peers, &args.set)?;
        }
        nodes.push(node);
    }
    Ok(nodes)
}

fn write_properties(node: &Node, layout: &launch::NodeLayout, peers: &str, settings: &[Setting]) -> Result<()> {
    let extra: Vec<(String, String)> = settings.iter().map(|s| (s.key.clone(), s.value.clone())).collect();
    let text = format!(
        "# Written by `keel dev` on its first start in this directory; it never overwrites it,\n\
         # so edit freely (then restart keel dev). The rest after the agreed keys: keel dev --set.\n{}",
        launch::properties(layout, peers, node.bootstrap, &extra)
    );
    write_new_durably(&node.properties, text.as_bytes())
}

/// Write `path`, which must not exist yet, so that a power cut leaves either
/// no file or the whole file: write a temp file beside it, fdatasync it,
/// rename it to its name, fsync the directory. A node whose file a power cut
/// emptied came back on the defaults, as another node or a new one (found by
/// power-loss testing). The rename would replace a file that appeared since
/// `prepare_nodes` looked; `dev.lock` keeps a second `keel dev` out of the
/// directory meanwhile, and a hard link (which never replaces) is refused by
/// some filesystems (FUSE ones among them).
fn write_new_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let shown = path.display();
    let dir = path.parent().context("a properties file has a directory")?;
    let tmp = path.with_extension("properties.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        OpenOptions::new().write(true).create_new(true).open(&tmp).with_context(|| format!("create {shown}"))?;
    file.write_all(bytes).with_context(|| format!("write {shown}"))?;
    file.sync_data().with_context(|| format!("fdatasync {shown}"))?;
    drop(file);
    if path.exists() {
        let _ = std::fs::remove_file(&tmp);
        bail!("{shown} appeared while keel dev was writing it; leaving it as it is");
    }
    std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {shown}", tmp.display()))?;
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync the directory {}", dir.display()))
}

/// Takes the addresses from a properties file written earlier: the file, not
/// today's flags, is what the node will use.
fn adopt_existing(node: &mut Node) -> Result<()> {
    let text =
        std::fs::read_to_string(&node.properties).with_context(|| format!("read {}", node.properties.display()))?;
    let file = node.properties.display();
    let properties: BTreeMap<String, String> =
        config::parse_properties(&text, &file.to_string())?.into_iter().map(|s| (s.key, s.value)).collect();
    // keel dev writes node.id first; a file without it is not one keel dev
    // wrote whole (written before files were synced, then a power cut).
    // Started on it, the node would come back on the defaults, as another
    // node: refuse, saying what to do.
    match properties.get("node.id") {
        Some(id) if id.parse::<u64>().is_ok_and(|id| id == node.id) => {}
        Some(id) => bail!(
            "{file} says node.id={id}, but it is node{}'s file: fix node.id, or remove {} to start that node              afresh",
            node.id,
            node.dir.display()
        ),
        None => bail!(
            "{file} names no node.id ({} bytes; emptied by a crash before keel dev synced its files?): restore              the file (node.id={}, its addresses and store.path.commitlog), or remove {} to start that node              afresh",
            text.len(),
            node.id,
            node.dir.display()
        ),
    }
    if let Some(value) = properties.get("grpc.listen") {
        node.grpc_listen = value.parse().with_context(|| format!("{file}: grpc.listen `{value}`"))?;
        node.grpc_addr = node.grpc_listen.to_string();
    }
    if let Some(value) = properties.get("grpc.advertised") {
        node.grpc_addr = value.clone();
    }
    if let Some(value) = properties.get("admin.listen") {
        node.admin_listen = value.parse().with_context(|| format!("{file}: admin.listen `{value}`"))?;
    }
    if let Some(value) = properties.get("store.path.commitlog") {
        node.data = node.dir.join(value);
    }
    if let Some(value) = properties.get("cluster.bootstrap") {
        node.bootstrap = value == "true";
    }
    node.log_color_in_file = properties.contains_key("log.color");
    Ok(())
}

/// The nodes write to our pipes, so on their own (`log.color=auto`) they
/// never colour; they should when our stderr, where their lines end up, is
/// a terminal, unless the user chose (`KEEL_LOG_COLOR`, or `log.color` in
/// the node's file).
fn colour_the_nodes(node: &Node) -> bool {
    std::env::var_os(config::env_var_name("log.color")).is_none()
        && !node.log_color_in_file
        && config::LogColor::Auto.enabled()
}

/// Binds every port once, so a taken port is reported by name before any
/// node starts. The listeners close before the nodes bind: a window in which
/// someone else may take a port, reported then as the node's exit.
fn check_ports(nodes: &[Node]) -> Result<()> {
    let mut problems = Vec::new();
    let mut listeners = Vec::new();
    for node in nodes {
        for (what, addr) in [("gRPC", node.grpc_listen), ("admin", node.admin_listen)] {
            match TcpListener::bind(addr) {
                Ok(listener) => listeners.push(listener),
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                    problems.push(format!("{addr} (node{} {what}) is already in use", node.id));
                }
                Err(error) => problems.push(format!("cannot listen on {addr} (node{} {what}): {error}", node.id)),
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "{}\nIs another keel dev or keel node running? Stop it, or choose other ports with --base-port \
             (with a fresh --dir: an existing one keeps the ports written in its files).",
            problems.join("\n")
        );
    }
    Ok(())
}

/// Starts one node and the task that watches it. The returned sender
/// delivers signals to the node for as long as it runs.
fn spawn_node(
    exe: &Path,
    node: &Node,
    output: &mpsc::Sender<Output>,
    exits: mpsc::Sender<(u64, io::Result<ExitStatus>)>,
) -> Result<mpsc::Sender<ProcessSignal>> {
    // Without the KEEL_* variables of the keys the file owns; the others
    // pass through on purpose (`KEEL_FLUSH_DISK_TYPE=BATCH_FLUSH keel dev`
    // sets every node).
    let mut command = launch::node_command(exe, &node.properties, None);
    launch::kill_with_parent(&mut command);
    let mut command = Command::from(command);
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    if colour_the_nodes(node) {
        command.env(config::env_var_name("log.color"), "always");
    }
    let mut child = command.spawn().with_context(|| format!("start node{} ({})", node.id, exe.display()))?;
    let forwarders: Vec<JoinHandle<()>> = [
        child.stdout.take().map(|out| forward_lines(node.id, out, output.clone())),
        child.stderr.take().map(|err| forward_lines(node.id, err, output.clone())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (signal_tx, signal_rx) = mpsc::channel(4);
    tokio::spawn(watch_node(node.id, child, signal_rx, forwarders, output.clone(), exits));
    Ok(signal_tx)
}

/// Owns one child: delivers signals to it, reaps it and reports its exit.
async fn watch_node(
    id: u64,
    mut child: Child,
    mut signals: mpsc::Receiver<ProcessSignal>,
    forwarders: Vec<JoinHandle<()>>,
    output: mpsc::Sender<Output>,
    exits: mpsc::Sender<(u64, io::Result<ExitStatus>)>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(signal) = signals.recv() => {
                // Only this task reaps the child, and it has not yet, so the
                // pid is still ours (at worst a zombie), never a reused one.
                if let Some(pid) = child.id() {
                    // Already gone (a race with its exit): nothing to signal.
                    let _ = launch::signal(pid, signal);
                }
            }
        }
    };
    // Bounded: whatever inherited the node's pipes may keep them open.
    let _ = timeout(OUTPUT_DRAIN, async {
        futures::future::join_all(forwarders).await;
        let (done, written) = oneshot::channel();
        if output.send(Output::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    })
    .await;
    drop(output);
    // The receiver is gone only when `run` has returned; nobody is left to tell.
    let _ = exits.send((id, status)).await;
}

/// Reads a node's stream line by line and queues each line, prefixed, for
/// the stderr writer.
fn forward_lines(
    id: u64,
    stream: impl AsyncRead + Unpin + Send + 'static,
    output: mpsc::Sender<Output>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = format!("node{id} | ").into_bytes();
            match (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    if output.send(Output::Line(line)).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// What the stderr writer is asked to do.
enum Output {
    /// One prefixed line of a node's output.
    Line(Vec<u8>),
    /// Answered once every line queued before it is written, so an exit
    /// report can follow the node's last words instead of overtaking them.
    Flush(oneshot::Sender<()>),
}

/// One thread owns stderr for the nodes' output: each line is one write, so
/// lines of different nodes never interleave, and a slow terminal blocks this
/// thread rather than the runtime's workers. It ends when the last sender is
/// gone.
fn start_output_writer() -> mpsc::Sender<Output> {
    let (tx, mut rx) = mpsc::channel::<Output>(OUTPUT_QUEUE_LINES);
    std::thread::Builder::new()
        .name("keel-dev-output".into())
        .spawn(move || {
            while let Some(output) = rx.blocking_recv() {
                match output {
                    // A closed stderr leaves nowhere to report the failure.
                    Output::Line(line) => drop(io::stderr().lock().write_all(&line)),
                    // The waiter may have given up; nothing to do then.
                    Output::Flush(done) => drop(done.send(())),
                }
            }
        })
        .expect("spawning a thread fails only when the system is out of threads");
    tx
}

fn print_banner(root: &Path, nodes: &[Node], args: &DevArgs) {
    println!("keel dev: {} node(s) in {}", nodes.len(), root.display());
    for node in nodes {
        println!(
            "  node{}  gRPC {}  admin http://{}  data {}{}",
            node.id,
            node.grpc_addr,
            node.admin_listen,
            node.data.display(),
            if node.bootstrap { "  (bootstrap)" } else { "" }
        );
    }
    let reused: Vec<String> = nodes.iter().filter(|n| n.reused).map(|n| format!("node{}", n.id)).collect();
    if !reused.is_empty() {
        println!("reusing the properties files of {} (written earlier; edit them to change a node)", reused.join(", "));
        if !args.set.is_empty() {
            println!("warning: --set applies only to files written now, not to those of {}", reused.join(", "));
        }
        if reused.len() < nodes.len() {
            println!(
                "warning: the other nodes are new and not members of the existing cluster; \
                 add them with `keel cluster`, or remove {} to start afresh",
                root.display()
            );
        }
    }
    let extra = root.join(format!("node{}", nodes.len() + 1)).join("node.properties");
    if extra.exists() {
        println!("warning: {} holds more nodes than --nodes {}; they are not started", root.display(), nodes.len());
    }
    let cluster: Vec<&str> = nodes.iter().map(|n| n.grpc_addr.as_str()).collect();
    let cluster = cluster.join(",");
    println!("node output follows on stderr, each line prefixed `node{{i}} | `");
    println!("try, in another terminal:");
    println!("  export KEEL_CLUSTER={cluster}");
    println!("  keel cluster status");
    println!("  keel topic create demo --partitions 3");
    println!("  echo hello | keel produce demo");
    println!("  keel consume demo");
    println!("Ctrl-C stops the cluster; `keel dev` again restarts it with its data.");
}

/// Prints `cluster ready: leader node{k}` once any node reports a leader,
/// or a warning after `LEADER_WAIT`. The nodes keep running either way.
async fn announce_leader(nodes: Vec<(u64, String)>) {
    let deadline = Instant::now() + LEADER_WAIT;
    let mut tick = tokio::time::interval(LEADER_POLL_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The leader's own word: right after a restart followers still name
        // the leader their saved vote names, before any election.
        for (id, addr) in &nodes {
            if let Some(info) = cluster_info(addr).await
                && info.leader_id == *id
            {
                println!("cluster ready: leader node{} ({}), as node{id} reports", info.leader_id, info.leader_addr);
                return;
            }
        }
        if Instant::now() >= deadline {
            println!(
                "warning: no node reports a leader after {} s; the nodes keep running (see their output)",
                LEADER_WAIT.as_secs()
            );
            return;
        }
    }
}

/// One `ClusterInfo` call on a fresh connection; `None` when the node does
/// not answer (not up yet, gone, or paused).
async fn cluster_info(addr: &str) -> Option<ClusterInfoResponse> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(CLUSTER_INFO_TIMEOUT)
        .timeout(CLUSTER_INFO_TIMEOUT);
    let call = async {
        let channel = endpoint.connect().await.ok()?;
        KeelClient::new(channel).cluster_info(ClusterInfoRequest {}).await.ok()
    };
    timeout(CLUSTER_INFO_TIMEOUT * 2, call).await.ok().flatten().map(tonic::Response::into_inner)
}

/// SIGTERM to every running node, SIGKILL to those left after `STOP_GRACE`
/// (or at once on another Ctrl-C), one line per node on how it ended. Fails
/// when a node had to be killed or did not end.
async fn stop_all(
    running: &mut BTreeMap<u64, mpsc::Sender<ProcessSignal>>,
    exits: &mut mpsc::Receiver<(u64, io::Result<ExitStatus>)>,
    interrupt: &mut Signal,
) -> Result<()> {
    signal_all(running, ProcessSignal::TERM).await;
    let grace_end = Instant::now() + STOP_GRACE;
    while !running.is_empty() {
        tokio::select! {
            exit = exits.recv() => {
                let Some((id, status)) = exit else { break };
                running.remove(&id);
                println!("node{id} stopped: {}", describe(&status));
            }
            _ = sleep_until(grace_end) => break,
            _ = interrupt.recv() => {
                println!("interrupted again: killing the remaining nodes now");
                break;
            }
        }
    }
    if running.is_empty() {
        return Ok(());
    }
    let killed: Vec<String> = running.keys().map(|id| format!("node{id}")).collect();
    println!("sending SIGKILL to {}", killed.join(", "));
    signal_all(running, ProcessSignal::KILL).await;
    let kill_end = Instant::now() + KILL_WAIT;
    while !running.is_empty() {
        tokio::select! {
            exit = exits.recv() => {
                let Some((id, status)) = exit else { break };
                running.remove(&id);
                println!("node{id} killed: {}", describe(&status));
            }
            _ = sleep_until(kill_end) => break,
        }
    }
    for id in running.keys() {
        println!(
            "node{id} has not exited {} s after SIGKILL (stuck in the kernel?); giving up on it",
            KILL_WAIT.as_secs()
        );
    }
    bail!("{} did not stop within {} s of SIGTERM", killed.join(", "), STOP_GRACE.as_secs())
}

async fn signal_all(running: &BTreeMap<u64, mpsc::Sender<ProcessSignal>>, signal: ProcessSignal) {
    for signals in running.values() {
        // An error means the node's task has ended: its exit is on the way.
        let _ = signals.send(signal).await;
    }
}

/// `status 1`, `signal 9 (SIGKILL)`.
fn describe(status: &io::Result<ExitStatus>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(error) => return format!("cannot be waited for: {error}"),
    };
    if let Some(code) = status.code() {
        return format!("status {code}");
    }
    let Some(signal) = status.signal() else { return status.to_string() };
    let name = match signal {
        libc::SIGINT => " (SIGINT)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    };
    let core = if status.core_dumped() { ", core dumped" } else { "" };
    format!("signal {signal}{name}{core}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        dev: DevArgs,
    }

    fn parse(args: &[&str]) -> Result<DevArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("dev").chain(args.iter().copied())).map(|cli| cli.dev)
    }

    #[test]
    fn flags_have_the_documented_defaults_and_bounds() {
        // Defaults: three nodes on 9091.. in ./keel-data.
        let args = parse(&[]).expect("no flags is valid");
        assert_eq!(args.nodes, 3);
        assert_eq!(args.base_port, 9091);
        assert_eq!(args.dir, PathBuf::from("./keel-data"));

        // --set is repeatable and keeps its order.
        let args = parse(&["--set", "flush.disk.type=BATCH_FLUSH", "--set", "segment.bytes = 1048576"]).expect("valid");
        let set: Vec<(&str, &str)> = args.set.iter().map(|s| (s.key.as_str(), s.value.as_str())).collect();
        assert_eq!(set, [("flush.disk.type", "BATCH_FLUSH"), ("segment.bytes", "1048576")]);

        // Out of range or malformed values are refused by the parser.
        assert!(parse(&["--nodes", "0"]).is_err());
        assert!(parse(&["--nodes", "10"]).is_err());
        assert!(parse(&["--base-port", "0"]).is_err());
        assert!(parse(&["--set", "novalue"]).is_err());
        assert!(parse(&["--set", "=x"]).is_err());
        // Keys keel dev owns cannot be overridden; a misspelt key is named
        // before any node starts on it.
        for key in ["grpc.listen", "store.path.commitlog", "peers"] {
            let err = parse(&["--set", &format!("{key}=x")]).expect_err("a managed key accepted").to_string();
            assert!(err.contains("written by keel dev itself"), "{err}");
        }
        let err = parse(&["--set", "flush.disk.typ=SYNC_FLUSH"]).expect_err("unknown key accepted").to_string();
        assert!(err.contains("`flush.disk.typ` is not a configuration key"), "{err}");
    }

    #[test]
    fn first_start_writes_the_files_and_a_restart_reuses_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = parse(&[
            "--dir",
            dir.path().to_str().expect("utf-8"),
            "--base-port",
            "20000",
            "--set",
            "flush.batch.size=7",
        ])
        .expect("valid");
        let root = prepare_root(&args.dir).expect("root");

        // Phase 1: fresh directory, files written with our addresses.
        let nodes = prepare_nodes(&root, &args).expect("prepare");
        assert_eq!(nodes.len(), 3);
        let two = std::fs::read_to_string(&nodes[1].properties).expect("node2 file");
        let two: BTreeMap<String, String> = config::parse_properties(&two, "node2.properties")
            .expect("keel dev's file parses")
            .into_iter()
            .map(|s| (s.key, s.value))
            .collect();
        assert_eq!(two["node.id"], "2");
        assert_eq!(two["grpc.listen"], "127.0.0.1:20001");
        assert_eq!(two["admin.listen"], "127.0.0.1:20101");
        assert_eq!(two["peers"], "1@127.0.0.1:20000,2@127.0.0.1:20001,3@127.0.0.1:20002");
        assert_eq!(two["cluster.bootstrap"], "false");
        assert_eq!(two["flush.batch.size"], "7");
        assert_eq!(Path::new(&two["store.path.commitlog"]), root.join("node2/data"));
        assert!(nodes[0].bootstrap && !nodes[0].reused);

        // Phase 2: an edited file survives a restart with other flags, and its addresses win.
        let edited = std::fs::read_to_string(&nodes[2].properties).expect("node3 file").replace("20002", "20050");
        std::fs::write(&nodes[2].properties, &edited).expect("edit");
        let args = parse(&["--dir", dir.path().to_str().expect("utf-8"), "--base-port", "30000"]).expect("valid");
        let nodes = prepare_nodes(&root, &args).expect("prepare again");
        assert!(nodes.iter().all(|n| n.reused));
        assert_eq!(std::fs::read_to_string(&nodes[2].properties).expect("node3 file"), edited);
        assert_eq!(nodes[2].grpc_listen.port(), 20050);
        assert_eq!(nodes[0].grpc_listen.port(), 20000);
    }

    /// Issue 16, item 2: after a power cut the files were empty, and the
    /// nodes came back on the defaults (admin port 9191, a fresh
    /// `keel-data` in their folder). Files are now written durably, and one
    /// without its node.id is refused by name instead of run.
    #[test]
    fn a_properties_file_a_crash_emptied_is_refused_not_run_on_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = parse(&["--dir", dir.path().to_str().expect("utf-8"), "--base-port", "20200"]).expect("valid");
        let root = prepare_root(&args.dir).expect("root");
        let nodes = prepare_nodes(&root, &args).expect("prepare");
        let leftovers: Vec<_> = std::fs::read_dir(root.join("node2"))
            .expect("node2 dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");
        // Phase: the file is empty (what the power cut left): refused, named.
        std::fs::write(&nodes[1].properties, "").expect("empty node2's file");
        let Err(err) = prepare_nodes(&root, &args) else { panic!("an empty file was accepted") };
        let err = err.to_string();
        assert!(err.contains("node2") && err.contains("names no node.id"), "{err}");
        // Phase: another node's file in node2's place: refused too.
        std::fs::copy(&nodes[2].properties, &nodes[1].properties).expect("copy node3's file");
        let Err(err) = prepare_nodes(&root, &args) else { panic!("node3's file accepted for node2") };
        let err = err.to_string();
        assert!(err.contains("node.id=3"), "{err}");
    }

    #[test]
    fn a_taken_port_is_refused_by_name() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let node = Node {
            id: 2,
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], port)),
            grpc_addr: String::new(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir: PathBuf::new(),
            properties: PathBuf::new(),
            data: PathBuf::new(),
            bootstrap: false,
            reused: false,
            log_color_in_file: false,
        };
        let error = check_ports(&[node]).expect_err("the port is taken").to_string();
        assert!(error.contains(&format!("127.0.0.1:{port} (node2 gRPC) is already in use")), "{error}");
    }

    #[test]
    fn a_second_dev_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _first = lock_root(dir.path()).expect("first lock");
        let error = lock_root(dir.path()).expect_err("second lock").to_string();
        assert!(error.contains("another keel dev is running"), "{error}");
    }
}
