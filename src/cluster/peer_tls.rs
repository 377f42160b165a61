//! The `ractor_cluster` link over mutual TLS (`cluster.tls_ca`, `tls_cert`, `tls_key`).
//!
//! ractor_cluster's own handshake proves the cookie but sends every actor message in the
//! clear. With these settings each side presents a certificate that must chain to the
//! cluster's CA (the server requires one from every client), so a link is encrypted and
//! both ends are known nodes of this cluster. The certificates are read once at start;
//! a bad file stops the node naming the key.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why the link's TLS could not be set up; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct PeerTlsError {
    key: &'static str,
    reason: String,
}

fn fail(key: &'static str) -> impl Fn(String) -> PeerTlsError {
    move |reason| PeerTlsError { key, reason }
}

/// Both halves of the link's TLS: what this node's server accepts with, and what it
/// connects to its peers with.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    /// Reads the CA, this node's certificate chain and its key (PEM files).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<PeerTls, PeerTlsError> {
        let certs_of = |k: &'static str, path: &Path| {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(k)(format!("cannot read {}: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| fail(k)(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(fail(k)(format!("no PEM certificate in {}", path.display())));
            }
            Ok(certs)
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certs_of("cluster.tls_ca", ca)? {
            roots
                .add(c)
                .map_err(|e| fail("cluster.tls_ca")(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let chain = certs_of("cluster.tls_cert", cert)?;
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| fail("cluster.tls_key")(format!("{}: {e}", key.display())))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| fail("cluster.tls_ca")(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("cluster.tls_cert")(e.to_string()))?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(|e| fail("cluster.tls_key")(e.to_string()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("cluster.tls_cert")(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .map_err(|e| fail("cluster.tls_key")(e.to_string()))?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The name a peer's certificate must hold: the host of its advertised address.
    pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|e| format!("{addr}: not a host name or address: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::PeerTls;

    #[test]
    fn the_server_name_is_the_advertised_host() {
        assert_eq!(
            format!("{:?}", PeerTls::server_name("10.0.0.7:4697").unwrap()),
            "IpAddress(V4(Ipv4Addr([10, 0, 0, 7])))"
        );
        assert!(PeerTls::server_name("node-a.example:4697").is_ok());
        assert!(PeerTls::server_name("[::1]:4697").is_ok());
        assert!(PeerTls::server_name("bad host:1").is_err());
    }
}
