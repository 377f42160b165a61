//! An HTTPS server for the TLS tests: an axum router served over tokio-rustls with the test
//! PKI's server certificate (for `localhost` and 127.0.0.1), on a free port of 127.0.0.1.
//! Clients trust it only through the PKI's CA file, which is the point of the tests.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::pki::Pki;

/// A TCP listener whose connections are TLS sessions; a failed handshake (a client that
/// does not trust the certificate) is dropped and the next connection accepted.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves `app` over HTTPS on 127.0.0.1 (on the test's runtime) and returns its address.
pub async fn serve(app: axum::Router, pki: &Pki) -> SocketAddr {
    let cert = CertificateDer::from_pem_file(&pki.server_cert).expect("the server certificate");
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).expect("the server key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("the server's TLS config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = tcp.local_addr().expect("its address");
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
