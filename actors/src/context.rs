//! What every actor of a node shares: the node's name, the actor directory, the event
//! channel and the way to reach the current agent registry.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use ractor::ActorRef;

use crate::directory::Directory;
use crate::events::Events;
use crate::registry::RegistryMsg;
use crate::scheduler::SchedulerMsg;
use crate::supervisor::SupervisorMsg;
use crate::task::store::TaskStore;
use crate::tools::Tools;

/// What the task actors need from the node: tools to run steps and storage to record them.
/// Provided once the node has opened its storage.
pub struct Services {
    pub tools: Tools,
    /// The LLM provider the Planner (and LLM judgements) use; may be `none`.
    pub llm: crate::llm::Llm,
    /// Where the Memory role keeps entries.
    pub memory: Arc<dyn crate::roles::memory::MemoryStore>,
    pub store: Arc<dyn TaskStore>,
    pub scheduler: SchedulerSettings,
    /// How many steps each agent runs at once and holds waiting.
    pub agents: crate::agent::AgentLimits,
    /// Agents of the other nodes of the cluster (none on a single node).
    pub remote: Option<Arc<dyn crate::remote::RemoteAgents>>,
    /// The cluster's task work queue (none on a single node).
    pub work_queue: Option<Arc<dyn crate::remote::WorkQueue>>,
}

/// How the scheduler admits and orders work.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerSettings {
    /// Runs in flight at once on this node.
    pub max_running: usize,
    /// Tasks waiting in the queue before submissions are refused (429).
    pub max_queued: usize,
    /// Aging: a task waiting this long gains one priority level (no starvation).
    pub aging_ms: u64,
    /// With this many tasks queued here, newly accepted ones are offered to the cluster's
    /// work queue instead (None: never).
    pub spill_above: Option<usize>,
    /// Bytes of step outputs and trace one task may store (`tasks.max_output_bytes`).
    pub max_task_output_bytes: u64,
}

/// Shared by all actors of one node. Passed as `Arc<NodeContext>` in actor arguments, so
/// several nodes can live in one process (tests, benchmarks) without global names.
pub struct NodeContext {
    pub node: String,
    pub directory: Arc<Directory>,
    pub events: Events,
    /// LLM calls' text as it streams, for this node's watchers.
    pub deltas: crate::deltas::Deltas,
    registry: RwLock<Option<ActorRef<RegistryMsg>>>,
    scheduler: RwLock<Option<ActorRef<SchedulerMsg>>>,
    services: OnceLock<Arc<Services>>,
    /// How the Monitor watches agents (set by the node from `[monitor]`).
    monitor: RwLock<crate::roles::monitor::MonitorSettings>,
    /// Supervisors by name (`runs`, domain names), for actors that must reach one.
    supervisors: RwLock<HashMap<String, ActorRef<SupervisorMsg>>>,
    /// This node's lease on its work, as far as it can prove it.
    lease: crate::lease::NodeLease,
}

impl NodeContext {
    pub fn new(node: impl Into<String>) -> Arc<Self> {
        Arc::new(NodeContext {
            node: node.into(),
            directory: Directory::new(),
            events: Events::default(),
            deltas: Default::default(),
            registry: RwLock::new(None),
            scheduler: RwLock::new(None),
            services: OnceLock::new(),
            supervisors: RwLock::new(HashMap::new()),
            monitor: RwLock::new(Default::default()),
            lease: Default::default(),
        })
    }

    /// The registry currently running, if any. Looked up on each use so that a restarted
    /// registry is found without anyone holding a stale reference.
    pub fn registry(&self) -> Option<ActorRef<RegistryMsg>> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The task scheduler currently running, if any.
    pub fn scheduler(&self) -> Option<ActorRef<SchedulerMsg>> {
        self.scheduler
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_scheduler(&self, scheduler: Option<ActorRef<SchedulerMsg>>) {
        *self.scheduler.write().unwrap_or_else(|e| e.into_inner()) = scheduler;
    }

    /// The supervisor running under `name`, if any.
    pub fn supervisor(&self, name: &str) -> Option<ActorRef<SupervisorMsg>> {
        let map = self.supervisors.read().unwrap_or_else(|e| e.into_inner());
        map.get(name).cloned()
    }

    pub(crate) fn name_supervisor(&self, name: &str, actor: Option<ActorRef<SupervisorMsg>>) {
        let mut map = self.supervisors.write().unwrap_or_else(|e| e.into_inner());
        match actor {
            Some(actor) => {
                map.insert(name.to_string(), actor);
            }
            None => {
                map.remove(name);
            }
        }
    }

    /// This node's lease: whether it may start work with side effects.
    pub fn lease(&self) -> &crate::lease::NodeLease {
        &self.lease
    }

    pub fn monitor_settings(&self) -> crate::roles::monitor::MonitorSettings {
        *self.monitor.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_monitor_settings(&self, settings: crate::roles::monitor::MonitorSettings) {
        *self.monitor.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// Provides tools and storage; only the first call has an effect.
    pub fn provide(&self, services: Services) {
        let _ = self.services.set(Arc::new(services));
    }

    pub fn services(&self) -> Option<&Arc<Services>> {
        self.services.get()
    }

    pub(crate) fn set_registry(&self, registry: Option<ActorRef<RegistryMsg>>) {
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = registry;
    }
}
