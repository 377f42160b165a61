//! Critic: checks each step's output against its expectation (exit code, contains/regex, JSON
//! value, or an LLM judgement) and gives the task its final verdict.

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["critique.step", "critique.task"];
