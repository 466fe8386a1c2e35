//! The admin actor: the axum HTTP server on `admin.listen` (status,
//! cluster, topics, digest, membership, snapshots, `/metrics`, health and
//! the web page), and a once-a-second sampler of the flush counters.
//!
//! Reads are open. Mutations need `Authorization: Bearer <admin.token>` when
//! the token is set. Every error is JSON `{"error": "..."}` naming what was
//! wrong. The API is described in `docs/admin-api.md` and, for machines, in
//! `openapi.json` (served at `/api/v1/openapi.json`).

mod digest;
pub mod metrics;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use keel_raft_log::Store;
use openraft::async_runtime::WatchReceiver;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::durable::DurableHandle;
use super::network::Peers;
use super::state::State as MachineState;
use super::state_machine::Raft;
use super::state_machine::Shared;

/// How long `/api/v1/cluster` waits for each peer.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a snapshot may take before the answer is 504; a membership
/// change may take longer (`keel_client::MEMBERSHIP_CHANGE_WAIT`).
const MUTATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node at a new member's address has to say who it is.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(3);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A leader without a quorum's acknowledgement for this long (twice the
/// longest election timeout) is not ready.
const STALE_LEADER_MS: u64 = 3_200;

/// The machine-readable API description.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The node's handles the admin API reads. It changes the node only
/// through their own calls (a membership change through Raft, a snapshot
/// through the state machine), never by reaching into them.
pub struct NodeHandles {
    pub node_id: u64,
    pub raft: Raft,
    pub store: Store,
    pub shared: Arc<Shared>,
    pub durable: DurableHandle,
    pub peers: Peers,
    /// `store.reserve.bytes`, for the advice.
    pub reserve: crate::server::reserve::DiskReserve,
    /// Which cluster this node belongs to.
    pub identity: super::identity::Identity,
}

/// The node's configuration as the admin API shows and uses it.
pub struct AdminSettings {
    /// The `flush.*` keys and their effective values.
    pub flush_config: BTreeMap<&'static str, String>,
    pub advertised: String,
    pub token: Option<String>,
    /// `Some` when the gRPC port speaks TLS: the membership calls made
    /// through `keel-client` verify the leader against `tls.ca`.
    pub client_tls: Option<keel_client::TlsOptions>,
}

/// What the admin handlers read and steer: a read-only view of the node's
/// handles, its settings, and the admin API's own state.
pub struct Admin {
    node: NodeHandles,
    settings: AdminSettings,
    started: Instant,
    sampler: status::Sampler,
    /// Damaged log ranges repaired from a peer at start-up.
    repairs: Vec<super::repair::Repaired>,
}

impl Admin {
    pub fn new(node: NodeHandles, settings: AdminSettings, repairs: Vec<super::repair::Repaired>) -> Self {
        Admin { node, settings, started: Instant::now(), sampler: status::Sampler::default(), repairs }
    }
}

/// An error answer: `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"keel admin\""));
        }
        r
    }
}

type Api<T> = Result<T, ApiError>;
type Shared_ = State<Arc<Admin>>;

/// Bind `admin.listen` (before the node starts anything else, so a port in
/// use stops it at once, naming the key).
pub fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("listen on admin.listen {listen}"))?;
    listener.set_nonblocking(true).context("admin listener")?;
    tokio::net::TcpListener::from_std(listener).context("admin listener")
}

/// Serve the admin API on `listener` until `shutdown` turns true.
pub async fn serve(
    admin: Arc<Admin>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(admin = %addr, "admin HTTP listening");
    }
    let sampler = {
        let admin = admin.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        admin.sampler.sample(&admin.node.store);
                        // Folds the histogram samples recorded since; without
                        // it they pile up until the next scrape.
                        crate::server::metrics::handle().run_upkeep();
                    }
                    _ = shutdown.wait_for(|&s| s) => return,
                }
            }
        })
    };
    let app = router(admin);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|&s| s).await;
        })
        .await
        .context("admin HTTP server")?;
    let _ = sampler.await;
    Ok(())
}

