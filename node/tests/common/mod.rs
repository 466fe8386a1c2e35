//! A real cluster for integration tests: `N` `keel node` processes on
//! localhost, each started as `keel node --config <root>/node{i}/node.properties`
//! from the binary cargo built for this test run, laid out and started by
//! `keel_node::launch` (the launcher of `keel dev` and keel-chaos too).
//!
//! **Node ids are 1-based everywhere in this API**: node 1 is the first node
//! (the one with `cluster.bootstrap=true`), `addrs()[0]` is its address, and
//! every method taking `i` takes a node id, the same number the nodes use as
//! their Raft id.
//!
//! ```text
//! <root>/node{i}/node.properties   written once by `start`
//! <root>/node{i}/data              store.path.commitlog (`dir(i)`)
//! <root>/node{i}.log               the node's stdout and stderr, appended across restarts
//! ```
//!
//! When `extra` sets `tls.ca` (with `tls.cert` and `tls.key`), the
//! harness's own calls (`cluster_info`, `client`, the start-up wait) use TLS
//! and trust that CA.
//!
//! The nodes get none of the test run's `KEEL_*` variables (which `keel node`
//! would let override its file): the properties file is the whole
//! configuration. `root` is a `TempDir`, removed when the `Cluster` drops unless
//! `KEEL_TEST_KEEP=1` is set. Ports are picked free by binding port 0 and
//! closing the socket just before the node binds it (a small window in which
//! another process could take it; tests then fail with the port in the
//! node's log).
//!
//! When a test fails (the `Cluster` drops while panicking) it prints the last
//! 60 lines of each node's log. Drop always SIGKILLs every node and waits a
//! bounded time for them, so it never hangs and never leaks a process, a
//! paused one included.
//!
//! Nodes are plain `std::process::Child`ren, so `kill`, `stop`, `pause` and
//! `resume` need no runtime and work from `Drop`. `stop` blocks its thread
//! for up to 10 s: a test that keeps other tasks running meanwhile (a
//! producer, say) should use `#[tokio::test(flavor = "multi_thread")]`.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keel_node::launch;
use keel_proto::client::keel_client::KeelClient;
use keel_proto::client::{ClusterInfoRequest, ClusterInfoResponse};
use rustix::process::Signal;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

pub mod http;
pub mod webdriver;

/// How long `start` and `restart` wait for a node to answer `ClusterInfo`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What `leader()` waits for an agreed leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` gives a node after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGKILL a process ends at once unless stuck in the kernel (a hung
/// fsync); past this `Drop` stops waiting rather than hang the test run.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds one `ClusterInfo` call, connect included, so a paused node cannot
/// stall a poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 60;
/// Enough of a log's end for 60 lines; reading all of a chatty log would be
/// slow for nothing.
const LOG_TAIL_BYTES: u64 = 256 * 1024;

/// A running cluster of `keel node` processes; see the module doc.
pub struct Cluster {
    /// `None` only after `Drop` decided to keep it (`KEEL_TEST_KEEP`).
    root: Option<TempDir>,
    nodes: Vec<Node>,
    /// tmpfs volumes mounted for the nodes' data, unmounted by `Drop`.
    mounts: Vec<PathBuf>,
    /// The nodes' `tls.ca` (PEM) when `extra` set one: the harness's own
    /// calls then use TLS and trust it.
    tls_ca: Option<Vec<u8>>,
}

/// Environment variables for node `i`'s process, given `i` and the node's
/// directory.
pub type EnvFn<'a> = &'a dyn Fn(u64, &Path) -> Vec<(String, String)>;

/// How `Cluster::start_with` prepares each node beyond its properties.
#[derive(Default)]
pub struct Setup<'a> {
    /// Put each node's data directory on a tmpfs of its own of this many
    /// bytes, so one node's disk can be filled. Needs root: without it the
    /// test fails saying so (it never skips).
    pub tmpfs_bytes: Option<u64>,
    /// Environment variables for node `i`'s process, given `i` and the
    /// node's directory (`<root>/node{i}`); kept across restarts until
    /// `clear_env`.
    pub env: Option<EnvFn<'a>>,
}

