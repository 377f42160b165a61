//! The port to agents of other nodes: the Router's way out when no agent of this node can
//! take a step (none healthy, or all saturated). The node implements it over NATS
//! request-reply (`ms.<cluster>.agents.<domain>.<role>.execute`, one queue group per
//! role); the actors know only this trait.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::task::StepSpec;
use crate::tools::{ToolError, ToolOutput};

/// One step attempt sent to another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteStep {
    pub task_id: String,
    pub session: Option<String>,
    pub step: StepSpec,
    pub input: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// What the other node's agent made of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteDone {
    /// The agent that ran it and its node.
    pub agent: String,
    pub node: String,
    pub result: Result<ToolOutput, ToolError>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("no other node offers `{0}`")]
    NoAgent(String),
    #[error("no answer from the cluster within {0:?}")]
    Timeout(Duration),
    #[error("the cluster could not be asked: {0}")]
    Bus(String),
}

pub trait RemoteAgents: Send + Sync + 'static {
    /// Whether some other node offers `capability` now (cheap: from the membership view).
    fn offers(&self, capability: &str) -> bool;

    /// Runs `step` on an agent of another node that offers `capability`.
    fn execute(
        &self,
        capability: &str,
        step: RemoteStep,
        wait: Duration,
    ) -> BoxFuture<'_, Result<RemoteDone, RemoteError>>;
}
