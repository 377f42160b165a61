//! A throwaway PKI for the TLS tests: a CA, a server certificate for `localhost` and
//! 127.0.0.1 signed by it, and a client certificate signed by it, written as PEM files into a
//! temp dir (what `llm.ca_file`, `tools.http.ca_file`, `nats.tls_*`, `cluster.tls_*` and
//! nats-server read).
//!
//! Shared by the actors crate's HTTPS tests and the root crate's NATS TLS test (included
//! there by `#[path]`), so both trust the same kind of chain and nothing is copied.

#![allow(dead_code)] // each test crate uses a different part (the client certificate is for NATS)

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// The PEM files of one test PKI; deleted on drop.
pub struct Pki {
    dir: TempDir,
    /// The CA certificate the server and client certificates chain to.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// For a node's ractor_cluster link: names localhost and 127.0.0.1, and serves as
    /// both a server and a client certificate.
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temp dir for the test PKI");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mister-smith test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("the CA certificate");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("writing a PEM file of the test PKI");
            path
        };
        let leaf = |names: &[&str], usages: &[ExtendedKeyUsagePurpose]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names).expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, "mister-smith test");
            params.extended_key_usages = usages.to_vec();
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &ca).expect("a leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let local = ["localhost", "127.0.0.1"];
        let (server_cert, server_key) = leaf(&local, &[ExtendedKeyUsagePurpose::ServerAuth]);
        let (client_cert, client_key) = leaf(
            &["mister-smith-node"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        // A ractor_cluster link's ends are both servers and clients.
        let (node_cert, node_key) = leaf(
            &local,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        Pki {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            node_cert: write("node.pem", node_cert),
            node_key: write("node-key.pem", node_key),
            dir,
        }
    }

    /// Where the files are (for more files of the same test).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
