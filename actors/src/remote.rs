//! The ports to the rest of the cluster, which the node implements over NATS; the actors
//! know only these traits:
//! - [`RemoteAgents`]: the Router's way out when no agent of this node can take a step
//!   (none healthy, or all saturated): request-reply to
//!   `ms.<cluster>.agents.<domain>.<role>.execute`, one queue group per role;
//! - [`WorkQueue`]: the scheduler's way to share a deep queue: task tickets on the
//!   JetStream work queue `ms.<cluster>.tasks.<priority>`.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::task::{Priority, StepSpec};
use crate::tools::{ToolError, ToolOutput};

/// One step attempt sent to another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteStep {
    pub task_id: String,
    pub session: Option<String>,
    /// Absent in a request from a node of an earlier version (no principals then).
    #[serde(default)]
    pub principal: Option<String>,
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
    /// The node that got the step runs as many of others' steps as it may.
    #[error("the other node is busy")]
    Busy,
}

pub trait RemoteAgents: Send + Sync + 'static {
    /// Whether some other node offers `capability` now (cheap: from the membership view).
    fn offers(&self, capability: &str) -> bool;

    /// Runs `step` on an agent of another node that offers `capability`. A caller that
    /// stops waiting drops the future; the implementation then asks the serving node to
    /// cancel the step, so its tool stops rather than running to its timeout.
    fn execute(
        &self,
        capability: &str,
        step: RemoteStep,
        wait: Duration,
    ) -> BoxFuture<'_, Result<RemoteDone, RemoteError>>;
}

/// The cluster's task work queue (JetStream): where a node whose queue is deep offers a
/// task it has stored, for whichever node has room to pull it.
pub trait WorkQueue: Send + Sync + 'static {
    /// Publishes the task's ticket durably; `false` when it could not (the node then runs
    /// the task itself).
    fn offer(&self, task_id: String, priority: Priority) -> BoxFuture<'_, bool>;
}
