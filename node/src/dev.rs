//! `keel dev`: a local three-node cluster, each node its own child process.
//! (Being written.)

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct DevArgs {}

pub async fn run(_args: DevArgs) -> Result<()> {
    anyhow::bail!("keel dev is not written yet")
}
