//! The actor directory: what every live actor of this node is, readable without messaging it.
//!
//! Introspection must work while an actor is busy or stuck (that is when an operator looks),
//! so each actor enters itself here when it starts and keeps cheap counters in an
//! [`ActorStats`] it shares with the directory. Supervisors also publish a [`SupervisorView`]
//! of their child slots. The admin tree is assembled from this table alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ractor::{ActorCell, ActorStatus};
use serde::Serialize;

use crate::supervisor::spec::{ChildKind, Restart, Strategy};

/// What kind of actor an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Supervisor,
    Registry,
    Agent,
    Service,
}

/// Static facts about an actor, set when it enters the directory.
#[derive(Debug, Clone, Serialize)]
pub struct ActorMeta {
    pub name: String,
    pub kind: ActorKind,
    pub role: Option<String>,
    pub domain: Option<String>,
}

/// Counters an actor updates as it works; atomics so reading never waits for the actor.
#[derive(Debug, Default)]
pub struct ActorStats {
    messages: AtomicU64,
    errors: AtomicU64,
    current_work: Mutex<Option<String>>,
}

impl ActorStats {
    pub fn handled(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
    }

    pub fn errored(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn set_work(&self, work: Option<String>) {
        *self.current_work.lock().unwrap_or_else(|e| e.into_inner()) = work;
    }

    pub fn work(&self) -> Option<String> {
        self.current_work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// State of one child slot of a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Running,
    /// Waiting for its backoff delay before the next start.
    Restarting,
    /// Exited and not to be restarted (transient normal exit, or stopped by an operator).
    Stopped,
}

/// A supervisor's child slot as shown to operators.
#[derive(Debug, Clone, Serialize)]
pub struct ChildView {
    pub id: String,
    pub pid: Option<u64>,
    pub kind: ChildKind,
    pub restart: Restart,
    pub state: SlotState,
    pub restarts: u32,
    pub last_error: Option<String>,
}

/// What a supervisor publishes about itself.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorView {
    pub strategy: Strategy,
    pub max_restarts: u32,
    pub within_ms: u64,
    pub restarts: u64,
    pub children: Vec<ChildView>,
}

/// One directory entry.
#[derive(Clone)]
pub struct ActorEntry {
    pub cell: ActorCell,
    pub meta: ActorMeta,
    pub stats: Arc<ActorStats>,
    pub supervisor: Option<Arc<RwLock<SupervisorView>>>,
}

/// A node of the introspection tree (what `GET /admin/actors` returns).
#[derive(Debug, Clone, Serialize)]
pub struct ActorNode {
    pub id: String,
    pub name: String,
    pub kind: ActorKind,
    pub role: Option<String>,
    pub domain: Option<String>,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub messages_handled: u64,
    pub errors: u64,
    pub current_work: Option<String>,
    pub children: Vec<ActorNode>,
}

/// The table of live actors of this node, keyed by ractor pid.
#[derive(Default)]
pub struct Directory {
    entries: RwLock<HashMap<u64, ActorEntry>>,
}

impl Directory {
    pub fn new() -> Arc<Self> {
        Arc::new(Directory::default())
    }

    /// Enters an actor; returns the stats handle it should update.
    pub fn enter(&self, cell: &ActorCell, meta: ActorMeta) -> Arc<ActorStats> {
        self.enter_with(cell, meta, None)
    }

    pub fn enter_with(
        &self,
        cell: &ActorCell,
        meta: ActorMeta,
        supervisor: Option<Arc<RwLock<SupervisorView>>>,
    ) -> Arc<ActorStats> {
        let stats = Arc::new(ActorStats::default());
        let entry = ActorEntry {
            cell: cell.clone(),
            meta,
            stats: stats.clone(),
            supervisor,
        };
        self.write().insert(cell.get_id().pid(), entry);
        stats
    }

    pub fn leave(&self, pid: u64) {
        self.write().remove(&pid);
    }

    /// Removes an actor and, if it is a supervisor, everything below it: when a supervisor
    /// dies, ractor kills its descendants without running their `post_stop`.
    pub fn remove_subtree(&self, pid: u64) {
        let mut entries = self.write();
        let mut pending = vec![pid];
        while let Some(pid) = pending.pop() {
            if let Some(entry) = entries.remove(&pid)
                && let Some(view) = &entry.supervisor
            {
                let view = view.read().unwrap_or_else(|e| e.into_inner());
                pending.extend(view.children.iter().filter_map(|c| c.pid));
            }
        }
    }