struct Node {
    id: u64,
    grpc: SocketAddr,
    admin: SocketAddr,
    properties: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Set in every start of the process (after the `KEEL_*` ones are removed).
    env: Mutex<Vec<(String, String)>>,
    /// Behind a mutex so that every method takes `&self`: a test can share
    /// the cluster (in an `Arc`) with tasks that run while it kills nodes.
    process: Mutex<Process>,
}

#[derive(Default)]
struct Process {
    /// `None` before the first start and after the exit was reaped.
    child: Option<Child>,
    /// SIGSTOPped by `pause` and not yet resumed.
    paused: bool,
    /// How many times this node was started, for the log's markers.
    starts: u32,
}

impl Cluster {
    /// Starts `nodes` nodes, node 1 bootstrapping the membership from
    /// `peers`, with `extra` properties written into every node's file
    /// (after the harness's own keys, replacing any of the same name). Waits
    /// until every node answers `ClusterInfo`; not for a leader (see
    /// `wait_for_leader`).
    pub async fn start(nodes: usize, extra: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(nodes, extra, Setup::default()).await
    }

    /// `start`, with each node prepared as `setup` says.
    pub async fn start_with(nodes: usize, extra: &[(&str, &str)], setup: Setup<'_>) -> Cluster {
        assert!(nodes >= 1, "a cluster needs at least one node");
        if setup.tmpfs_bytes.is_some() {
            require_root("mount a tmpfs for each node's data");
        }
        let root = tempfile::Builder::new().prefix("keel-test-").tempdir().expect("create the cluster's temp dir");
        let ports = launch::free_ports(2 * nodes).expect("free loopback ports");
        let (grpc_ports, admin_ports) = ports.split_at(nodes);
        let grpc = |index: usize| SocketAddr::from(([127, 0, 0, 1], grpc_ports[index]));
        let admin = |index: usize| SocketAddr::from(([127, 0, 0, 1], admin_ports[index]));
        let layouts: Vec<launch::NodeLayout> = (0..nodes)
            .map(|index| launch::NodeLayout {
                id: index as u64 + 1,
                grpc: grpc(index).to_string(),
                admin: admin(index).to_string(),
                data: root.path().join(format!("node{}", index + 1)).join("data"),
            })
            .collect();
        let peers = launch::peers(&layouts);
        let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();

        let tls_ca = extra
            .iter()
            .find(|(k, _)| *k == "tls.ca")
            .map(|(_, path)| std::fs::read(path).unwrap_or_else(|e| panic!("read the cluster's tls.ca {path}: {e}")));
        let mut cluster = Cluster { root: None, nodes: Vec::with_capacity(nodes), mounts: Vec::new(), tls_ca };
        for (index, layout) in layouts.iter().enumerate() {
            let id = layout.id;
            let dir = root.path().join(format!("node{id}"));
            let data = layout.data.clone();
            std::fs::create_dir_all(&data).expect("create a node's data dir");
            if let Some(bytes) = setup.tmpfs_bytes {
                launch::mount_tmpfs(&data, bytes).unwrap_or_else(|e| panic!("{e:#}"));
                cluster.mounts.push(data.clone());
            }
            let env = setup.env.map(|f| f(id, &dir)).unwrap_or_default();
            let node = Node {
                id,
                grpc: grpc(index),
                admin: admin(index),
                properties: dir.join("node.properties"),
                data,
                log: root.path().join(format!("node{id}.log")),
                env: Mutex::new(env),
                process: Mutex::new(Process::default()),
            };
            let text = launch::properties(layout, &peers, id == 1, &extra);
            std::fs::write(&node.properties, text).expect("write a node's properties file");
            cluster.nodes.push(node);
        }
        cluster.root = Some(root);

        // All spawned before any wait: node 1 may need a quorum to come up.
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        for id in cluster.ids() {
            cluster.wait_until_answering(id, START_TIMEOUT).await;
        }
        cluster
    }

    /// Node ids, `1..=N`.
    pub fn ids(&self) -> std::ops::RangeInclusive<u64> {
        1..=self.nodes.len() as u64
    }

