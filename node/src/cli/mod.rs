//! Client commands: topics, produce, consume, groups, lookups, cluster.
//! (Being written.)

use anyhow::{Result, bail};
use clap::Args;

macro_rules! stub_command {
    ($args:ident, $fn:ident) => {
        #[derive(Debug, Args)]
        pub struct $args {}
        pub async fn $fn(_args: $args) -> Result<()> {
            bail!(concat!("keel ", stringify!($fn), " is not written yet"))
        }
    };
}

stub_command!(TopicArgs, topic);
stub_command!(ProduceArgs, produce);
stub_command!(ConsumeArgs, consume);
stub_command!(GroupArgs, group);
stub_command!(LookupArgs, lookup);
stub_command!(ClusterArgs, cluster);