/// Every API route: the router serves these, and a test checks that
/// `openapi.json` describes exactly these.
fn routes() -> Vec<(&'static str, MethodRouter<Arc<Admin>>)> {
    vec![
        ("/", get(page)),
        ("/api/v1/status", get(get_status)),
        ("/api/v1/cluster", get(get_cluster)),
        ("/api/v1/topics", get(get_topics)),
        ("/api/v1/storage/digest", get(get_digest)),
        ("/api/v1/members", post(add_member)),
        ("/api/v1/members/{id}", delete(remove_member)),
        ("/api/v1/snapshot", post(snapshot)),
        ("/api/v1/openapi.json", get(openapi)),
        ("/metrics", get(get_metrics)),
        ("/healthz", get(healthz)),
        ("/readyz", get(readyz)),
    ]
}

pub fn router(admin: Arc<Admin>) -> Router {
    let mut router = Router::new();
    for (path, route) in routes() {
        router = router.route(path, route);
    }
    // The page's own files, at the paths index.html names them by.
    for asset in keel_admin_ui::ASSETS.iter().filter(|a| a.path != "index.html") {
        router = router.route(&format!("/{}", asset.path), get(move || async move { asset_response(asset) }));
    }
    router.fallback(not_found).method_not_allowed_fallback(method_not_allowed).with_state(admin)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such path: {} (see /api/v1/openapi.json)", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {} (see /api/v1/openapi.json)", uri.path()),
    )
}

fn asset_response(a: &keel_admin_ui::Asset) -> Response {
    ([(header::CONTENT_TYPE, a.content_type), (header::CACHE_CONTROL, "no-cache")], a.body).into_response()
}

async fn page() -> Response {
    keel_admin_ui::asset("").map_or_else(|| not_found_text("index.html"), asset_response)
}

fn not_found_text(what: &str) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such file in the admin page: {what}")).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn get_status(State(admin): Shared_) -> axum::Json<status::NodeStatus> {
    axum::Json(admin.status())
}

async fn get_cluster(State(admin): Shared_) -> axum::Json<Value> {
    let m = admin.node.raft.metrics().borrow_watched().clone();
    let members = status::members_of(m.membership_config.membership());
    let asks = members.iter().map(|member| {
        let admin = admin.clone();
        let member = member.clone();
        async move {
            let (status, error) = if member.id == admin.node.node_id {
                (serde_json::to_value(admin.status()).ok(), None)
            } else {
                match admin.node.peers.node_status(&member.addr, member.id, PEER_STATUS_TIMEOUT).await {
                    Ok(text) => match serde_json::from_str::<Value>(&text) {
                        Ok(v) => (Some(v), None),
                        Err(e) => (None, Some(format!("node {} answered a status that is not JSON: {e}", member.id))),
                    },
                    Err(e) => (None, Some(format!("node {} at {}: {e}", member.id, member.addr))),
                }
            };
            json!({
                "node_id": member.id,
                "addr": member.addr,
                "voter": member.voter,
                "reachable": status.is_some(),
                "error": error,
                "status": status,
            })
        }
    });
    let nodes = futures::future::join_all(asks).await;
    axum::Json(json!({ "asked_by": admin.node.node_id, "leader_id": m.current_leader, "nodes": nodes }))
}

async fn get_topics(State(admin): Shared_) -> axum::Json<Value> {
    let machine = admin.node.shared.read();
    let applied = machine.last_applied.map(|l| l.index);
    let topics: Vec<Value> = machine.state.topics.keys().filter_map(|name| topic_json(&machine.state, name)).collect();
    axum::Json(json!({ "node_id": admin.node.node_id, "applied": applied, "topics": topics }))
}

fn topic_json(s: &MachineState, name: &str) -> Option<Value> {
    let t = super::describe::topic_info(s, name).ok()?;
    Some(json!({
        "name": t.name,
        "incarnation": t.incarnation,
        "partitions": t.partitions,
        "retention_ms": t.retention_ms,
        "retention_bytes": t.retention_bytes,
        "max_message_bytes": t.max_message_bytes,
        "partition_info": t.partition_info.iter().map(|p| json!({
            "partition": p.partition,
            "first_offset": p.start_offset,
            "next_offset": p.end_offset,
            "bytes": p.bytes,
        })).collect::<Vec<_>>(),
        "groups": t.groups.iter().map(|g| json!({
            "group": g.group,
            "partition": g.partition,
            "committed": g.committed,
            "lag": g.lag,
        })).collect::<Vec<_>>(),
    }))
}