    /// The cluster's directory.
    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("the root is kept until drop").path()
    }

    /// Every node's gRPC `host:port`; index 0 is node 1.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.grpc.to_string()).collect()
    }

    /// Node `i`'s gRPC `host:port`.
    pub fn grpc(&self, i: u64) -> String {
        self.node(i).grpc.to_string()
    }

    /// Node `i`'s admin HTTP `host:port` (prefix `http://` to use it).
    pub fn admin(&self, i: u64) -> String {
        self.node(i).admin.to_string()
    }

    /// Node `i`'s data directory (`store.path.commitlog`).
    pub fn dir(&self, i: u64) -> PathBuf {
        self.node(i).data.clone()
    }

    /// Node `i`'s properties file; edit it between `kill`/`stop` and `restart`.
    pub fn properties(&self, i: u64) -> PathBuf {
        self.node(i).properties.clone()
    }

    /// First log indexes of node `i`'s segment files (`{first:020}.log`),
    /// ascending. Files that vanish while listed (retention deleting) are
    /// skipped.
    pub fn segments(&self, i: u64) -> Vec<u64> {
        let dir = self.dir(i);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        let mut firsts: Vec<u64> = entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".log")?;
                if stem.len() == 20 { stem.parse().ok() } else { None }
            })
            .collect();
        firsts.sort_unstable();
        firsts
    }

    /// Node `i`'s log (stdout and stderr of every run).
    pub fn log(&self, i: u64) -> PathBuf {
        self.node(i).log.clone()
    }

    /// Node `i`'s directory (`<root>/node{i}`: its properties, its data dir).
    pub fn node_dir(&self, i: u64) -> PathBuf {
        self.node(i).properties.parent().expect("the properties file is in the node's dir").to_path_buf()
    }

    /// Starts of node `i` after this one get no extra environment.
    pub fn clear_env(&self, i: u64) {
        self.node(i).env.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Waits until node `i` exits by itself and returns how it ended;
    /// panics after `timeout`.
    pub async fn wait_for_exit(&self, i: u64, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status(i) {
                return status;
            }
            assert!(Instant::now() < deadline, "node{i} did not exit within {timeout:?}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether node `i`'s process is alive (paused counts as alive).
    pub fn is_running(&self, i: u64) -> bool {
        let mut process = self.process(i);
        let running = match process.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        };
        if !running {
            process.child = None;
            process.paused = false;
        }
        running
    }

    /// Whether node `i` is running and not paused: one that can answer.
    pub fn is_live(&self, i: u64) -> bool {
        self.is_running(i) && !self.process(i).paused
    }

    /// SIGKILL node `i` and wait for it to be gone.
    pub fn kill(&self, i: u64) {
        let mut process = self.process(i);
        let child = process.child.as_mut().unwrap_or_else(|| panic!("kill: node{i} is not running"));
        child.kill().unwrap_or_else(|e| panic!("kill node{i}: {e}"));
        let status = wait_timeout(child, KILL_TIMEOUT)
            .unwrap_or_else(|| panic!("node{i} has not exited {KILL_TIMEOUT:?} after SIGKILL"));
        process.child = None;
        process.paused = false;
        assert!(
            status.signal() == Some(libc::SIGKILL) || status.code().is_some(),
            "node{i} ended in an unexpected way after SIGKILL: {status}"
        );
    }

    /// SIGTERM node `i`, wait up to 10 s for it to exit, and assert that it
    /// exited cleanly (status 0). A paused node is resumed so it can act on
    /// the signal. Blocks the calling thread meanwhile.
    pub fn stop(&self, i: u64) {
        let mut process = self.process(i);
        let paused = process.paused;
        let child = process.child.as_mut().unwrap_or_else(|| panic!("stop: node{i} is not running"));
        signal(child, Signal::TERM);
        if paused {
            signal(child, Signal::CONT);
        }
        let status = wait_timeout(child, STOP_TIMEOUT);
        let Some(status) = status else {
            // Leave nothing running behind the failure.
            let _ = child.kill();
            let _ = wait_timeout(child, KILL_TIMEOUT);
            process.child = None;
            drop(process);
            panic!("node{i} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it");
        };
        process.child = None;
        process.paused = false;
        drop(process);
        assert!(status.success(), "node{i} exited with {status} after SIGTERM, not 0");
    }

    /// Starts node `i` again with the same properties file, data and log,
    /// and waits until it answers `ClusterInfo`. Kill or stop it first.
    pub async fn restart(&self, i: u64) {
        assert!(!self.is_running(i), "restart: node{i} is still running; kill or stop it first");
        self.spawn(i);
        self.wait_until_answering(i, START_TIMEOUT).await;
    }

    /// Starts node `i` again like `restart`, without waiting for it to
    /// answer (a node that waits for something before it serves).
    pub fn restart_in_background(&self, i: u64) {
        assert!(!self.is_running(i), "restart: node{i} is still running; kill or stop it first");
        self.spawn(i);
    }

    /// SIGSTOP node `i`: it stays alive but answers nothing (a hung node,
    /// seen by its peers only through timeouts).
    pub fn pause(&self, i: u64) {
        let mut process = self.process(i);
        assert!(!process.paused, "pause: node{i} is paused already");
        let child = process.child.as_mut().unwrap_or_else(|| panic!("pause: node{i} is not running"));
        signal(child, Signal::STOP);
        // SIGSTOP lands asynchronously; wait until the kernel says stopped,
        // so what the test does next meets a paused node.
        let pid = child.id();
        let deadline = Instant::now() + KILL_TIMEOUT;
        while !is_stopped(pid) {
            assert!(Instant::now() < deadline, "node{i} did not stop within {KILL_TIMEOUT:?} of SIGSTOP");
            std::thread::sleep(Duration::from_millis(5));
        }
        process.paused = true;
    }

    /// SIGCONT node `i` after `pause`.
    pub fn resume(&self, i: u64) {
        let mut process = self.process(i);
        assert!(process.paused, "resume: node{i} is not paused");
        let child = process.child.as_mut().unwrap_or_else(|| panic!("resume: node{i} is not running"));
        signal(child, Signal::CONT);
        process.paused = false;
    }

    /// A raw tonic client to node `i` (connected; panics if it cannot be).
    pub async fn client(&self, i: u64) -> KeelClient<Channel> {
        let addr = self.grpc(i);
        let channel = endpoint(&addr, Duration::from_secs(5), self.tls_ca.as_deref())
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to node{i} at {addr}: {e}"));
        KeelClient::new(channel)
    }

    /// One `ClusterInfo` call to node `i` on a fresh connection, bounded by
    /// a 1 s timeout.
    pub async fn cluster_info(&self, i: u64) -> Result<ClusterInfoResponse, String> {
        let addr = self.grpc(i);
        let call = async {
            let channel = endpoint(&addr, CALL_TIMEOUT, self.tls_ca.as_deref())
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let response = KeelClient::new(channel)
                .cluster_info(ClusterInfoRequest {})
                .await
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
            Ok(response.into_inner())
        };
        tokio::time::timeout(CALL_TIMEOUT * 2, call).await.unwrap_or_else(|_| Err("timed out".to_owned()))
    }

    /// Polls `ClusterInfo` on every live node (running, not paused) until
    /// all of them answer and agree on one leader that is itself live, and
    /// returns its id. Panics after `timeout` with what each node said (and,
    /// through `Drop`, the logs' tails).
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let live: Vec<u64> = self.ids().filter(|&id| self.is_live(id)).collect();
            let mut answers = Vec::with_capacity(live.len());
            for &id in &live {
                answers.push((id, self.cluster_info(id).await));
            }
            if let Some(leader) = agreed_leader(&live, &answers) {
                return leader;
            }
            if Instant::now() >= deadline {
                let mut report = String::new();
                for id in self.ids() {
                    let said = match answers.iter().find(|(answered, _)| *answered == id) {
                        Some((_, Ok(info))) => format!(
                            "leader {} term {} members {:?} commit {} applied {}",
                            info.leader_id,
                            info.term,
                            info.members.iter().map(|m| m.id).collect::<Vec<_>>(),
                            info.commit_index,
                            info.applied_index
                        ),
                        Some((_, Err(error))) => format!("no answer: {error}"),
                        None if self.is_running(id) => "paused".to_owned(),
                        None => "not running".to_owned(),
                    };
                    let _ = writeln!(report, "  node{id}: {said}");
                }
                panic!("no agreed leader among live nodes {live:?} after {timeout:?}; last answers:\n{report}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The agreed leader, waiting up to 30 s for one (`wait_for_leader`).
    pub async fn leader(&self) -> u64 {
        self.wait_for_leader(LEADER_TIMEOUT).await
    }

    /// The last 60 lines of node `i`'s log.
    pub fn log_tail(&self, i: u64) -> String {
        log_tail(&self.node(i).log)
    }

    fn node(&self, i: u64) -> &Node {
        let count = self.nodes.len();
        assert!(i >= 1 && i <= count as u64, "there is no node{i}: node ids are 1..={count}");
        &self.nodes[(i - 1) as usize]
    }

    fn process(&self, i: u64) -> MutexGuard<'_, Process> {
        // A panic while holding the lock (a failed assert) leaves the state
        // consistent enough for Drop to kill the node; do not poison Drop.
        self.node(i).process.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spawn(&self, i: u64) {
        let node = self.node(i);
        let mut process = self.process(i);
        assert!(process.child.is_none(), "node{i} is already running");
        process.starts += 1;
        let mut log = OpenOptions::new().create(true).append(true).open(&node.log).expect("open a node's log");
        let _ = writeln!(log, "==== harness: start #{} of node{i} ====", process.starts);
        let stderr = log.try_clone().expect("clone a log file handle");
        let mut command = launch::node_command(Path::new(env!("CARGO_BIN_EXE_keel")), &node.properties, None);
        // `keel node` lets KEEL_* variables override its file; a test's
        // cluster is what the test wrote, whatever the caller's environment
        // (the launcher removed only those of the keys it writes).
        for (variable, _) in std::env::vars_os() {
            if variable.to_string_lossy().starts_with("KEEL_") {
                command.env_remove(variable);
            }
        }
        for (variable, value) in node.env.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            command.env(variable, value);
        }
        // Unless the test run says otherwise: backtraces for panics, but not
        // for returned errors (anyhow reads RUST_LIB_BACKTRACE first), whose
        // backtrace would push the message itself out of the log's tail.
        // NO_COLOR keeps ANSI escapes out of the log files.
        for (variable, value) in [("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "0"), ("NO_COLOR", "1")] {
            if std::env::var_os(variable).is_none() {
                command.env(variable, value);
            }
        }
        let child = command.stdout(log).stderr(stderr).spawn().unwrap_or_else(|e| panic!("start node{i}: {e}"));
        process.child = Some(child);
        process.paused = false;
    }

    pub async fn wait_until_answering(&self, i: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.cluster_info(i).await {
                Ok(_) => return,
                Err(error) => error,
            };
            if let Some(status) = self.exit_status(i) {
                panic!("node{i} exited while starting: {status} (its log is below)");
            }
            assert!(Instant::now() < deadline, "node{i} did not answer ClusterInfo within {timeout:?}: {last}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `Some` once node `i` has exited (reaping it).
    fn exit_status(&self, i: u64) -> Option<ExitStatus> {
        let mut process = self.process(i);
        let status = process.child.as_mut()?.try_wait().ok()??;
        process.child = None;
        process.paused = false;
        Some(status)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill first, so the logs are complete when printed and nothing
        // outlives the test, whatever happens below.
        let deadline = Instant::now() + KILL_TIMEOUT;
        for node in &self.nodes {
            let mut process = node.process.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(child) = process.child.as_mut() {
                let _ = child.kill();
            }
        }
        for node in &self.nodes {
            let mut process = node.process.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(mut child) = process.child.take() {
                let left = deadline.saturating_duration_since(Instant::now());
                if wait_timeout(&mut child, left).is_none() {
                    eprintln!("harness: node{} (pid {}) has not exited after SIGKILL; leaving it", node.id, child.id());
                }
            }
        }
        // Now that nothing has files open on them; lazily if still busy.
        for mount in self.mounts.drain(..) {
            if !Command::new("umount").arg(&mount).status().is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&mount).status();
            }
        }
        let failed = std::thread::panicking();
        if failed {
            for node in &self.nodes {
                eprintln!("---- node{} log, last {LOG_TAIL_LINES} lines ({}) ----", node.id, node.log.display());
                eprint!("{}", log_tail(&node.log));
            }
            eprintln!("---- end of node logs ----");
        }
        if std::env::var_os("KEEL_TEST_KEEP").is_some_and(|v| v != "0") {
            if let Some(root) = self.root.take() {
                eprintln!("harness: kept the cluster's files in {}", root.keep().display());
            }
        } else if failed && let Some(root) = &self.root {
            eprintln!("harness: set KEEL_TEST_KEEP=1 to keep the cluster's files ({})", root.path().display());
        }
    }
}

/// `count` distinct free ports: all listeners are held until every port is
/// picked, so the kernel cannot hand out one twice.
/// A channel's endpoint: plaintext, or TLS trusting `tls_ca`.
fn endpoint(addr: &str, timeout: Duration, tls_ca: Option<&[u8]>) -> Endpoint {
    let scheme = if tls_ca.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).expect("host:port makes a valid URI");
    if let Some(ca) = tls_ca {
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(tls).expect("a CA-only TLS configuration is valid");
    }
    endpoint.connect_timeout(timeout).timeout(timeout)
}

/// The leader every live node names, if they all answered, agree, and the
/// leader is one of them.
fn agreed_leader(live: &[u64], answers: &[(u64, Result<ClusterInfoResponse, String>)]) -> Option<u64> {
    let mut leader = None;
    for (_, answer) in answers {
        let named = answer.as_ref().ok()?.leader_id;
        if named == 0 || leader.is_some_and(|l| l != named) {
            return None;
        }
        leader = Some(named);
    }
    leader.filter(|l| live.contains(l))
}

fn signal(child: &Child, signal: Signal) {
    // The child is not reaped yet (its `Child` is still ours), so the pid
    // cannot belong to another process.
    if let Err(e) = launch::signal(child.id(), signal) {
        panic!("signal {signal:?} to pid {}: {e}", child.id());
    }
}

/// Polls for an exit up to `timeout`; `None` if the child is still running.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => return None,
            Err(error) => panic!("wait for pid {}: {error}", child.id()),
        }
    }
}

