//! Router: picks the agent for each step: capability match, healthy, least loaded; never
//! an agent that is not active. Local first: an agent of another node (over NATS) is used
//! only when no local agent is healthy or the least loaded one is saturated; without a
//! cluster, when every agent of a capability is marked unhealthy, the least loaded active
//! one is used rather than failing the step.

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
    #[error("no healthy active agent offers `{0}`")]
    NoAgent(String),
}

/// Steps in flight on the least loaded local agent from which another node's agents are
/// preferred.
pub const SATURATED: u32 = 64;

/// Whether this routing outcome should go to another node when one offers the capability:
/// no local agent, only an unhealthy one, or a saturated one.
pub fn prefer_remote(local: &Result<(AgentRecord, ActorRef<AgentMsg>), RouteError>) -> bool {
    match local {
        Err(_) => true,
        Ok((record, _)) => !record.healthy || record.load >= SATURATED,
    }
}

/// The agent to run a step with `capability` on, with its record.
pub async fn route(
    ctx: &NodeContext,
    capability: &str,
) -> Result<(AgentRecord, ActorRef<AgentMsg>), RouteError> {
    let registry = ctx.registry().ok_or(RouteError::NoRegistry)?;
    let found = ractor::call_t!(
        registry,
        RegistryMsg::FindHealthy,
        REGISTRY_TIMEOUT_MS,
        capability.to_string()
    )
    .map_err(|_| RouteError::NoRegistry)?;
    let record = match found {
        Some(record) => record,
        // No healthy agent: rather than fail the step, use the least loaded active one. A
        // heartbeat missed on a starved machine must not stop all work.
        None => ractor::call_t!(
            registry,
            RegistryMsg::Discover,
            REGISTRY_TIMEOUT_MS,
            capability.to_string()
        )
        .map_err(|_| RouteError::NoRegistry)?
        .into_iter()
        .filter(|r| r.state == crate::agent::Lifecycle::Active)
        .min_by_key(|r| r.load)
        .ok_or_else(|| RouteError::NoAgent(capability.to_string()))?,
    };
    let agent = record
        .agent
        .clone()
        .ok_or_else(|| RouteError::NoAgent(capability.to_string()))?;
    Ok((record, agent))
}
