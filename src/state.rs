//! What the HTTP and admin adapters can see of the running node.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actors::NodeContext;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::bridge::Bridge;
use crate::cluster::ClusterView;
use crate::store::{Store, Tasks};

pub struct NodeState {
    pub ctx: Arc<NodeContext>,
    /// Set once the database is connected and migrated.
    pub store: OnceLock<Store>,
    /// The task store (reads for the API), set with `store`.
    pub tasks: OnceLock<Tasks>,
    /// The root supervisor's pid, once the tree is up.
    root: AtomicU64,
    tree_up: AtomicBool,
    pub metrics: Option<PrometheusHandle>,
    pub started: Instant,
    /// The NATS bridge, when `nats.url` is set.
    pub bridge: OnceLock<Bridge>,
    /// The cluster as the membership actor sees it, when clustered.
    pub cluster: OnceLock<Arc<ClusterView>>,
    /// Notified when the node should stop on its own (a drain is done).
    pub shutdown: Arc<tokio::sync::Notify>,
    /// The console's charts: this node's metrics over the last minutes.
    pub history: Arc<crate::console::history::History>,
    /// The event feed's reader shared by its broad clients.
    pub feed_hub: crate::feed::hub::Hub,
}

impl NodeState {
    pub fn new(ctx: Arc<NodeContext>, metrics: Option<PrometheusHandle>) -> Arc<Self> {
        Arc::new(NodeState {
            ctx,
            store: OnceLock::new(),
            tasks: OnceLock::new(),
            root: AtomicU64::new(0),
            tree_up: AtomicBool::new(false),
            metrics,
            started: Instant::now(),
            bridge: OnceLock::new(),
            cluster: OnceLock::new(),
            shutdown: Arc::new(tokio::sync::Notify::new()),
            history: Arc::default(),
            feed_hub: Default::default(),
        })
    }

    pub fn set_tree(&self, root: Option<u64>) {
        self.root.store(root.unwrap_or(0), Ordering::SeqCst);
        self.tree_up.store(root.is_some(), Ordering::SeqCst);
    }

    /// The root supervisor's pid while the tree is up.
    pub fn root(&self) -> Option<u64> {
        self.tree_up
            .load(Ordering::SeqCst)
            .then(|| self.root.load(Ordering::SeqCst))
            .filter(|pid| self.ctx.directory.get(*pid).is_some())
    }
}

/// Shared by every handler.
pub type AppState = Arc<NodeState>;
