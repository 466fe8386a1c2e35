//! keel's client library.
//!
//! A [`Client`] knows a list of nodes (`host:port`), keeps one lazily
//! connected gRPC channel per node, and sends every call through one retry
//! loop (`call.rs`):
//!
//! - writes (produce, topics, offsets, membership) go to the leader it last
//!   saw; a NOT_LEADER answer naming the leader sends the call there (adding
//!   the address if it is new); NO_LEADER, a transport failure or a
//!   NOT_LEADER without an address moves on to the next node, pausing with
//!   exponential backoff (10 ms → 500 ms);
//! - a fetch whose node has not applied its `min_index` in time
//!   (NOT_CAUGHT_UP) is asked of the next node the same way;
//! - reads (fetch, lookups, describe, cluster info) go to any node, starting
//!   with the one the last read went to;
//! - every call has one deadline ([`ClientOptions::call_timeout`], 30 s);
//!   past it the call fails with [`Error::Unavailable`], or, for a write of
//!   which some attempt may have taken effect, [`Error::OutcomeUnknown`]:
//!   never a plain failure when the write may be stored.
//!
//! [`Producer`] makes produce idempotent: a random producer id and a sequence
//! per partition, so a retry is recognised by the leader and answered with
//! the first attempt's offsets instead of being stored twice. The leader
//! refuses sequence gaps; how the producer gets past them is in its
//! module's doc.
//!
//! Records, fetches and produce acks are domain types ([`Record`],
//! [`Fetch`], [`FetchedRecord`], [`ProduceAck`]); topic, group and cluster
//! answers are the wire messages themselves, re-exported as [`proto`].
//!
//! [`ClientOptions::tls`] dials every node over TLS, verified against one
//! given CA ([`TlsOptions`]); [`ClientOptions::token`] sends `authorization:
//! Bearer <token>` with every call, which nodes with `admin.token` require
//! for topic and membership changes (UNAUTHENTICATED otherwise, a final
//! [`Error::Server`]).
//!
//! This crate knows tonic (it speaks gRPC) but nothing of the node's
//! internals: only `keel-proto`'s contract.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
pub use keel_proto::client as proto;
pub use keel_proto::client::{Durability, ErrorCode};
use proto::{
    ClusterInfoRequest, ClusterInfoResponse, CommitOffsetRequest, CreateTopicRequest, DeleteTopicRequest,
    DescribeTopicRequest, FetchOffsetRequest, InitClusterRequest, ListTopicsRequest, LookupByKeyRequest, Member,
    MembershipResponse, OffsetForTimestampRequest, OffsetForTimestampResponse, RemoveNodeRequest, TopicConfig,
    TopicInfo,
};

mod backoff;
mod batcher;
mod call;
mod error;
mod nodes;
mod partition;
mod producer;
mod record;
mod tls;

pub use batcher::{BatchOptions, Batcher, RecordAck};
pub use error::{ERROR_CODE_KEY, EXPECTED_SEQUENCE_KEY, Error, LEADER_ADDR_KEY, LEADER_ID_KEY, Result};
pub use partition::partition_for;
pub use producer::Producer;
pub use record::{Fetch, Fetched, FetchedRecord, Header, ProduceAck, Record};
pub use tls::{TlsOptions, count_certificates};
use tonic::metadata::AsciiMetadataValue;

use crate::error::LeaderHint;
use crate::nodes::{Nodes, Route};

/// The `keel dev` cluster's client addresses.
pub const DEV_CLUSTER: &str = "127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093";

/// How a [`Client`] times and paces its calls, and how it secures them.
#[derive(Clone)]
pub struct ClientOptions {
    /// Overall deadline of one call, across all its attempts.
    pub call_timeout: Duration,
    /// Deadline of one attempt (a fetch adds its long-poll wait). Above the
    /// node's `flush.commitlog.timeout` (5 s by default), so a slow flush
    /// reaches the client as OUTCOME_UNKNOWN, not as a client-side timeout.
    pub request_timeout: Duration,
    /// TCP connect timeout per node.
    pub connect_timeout: Duration,
    /// First pause between attempts; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Largest gRPC message sent or accepted (tonic's default is 4 MiB).
    /// Nodes keep fetch and lookup answers under 4 MiB − 64 KiB, except
    /// that a fetch returns at least one record even when it alone is
    /// larger (a topic whose `max_message_bytes` is above that limit).
    pub max_message_bytes: usize,
    /// `Some`: every node is dialled over TLS and verified against this CA
    /// (see [`TlsOptions`]); `None`: plaintext.
    pub tls: Option<TlsOptions>,
    /// Sent as `authorization: Bearer <token>` with every call. Nodes with
    /// `admin.token` set refuse topic and membership changes without it
    /// (UNAUTHENTICATED); produce, fetch and reads do not need it.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Spelled out so the token never reaches a log.
        f.debug_struct("ClientOptions")
            .field("call_timeout", &self.call_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            max_message_bytes: 64 << 20,
            tls: None,
            token: None,
        }
    }
}

