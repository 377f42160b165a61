//! Router: picks the agent for each step: capability match, healthy, least loaded, local
//! first, remote over NATS when needed, never an agent whose circuit is open.

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["route"];
