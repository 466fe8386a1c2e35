//! Which node this is and which cluster it belongs to, and the checks that
//! keep one node's data, and one cluster's peers, apart.
//!
//! - **Node id**: the log store's meta file records the node id at the
//!   node's first start. A node refuses to open a data directory recorded
//!   for another node, and one whose configuration names no `node.id` at
//!   all when the directory belongs to a cluster member (a configuration
//!   file lost to a power cut would otherwise bring the node back as node
//!   1, or create a second store beside the first).
//! - **Cluster id**: a random id, drawn by the node that initialises a
//!   cluster (`cluster.bootstrap`, `keel cluster init`) and written to its
//!   meta file before the cluster exists. Every peer RPC carries the
//!   sender's cluster id and the id of the node it is meant for (metadata
//!   `keel-cluster-id`, `keel-target-node`, added by [`super::auth::PeerCredentials`]);
//!   a node refuses calls meant for another node (two members at one
//!   address would otherwise count one machine twice toward every quorum)
//!   or sent by another cluster. A node that has no cluster id yet (a new
//!   member, or one whose data was removed) adopts the id of the first
//!   leader that replicates to it, durably, before it takes any entry.
//!   Only initialisation draws an id, so all members of a cluster agree on
//!   it. Clusters initialised before keel kept cluster ids have none (0):
//!   their calls are checked for the target node only.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use keel_raft_log::Store;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Metadata naming the node a peer RPC is meant for.
pub const TARGET_NODE: &str = "keel-target-node";
/// Metadata naming the sender's cluster (16 hex digits; absent while it
/// has none).
pub const CLUSTER_ID: &str = "keel-cluster-id";

/// This node's id and its cluster's id (0 until known). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Identity {
    node_id: u64,
    cluster: Arc<AtomicU64>,
}

/// A cluster id as status documents and errors show it.
pub fn cluster_hex(id: u64) -> String {
    format!("{id:016x}")
}

impl Identity {
    pub fn new(node_id: u64) -> Self {
        Self { node_id, cluster: Arc::new(AtomicU64::new(0)) }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The cluster's id; 0 while this node has none.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.load(Ordering::Acquire)
    }

    /// Before the node touches its data directory: refuse another node's
    /// data, or a configuration without `node.id` over a member's data.
    /// Learns the cluster id recorded there.
    pub fn check_data_dir(&self, dir: &Path, node_id_given: bool) -> Result<()> {
        let Some(meta) = keel_raft_log::read_meta(dir)? else { return Ok(()) };
        let recorded = meta.identity;
        let member = recorded.node_id != 0 || meta.vote.is_some() || meta.committed.is_some();
        let whose = match (recorded.node_id, recorded.cluster_id) {
            (0, _) => "a cluster member's data".to_string(),
            (n, 0) => format!("the data of node {n}"),
            (n, c) => format!("the data of node {n} of cluster {}", cluster_hex(c)),
        };
        if member && !node_id_given {
            bail!(
                "the configuration names no node.id, but {} holds {whose}; set node.id{} in the node's \
                 configuration (a lost or empty configuration file?), or point store.path.commitlog at an empty \
                 directory to start a new node",
                dir.display(),
                if recorded.node_id != 0 { format!("={}", recorded.node_id) } else { String::new() },
            );
        }
        if recorded.node_id != 0 && recorded.node_id != self.node_id {
            bail!(
                "node.id is {} but {} holds {whose}: a node never opens another node's data; fix node.id or \
                 store.path.commitlog",
                self.node_id,
                dir.display()
            );
        }
        self.cluster.store(recorded.cluster_id, Ordering::Release);
        Ok(())
    }

    /// Once the store is open: record this node's id (first start) and
    /// keep the cluster id it holds.
    pub async fn record(&self, store: &Store) -> Result<()> {
        let mut id = store.identity();
        if id.node_id == 0 {
            id.node_id = self.node_id;
            store.set_identity(id).await?;
        }
        self.cluster.store(id.cluster_id, Ordering::Release);
        Ok(())
    }

    /// Before this node initialises a cluster: draw the cluster's id, and
    /// record it durably, unless it has one.
    pub async fn create_cluster(&self, store: &Store) -> Result<u64> {
        let mut id = store.identity();
        if id.cluster_id == 0 {
            id.cluster_id = rand::random_range(1..=u64::MAX);
            id.node_id = self.node_id;
            store.set_identity(id).await?;
            tracing::info!(cluster_id = %cluster_hex(id.cluster_id), "new cluster id");
        }
        self.cluster.store(id.cluster_id, Ordering::Release);
        Ok(id.cluster_id)
    }

