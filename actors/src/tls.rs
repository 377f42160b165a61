//! The TLS client settings shared by the LLM providers and the `http` tool: rustls (no
//! OpenSSL), trusting the system's roots plus an optional PEM file of extra CAs.
//!
//! System roots come from `rustls-native-certs`, which reads the operating system's store
//! (on Debian the `ca-certificates` package: `/etc/ssl/certs`), or the files named by
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` when those are set. Nothing is fetched over the network,
//! so it works offline. The config is built once and shared (clients built per request reuse
//! it instead of reading the store again).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why the TLS settings could not be built; the message names the setting.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum TlsError {
    #[error("{key}: cannot read CA certificates from {path}: {reason}")]
    CaFile {
        key: String,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

/// Builds a rustls client config trusting the system's roots and, when `ca_file` is set,
/// every certificate in that PEM file. `key` is the setting's dotted name, for errors.
///
/// Returns the config and how many roots it trusts (0 means no https endpoint can be
/// verified: the caller decides whether that is fatal).
pub fn client_config(
    ca_file: Option<&Path>,
    key: &str,
) -> Result<(rustls::ClientConfig, usize), TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    // Unreadable or odd system certificates are skipped, as browsers and curl do.
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system CA certificates could not be read");
    }
    let mut count = added;
    if let Some(path) = ca_file {
        let fail = |reason: String| TlsError::CaFile {
            key: key.to_string(),
            path: path.display().to_string(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
            count += 1;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(format!("{key}: TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, count))
}

/// Makes aws-lc-rs (the provider of [`client_config`]) the process's default rustls crypto
/// provider, for libraries that build their TLS configs from the default (async-nats for
/// the NATS connection). The build holds both ring (through async-nats' default features)
/// and aws-lc-rs, so rustls cannot pick one by itself and would panic on the first TLS
/// handshake. Idempotent: a provider installed earlier is kept.
pub fn install_default_provider() {
    // Err only means a default is set already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