/// Parse query parameters: only `allowed` names, each a non-negative integer.
fn index_params(q: &HashMap<String, String>, allowed: &[&str]) -> Api<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for (k, v) in q {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?}; this endpoint takes {}",
                allowed.join(", ")
            )));
        }
        let n = v
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("{k}={v:?} is not a log index (a whole number ≥ 0)")))?;
        out.insert(k.clone(), n);
    }
    Ok(out)
}

async fn get_digest(
    State(admin): Shared_,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Api<axum::Json<digest::Digest>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let p = index_params(&q, &["from", "upto"])?;
    let (from, upto) = (p.get("from").copied(), p.get("upto").copied());
    let store = admin.node.store.clone();
    let d = tokio::task::spawn_blocking(move || digest::digest(&store, from, upto))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("digest task failed: {e}")))?
        .map_err(|e| match e {
            digest::DigestError::Range(m) => ApiError::bad_request(m),
            digest::DigestError::Gone(m) => ApiError::new(StatusCode::CONFLICT, m),
            digest::DigestError::Read(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m),
        })?;
    Ok(axum::Json(d))
}

/// Mutations need the token when one is configured, and never come from
/// another site's page: a browser sends `Origin` with every cross-site
/// POST (even one that needs no preflight), so a request whose `Origin` is
/// not this server is refused whatever the token.
fn authorize(admin: &Admin, headers: &HeaderMap) -> Api<()> {
    check_origin(headers)?;
    check_token(admin.settings.token.as_deref(), headers)
}

fn check_origin(headers: &HeaderMap) -> Api<()> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    if !host.is_empty() && authority == Some(host) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!("a change requested by the page at {origin:?}, not by this server's own page ({host}), is refused"),
    ))
}

fn check_token(token: Option<&str>, headers: &HeaderMap) -> Api<()> {
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    super::auth::check_bearer(token, given).map_err(|refusal| match refusal {
        super::auth::Refusal::Wrong => {
            ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token does not match admin.token")
        }
        super::auth::Refusal::Missing => {
            ApiError::new(StatusCode::UNAUTHORIZED, "this change needs the header Authorization: Bearer <admin.token>")
        }
    })
}

/// The body decoded into `T` (a `deny_unknown_fields` struct, so a typo is
/// refused instead of ignored); an empty body is `T` from `{}` when
/// `empty_ok`. serde's message names the field and what it expected.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes, empty_ok: bool) -> Api<T> {
    let empty = body.iter().all(u8::is_ascii_whitespace);
    if empty && !empty_ok {
        return Err(ApiError::bad_request("the request body is empty; it must be a JSON object"));
    }
    let text: &[u8] = if empty { b"{}" } else { body };
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(text)).map_err(|e| {
        let (path, e) = (e.path().to_string(), e.into_inner());
        match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::bad_request(format!("the body is not valid JSON: {e}"))
            }
            // `.` is the body itself (a missing or unknown field names itself).
            _ if path == "." => ApiError::bad_request(format!("the body: {e}")),
            _ => ApiError::bad_request(format!("{path}: {e}")),
        }
    })
}

/// `POST /api/v1/members`.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a JSON object with id, addr and optionally promote")]
struct AddMember {
    /// The new node's id, at least 1.
    id: u64,
    /// Its gRPC address, host:port.
    addr: String,
    /// Make it a voter once it caught up (default) or keep it a learner.
    #[serde(default = "promote_by_default")]
    promote: bool,
}

fn promote_by_default() -> bool {
    true
}

impl AddMember {
    fn parse(body: &Bytes) -> Api<Self> {
        let m: Self = json_body(body, false)?;
        if m.id == 0 {
            return Err(ApiError::bad_request("id: 0 is not a node id (a whole number ≥ 1)"));
        }
        validate_addr(&m.addr)?;
        Ok(m)
    }
}

/// `POST /api/v1/snapshot` takes no fields.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "an empty JSON object (or no body)")]
struct NoFields {}

/// A client to the cluster this node knows, which follows the leader.
fn cluster_client(admin: &Admin) -> Api<keel_client::Client> {
    let members = status::members_of(admin.node.raft.metrics().borrow_watched().membership_config.membership());
    let mut addrs: Vec<String> = members.into_iter().map(|m| m.addr).collect();
    if addrs.is_empty() {
        addrs.push(admin.settings.advertised.clone());
    }
    // The gRPC membership calls need the token as much as this endpoint did.
    let options = keel_client::ClientOptions {
        call_timeout: MUTATION_TIMEOUT,
        tls: admin.settings.client_tls.clone(),
        token: admin.settings.token.clone(),
        ..Default::default()
    };
    keel_client::Client::with_options(addrs, options)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot reach the cluster: {e}")))
}