    /// A peer call meant for this node, from this node's cluster? Returns
    /// the sender's cluster id (0: none given).
    pub fn check_call(&self, metadata: &MetadataMap) -> Result<u64, Status> {
        let target = match metadata.get(TARGET_NODE) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| Status::invalid_argument(format!("{TARGET_NODE} is not a node id")))?,
            ),
        };
        if let Some(t) = target.filter(|&t| t != self.node_id) {
            return Err(Status::permission_denied(format!(
                "this is node {}, not node {t}: the call was meant for another member, whose address leads here \
                 (two members share an address?)",
                self.node_id
            )));
        }
        let theirs = match metadata.get(CLUSTER_ID) {
            None => 0,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| Status::invalid_argument(format!("{CLUSTER_ID} is not a cluster id")))?,
        };
        let mine = self.cluster_id();
        if theirs != 0 && mine != 0 && theirs != mine {
            return Err(Status::permission_denied(format!(
                "node {} belongs to cluster {}, not to the sender's cluster {}",
                self.node_id,
                cluster_hex(mine),
                cluster_hex(theirs)
            )));
        }
        Ok(theirs)
    }

    /// A leader of cluster `theirs` replicates to this node, which has no
    /// cluster id yet: take it, durably, before taking any entry.
    pub async fn adopt(&self, store: &Store, theirs: u64) -> Result<(), Status> {
        if theirs == 0 || self.cluster_id() != 0 {
            return Ok(());
        }
        let mut id = store.identity();
        if id.cluster_id == 0 {
            id.cluster_id = theirs;
            id.node_id = self.node_id;
            store.set_identity(id).await.map_err(|e| Status::internal(format!("record the cluster id: {e}")))?;
            tracing::info!(cluster_id = %cluster_hex(theirs), "joined cluster");
        }
        self.cluster.store(id.cluster_id, Ordering::Release);
        if id.cluster_id != theirs {
            return Err(Status::permission_denied(format!(
                "node {} belongs to cluster {}, not to the sender's cluster {}",
                self.node_id,
                cluster_hex(id.cluster_id),
                cluster_hex(theirs)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn call(target: Option<&str>, cluster: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(t) = target {
            m.insert(TARGET_NODE, MetadataValue::try_from(t).expect("ascii"));
        }
        if let Some(c) = cluster {
            m.insert(CLUSTER_ID, MetadataValue::try_from(c).expect("ascii"));
        }
        m
    }

    #[tokio::test]
    async fn calls_for_another_node_or_cluster_are_refused_and_a_new_member_adopts_its_leaders_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(keel_raft_log::StoreConfig::new(dir.path())).await.expect("open");
        let me = Identity::new(2);
        me.record(&store).await.expect("record");
        assert_eq!(store.identity().node_id, 2, "the node id is recorded at first start");

        // Phase: without a cluster id, any cluster may address node 2; another node's calls never pass.
        assert_eq!(me.check_call(&call(Some("2"), Some("00000000000000aa"))).expect("for node 2"), 0xaa);
        assert_eq!(me.check_call(&call(None, None)).expect("an older peer sends neither"), 0);
        let e = me.check_call(&call(Some("4"), None)).expect_err("meant for node 4");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("not node 4"), "{e:?}");
        assert!(me.check_call(&call(Some("two"), None)).is_err());

        // Phase: the first leader's cluster is adopted durably; then only that cluster passes.
        me.adopt(&store, 0xaa).await.expect("adopt");
        assert_eq!(me.cluster_id(), 0xaa);
        assert_eq!(store.identity().cluster_id, 0xaa);
        assert!(me.check_call(&call(Some("2"), Some("00000000000000aa"))).is_ok());
        let e = me.check_call(&call(Some("2"), Some("00000000000000bb"))).expect_err("another cluster");
        assert!(e.message().contains("belongs to cluster 00000000000000aa"), "{e:?}");
        me.adopt(&store, 0xbb).await.expect("a node with a cluster id keeps it");
        assert_eq!(me.cluster_id(), 0xaa);

        // Phase: reopened, the directory says whose it is.
        store.close().await.expect("close");
        let again = Identity::new(2);
        again.check_data_dir(dir.path(), true).expect("node 2's own data");
        assert_eq!(again.cluster_id(), 0xaa);
        let e = Identity::new(3).check_data_dir(dir.path(), true).expect_err("node 3 on node 2's data");
        assert!(e.to_string().contains("node.id is 3") && e.to_string().contains("node 2 of cluster"), "{e}");
        let e = Identity::new(1).check_data_dir(dir.path(), false).expect_err("no node.id on a member's data");
        assert!(e.to_string().contains("names no node.id") && e.to_string().contains("node.id=2"), "{e}");
        let fresh = tempfile::tempdir().expect("tempdir");
        Identity::new(1).check_data_dir(fresh.path(), false).expect("a fresh directory needs no node.id");
    }
}
