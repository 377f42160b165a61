//! The node's side of [`actors::remote::RemoteAgents`]: a step sent to another node's
//! agents over NATS request-reply, to the role that offers its capability (as the
//! members announce in their heartbeats), load-balanced by the role's queue group.
//!
//! Only members that are `up` count (a member is up only from heartbeats sealed with the
//! cluster's cookie; a draining one shows `draining` and has left the queue groups).
//! Requests are sealed; a reply that is not is refused like any other message, and a
//! [`BUSY`] reply hands the step back to the Router, which routes it again.

use std::sync::Arc;
use std::time::Duration;

use actors::remote::{RemoteAgents, RemoteDone, RemoteError, RemoteStep};
use async_nats::RequestErrorKind;
use futures::future::BoxFuture;
use uuid::Uuid;

use super::agent_service::{self, BUSY, CANCEL, CancelStep, DONE, STEP};
use super::{Bridge, Envelope, envelope};
use crate::cluster::ClusterView;

pub struct NatsAgents {
    bridge: Bridge,
    cluster: String,
    view: Arc<ClusterView>,
}

impl NatsAgents {
    pub fn new(bridge: Bridge, cluster: String, view: Arc<ClusterView>) -> Self {
        NatsAgents {
            bridge,
            cluster,
            view,
        }
    }

    /// The subject group of a role that an up peer serves with `capability`.
    fn group_for(&self, capability: &str) -> Option<String> {
        self.view.with(|view| {
            view.members
                .iter()
                .filter(|m| m.status == "up")
                .flat_map(|m| m.serves.iter())
                .find(|s| s.capabilities.iter().any(|c| c == capability))
                .map(|s| agent_service::group(&self.cluster, &s.domain, &s.role))
        })
    }
}

impl RemoteAgents for NatsAgents {
    fn offers(&self, capability: &str) -> bool {
        self.bridge.is_connected() && self.group_for(capability).is_some()
    }

    fn execute(
        &self,
        capability: &str,
        step: RemoteStep,
        wait: Duration,
    ) -> BoxFuture<'_, Result<RemoteDone, RemoteError>> {
        let group = self.group_for(capability);
        let capability = capability.to_string();
        Box::pin(async move {
            let group = group.ok_or_else(|| RemoteError::NoAgent(capability.clone()))?;
            let envelope = Envelope::new(STEP, self.bridge.node(), step);
            let bytes = envelope
                .encode()
                .map_err(|e| RemoteError::Bus(e.to_string()))?;
            // Armed until the answer comes: given up on (the task cancelled, the attempt
            // timed out, the run gone), the step is stopped where it runs.
            let mut pending = CancelOnDrop {
                bridge: self.bridge.clone(),
                request: Some(envelope.id),
            };
            let reply = self
                .bridge
                .request(format!("{group}.execute"), bytes, wait)
                .await
                .map_err(|e| match e.kind() {
                    RequestErrorKind::NoResponders => {
                        pending.request = None; // nobody took it
                        RemoteError::NoAgent(capability.clone())
                    }
                    RequestErrorKind::TimedOut => RemoteError::Timeout(wait),
                    _ => RemoteError::Bus(e.to_string()),
                })?;
            pending.request = None;
            let kind = envelope::decode::<serde::de::IgnoredAny>(&reply.payload, None)
                .map(|e| e.kind)
                .unwrap_or_default();
            if kind == BUSY {
                return match self.bridge.open::<()>(&reply, BUSY) {
                    Some(_) => Err(RemoteError::Busy),
                    None => Err(RemoteError::Bus("an unauthenticated reply".into())),
                };
            }
            self.bridge
                .open::<RemoteDone>(&reply, DONE)
                .map(|e| e.payload)
                .ok_or_else(|| RemoteError::Bus("an unreadable reply".into()))
        })
    }
}

/// Publishes a cancel of `request` on `agents.cancel` when dropped while armed.
struct CancelOnDrop {
    bridge: Bridge,
    request: Option<Uuid>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        // Drop cannot wait: publish from a task (no runtime: the node is going away).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let bridge = self.bridge.clone();
        runtime.spawn(async move {
            let subject = bridge.subjects().agents_cancel();
            if let Err(e) = bridge
                .publish(subject, CANCEL, CancelStep { request })
                .await
            {
                tracing::debug!(%request, error = %e, "a remote step's cancel was not sent");
            }
        });
    }
}