fn client_error(e: keel_client::Error) -> ApiError {
    use keel_client::Error;
    use keel_proto::client::ErrorCode;
    let status = match &e {
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::Server { code: ErrorCode::InvalidArgument, .. } => StatusCode::BAD_REQUEST,
        Error::Server { code: ErrorCode::NoLeader | ErrorCode::NotLeader, .. } => StatusCode::CONFLICT,
        Error::Server { code: ErrorCode::OutcomeUnknown, .. } | Error::OutcomeUnknown { .. } => {
            StatusCode::GATEWAY_TIMEOUT
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

async fn add_member(State(admin): Shared_, headers: HeaderMap, body: Bytes) -> Api<axum::Json<Value>> {
    authorize(&admin, &headers)?;
    let req = AddMember::parse(&body)?;
    // An id or address that is already a member's is the leader's to
    // refuse: its answer names the member and its address.
    let members = status::members_of(admin.node.raft.metrics().borrow_watched().membership_config.membership());
    if !members.iter().any(|m| m.id == req.id || m.addr.eq_ignore_ascii_case(&req.addr)) {
        check_identity(&admin, req.id, &req.addr).await?;
    }
    let r = cluster_client(&admin)?.add_node(req.id, &req.addr, req.promote).await.map_err(client_error)?;
    Ok(axum::Json(membership_json(&r)))
}

/// The node that answers at `addr` must be node `id`. The leader refuses an
/// address another member has, but not one where a node that is no member
/// (say, one removed earlier) listens: that node would answer the
/// AppendEntries meant for `id`, look caught up, and be counted as `id`.
/// Asked over the client API (ClusterInfo names the node), from this node,
/// which sees the network as the leader does.
async fn check_identity(admin: &Admin, id: u64, addr: &str) -> Api<()> {
    let options = keel_client::ClientOptions {
        call_timeout: IDENTITY_TIMEOUT,
        request_timeout: IDENTITY_TIMEOUT,
        tls: admin.settings.client_tls.clone(),
        token: admin.settings.token.clone(),
        ..Default::default()
    };
    let client = keel_client::Client::with_options(vec![addr.to_string()], options)
        .map_err(|e| ApiError::bad_request(format!("addr: {e}")))?;
    match client.cluster_info().await {
        Ok(info) if info.node_id == id => Ok(()),
        Ok(info) => Err(ApiError::bad_request(format!(
            "the node at {addr} is node {}, not node {id} (its node.id); node {id} must be added at its own address",
            info.node_id
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "no keel node answers at {addr} within {} s ({e}); start node {id} there first",
            IDENTITY_TIMEOUT.as_secs()
        ))),
    }
}

fn validate_addr(addr: &str) -> Api<()> {
    let ok =
        addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok { Ok(()) } else { Err(ApiError::bad_request(format!("addr: {addr:?} is not host:port"))) }
}

async fn remove_member(
    State(admin): Shared_,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Api<axum::Json<Value>> {
    authorize(&admin, &headers)?;
    // axum's own rejection (say, a percent-escape that is not UTF-8) is
    // plain text; every error of this API is JSON.
    let Path(id) = id.map_err(|e| ApiError::bad_request(format!("id: {}", e.body_text())))?;
    let id: u64 = id
        .parse()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("id: {id:?} is not a node id (a whole number ≥ 1)")))?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let force = force_param(&q)?;
    let r = cluster_client(&admin)?.remove_node(id, force).await.map_err(client_error)?;
    Ok(axum::Json(membership_json(&r)))
}

/// `?force=true|false`, the only query parameter of a removal (absent: false).
fn force_param(q: &HashMap<String, String>) -> Api<bool> {
    if let Some(k) = q.keys().find(|k| k.as_str() != "force") {
        return Err(ApiError::bad_request(format!("unknown query parameter {k:?}; this endpoint takes force")));
    }
    match q.get("force").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!("force={v:?} is not true or false"))),
    }
}

fn membership_json(r: &keel_proto::client::MembershipResponse) -> Value {
    json!({
        "log_index": r.log_index,
        "members": r.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter})).collect::<Vec<_>>(),
    })
}