    /// A live actor's entry (an actor that stopped is gone, even if not yet removed).
    pub fn get(&self, pid: u64) -> Option<ActorEntry> {
        self.read()
            .get(&pid)
            .filter(|e| e.cell.get_status() != ActorStatus::Stopped)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries matching a predicate (used by the registry to rebuild itself after a restart).
    pub fn filter(&self, keep: impl Fn(&ActorEntry) -> bool) -> Vec<ActorEntry> {
        self.read().values().filter(|e| keep(e)).cloned().collect()
    }

    /// The supervisor entry whose slots include `pid`, with that slot's id.
    pub fn parent_of(&self, pid: u64) -> Option<(ActorEntry, String)> {
        let entries = self.read();
        let (parent, slot) = slot_of(&entries, pid)?;
        Some((parent.clone(), slot.id))
    }

    /// The tree below (and including) `pid`, or `None` if no such actor is live.
    pub fn tree(&self, pid: u64) -> Option<ActorNode> {
        let entries = self.read();
        // Restarts and last error are kept in the parent's slot of the actor.
        let slot = slot_of(&entries, pid).map(|(_, slot)| slot);
        build_node(&entries, pid, slot.as_ref())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, ActorEntry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, ActorEntry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The supervisor whose child `pid` is, and its slot of it.
fn slot_of(entries: &HashMap<u64, ActorEntry>, pid: u64) -> Option<(&ActorEntry, ChildView)> {
    entries.values().find_map(|e| {
        let view = e.supervisor.as_ref()?.read().ok()?;
        let slot = view.children.iter().find(|c| c.pid == Some(pid))?.clone();
        Some((e, slot))
    })
}

fn status_name(status: ActorStatus) -> &'static str {
    match status {
        ActorStatus::Unstarted => "unstarted",
        ActorStatus::Starting => "starting",
        ActorStatus::Running => "running",
        ActorStatus::Upgrading => "upgrading",
        ActorStatus::Draining => "draining",
        ActorStatus::Stopping => "stopping",
        ActorStatus::Stopped => "stopped",
    }
}

fn build_node(
    entries: &HashMap<u64, ActorEntry>,
    pid: u64,
    slot: Option<&ChildView>,
) -> Option<ActorNode> {
    let entry = entries.get(&pid)?;
    let view = entry
        .supervisor
        .as_ref()
        .and_then(|v| v.read().ok().map(|v| v.clone()));
    let children = view
        .as_ref()
        .map(|v| {
            v.children
                .iter()
                .map(
                    |c| match c.pid.and_then(|p| build_node(entries, p, Some(c))) {
                        Some(node) => node,
                        None => vacant_slot(pid, c),
                    },
                )
                .collect()
        })
        .unwrap_or_default();
    Some(ActorNode {
        id: pid.to_string(),
        name: entry.meta.name.clone(),
        kind: entry.meta.kind,
        role: entry.meta.role.clone(),
        domain: entry.meta.domain.clone(),
        status: status_name(entry.cell.get_status()).to_string(),
        strategy: view.as_ref().map(|v| v.strategy),
        restart: slot.map(|s| s.restart),
        restarts: slot.map(|s| s.restarts).unwrap_or(0),
        last_error: slot.and_then(|s| s.last_error.clone()),
        messages_handled: entry.stats.messages(),
        errors: entry.stats.errors(),
        current_work: entry.stats.work(),
        children,
    })
}

/// A slot with no live actor (restarting, stopped, or not yet entered): shown so operators
/// see it, addressed as `<supervisor pid>:<child id>` since there is no actor to name.
fn vacant_slot(supervisor: u64, slot: &ChildView) -> ActorNode {
    let status = match (slot.state, slot.pid) {
        (SlotState::Running, Some(_)) => "starting",
        (SlotState::Running, None) | (SlotState::Restarting, _) => "restarting",
        (SlotState::Stopped, _) => "stopped",
    };
    ActorNode {
        id: format!("{supervisor}:{}", slot.id),
        name: slot.id.clone(),
        kind: match slot.kind {
            ChildKind::Supervisor => ActorKind::Supervisor,
            ChildKind::Worker => ActorKind::Agent,
        },
        role: None,
        domain: None,
        status: status.to_string(),
        strategy: None,
        restart: Some(slot.restart),
        restarts: slot.restarts,
        last_error: slot.last_error.clone(),
        messages_handled: 0,
        errors: 0,
        current_work: None,
        children: Vec::new(),
    }
}
