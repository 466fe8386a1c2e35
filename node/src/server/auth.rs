//! Who may change the cluster: the one `admin.token` check shared by the
//! admin HTTP API and the gRPC services, and the gRPC interceptors that guard
//! the peer service and carry the token on this node's own peer calls.
//!
//! - **Admin mutations** (HTTP: snapshot, membership; gRPC: create and delete
//!   topic, init cluster, add and remove node) need `authorization: Bearer
//!   <admin.token>` when the token is set. Produce, fetch, commit-offset and
//!   the reads stay open: they are the data plane, which brokers leave to
//!   network policy, and a client that may write records gains nothing from
//!   the token it could not already do.
//! - **Peer RPCs** (AppendEntries, Vote, InstallSnapshot, ReportSynced,
//!   NodeStatus, ReadEntries) need the token too when it is set (every node of a cluster
//!   has the same `admin.token`), and, when TLS is on, a client certificate
//!   issued by `tls.ca`: either closes the door on a stranger who would send
//!   AppendEntries or votes, and with both a stolen token alone is not enough.
//!
//! Tokens are compared in constant time, so the time of a refusal does not
//! tell how much of a guess was right.

use std::sync::Arc;

use keel_proto::client::ErrorCode;
use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::identity::{CLUSTER_ID, Identity, TARGET_NODE, cluster_hex};

/// The HTTP header and gRPC metadata key that carries the token.
pub const AUTHORIZATION: &str = "authorization";

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Bearer` credentials at all.
    Missing,
    /// A bearer token that is not `admin.token`.
    Wrong,
}

/// Whether `given` (the value of the `authorization` header or metadata, if
/// any) carries `expected` as a bearer token. `None` expected: no token is
/// configured and everything passes.
pub fn check_bearer(expected: Option<&str>, given: Option<&str>) -> Result<(), Refusal> {
    let Some(expected) = expected else { return Ok(()) };
    let bearer =
        given.and_then(|v| v.trim().split_once(' ')).filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
    match bearer {
        // subtle: the time depends only on the lengths, not on where the
        // first difference is.
        Some((_, token)) if bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        Some(_) => Err(Refusal::Wrong),
        None => Err(Refusal::Missing),
    }
}

/// The UNAUTHENTICATED status (with `keel-error: UNAUTHENTICATED`) for a
/// refused gRPC call; `what` names the call.
pub fn unauthenticated(refusal: Refusal, what: &str) -> Status {
    let message = match refusal {
        Refusal::Missing => {
            format!(
                "{what} needs the metadata `authorization: Bearer <admin.token>`; none was sent \
                 (keel CLI: --admin-token or KEEL_ADMIN_TOKEN)"
            )
        }
        Refusal::Wrong => format!("{what}: the bearer token does not match admin.token"),
    };
    super::grpc_status::error(ErrorCode::Unauthenticated, message)
}

/// Checks a gRPC call's metadata against `expected`.
pub fn check_metadata(expected: Option<&str>, metadata: &MetadataMap, what: &str) -> Result<(), Status> {
    let given = metadata.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    check_bearer(expected, given).map_err(|r| unauthenticated(r, what))
}

/// Server side of the peer service: the token when one is set, a client
/// certificate verified against `tls.ca` when TLS is on, and a call meant
/// for this node of this cluster ([`Identity::check_call`]).
#[derive(Clone)]
pub struct PeerGuard {
    pub token: Option<Arc<str>>,
    pub require_client_cert: bool,
    pub identity: Identity,
}

impl Interceptor for PeerGuard {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.require_client_cert {
            // rustls verified any certificate the client showed against
            // tls.ca during the handshake (client certificates are optional
            // on the port, since clients share it), so one being here means
            // a verified one.
            let presented = req.peer_certs().is_some_and(|certs| !certs.is_empty());
            if !presented {
                return Err(super::grpc_status::error(
                    ErrorCode::Unauthenticated,
                    "peer RPCs need a client certificate issued by this cluster's tls.ca (mutual TLS); none was \
                     presented",
                ));
            }
        }
        check_metadata(self.token.as_deref(), req.metadata(), "a peer RPC")?;
        self.identity.check_call(req.metadata())?;
        Ok(req)
    }
}

/// Client side of this node's peer calls: adds `authorization: Bearer
/// <admin.token>` when a token is set, and the node the call is meant for
/// and this node's cluster id (see [`super::identity`]).
#[derive(Clone)]
pub struct PeerCredentials {
    header: Option<AsciiMetadataValue>,
    identity: Identity,
    /// The node the call is meant for; 0: not yet addressed ([`Self::to`]).
    target: u64,
}