impl ClientOptions {
    fn check(&self) -> Result<()> {
        let positive = [
            ("call_timeout", self.call_timeout),
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("backoff_min", self.backoff_min),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(Error::InvalidArgument(format!("ClientOptions::{name} must be above zero")));
            }
        }
        if self.backoff_min > self.backoff_max {
            return Err(Error::InvalidArgument("ClientOptions::backoff_min is above backoff_max".into()));
        }
        if self.max_message_bytes == 0 {
            return Err(Error::InvalidArgument("ClientOptions::max_message_bytes must be above zero".into()));
        }
        self.authorization()?;
        Ok(())
    }

    /// The `authorization` metadata value for the token, if any; refused
    /// unless it can travel as gRPC metadata.
    fn authorization(&self) -> Result<Option<AsciiMetadataValue>> {
        let Some(token) = &self.token else { return Ok(None) };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument(
                "ClientOptions::token must be printable ASCII without spaces (it travels as gRPC metadata)".into(),
            ));
        }
        let value = format!("Bearer {token}")
            .parse::<AsciiMetadataValue>()
            .map_err(|_| Error::InvalidArgument("ClientOptions::token cannot be sent as gRPC metadata".into()))?;
        Ok(Some(value))
    }
}

/// A handle on a keel cluster. Cheap to clone; clones share the node list,
/// the channels and what is known of the leader.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Mutex<Nodes>,
    options: ClientOptions,
    /// `Bearer <token>`, ready to insert into each request.
    authorization: Option<AsciiMetadataValue>,
    /// Partition counts from describe/list/create, for partitioners.
    partitions: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("nodes", &self.addrs()).finish_non_exhaustive()
    }
}

/// One node's answer to [`Client::cluster_info_all`].
#[derive(Debug)]
pub struct NodeInfo {
    pub addr: String,
    pub info: Result<ClusterInfoResponse>,
}

impl Client {
    /// A client for the nodes at `addrs` (`host:port`; `http://` optional,
    /// `https://` allowed only with [`ClientOptions::tls`]) with default
    /// options. Nothing connects yet: each node's channel is
    /// made on its first call.
    pub fn connect(addrs: Vec<String>) -> Result<Self> {
        Self::with_options(addrs, ClientOptions::default())
    }

    pub fn with_options(addrs: Vec<String>, options: ClientOptions) -> Result<Self> {
        options.check()?;
        let authorization = options.authorization()?;
        let nodes = Nodes::new(&addrs, &options)?;
        Ok(Self {
            inner: Arc::new(Inner { nodes: Mutex::new(nodes), options, authorization, partitions: Mutex::default() }),
        })
    }

    /// Splits a comma-separated `host:port` list (the CLI's `--cluster`).
    pub fn parse_addrs(list: &str) -> Vec<String> {
        list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Every node address known, the configured ones first.
    pub fn addrs(&self) -> Vec<String> {
        self.lock_nodes().addrs()
    }

    /// The address of the node last seen as leader.
    pub fn leader(&self) -> Option<String> {
        let nodes = self.lock_nodes();
        nodes.leader().map(|i| nodes.get(i).addr.clone())
    }

    /// A new idempotent producer (its own random producer id).
    pub fn producer(&self) -> Producer {
        Producer::new(self.clone())
    }

    pub(crate) fn lock_nodes(&self) -> MutexGuard<'_, Nodes> {
        self.inner.nodes.lock().expect("no code panics while holding the node list lock")
    }

    fn remember_partitions(&self, topic: &TopicInfo) {
        let mut cache = self.inner.partitions.lock().expect("no code panics while holding the partition cache lock");
        cache.insert(topic.name.clone(), topic.partitions);
    }

