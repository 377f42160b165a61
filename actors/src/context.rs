//! What every actor of a node shares: the node's name, the actor directory, the event
//! channel and the way to reach the current agent registry.

use std::sync::{Arc, RwLock};

use ractor::ActorRef;

use crate::directory::Directory;
use crate::events::Events;
use crate::registry::RegistryMsg;

/// Shared by all actors of one node. Passed as `Arc<NodeContext>` in actor arguments, so
/// several nodes can live in one process (tests, benchmarks) without global names.
pub struct NodeContext {
    pub node: String,
    pub directory: Arc<Directory>,
    pub events: Events,
    registry: RwLock<Option<ActorRef<RegistryMsg>>>,
}

impl NodeContext {
    pub fn new(node: impl Into<String>) -> Arc<Self> {
        Arc::new(NodeContext {
            node: node.into(),
            directory: Directory::new(),
            events: Events::default(),
            registry: RwLock::new(None),
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

    pub(crate) fn set_registry(&self, registry: Option<ActorRef<RegistryMsg>>) {
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = registry;
    }
}