/// Build a snapshot on this node now, covering what it has applied.
async fn snapshot(State(admin): Shared_, headers: HeaderMap, body: Bytes) -> Api<axum::Json<Value>> {
    authorize(&admin, &headers)?;
    let NoFields {} = json_body(&body, true)?;
    let applied = admin.node.raft.metrics().borrow_watched().last_applied.map(|l| l.index);
    let Some(applied) = applied else {
        return Err(ApiError::new(StatusCode::CONFLICT, "nothing is applied yet, so there is nothing to snapshot"));
    };
    admin
        .node
        .raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot trigger a snapshot: {e}")))?;
    let mut metrics = admin.node.raft.metrics();
    let built = tokio::time::timeout(
        MUTATION_TIMEOUT,
        super::types::wait_metrics(&mut metrics, |m| m.snapshot.is_some_and(|s| s.index >= applied)),
    )
    .await;
    match built {
        Ok(Ok(m)) => Ok(axum::Json(json!({ "snapshot_index": m.snapshot.map(|s| s.index) }))),
        Ok(Err(_)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "raft stopped while building the snapshot")),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the snapshot was not built within {MUTATION_TIMEOUT:?}; it may still finish"),
        )),
    }
}

async fn get_metrics(State(admin): Shared_) -> Response {
    let text = metrics::render(&admin);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn healthz(State(admin): Shared_) -> Response {
    let raft_failure = admin.node.raft.metrics().borrow_watched().running_state.as_ref().err().map(|e| e.to_string());
    let failure = admin.node.store.failure().map(|e| format!("log store failed: {e}")).or(raft_failure);
    match failure {
        None => (StatusCode::OK, axum::Json(json!({ "status": "ok", "node_id": admin.node.node_id }))).into_response(),
        Some(f) => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "failed", "error": f }))).into_response()
        }
    }
}