    // ---- reads: any node ----

    /// Reads records of one partition from `fetch.offset` (long-polling up
    /// to `fetch.max_wait` when none is there yet).
    pub async fn fetch(&self, fetch: Fetch) -> Result<Fetched> {
        check_topic(&fetch.topic)?;
        let mut spec = self.spec(Route::Any, false);
        spec.extra_wait = fetch.max_wait;
        let request: proto::FetchRequest = fetch.into();
        let response = self.call(spec, request, |mut c, r| async move { c.fetch(r).await }).await?;
        Ok(response.into())
    }

    /// Records of one partition with this key, oldest first (`limit` 0: the
    /// node's default, 100).
    pub async fn lookup_by_key(
        &self,
        topic: &str,
        partition: u32,
        key: impl Into<Bytes>,
        limit: u32,
    ) -> Result<Vec<FetchedRecord>> {
        check_topic(topic)?;
        let request = LookupByKeyRequest { topic: topic.to_string(), partition, key: key.into(), limit };
        let spec = self.spec(Route::Any, false);
        let response = self.call(spec, request, |mut c, r| async move { c.lookup_by_key(r).await }).await?;
        Ok(response.records.into_iter().map(Into::into).collect())
    }

    /// The first offset of a partition whose record is at or after
    /// `timestamp_ms` (`found == false`: every record is older, and `offset`
    /// is the end offset).
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: u64,
    ) -> Result<OffsetForTimestampResponse> {
        check_topic(topic)?;
        let request = OffsetForTimestampRequest { topic: topic.to_string(), partition, timestamp_ms };
        let spec = self.spec(Route::Any, false);
        self.call(spec, request, |mut c, r| async move { c.offset_for_timestamp(r).await }).await
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let spec = self.spec(Route::Any, false);
        let response = self.call(spec, ListTopicsRequest {}, |mut c, r| async move { c.list_topics(r).await }).await?;
        for topic in &response.topics {
            self.remember_partitions(topic);
        }
        Ok(response.topics)
    }

    /// A topic's settings, partitions (offsets, bytes) and consumer groups.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        check_topic(name)?;
        let request = DescribeTopicRequest { name: name.to_string() };
        let spec = self.spec(Route::Any, false);
        let topic = self.call(spec, request, |mut c, r| async move { c.describe_topic(r).await }).await?;
        self.remember_partitions(&topic);
        Ok(topic)
    }

    /// A topic's partition count, from the cache when the topic was seen
    /// before (partition counts never change while a topic lives).
    pub async fn partitions(&self, topic: &str) -> Result<u32> {
        let cached = {
            let cache = self.inner.partitions.lock().expect("no code panics while holding the partition cache lock");
            cache.get(topic).copied()
        };
        match cached {
            Some(n) => Ok(n),
            None => Ok(self.describe_topic(topic).await?.partitions),
        }
    }

    /// Forgets a cached partition count (after the topic was deleted and
    /// perhaps created again elsewhere).
    pub fn forget_topic(&self, topic: &str) {
        let mut cache = self.inner.partitions.lock().expect("no code panics while holding the partition cache lock");
        cache.remove(topic);
    }

    /// A group's committed offset for one partition (`None`: nothing committed).
    ///
    /// Any node serves it, but it is asked of the leader when one is known:
    /// a follower applies a commit a heartbeat later, and a consumer that
    /// resumes from a stale offset would read records twice.
    pub async fn fetch_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>> {
        check_group(group)?;
        check_topic(topic)?;
        let request = FetchOffsetRequest { group: group.to_string(), topic: topic.to_string(), partition };
        let spec = self.spec(Route::Leader, false);
        let response = self.call(spec, request, |mut c, r| async move { c.fetch_offset(r).await }).await?;
        Ok(response.found.then_some(response.offset))
    }

    /// Any node's view of the cluster; remembers the leader it names.
    pub async fn cluster_info(&self) -> Result<ClusterInfoResponse> {
        let spec = self.spec(Route::Any, false);
        let info = self.call(spec, ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await?;
        self.note_leader(&info);
        Ok(info)
    }

    /// Asks every node at once, each for at most `timeout` (so unreachable
    /// nodes show as errors instead of hiding behind a reachable one): the
    /// configured nodes, then members named in their answers that were not
    /// among them and did not answer under another address (a cluster
    /// reached through published ports names its members by their internal
    /// addresses). Answers come in node-list order.
    pub async fn cluster_info_all(&self, timeout: Duration) -> Vec<NodeInfo> {
        let mut answers = self.ask_each(0, timeout).await;
        let known: Vec<String> = self.addrs();
        let answered: Vec<u64> = answers.iter().filter_map(|a| a.info.as_ref().ok()).map(|i| i.node_id).collect();
        let mut added = false;
        for member in answers.iter().filter_map(|a| a.info.as_ref().ok()).flat_map(|i| i.members.iter()) {
            if !member.addr.is_empty()
                && !answered.contains(&member.id)
                && !known.iter().any(|k| nodes::normalize(&member.addr).ok().as_ref() == Some(k))
            {
                let mut nodes = self.lock_nodes();
                added |= nodes.find_or_add(&member.addr, &self.inner.options).is_ok();
            }
        }
        if added {
            answers.extend(self.ask_each(known.len(), timeout).await);
        }
        answers
    }

    async fn ask_each(&self, from: usize, timeout: Duration) -> Vec<NodeInfo> {
        let count = self.lock_nodes().len();
        let asks = (from..count).map(|i| {
            let spec = call::CallSpec { route: Route::Node(i), write: false, extra_wait: Duration::ZERO, timeout };
            let addr = self.lock_nodes().get(i).addr.clone();
            async move {
                let info =
                    self.call(spec, ClusterInfoRequest {}, |mut c, r| async move { c.cluster_info(r).await }).await;
                if let Ok(info) = &info {
                    self.note_leader(info);
                }
                NodeInfo { addr, info }
            }
        });
        futures::future::join_all(asks).await
    }

    fn note_leader(&self, info: &ClusterInfoResponse) {
        if info.leader_id != 0 && !info.leader_addr.is_empty() {
            self.follow(LeaderHint { id: Some(info.leader_id), addr: info.leader_addr.clone() });
        }
    }

    // ---- writes: the leader ----

    pub async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        check_topic(name)?;
        let request = CreateTopicRequest { name: name.to_string(), config: Some(config) };
        let spec = self.spec(Route::Leader, true);
        let response = self.call(spec, request, |mut c, r| async move { c.create_topic(r).await }).await?;
        let topic = response.topic.ok_or_else(|| Error::Protocol("CreateTopic answered without the topic".into()))?;
        self.remember_partitions(&topic);
        Ok(topic)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        check_topic(name)?;
        let request = DeleteTopicRequest { name: name.to_string() };
        let spec = self.spec(Route::Leader, true);
        self.call(spec, request, |mut c, r| async move { c.delete_topic(r).await }).await?;
        self.forget_topic(name);
        Ok(())
    }

    /// Stores `offset` (the next offset the group will read) for a partition.
    pub async fn commit_offset(&self, group: &str, topic: &str, partition: u32, offset: u64) -> Result<()> {
        check_group(group)?;
        check_topic(topic)?;
        let request = CommitOffsetRequest { group: group.to_string(), topic: topic.to_string(), partition, offset };
        let spec = self.spec(Route::Leader, true);
        self.call(spec, request, |mut c, r| async move { c.commit_offset(r).await }).await?;
        Ok(())
    }

    /// Initialises a fresh cluster through the first configured node, with
    /// `members` (empty: that node alone).
    pub async fn init_cluster(&self, members: Vec<Member>) -> Result<MembershipResponse> {
        let request = InitClusterRequest { members };
        let spec = self.spec(Route::Node(0), true);
        self.call(spec, request, |mut c, r| async move { c.init_cluster(r).await }).await
    }

    /// Adds a node as a learner, and with `promote` makes it a voter once it
    /// has caught up. The node refuses an id that is already a member, an
    /// address another member has, and an address that does not resolve or
    /// where nothing listens; a node that does not catch up within the
    /// leader's bound (30 s) is removed again. The call waits long enough
    /// for that bound ([`MEMBERSHIP_CHANGE_WAIT`] beyond `request_timeout`),
    /// whatever `call_timeout` says.
    pub async fn add_node(&self, id: u64, addr: &str, promote: bool) -> Result<MembershipResponse> {
        if id == 0 {
            return Err(Error::InvalidArgument("node id 0 is reserved (it means \"no node\")".into()));
        }
        let addr = nodes::normalize(addr)?;
        let request = proto::AddNodeRequest { id, addr, promote };
        let spec = self.membership_spec();
        self.call(spec, request, |mut c, r| async move { c.add_node(r).await }).await
    }

    /// Removes a node. Without `force` the leader refuses to remove a voter
    /// when fewer than three voters would remain (acknowledgements would
    /// rest on fewer machines); removing a learner never needs it.
    pub async fn remove_node(&self, id: u64, force: bool) -> Result<MembershipResponse> {
        let request = RemoveNodeRequest { id, force };
        let spec = self.membership_spec();
        self.call(spec, request, |mut c, r| async move { c.remove_node(r).await }).await
    }

    /// A membership change may wait at the leader for its turn and for a
    /// new node to catch up: each attempt gets [`MEMBERSHIP_CHANGE_WAIT`]
    /// more than `request_timeout`, and the call at least one such attempt.
    fn membership_spec(&self) -> call::CallSpec {
        let mut spec = self.spec(Route::Leader, true);
        spec.extra_wait = MEMBERSHIP_CHANGE_WAIT;
        spec.timeout = spec.timeout.max(self.inner.options.request_timeout.saturating_add(MEMBERSHIP_CHANGE_WAIT));
        spec
    }
}

