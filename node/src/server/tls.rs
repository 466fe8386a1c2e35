//! TLS for the gRPC port, from the `tls.*` keys: the server side (clients
//! and peers on one port) and the client side of this node's peer calls and
//! of the admin API's membership calls.
//!
//! Peers use mutual TLS: a node presents its `tls.cert` when it dials a
//! peer, and the peer service refuses calls that came without a certificate
//! issued by `tls.ca` (see [`super::auth::PeerGuard`]). Clients share the
//! port and need no certificate, so the handshake asks for one without
//! requiring it; rustls still verifies any certificate that is presented.
//! keel's rustls has no root store of its own: only `tls.ca` is trusted.

use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::TlsFiles;

/// A client that opens a connection and never finishes the handshake gives
/// its slot back after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gRPC server serves with.
pub fn server_config(tls: &TlsFiles) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert.pem, &tls.key.pem))
        .client_ca_root(Certificate::from_pem(&tls.ca.pem))
        .client_auth_optional(true)
        .timeout(HANDSHAKE_TIMEOUT)
}

/// What this node dials its peers with: their certificates verified against
/// `tls.ca`, its own presented as the client certificate.
pub fn peer_client_config(tls: &TlsFiles) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca.pem))
        .identity(Identity::from_pem(&tls.cert.pem, &tls.key.pem))
        .timeout(HANDSHAKE_TIMEOUT)
}

/// The admin API's membership calls go through `keel-client` to the
/// leader, verifying it against `tls.ca`.
pub fn client_options(tls: &TlsFiles) -> anyhow::Result<keel_client::TlsOptions> {
    keel_client::TlsOptions::from_ca_pem(tls.ca.pem.clone())
        .with_context(|| format!("tls.ca = {}", tls.ca.path.display()))
}

/// Builds both sides once at start-up, so a certificate and key that do not
/// belong together (or that rustls cannot use) stop the node with the files
/// named, instead of failing each connection later.
pub fn check(tls: &TlsFiles) -> anyhow::Result<()> {
    let files = || {
        format!(
            "tls.cert = {}, tls.key = {}, tls.ca = {}",
            tls.cert.path.display(),
            tls.key.path.display(),
            tls.ca.path.display()
        )
    };
    tonic::transport::Server::builder()
        .tls_config(server_config(tls))
        .map_err(|e| anyhow::anyhow!("{}: not a usable TLS server identity: {}", files(), error_chain(&e)))?;
    Endpoint::from_static("https://peer.invalid")
        .tls_config(peer_client_config(tls))
        .map_err(|e| anyhow::anyhow!("{}: not a usable TLS client identity: {}", files(), error_chain(&e)))?;
    Ok(())
}

/// tonic's transport error says only "transport error"; the cause is below.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    // Bounded: a cyclic chain must not loop forever.
    for _ in 0..8 {
        let Some(s) = source else { break };
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