impl PeerCredentials {
    /// `None` when the token cannot travel as metadata (config validation
    /// keeps such a token out, see `config.rs`).
    pub fn new(token: Option<&str>, identity: Identity) -> anyhow::Result<Self> {
        let header = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| anyhow::anyhow!("admin.token cannot be sent as gRPC metadata"))?,
            ),
        };
        Ok(Self { header, identity, target: 0 })
    }

    /// The same credentials for calls meant for node `target`.
    pub fn to(&self, target: u64) -> Self {
        Self { target, ..self.clone() }
    }
}

impl Interceptor for PeerCredentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert(AUTHORIZATION, h.clone());
        }
        if self.target != 0 {
            req.metadata_mut().insert(TARGET_NODE, AsciiMetadataValue::from(self.target));
        }
        let cluster = self.identity.cluster_id();
        if cluster != 0 {
            let hex = cluster_hex(cluster).parse::<AsciiMetadataValue>().expect("hex digits are ASCII");
            req.metadata_mut().insert(CLUSTER_ID, hex);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked_only_when_one_is_configured() {
        // Phase: no token configured: anything passes.
        assert_eq!(check_bearer(None, None), Ok(()));
        assert_eq!(check_bearer(None, Some("Bearer x")), Ok(()));
        // Phase: a token configured: the scheme is case-insensitive, the token is not.
        assert_eq!(check_bearer(Some("s3cret"), Some("Bearer s3cret")), Ok(()));
        assert_eq!(check_bearer(Some("s3cret"), Some("bearer  s3cret ")), Ok(()));
        assert_eq!(check_bearer(Some("s3cret"), Some("Bearer S3CRET")), Err(Refusal::Wrong));
        assert_eq!(check_bearer(Some("s3cret"), Some("Bearer s3cre")), Err(Refusal::Wrong));
        // Phase: no bearer credentials at all.
        assert_eq!(check_bearer(Some("s3cret"), None), Err(Refusal::Missing));
        assert_eq!(check_bearer(Some("s3cret"), Some("s3cret")), Err(Refusal::Missing));
        assert_eq!(check_bearer(Some("s3cret"), Some("Basic s3cret")), Err(Refusal::Missing));
    }

    #[test]
    fn refusals_are_unauthenticated_and_name_what_is_missing() {
        let s = unauthenticated(Refusal::Missing, "DeleteTopic");
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(s.message().contains("DeleteTopic") && s.message().contains("authorization: Bearer"), "{s:?}");
        assert_eq!(s.metadata().get("keel-error").and_then(|v| v.to_str().ok()), Some("UNAUTHENTICATED"));
        assert!(unauthenticated(Refusal::Wrong, "AddNode").message().contains("does not match admin.token"));
    }

    #[test]
    fn the_peer_guard_wants_the_token_and_the_credentials_carry_it() {
        // Phase: our own credentials pass our own guard.
        let identity = Identity::new(1);
        let mut guard =
            PeerGuard { token: Some(Arc::from("t0k")), require_client_cert: false, identity: identity.clone() };
        let mut creds = PeerCredentials::new(Some("t0k"), identity.clone()).expect("a plain token").to(1);
        let req = creds.call(Request::new(())).expect("credentials never refuse");
        assert!(guard.call(req).is_ok());
        // Phase: no credentials, or another cluster's token, are refused.
        let err = guard.call(Request::new(())).expect_err("no token passed");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let mut other = PeerCredentials::new(Some("other"), identity.clone()).expect("a plain token");
        assert!(guard.call(other.call(Request::new(())).expect("ok")).is_err());
        // Phase: the right token, but meant for another node.
        let mut elsewhere = PeerCredentials::new(Some("t0k"), identity.clone()).expect("a plain token").to(4);
        let err = guard.call(elsewhere.call(Request::new(())).expect("ok")).expect_err("meant for node 4");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        // Phase: with TLS on, a call that came without a client certificate
        // (here: not over TLS at all) is refused even with the token.
        let mut tls_guard = PeerGuard { token: None, require_client_cert: true, identity };
        let err = tls_guard.call(Request::new(())).expect_err("no certificate passed");
        assert!(err.message().contains("client certificate"), "{err:?}");
    }
}
