//! `[nats]`: how the node reaches the NATS server, and how it proves itself to it
//! (credentials, nkey seed, TLS with a custom CA and a client certificate). Files named
//! here are checked at load, so a typo stops the node (exit 2 naming the key) instead of
//! a node that retries a connection that can never succeed.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    pub url: Option<String>,
    /// A NATS credentials file (JWT + nkey seed), passed through to the client.
    pub credentials: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`): the node authenticates with that user nkey.
    pub nkey_file: Option<PathBuf>,
    /// PEM CA certificate(s) the server's certificate must chain to (instead of, or as
    /// well as, the system roots).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate (with `tls_key`), for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to the server without TLS.
    pub tls_required: bool,
    /// How long the JetStream event stream keeps events.
    pub events_max_age_secs: f64,
    /// Largest size of the event stream; the oldest events go first.
    pub events_max_bytes: i64,
}

impl NatsSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        seconds("nats.events_max_age_secs", self.events_max_age_secs)?;
        if self.events_max_bytes == 0 || self.events_max_bytes < -1 {
            return Err(ConfigError(
                "nats.events_max_bytes: must be positive, or -1 for no limit".into(),
            ));
        }
        for (key, file) in [
            ("nats.credentials", &self.credentials),
            ("nats.nkey_file", &self.nkey_file),
            ("nats.tls_ca", &self.tls_ca),
            ("nats.tls_cert", &self.tls_cert),
            ("nats.tls_key", &self.tls_key),
        ] {
            if let Some(file) = file {
                is_file(key, file)?;
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError(
                "nats.tls_cert: a client certificate needs its key (nats.tls_key), and the key its certificate"
                    .into(),
            ));
        }
        if self.credentials.is_some() && self.nkey_file.is_some() {
            return Err(ConfigError(
                "nats.nkey_file: set either nats.credentials or nats.nkey_file, not both".into(),
            ));
        }
        Ok(())
    }

    /// The nkey seed of `nkey_file`, trimmed.
    pub fn nkey_seed(&self) -> Result<Option<String>, ConfigError> {
        let Some(file) = &self.nkey_file else {
            return Ok(None);
        };
        let seed = std::fs::read_to_string(file).map_err(|e| {
            ConfigError(format!(
                "nats.nkey_file: cannot read {}: {e}",
                file.display()
            ))
        })?;
        let seed = seed.trim().to_string();
        if !seed.starts_with('S') {
            return Err(ConfigError(format!(
                "nats.nkey_file: {} does not hold an nkey seed (one starts with `S`)",
                file.display()
            )));
        }
        Ok(Some(seed))
    }
}

fn is_file(key: &str, file: &Path) -> Result<(), ConfigError> {
    if file.is_file() {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{key}: no such file {}",
            file.display()
        )))
    }
}
