//! The node's root supervisor: the registry first, then the node's services (bridge,
//! cluster), then one supervisor per domain, then the runs and the scheduler.
//!
//! Escalation past the root has nowhere to go: the node is told through
//! [`SupervisorArgs::on_escalate`] and stops with a non-zero exit.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::context::NodeContext;
use crate::domain::{DomainDefaults, DomainSpec};
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::supervisor::{
    ChildSpec, Escalation, Strategy, Supervisor, SupervisorArgs, SupervisorSpec,
};

/// A crashing run is restarted from storage; it gives its task up after a few tries
/// itself, so the `runs` supervisor only escalates on a storm across many tasks.
const RUNS_MAX_RESTARTS: u32 = 1000;

/// Restart policy of the root itself.
#[derive(Debug, Clone, Copy)]
pub struct RootPolicy {
    pub strategy: Strategy,
    pub max_restarts: u32,
    pub within: Duration,
}

/// The arguments that start a node's whole supervision tree, and the receiver that hears
/// of an escalation past the root. `services` are the node's own children started after
/// the registry and before the domains (the NATS bridge and cluster membership).
pub fn root_args(
    ctx: &Arc<NodeContext>,
    policy: RootPolicy,
    services: Vec<ChildSpec>,
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
    for service in services {
        spec = spec.child(service);
    }
    for domain in domains {
        spec = spec.child(domain.child_spec(ctx, defaults));
    }
    // Task execution needs storage and tools; a tree without them (tests of supervision
    // alone) has no scheduler. Started after the domains so resumed tasks find executors.
    if ctx.services().is_some() {
        let runs = SupervisorSpec::new("runs", Strategy::OneForOne)
            .intensity(RUNS_MAX_RESTARTS, Duration::from_secs(1))
            .backoff(defaults.backoff);
        spec = spec.child(Supervisor::child(runs, ctx.clone(), None));
        let scheduler_ctx = ctx.clone();
        spec = spec.child(ChildSpec::new("scheduler", move |sup, _| {
            Scheduler::spawn_linked(scheduler_ctx.clone(), sup)
        }));
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
