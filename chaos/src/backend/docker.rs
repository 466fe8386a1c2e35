//! `--backend docker`: the three-node cluster of `docker-compose.yml` (image
//! from `docker/build-image`), as its own Compose project. Nodes have a
//! `raft` network (peers) and a `client` network (clients, the admin API);
//! a partition disconnects a node from the `raft` network only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Backend;

const PROJECT: &str = "keel-chaos";
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Docker {
    compose_file: PathBuf,
    compose: Vec<String>,
    keep: bool,
}

fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker compose` (the plugin) or `docker-compose`.
fn compose_command() -> Result<Vec<String>> {
    if Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success()) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    if Command::new("docker-compose").arg("version").output().is_ok_and(|o| o.status.success()) {
        return Ok(vec!["docker-compose".into()]);
    }
    bail!("neither `docker compose` nor `docker-compose` works here")
}

impl Docker {
    /// A fresh cluster (old volumes removed) under flush policy `flush`.
    pub fn start_cluster(compose_file: &Path, flush: &str, keep: bool) -> Result<Self> {
        if !compose_file.is_file() {
            bail!("no compose file at {}", compose_file.display());
        }
        let image = std::env::var("KEEL_IMAGE").unwrap_or_else(|_| "keel:latest".into());
        run(Command::new("docker").args(["image", "inspect", &image]))
            .with_context(|| format!("image {image} is missing: build it with docker/build-image"))?;
        let d = Self { compose_file: compose_file.to_path_buf(), compose: compose_command()?, keep };
        let _ = run(d.compose_cmd().args(["down", "--volumes", "--remove-orphans"]));
        run(d.compose_cmd().env("KEEL_FLUSH_DISK_TYPE", flush).args(["up", "-d"]))?;
        d.wait_healthy()?;
        Ok(d)
    }

    fn compose_cmd(&self) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..]).arg("-p").arg(PROJECT).arg("-f").arg(&self.compose_file);
        c
    }

    fn container(&self, node: u64) -> Result<String> {
        let id = run(self.compose_cmd().args(["ps", "-aq", &format!("node{node}")]))?;
        if id.is_empty() {
            bail!("no container for node{node} in project {PROJECT}");
        }
        Ok(id)
    }

    fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        loop {
            let mut states = Vec::new();
            for node in 1..=3 {
                let c = self.container(node)?;
                states.push(run(Command::new("docker").args([
                    "inspect",
                    "-f",
                    "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
                    &c,
                ]))?);
            }
            if states.iter().all(|s| s == "healthy") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the compose cluster was not healthy within {HEALTHY_TIMEOUT:?}: {states:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn docker(&self, args: &[&str]) -> Result<()> {
        run(Command::new("docker").args(args)).map(|_| ())
    }
}

impl Backend for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn nodes(&self) -> Vec<u64> {
        vec![1, 2, 3]
    }

    fn grpc_addrs(&self) -> Vec<String> {
        (1..=3).map(|i| format!("10.213.2.1{i}:9091")).collect()
    }

    fn admin_addr(&self, node: u64) -> String {
        format!("10.213.2.1{node}:9191")
    }

    fn data_dir(&self, node: u64) -> Result<PathBuf> {
        bail!(
            "node {node}'s data is in a docker volume the harness does not write to; run bitflip with --backend process"
        )
    }

    fn kill(&self, node: u64) -> Result<()> {
        self.docker(&["kill", "-s", "KILL", &self.container(node)?])
    }

    fn start(&self, node: u64) -> Result<()> {
        self.docker(&["start", &self.container(node)?])
    }

    fn stop(&self, node: u64) -> Result<()> {
        self.docker(&["stop", "-t", "15", &self.container(node)?])
    }

    fn pause(&self, node: u64) -> Result<()> {
        self.docker(&["pause", &self.container(node)?])
    }

    fn resume(&self, node: u64) -> Result<()> {
        let c = self.container(node)?;
        let paused = run(Command::new("docker").args(["inspect", "-f", "{{.State.Paused}}", &c]))?;
        if paused == "true" { self.docker(&["unpause", &c]) } else { Ok(()) }
    }

    fn isolate(&self, node: u64) -> Result<()> {
        self.docker(&["network", "disconnect", &format!("{PROJECT}_raft"), &self.container(node)?])
    }

    fn heal(&self, node: u64) -> Result<()> {
        let c = self.container(node)?;
        let net = format!("{PROJECT}_raft");
        let attached = run(Command::new("docker").args(["inspect", "-f", "{{json .NetworkSettings.Networks}}", &c]))?;
        if attached.contains(&format!("\"{net}\"")) {
            return Ok(());
        }
        self.docker(&["network", "connect", "--ip", &format!("10.213.1.1{node}"), &net, &c])
    }

    fn fill_disk(&self, _node: u64) -> Result<()> {
        bail!("the docker backend cannot fill a node's volume yet; run disk-full with --backend process")
    }

    fn free_disk(&self, _node: u64) -> Result<()> {
        Ok(())
    }

    fn power_loss_capable(&self) -> Result<()> {
        bail!(
            "the docker image is a normal build, whose nodes keep unsynced writes in the kernel's page cache, \
             where a container kill does not lose them; run power-loss with --backend process"
        )
    }

    fn shutdown(&self) {
        for node in 1..=3 {
            let _ = self.resume(node);
            let _ = self.heal(node);
        }
        if self.keep {
            eprintln!("keel-chaos: left the compose project {PROJECT} running");
        } else {
            let _ = run(self.compose_cmd().args(["down", "--volumes", "--remove-orphans"]));
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
