//! Child processes of one cluster: each in a process group of its own,
//! recorded in `<scratch>/pids` before it runs (so `bench/compare` can stop
//! it by id even if keel-bench is killed), with output in a log file.
//!
//! A child also gets `PR_SET_PDEATHSIG = SIGKILL`: should keel-bench die
//! without running its cleanup, the kernel ends the child with it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a cluster's processes get after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const STOP_POLL: Duration = Duration::from_millis(100);

struct Proc {
    name: String,
    log: PathBuf,
    child: Child,
    pgid: i32,
}

/// The processes of one cluster.
pub struct Procs {
    pids_file: PathBuf,
    list: Vec<Proc>,
}

impl Procs {
    pub fn new(scratch: &Path) -> Self {
        Self { pids_file: scratch.join("pids"), list: Vec::new() }
    }

    /// Starts `command` as `name`, stdout and stderr appended to `log`.
    /// Must run on a runtime worker thread (not `spawn_blocking`): the
    /// parent-death signal fires when the spawning *thread* exits.
    pub fn spawn(&mut self, name: &str, mut command: Command, log: &Path) -> Result<()> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open the log {} of {name}", log.display()))?;
        let err = out.try_clone().with_context(|| format!("duplicate the log handle of {name}"))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).kill_on_drop(true);
        // SAFETY: runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed; prctl is one and touches no
        // memory of ours.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| format!("start {name}"))?;
        let pid = child.id().context("a child that was just spawned has a pid")?;
        let pgid = i32::try_from(pid).context("pid fits in pid_t")?;
        let mut pids = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pids_file)
            .with_context(|| format!("open {}", self.pids_file.display()))?;
        writeln!(pids, "{pgid} {name}").with_context(|| format!("write {}", self.pids_file.display()))?;
        self.list.push(Proc { name: name.to_string(), log: log.to_path_buf(), child, pgid });
        Ok(())
    }

    /// Fails, naming the process and its log, if any of them has exited.
    pub fn check_running(&mut self) -> Result<()> {
        for p in &mut self.list {
            if let Some(status) = p.child.try_wait().with_context(|| format!("poll {}", p.name))? {
                bail!("{} exited ({status}); its log: {}\n{}", p.name, p.log.display(), tail(&p.log));
            }
        }
        Ok(())
    }

    /// SIGTERM to every process group, SIGKILL to those still there after
    /// [`STOP_GRACE`]; returns once every child is reaped.
    pub async fn stop_all(&mut self) {
        for p in &self.list {
            signal_group(p.pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in &mut self.list {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!("  {} did not stop within {} s: SIGKILL", p.name, STOP_GRACE.as_secs());
                        signal_group(p.pgid, libc::SIGKILL);
                        let _ = p.child.wait().await;
                        break;
                    }
                    Ok(None) => tokio::time::sleep(STOP_POLL).await,
                }
            }
            // Helpers the main process left in its group (Erlang's
            // erl_child_setup, for one) go too.
            signal_group(p.pgid, libc::SIGKILL);
        }
        self.list.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // A cluster dropped without stop_all (an error or a panic on the way
        // out): no grace, but nothing left behind.
        for p in &self.list {
            signal_group(p.pgid, libc::SIGKILL);
        }
    }
}

fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals exactly that process
        // group, one we created; no memory is involved.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// The last lines of a log, for an error message.
pub fn tail(log: &Path) -> String {
    const LINES: usize = 15;
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LINES);
            lines[start..].iter().map(|l| format!("    | {l}")).collect::<Vec<_>>().join("\n")
        }
        Err(e) => format!("    (cannot read it: {e})"),
    }
}

/// Refuses to start a system whose port is taken, naming the port and its
/// use, so a clash never turns into a confusing start-up failure. Waits a
/// little first: the previous cluster's processes may still be exiting.
pub async fn check_ports(system: &str, ports: &[(u16, String)]) -> Result<()> {
    const RELEASE_WAIT: Duration = Duration::from_secs(15);
    let deadline = Instant::now() + RELEASE_WAIT;
    for (port, what) in ports {
        loop {
            match TcpListener::bind(("127.0.0.1", *port)) {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(STOP_POLL).await,
                Err(e) => bail!(
                    "port {port} ({system} {what}) is in use on 127.0.0.1: {e}; stop whatever holds it and run again"
                ),
            }
        }
    }
    Ok(())
}

/// Runs a short command to completion, bounded in time; its stdout.
pub async fn output(mut command: Command, what: &str, timeout: Duration) -> Result<String> {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, command.output())
        .await
        .with_context(|| format!("{what}: no answer within {} s", timeout.as_secs()))?
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates `path` with `text`.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("write {}", path.display()))
}

/// Removes variables with `prefix` from a child's environment, so a
/// setting of the caller's shell (`ETCD_UNSAFE_NO_FSYNC`,
/// `KEEL_FLUSH_DISK_TYPE`, ...) cannot change what is measured.
pub fn clear_env_prefix(command: &mut Command, prefix: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(prefix) {
            command.env_remove(key);
        }
    }
}
