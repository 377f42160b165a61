//! `[cluster]`: how a node joins its cluster (name, listener, cookie, the link's TLS), how
//! it judges its peers (heartbeats, detector), and how it hands work over (takeover,
//! lease, drain, spill, remote steps). The settings matter only when `nats.url` is set.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, positive, seconds};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    pub name: String,
    pub listen: SocketAddr,
    pub cookie: Option<String>,
    /// Host peers use to reach `listen`; empty: its IP, or the host name when unspecified.
    pub advertise: String,
    pub heartbeat_ms: u64,
    pub detector: DetectorKind,
    pub phi_threshold: f64,
    pub acceptable_pause_ms: u64,
    pub min_std_dev_ms: u64,
    pub deadline_ms: u64,
    pub takeover_batch: usize,
    pub lease_ms: u64,
    pub drain_timeout_secs: f64,
    pub spill_queued: usize,
    /// Most steps of other nodes this node runs at once; past it, it answers busy.
    pub max_remote_steps: usize,
    /// The ractor_cluster link over mutual TLS: the cluster's CA, and this node's
    /// certificate and key (PEM). All three or none.
    pub tls_ca: Option<std::path::PathBuf>,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

/// How a silent peer is judged down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum DetectorKind {
    /// Phi accrual over the heartbeat intervals seen (adapts to jitter).
    Phi,
    /// A fixed silence: down after `deadline_ms` without a heartbeat.
    Deadline,
}

impl TryFrom<String> for DetectorKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "phi" => Ok(DetectorKind::Phi),
            "deadline" => Ok(DetectorKind::Deadline),
            other => Err(format!(
                "unknown detector `{other}`; allowed: phi, deadline"
            )),
        }
    }
}

impl ClusterSettings {
    /// Checks what types cannot; fills `advertise`. `clustered`: NATS is configured (only
    /// then do the cookie and a shared database matter).
    pub fn validate(&mut self, clustered: bool, database_url: &str) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        let c = self;
        if c.heartbeat_ms == 0 || c.deadline_ms <= c.heartbeat_ms {
            return fail(
                "cluster: heartbeat_ms must be at least 1 and deadline_ms above it".into(),
            );
        }
        positive("cluster.phi_threshold", c.phi_threshold)?;
        seconds("cluster.drain_timeout_secs", c.drain_timeout_secs)?;
        if c.min_std_dev_ms == 0 || c.takeover_batch == 0 || c.max_remote_steps == 0 {
            return fail(
                "cluster: min_std_dev_ms, takeover_batch and max_remote_steps must be at least 1"
                    .into(),
            );
        }
        if !(500..=60_000).contains(&c.lease_ms) {
            return fail(format!(
                "cluster.lease_ms: {} is out of range; allowed: 500 to 60000",
                c.lease_ms
            ));
        }
        let tls = [&c.tls_ca, &c.tls_cert, &c.tls_key];
        if tls.iter().any(|f| f.is_some()) && !tls.iter().all(|f| f.is_some()) {
            return fail(
                "cluster.tls_ca: the link's TLS needs cluster.tls_ca, cluster.tls_cert and cluster.tls_key together"
                    .into(),
            );
        }
        if c.advertise.is_empty() {
            c.advertise = if c.listen.ip().is_unspecified() {
                super::host_name()
            } else {
                c.listen.ip().to_string()
            };
        }
        if !clustered {
            return Ok(());
        }
        match &c.cookie {
            Some(cookie) if !cookie.trim().is_empty() => {}
            _ => {
                return fail(
                    "cluster.cookie: required when nats.url is set (nodes of a cluster \
                     authenticate each other with it); set MISTER_SMITH__CLUSTER__COOKIE \
                     or cluster.cookie in --config"
                        .into(),
                );
            }
        }
        if !database_url.starts_with("postgres") {
            return fail(format!(
                "database.url: a cluster (nats.url set) needs a database its nodes share; \
                 use postgres://…, not `{}`",
                database_url
            ));
        }
        Ok(())
    }
}
