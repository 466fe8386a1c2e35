//! Where the cluster runs, and how the harness breaks it.

pub mod docker;
pub mod process;

use std::path::PathBuf;

use anyhow::Result;

/// A three-node keel cluster the harness can break. Node ids are 1-based.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn nodes(&self) -> Vec<u64>;
    /// gRPC addresses clients use.
    fn grpc_addrs(&self) -> Vec<String>;
    /// `host:port` of node `node`'s admin HTTP API.
    fn admin_addr(&self, node: u64) -> String;
    /// Node `node`'s data directory, where this process can write to it.
    fn data_dir(&self, node: u64) -> Result<PathBuf>;
    /// SIGKILL.
    fn kill(&self, node: u64) -> Result<()>;
    /// Start a stopped or killed node (no-op when it runs).
    fn start(&self, node: u64) -> Result<()>;
    /// SIGTERM and wait for it to exit.
    fn stop(&self, node: u64) -> Result<()>;
    /// SIGSTOP / SIGCONT.
    fn pause(&self, node: u64) -> Result<()>;
    fn resume(&self, node: u64) -> Result<()>;
    /// Cut node `node` off from its peers (clients still reach it), and undo it.
    fn isolate(&self, node: u64) -> Result<()>;
    fn heal(&self, node: u64) -> Result<()>;
    /// Fill the volume holding node `node`'s data, and free it again.
    fn fill_disk(&self, node: u64) -> Result<()>;
    fn free_disk(&self, node: u64) -> Result<()>;
    /// Whether the backend can cut the power: kill every node so that what
    /// they had not fsynced is lost.
    fn power_loss_capable(&self) -> Result<()>;
    /// Stop everything and remove what the run made (unless asked to keep it).
    fn shutdown(&self);
}