/// Whether the process is in the stopped state (`T` in /proc/pid/stat).
fn is_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) == Some('T')
}

fn log_tail(path: &Path) -> String {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) => return format!("(cannot open {}: {error})\n", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    tail.push('\n');
    tail
}

/// Polls `check` every `POLL_INTERVAL` until it holds; panics naming
/// `what` after `timeout`. The one such helper of the integration tests.
pub async fn eventually(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Panics, naming `what`, unless the test runs as root: tests that need it
/// fail rather than skip.
pub fn require_root(what: &str) {
    let euid = rustix::process::geteuid().as_raw();
    assert_eq!(euid, 0, "this test must run as root to {what} (CI runs as root); it runs as uid {euid}");
}

/// Free bytes of the volume holding `dir`, as `statvfs` shows them to
/// non-root users (what the node's reserve check reads).
pub fn free_bytes(dir: &Path) -> u64 {
    keel_node::server::disk::disk_usage(dir).unwrap_or_else(|e| panic!("statvfs {}: {e}", dir.display())).free_bytes
}

/// Takes `bytes` of `dir`'s volume with a ballast file (fallocate, so the
/// blocks are really allocated); returns its path. Delete it to free them.
pub fn ballast(dir: &Path, bytes: u64) -> PathBuf {
    let path = dir.join("ballast");
    let file =
        OpenOptions::new().create(true).write(true).truncate(false).open(&path).expect("create the ballast file");
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes)
        .unwrap_or_else(|e| panic!("fallocate {bytes} bytes of ballast in {}: {e}", dir.display()));
    path
}
