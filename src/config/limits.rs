//! Bounds on what callers can make the node hold: the `[tasks]` section (how many bytes
//! of outputs and trace one task may store, how much of each output one GET carries) and
//! the listeners' connection limits under `[http]` and `[admin]` (header-read timeout,
//! idle timeout, connection cap). Without them one request can fill the disk and one
//! client with idle sockets can exhaust the node's file descriptors.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, seconds};

/// Largest output budget a task may be given: 1 GiB.
const MAX_TASK_OUTPUT_BYTES: u64 = 1 << 30;
/// Most connections a listener may be allowed.
const MAX_CONNECTIONS: usize = 1 << 20;

/// The `[tasks]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Bytes of step outputs and trace one task may store; a step past it fails.
    pub max_output_bytes: u64,
    /// Bytes of each output `GET /api/v1/tasks/{id}` carries inline; the rest is read at
    /// `/api/v1/tasks/{id}/steps/{step}/output`.
    pub inline_output_bytes: usize,
}

impl TasksConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1024..=MAX_TASK_OUTPUT_BYTES).contains(&self.max_output_bytes) {
            return Err(ConfigError(format!(
                "tasks.max_output_bytes: {} is out of range; allowed: 1024 to {MAX_TASK_OUTPUT_BYTES}",
                self.max_output_bytes
            )));
        }
        if !(256..=16 << 20).contains(&self.inline_output_bytes) {
            return Err(ConfigError(format!(
                "tasks.inline_output_bytes: {} is out of range; allowed: 256 to {}",
                self.inline_output_bytes,
                16 << 20
            )));
        }
        Ok(())
    }
}

/// How one listener treats its connections (from `[http]` or `[admin]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerLimits {
    /// A connection must send a request's whole header within this.
    pub header_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; past it, new ones are closed as soon as accepted.
    pub max_connections: usize,
}

impl ListenerLimits {
    /// Checks the three settings of `section` and turns them into limits.
    pub fn from_settings(
        section: &str,
        header_timeout_secs: f64,
        idle_timeout_secs: f64,
        max_connections: usize,
    ) -> Result<Self, ConfigError> {
        seconds(
            &format!("{section}.header_timeout_secs"),
            header_timeout_secs,
        )?;
        seconds(&format!("{section}.idle_timeout_secs"), idle_timeout_secs)?;
        if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
            return Err(ConfigError(format!(
                "{section}.max_connections: {max_connections} is out of range; allowed: 1 to {MAX_CONNECTIONS}"
            )));
        }
        Ok(ListenerLimits {
            header_timeout: Duration::from_secs_f64(header_timeout_secs),
            idle_timeout: Duration::from_secs_f64(idle_timeout_secs),
            max_connections,
        })
    }
}
