//! Coordinator: owns a task's run. Asks the Planner for a plan, drives the steps in
//! dependency order, asks the Router for agents, collects results, asks the Critic for
//! verdicts, retries or replans, and finishes the task.

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["task.coordinate"];
