//! Monitor: heartbeats agents, measures latency and errors, marks agents unhealthy in the
//! registry, kills stuck ones (their supervisor restarts them), publishes health events.

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["health.heartbeat", "health.watchdog"];