/// How much longer than `request_timeout` an attempt of a membership change
/// may take. At the leader each step is bounded: the wait for its turn,
/// resolving addresses, a new node's catch-up (30 s) and removing one that
/// did not catch up; `node/src/server/client_service.rs` asserts that the
/// sum of its bounds fits. A change that goes well takes far less.
pub const MEMBERSHIP_CHANGE_WAIT: Duration = Duration::from_secs(90);

fn check_topic(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("topic name is empty".into()));
    }
    Ok(())
}

fn check_group(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("group name is empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_send_sync_and_needs_at_least_one_valid_address() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<Client>();
        send_sync::<Producer>();
        assert!(Client::connect(vec![]).is_err());
        assert!(Client::connect(vec!["no-port".into()]).is_err());
        let c = Client::connect(Client::parse_addrs(DEV_CLUSTER)).expect("dev addresses are valid");
        assert_eq!(c.addrs().len(), 3);
        assert_eq!(c.leader(), None);
    }

    #[test]
    fn options_that_would_spin_or_never_wait_are_refused() {
        let zero = ClientOptions { backoff_min: Duration::ZERO, ..ClientOptions::default() };
        assert!(Client::with_options(vec!["a:1".into()], zero).is_err());
        let inverted = ClientOptions { backoff_min: Duration::from_secs(2), ..ClientOptions::default() };
        assert!(Client::with_options(vec!["a:1".into()], inverted).is_err());
    }

    #[test]
    fn a_token_must_travel_as_metadata_and_never_prints() {
        for bad in ["", "two words", "tab\there", "caf\u{e9}"] {
            let options = ClientOptions { token: Some(bad.into()), ..ClientOptions::default() };
            let err = Client::with_options(vec!["a:1".into()], options).expect_err("token accepted");
            assert!(err.to_string().contains("ClientOptions::token"), "{bad:?}: {err}");
        }
        let options = ClientOptions { token: Some("s3cret-T0ken".into()), ..ClientOptions::default() };
        assert!(!format!("{options:?}").contains("s3cret"));
        assert!(Client::with_options(vec!["a:1".into()], options).is_ok());
    }

    #[tokio::test]
    async fn a_call_to_no_listening_node_ends_unavailable_by_its_deadline() {
        // Phase: a port nobody listens on (bound, then closed) refuses fast.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
            l.local_addr().expect("bound").port()
        };
        let options = ClientOptions { call_timeout: Duration::from_millis(300), ..ClientOptions::default() };
        let client = Client::with_options(vec![format!("127.0.0.1:{port}")], options).expect("valid");
        let started = std::time::Instant::now();
        // Phase: a write that never connected is Unavailable, not OutcomeUnknown.
        let err = client.producer().produce("t", 0, vec![Record::new("x")]).await.expect_err("nobody listens");
        assert!(matches!(err, Error::Unavailable { attempts, .. } if attempts >= 2), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "the deadline bounds the call");
    }
}
