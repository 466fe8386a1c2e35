//! The nodes a client knows, one lazily connected channel each, and which of
//! them is the leader (for writes) and the one reads last went to.
//!
//! Channels are made on first use, not in `Client::connect`, because tonic
//! spawns a task per channel and `connect` must work outside a runtime.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keel_proto::client::keel_client::KeelClient;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientOptions, Error, Result};

/// Bound on the node list: NOT_LEADER answers may add addresses, and a
/// confused cluster must not grow it without end.
pub(crate) const MAX_NODES: usize = 64;
/// How often an idle connection is pinged, so a node that vanished (a cut
/// network rather than a closed socket) is noticed before the next call.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which node a call goes to first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Writes and membership: the leader when known, else each node in turn.
    Leader,
    /// Reads: the node the last read went to, else each node in turn.
    Any,
    /// This node only (by index in the list), e.g. to ask each node once.
    Node(usize),
}

pub(crate) struct Node {
    pub addr: String,
    endpoint: Endpoint,
    client: OnceLock<KeelClient<Channel>>,
    max_message_bytes: usize,
}

impl Node {
    fn new(addr: &str, options: &ClientOptions) -> Result<Self> {
        let addr = normalize(addr)?;
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Error::InvalidArgument(format!("node address {addr:?}: {e}")))?;
        if let Some(tls) = &options.tls {
            endpoint = endpoint
                .tls_config(tls.tonic_config())
                .map_err(|e| Error::InvalidArgument(format!("TLS for node {addr}: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        Ok(Self { addr, endpoint, client: OnceLock::new(), max_message_bytes: options.max_message_bytes })
    }

    /// The node's gRPC client; connects on first use (inside a runtime).
    pub fn client(&self) -> KeelClient<Channel> {
        self.client
            .get_or_init(|| {
                KeelClient::new(self.endpoint.connect_lazy())
                    .max_decoding_message_size(self.max_message_bytes)
                    .max_encoding_message_size(self.max_message_bytes)
            })
            .clone()
    }
}

/// `host:port`, with an optional `http://` or `https://` in front (dropped:
/// whether TLS is used is [`ClientOptions::tls`]'s to say, for every node
/// alike, since leader hints come without a scheme); anything else is
/// refused before a connection is tried.
pub(crate) fn normalize(addr: &str) -> Result<String> {
    let trimmed = addr.trim();
    let bare = trimmed.strip_prefix("http://").or_else(|| trimmed.strip_prefix("https://")).unwrap_or(trimmed);
    let bare = bare.trim_end_matches('/');
    let bad = |why: &str| Error::InvalidArgument(format!("node address {addr:?}: {why} (expected host:port)"));
    if bare.is_empty() {
        return Err(bad("empty"));
    }
    if bare.contains(['/', ' ', '\t', '@']) {
        return Err(bad("not a plain host:port"));
    }
    let Some((host, port)) = bare.rsplit_once(':') else { return Err(bad("no port")) };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("port is not a number from 1 to 65535")),
        Ok(_) => Ok(bare.to_string()),
    }
}

pub(crate) struct Nodes {
    list: Vec<Arc<Node>>,
    leader: Option<usize>,
    /// Where the last successful read went; reads start there.
    reader: usize,
    /// Where a write starts while no leader is known; advances as nodes fail.
    cursor: usize,
}

impl Nodes {
    pub fn new(addrs: &[String], options: &ClientOptions) -> Result<Self> {
        let mut nodes = Self { list: Vec::new(), leader: None, reader: 0, cursor: 0 };
        for addr in addrs {
            nodes.find_or_add(addr, options)?;
        }
        if nodes.list.is_empty() {
            return Err(Error::InvalidArgument("no node address given".into()));
        }
        Ok(nodes)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn get(&self, index: usize) -> Arc<Node> {
        Arc::clone(&self.list[index % self.list.len()])
    }

    pub fn addrs(&self) -> Vec<String> {
        self.list.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn leader(&self) -> Option<usize> {
        self.leader
    }

    pub fn pick(&self, route: Route) -> usize {
        match route {
            Route::Leader => self.leader.unwrap_or(self.cursor),
            Route::Any => self.reader,
            Route::Node(i) => i % self.list.len(),
        }
    }

    /// The index of `addr`, added when new (and when there is room).
    pub fn find_or_add(&mut self, addr: &str, options: &ClientOptions) -> Result<usize> {
        if addr.trim().starts_with("https://") && options.tls.is_none() {
            return Err(Error::InvalidArgument(format!(
                "node address {addr:?} asks for TLS, but no CA to verify the nodes was given (ClientOptions::tls; \
                 the CLI's --tls-ca)"
            )));
        }
        let addr = normalize(addr)?;
        if let Some(i) = self.list.iter().position(|n| n.addr == addr) {
            return Ok(i);
        }
        if self.list.len() >= MAX_NODES {
            return Err(Error::InvalidArgument(format!("more than {MAX_NODES} node addresses; not adding {addr}")));
        }
        self.list.push(Arc::new(Node::new(&addr, options)?));
        Ok(self.list.len() - 1)
    }

    pub fn set_leader(&mut self, index: usize) {
        debug_assert!(index < self.list.len());
        self.leader = Some(index);
    }

    pub fn succeeded(&mut self, route: Route, index: usize) {
        match route {
            Route::Leader => self.leader = Some(index),
            Route::Any => self.reader = index,
            Route::Node(_) => {}
        }
    }

    /// After `index` failed: forget it as leader and return the node to try next.
    pub fn failed(&mut self, route: Route, index: usize) -> usize {
        let next = (index + 1) % self.list.len();
        match route {
            Route::Leader => {
                if self.leader == Some(index) {
                    self.leader = None;
                }
                self.cursor = next;
                next
            }
            Route::Any => next,
            Route::Node(_) => index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_port_with_an_optional_scheme() {
        assert_eq!(normalize("127.0.0.1:9091").ok(), Some("127.0.0.1:9091".into()));
        assert_eq!(normalize(" http://node-2:9092/ ").ok(), Some("node-2:9092".into()));
        assert_eq!(normalize("https://node-2:9092").ok(), Some("node-2:9092".into()));
        assert_eq!(normalize("[::1]:9093").ok(), Some("[::1]:9093".into()));
        for bad in ["", "node-1", ":9091", "node:0", "node:http", "https://a:1/x", "a b:1"] {
            assert!(normalize(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn https_addresses_need_a_ca() {
        // Phase: without TLS options an https:// address is refused, naming the option.
        let err = Nodes::new(&["https://a:1".to_string()], &ClientOptions::default()).err().expect("no CA given");
        assert!(err.to_string().contains("--tls-ca"), "{err}");
        // Phase: with them it is the same node as the bare host:port.
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let tls = crate::TlsOptions::from_ca_pem(cert).expect("one certificate");
        let options = ClientOptions { tls: Some(tls), ..ClientOptions::default() };
        let mut nodes = Nodes::new(&["https://a:1".to_string()], &options).expect("CA given");
        assert_eq!(nodes.find_or_add("a:1", &options).ok(), Some(0));
    }

    #[test]
    fn failures_rotate_and_forget_the_leader() {
        let options = ClientOptions::default();
        let addrs: Vec<String> = ["a:1", "b:2", "c:3"].iter().map(|s| s.to_string()).collect();
        let mut nodes = Nodes::new(&addrs, &options).expect("valid addresses");
        // Phase: a leader hint that is already known maps to its index; a new one is added.
        assert_eq!(nodes.find_or_add("http://b:2", &options).ok(), Some(1));
        assert_eq!(nodes.find_or_add("d:4", &options).ok(), Some(3));
        nodes.set_leader(1);
        assert_eq!(nodes.pick(Route::Leader), 1);
        // Phase: the leader failing clears it, and writes walk on from there.
        assert_eq!(nodes.failed(Route::Leader, 1), 2);
        assert_eq!(nodes.leader(), None);
        assert_eq!(nodes.pick(Route::Leader), 2);
        assert_eq!(nodes.failed(Route::Leader, 3), 0, "wraps around");
        // Phase: reads stick to where they last succeeded.
        nodes.succeeded(Route::Any, 2);
        assert_eq!(nodes.pick(Route::Any), 2);
    }
}
