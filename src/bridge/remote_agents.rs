//! The node's side of [`actors::remote::RemoteAgents`]: a step sent to another node's
//! agents over NATS request-reply, to the role that offers its capability (as the
//! members announce in their heartbeats), load-balanced by the role's queue group.

use std::sync::Arc;
use std::time::Duration;

use actors::remote::{RemoteAgents, RemoteDone, RemoteError, RemoteStep};
use async_nats::RequestErrorKind;
use futures::future::BoxFuture;

use super::agent_service::{self, DONE, STEP};
use super::{Bridge, Envelope};
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
            let bytes = Envelope::new(STEP, self.bridge.node(), step)
                .encode()
                .map_err(|e| RemoteError::Bus(e.to_string()))?;
            let request = async_nats::Request::new()
                .payload(bytes)
                .timeout(Some(wait));
            let reply = self
                .bridge
                .client()
                .send_request(format!("{group}.execute"), request)
                .await
                .map_err(|e| match e.kind() {
                    RequestErrorKind::NoResponders => RemoteError::NoAgent(capability.clone()),
                    RequestErrorKind::TimedOut => RemoteError::Timeout(wait),
                    _ => RemoteError::Bus(e.to_string()),
                })?;
            self.bridge
                .open::<RemoteDone>(&reply, DONE)
                .map(|e| e.payload)
                .ok_or_else(|| RemoteError::Bus("an unreadable reply".into()))
        })
    }
}
