//! Planner: turns a task description into a plan (a DAG of steps) through the configured
//! LLM provider, and validates plans given explicitly (cycles, unknown tools, missing inputs).

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["plan.generate", "plan.validate"];
