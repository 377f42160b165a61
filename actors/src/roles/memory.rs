//! Memory: knowledge store and blackboard: key/value with tags and text search, scoped per
//! task, session or global, persisted, with TTL.

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["memory.kv", "memory.search", "memory.blackboard"];
