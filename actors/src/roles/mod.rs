//! The agent roles of DESIGN §3 (the Supervisor role is the domain supervisors themselves).
//!
//! A role is data (it comes from the `[[domains]]` configuration); each role's file says
//! what the role is for and which capabilities it offers the registry. Every role runs in
//! the shared [`crate::agent::Agent`] actor.

pub mod coordinator;
pub mod critic;
pub mod executor;
pub mod memory;
pub mod monitor;
pub mod planner;
pub mod router;
pub mod toolbox;
pub mod worker;

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Role {
    Coordinator,
    Planner,
    Router,
    Executor,
    Worker,
    Critic,
    Memory,
    Monitor,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Coordinator,
        Role::Planner,
        Role::Router,
        Role::Executor,
        Role::Worker,
        Role::Critic,
        Role::Memory,
        Role::Monitor,
    ];
    pub const ALLOWED: &'static str =
        "coordinator, planner, router, executor, worker, critic, memory, monitor";

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Planner => "planner",
            Role::Router => "router",
            Role::Executor => "executor",
            Role::Worker => "worker",
            Role::Critic => "critic",
            Role::Memory => "memory",
            Role::Monitor => "monitor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// What the registry can find this role's agents by.
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            Role::Coordinator => coordinator::CAPABILITIES,
            Role::Planner => planner::CAPABILITIES,
            Role::Router => router::CAPABILITIES,
            Role::Executor => executor::CAPABILITIES,
            Role::Worker => worker::CAPABILITIES,
            Role::Critic => critic::CAPABILITIES,
            Role::Memory => memory::CAPABILITIES,
            Role::Monitor => monitor::CAPABILITIES,
        }
    }
}

crate::supervisor::spec::parse_from_string!(Role, "role");

/// The capability a step's tool is routed by: worker tools by their worker capability,
/// the Executor's tools as `tool.<name>`.
pub fn capability_for(tool: &str) -> String {
    if tool == "memory" {
        return "memory.kv".into();
    }
    if tool == planner::PLAN_TOOL {
        return "plan.generate".into();
    }
    if tool == critic::JUDGE_TOOL {
        return "critique.step".into();
    }
    match worker::TOOLS.iter().find(|(t, _)| *t == tool) {
        Some((_, capability)) => capability.to_string(),
        None => format!("tool.{tool}"),
    }
}

/// Tools whose steps change nothing outside the run: they may start before their attempt
/// is recorded (DESIGN §5's fast path). Every other tool — `shell`, `http`, `file`,
/// `memory`, `llm` and any added later — has its attempt committed first.
pub const PURE_TOOLS: &[&str] = &["echo", "sleep", "json", "template", "hash"];

/// Whether a step with `tool` may have side effects (record before effect).
pub fn has_effects(tool: &str) -> bool {
    !PURE_TOOLS.contains(&tool)
}

/// Checks a step's tool and arguments at submission (worker or executor tool).
pub fn validate_step_tool(
    tools: &crate::tools::Tools,
    llm_configured: bool,
    tool: &str,
    args: &serde_json::Value,
) -> Result<(), String> {
    if tool == "memory" {
        memory::validate(args)
    } else if worker::is_worker_tool(tool) {
        worker::validate(tool, args, llm_configured)
    } else {
        tools.validate(tool, args).map_err(|e| match e {
            crate::tools::ToolError::UnknownTool(t) => format!(
                "unknown tool \"{t}\" (known tools: {}, {}, memory)",
                crate::tools::Tools::names().join(", "),
                worker::TOOLS
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => other.to_string(),
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
