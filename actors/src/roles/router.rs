//! Router: picks the agent for each step: capability match, healthy, least loaded; never
//! an agent that is not active, and never one whose circuit is open. Local first: an agent
//! of another node (over NATS) is used only when no local agent is healthy or the least
//! loaded one is full (`agents.max_in_flight` steps running or waiting); without a
//! cluster, when every agent of a capability is marked unhealthy, the least loaded active
//! one whose circuit is not open is used rather than failing the step.

use ractor::ActorRef;

use crate::agent::AgentMsg;
use crate::context::NodeContext;
use crate::registry::{AgentRecord, RegistryMsg};

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["route"];

/// How long the registry may take to answer a routing question.
const REGISTRY_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("the agent registry is not running")]
    NoRegistry,
    #[error("no active agent whose circuit is closed offers `{0}`")]
    NoAgent(String),
}

/// Whether this routing outcome should go to another node when one offers the capability:
/// no local agent, only an unhealthy one, or one with `full_at` steps or more (a new step
/// would wait in its queue).
pub fn prefer_remote(
    local: &Result<(AgentRecord, ActorRef<AgentMsg>), RouteError>,
    full_at: u32,
) -> bool {
    match local {
        Err(_) => true,
        Ok((record, _)) => !record.healthy || record.load >= full_at,
    }
}

/// The agent to run a step with `capability` on, with its record: the least loaded of the
/// healthy ones, else (a heartbeat missed on a starved machine must not stop all work) the
/// least loaded of the others; active and with its circuit not open either way. One
/// question to the registry.
pub async fn route(
    ctx: &NodeContext,
    capability: &str,
) -> Result<(AgentRecord, ActorRef<AgentMsg>), RouteError> {
    let registry = ctx.registry().ok_or(RouteError::NoRegistry)?;
    let record = ractor::call_t!(
        registry,
        RegistryMsg::FindAvailable,
        REGISTRY_TIMEOUT_MS,
        capability.to_string()
    )
    .map_err(|_| RouteError::NoRegistry)?
    .ok_or_else(|| RouteError::NoAgent(capability.to_string()))?;
    let agent = record
        .agent
        .clone()
        .ok_or_else(|| RouteError::NoAgent(capability.to_string()))?;
    Ok((record, agent))
}
