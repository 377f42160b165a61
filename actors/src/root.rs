//! The node's root supervisor: the registry first, then one supervisor per domain.
//!
//! Escalation past the root has nowhere to go: the node is told through
//! [`SupervisorArgs::on_escalate`] and stops with a non-zero exit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::context::NodeContext;
use crate::domain::{DomainDefaults, DomainSpec};
use crate::registry::Registry;
use crate::supervisor::{ChildSpec, Escalation, Strategy, SupervisorArgs, SupervisorSpec};

/// Restart policy of the root itself.
#[derive(Debug, Clone, Copy)]
pub struct RootPolicy {
    pub strategy: Strategy,
    pub max_restarts: u32,
    pub within: Duration,
}

/// The arguments that start a node's whole supervision tree, and the receiver that hears
/// of an escalation past the root.
pub fn root_args(
    ctx: &Arc<NodeContext>,
    policy: RootPolicy,
    domains: &[DomainSpec],
    defaults: DomainDefaults,
) -> (SupervisorArgs, oneshot::Receiver<Escalation>) {
    let registry_ctx = ctx.clone();
    let mut spec = SupervisorSpec::new("root", policy.strategy)
        .intensity(policy.max_restarts, policy.within)
        .backoff(defaults.backoff)
        .child(ChildSpec::new("registry", move |sup, _| {
            Registry::spawn_linked(registry_ctx.clone(), sup)
        }));
    for domain in domains {
        spec = spec.child(domain.child_spec(ctx, defaults));
    }
    let (tx, rx) = oneshot::channel();
    let args = SupervisorArgs {
        spec,
        ctx: ctx.clone(),
        domain: None,
        on_escalate: Some(tx),
    };
    (args, rx)
}
