//! Domain supervisors built from the `[[domains]]` configuration (DESIGN §2, §8).
//!
//! A domain is data: a strategy, an intensity and a list of roles with instance counts.
//! This module turns it into a [`SupervisorSpec`] whose children are agents.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentArgs};
use crate::context::NodeContext;
use crate::roles::Role;
use crate::supervisor::{
    Backoff, ChildSpec, Restart, Shutdown, Strategy, Supervisor, SupervisorSpec,
};

/// One `[[domains]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    pub name: String,
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_within_secs")]
    pub within_secs: f64,
    #[serde(default)]
    pub agents: Vec<AgentSpec>,
}

/// One role of a domain, with how many instances to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub role: Role,
    #[serde(default = "default_instances")]
    pub instances: u32,
    #[serde(default)]
    pub restart: Restart,
    /// Capabilities in addition to the role's own.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn default_strategy() -> Strategy {
    Strategy::OneForOne
}
fn default_max_restarts() -> u32 {
    3
}
fn default_within_secs() -> f64 {
    5.0
}
fn default_instances() -> u32 {
    1
}

/// Restart backoff and shutdown timeout shared by every domain.
#[derive(Debug, Clone, Copy)]
pub struct DomainDefaults {
    pub backoff: Backoff,
    pub agent_shutdown: Duration,
}

impl DomainSpec {
    /// The supervisor spec for this domain: one agent child per instance, named
    /// `<role>-<n>` (n from 1), in configuration order.
    pub fn supervisor_spec(
        &self,
        ctx: &Arc<NodeContext>,
        defaults: DomainDefaults,
    ) -> SupervisorSpec {
        let mut spec = SupervisorSpec::new(self.name.clone(), self.strategy)
            .intensity(self.max_restarts, Duration::from_secs_f64(self.within_secs))
            .backoff(defaults.backoff);
        for agent in &self.agents {
            for n in 1..=agent.instances {
                let args = AgentArgs {
                    ctx: ctx.clone(),
                    role: agent.role,
                    domain: self.name.clone(),
                    name: format!("{}-{n}", agent.role),
                    extra_capabilities: agent.capabilities.clone(),
                    incarnation: 0,
                };
                let child = ChildSpec::new(args.name.clone(), move |sup, incarnation| {
                    let args = AgentArgs {
                        incarnation,
                        ..args.clone()
                    };
                    Agent::spawn_linked(args, sup)
                })
                .restart(agent.restart)
                .shutdown(Shutdown::Timeout(defaults.agent_shutdown));
                spec = spec.child(child);
            }
        }
        spec
    }

    /// This domain as a child of the root supervisor.
    pub fn child_spec(&self, ctx: &Arc<NodeContext>, defaults: DomainDefaults) -> ChildSpec {
        Supervisor::child(
            self.supervisor_spec(ctx, defaults),
            ctx.clone(),
            Some(self.name.clone()),
        )
    }
}

/// The default domains (DESIGN §2, §3): every role, grouped by what it is for.
pub fn default_domains() -> Vec<DomainSpec> {
    let domain = |name: &str, agents: &[(Role, u32)]| DomainSpec {
        name: name.to_string(),
        strategy: Strategy::OneForOne,
        max_restarts: 3,
        within_secs: 5.0,
        agents: agents
            .iter()
            .map(|&(role, instances)| AgentSpec {
                role,
                instances,
                restart: Restart::Permanent,
                capabilities: Vec::new(),
            })
            .collect(),
    };
    vec![
        domain(
            "orchestration",
            &[
                (Role::Coordinator, 2),
                (Role::Planner, 1),
                (Role::Router, 1),
                (Role::Critic, 1),
            ],
        ),
        domain("execution", &[(Role::Executor, 4), (Role::Worker, 2)]),
        domain("knowledge", &[(Role::Memory, 1)]),
        domain("operations", &[(Role::Monitor, 1)]),
    ]
}