async fn readyz(State(admin): Shared_) -> Response {
    let m = admin.node.raft.metrics().borrow_watched().clone();
    let mut not_ready = Vec::new();
    if m.membership_config.membership().get_node(&admin.node.node_id).is_none() {
        not_ready.push(format!("node {} is not a member of the cluster (yet)", admin.node.node_id));
    }
    if m.current_leader.is_none() {
        not_ready.push("no leader is known".to_string());
    }
    // A leader cut off from its peers still calls itself leader until it
    // hears of a newer term; it is not fit to serve.
    if m.current_leader == Some(admin.node.node_id)
        && let Some(ms) = m
            .last_quorum_acked
            .as_ref()
            .map(|t| openraft::Instant::elapsed(&**t).as_millis() as u64)
            .filter(|&ms| ms > STALE_LEADER_MS)
    {
        not_ready.push(format!("this leader has not heard from a quorum for {ms} ms"));
    }
    // After a restart or an election the node's state may end before what
    // was acknowledged under an earlier term until it applies an entry of
    // the current one (`client_service::current`): reads wait for it too.
    if m.current_leader.is_some() && m.last_applied.is_none_or(|a| a.leader_id.term != m.current_term) {
        not_ready.push(format!(
            "no entry of the current term {} applied yet (an election or restart is settling)",
            m.current_term
        ));
    }
    let mut committed = admin.node.store.read_committed().map_or(0, |c| c.index);
    if super::durable::waits_for_fsync(admin.node.store.config().flush.policy) {
        // The durable index is the commit index here (`durable.rs`); the
        // minimum only guards against a figure read between the two.
        committed = committed.min(admin.node.durable.durable_index());
    }
    let applied = m.last_applied.map_or(0, |l| l.index);
    if applied < committed {
        not_ready.push(format!("applied index {applied} is behind the commit index {committed}"));
    }
    if let Some(e) = admin.node.store.failure() {
        not_ready.push(format!("log store failed: {e}"));
    }
    if not_ready.is_empty() {
        (StatusCode::OK, axum::Json(json!({ "status": "ready", "leader_id": m.current_leader }))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "not ready", "reasons": not_ready })))
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(body: &str) -> Result<AddMember, String> {
        AddMember::parse(&Bytes::from(body.to_string())).map_err(|e| e.message)
    }

    #[test]
    fn add_member_bodies_are_checked_field_by_field() {
        assert_eq!(
            add(r#"{"id": 4, "addr": "10.0.0.4:9091"}"#),
            Ok(AddMember { id: 4, addr: "10.0.0.4:9091".into(), promote: true })
        );
        assert_eq!(add(r#"{"id": 4, "addr": "n4:1", "promote": false}"#).map(|a| a.promote), Ok(false));
        for (body, names) in [
            ("", "empty"),
            ("[1]", "expected a JSON object with id, addr and optionally promote"),
            ("{\"id\": 4,", "not valid JSON"),
            ("{not json", "not valid JSON"),
            (r#"{"addr": "n4:1"}"#, "missing field `id`"),
            (r#"{"id": "four", "addr": "n4:1"}"#, "id: invalid type: string \"four\", expected u64"),
            (r#"{"id": 0, "addr": "n4:1"}"#, "id: 0"),
            (r#"{"id": -3, "addr": "n4:1"}"#, "id: invalid value: integer `-3`, expected u64"),
            (r#"{"id": 4}"#, "missing field `addr`"),
            (r#"{"id": 4, "addr": 9091}"#, "addr: invalid type: integer `9091`, expected a string"),
            (r#"{"id": 4, "addr": "n4"}"#, "addr: \"n4\""),
            (r#"{"id": 4, "addr": "n4:99999"}"#, "addr: \"n4:99999\""),
            (
                r#"{"id": 4, "addr": "n4:1", "promote": "yes"}"#,
                "promote: invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"id": 4, "addr": "n4:1", "promte": true}"#,
                "unknown field `promte`, expected one of `id`, `addr`, `promote`",
            ),
        ] {
            let e = add(body).expect_err(body);
            assert!(e.contains(names), "{body}: {e:?} does not name {names:?}");
        }
    }

    #[test]
    fn query_parameters_are_log_indexes_and_only_the_known_ones() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ok = index_params(&q(&[("from", "3"), ("upto", "9")]), &["from", "upto"]).expect("valid");
        assert_eq!((ok["from"], ok["upto"]), (3, 9));
        let e = index_params(&q(&[("from", "-1")]), &["from", "upto"]).expect_err("negative");
        assert!(e.message.starts_with("from="), "{}", e.message);
        let e = index_params(&q(&[("frm", "1")]), &["from", "upto"]).expect_err("typo");
        assert!(e.message.contains("\"frm\""), "{}", e.message);
    }

    #[test]
    fn force_is_the_only_removal_parameter_and_is_true_or_false() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(force_param(&q(&[])).ok(), Some(false));
        assert_eq!(force_param(&q(&[("force", "true")])).ok(), Some(true));
        assert_eq!(force_param(&q(&[("force", "false")])).ok(), Some(false));
        let e = force_param(&q(&[("force", "1")])).expect_err("not a boolean");
        assert!(e.message.contains("force=\"1\""), "{}", e.message);
        let e = force_param(&q(&[("forc", "true")])).expect_err("a typo");
        assert!(e.message.contains("\"forc\""), "{}", e.message);
    }

    #[test]
    fn the_token_is_required_exactly_when_set() {
        let mut h = HeaderMap::new();
        assert!(check_token(None, &h).is_ok());
        let e = check_token(Some("s3cret"), &h).expect_err("no header");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer nope"));
        assert_eq!(check_token(Some("s3cret"), &h).expect_err("wrong").status, StatusCode::UNAUTHORIZED);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(check_token(Some("s3cret"), &h).is_ok());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer s3cret"));
        assert!(check_token(Some("s3cret"), &h).is_ok(), "the scheme is case-insensitive");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("s3cret"));
        assert!(check_token(Some("s3cret"), &h).is_err(), "the Bearer scheme is required");
    }

    #[test]
    fn changes_from_another_sites_page_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9191"));
        assert!(check_origin(&h).is_ok(), "curl sends no Origin");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9191"));
        assert!(check_origin(&h).is_ok(), "the admin page itself");
        for other in ["http://evil.example", "null", "http://127.0.0.1:9192"] {
            h.insert(header::ORIGIN, HeaderValue::from_static(other));
            assert_eq!(check_origin(&h).expect_err(other).status, StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().expect("paths");
        let served: Vec<&str> = routes().into_iter().map(|(p, _)| p).collect();
        for p in &served {
            assert!(paths.contains_key(*p), "{p} is served but not in openapi.json");
        }
        for p in paths.keys() {
            assert!(served.contains(&p.as_str()), "{p} is in openapi.json but not served");
        }
    }
}
