//! `keel node`: the actors of one node (being written).

use anyhow::Result;

use crate::config::NodeConfig;

pub async fn run(_config: NodeConfig) -> Result<()> {
    anyhow::bail!("keel node is not written yet")
}
