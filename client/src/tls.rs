//! TLS towards the nodes: which CA to trust, and the tonic configuration
//! made from it.
//!
//! keel is built with rustls and no root store of its own (neither the
//! system's nor a bundled one): a client trusts exactly the CA it is given,
//! the one that issued the nodes' certificates (`tls.ca` on the nodes). Each
//! node's certificate must name the host the client dials (an IP address
//! SAN for `127.0.0.1:9091`, a DNS SAN for `node-1:9091`), or
//! [`TlsOptions::domain_name`] sets the one name every node's certificate
//! carries.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::{Error, Result};

/// How a [`Client`](crate::Client) verifies the nodes (and, optionally,
/// proves who it is to them).
#[derive(Clone)]
pub struct TlsOptions {
    ca_pem: Vec<u8>,
    domain: Option<String>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsOptions")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("domain", &self.domain)
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl TlsOptions {
    /// Trust the CA certificate(s) in `pem`; refused unless it holds at
    /// least one well-formed `CERTIFICATE` block.
    pub fn from_ca_pem(pem: impl Into<Vec<u8>>) -> Result<Self> {
        let ca_pem = pem.into();
        let count = count_certificates(&ca_pem).map_err(|why| Error::InvalidArgument(format!("TLS CA: {why}")))?;
        debug_assert!(count > 0);
        Ok(Self { ca_pem, domain: None, identity: None })
    }

    /// Trust the CA certificate(s) in the PEM file at `path`; errors name
    /// the file.
    pub fn from_ca_file(path: &Path) -> Result<Self> {
        let pem = std::fs::read(path)
            .map_err(|e| Error::InvalidArgument(format!("TLS CA file {}: cannot read it: {e}", path.display())))?;
        count_certificates(&pem)
            .map_err(|why| Error::InvalidArgument(format!("TLS CA file {}: {why}", path.display())))?;
        Ok(Self { ca_pem: pem, domain: None, identity: None })
    }

    /// Expect this name in every node's certificate instead of the host
    /// dialled (for certificates that do not name the addresses in use).
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// Present this certificate chain and key to the nodes (PEM). keel's
    /// nodes need none from clients; they ask one of peers only.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The CA certificate(s), PEM.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    pub(crate) fn tonic_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// How many certificates `pem` holds; an error saying what is wrong when it
/// is not PEM or holds none.
pub fn count_certificates(pem: &[u8]) -> std::result::Result<usize, String> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| format!("not valid PEM: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("holds no PEM CERTIFICATE block".to_string());
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_must_hold_a_certificate() {
        // Phase: text that is no PEM at all, and PEM of another kind, are refused with a reason.
        let e = TlsOptions::from_ca_pem("hello").expect_err("not PEM");
        assert!(e.to_string().contains("no PEM CERTIFICATE"), "{e}");
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(TlsOptions::from_ca_pem(key_only).is_err());
        // Phase: an unreadable file is named.
        let e = TlsOptions::from_ca_file(Path::new("/nonexistent/ca.pem")).expect_err("no such file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        // Phase: a certificate block is accepted (its DER is checked by rustls at connect time).
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let options = TlsOptions::from_ca_pem(cert).expect("one certificate");
        assert_eq!(options.ca_pem(), cert.as_bytes());
        assert!(!format!("{options:?}").contains("AAAA"));
    }
}
