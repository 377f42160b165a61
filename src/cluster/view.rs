//! What `GET /admin/cluster` shows: this node and every peer it knows, as the membership
//! actor last saw them. Kept in shared memory so a busy actor does not slow the answer.

use std::sync::RwLock;

use ractor::ActorRef;
use serde::Serialize;

use tokio_util::sync::CancellationToken;

use super::membership::MembershipMsg;

/// One node of the cluster, as seen from here.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub node: String,
    /// `up`, `draining`, `down` or `left` (`self` or `draining` for this node).
    pub status: String,
    /// The ractor_cluster address it announces.
    pub cluster_addr: String,
    pub http: String,
    pub admin: String,
    /// The ractor_cluster session: `connected`, `connecting`, `refused`, `none`.
    pub link: String,
    /// Milliseconds since its last heartbeat (0 for this node).
    pub last_heartbeat_ms: u64,
    /// The failure detector's current value: phi, or ms of silence (see `detector_kind`).
    pub detector: f64,
    pub detector_kind: String,
    pub load: Load,
    pub version: String,
    /// The roles it runs agents of.
    pub serves: Vec<Served>,
}

/// A role a node runs agents of, as it announces it: what others can ask of it over
/// `ms.<cluster>.agents.<domain>.<role>.…`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Served {
    pub domain: String,
    pub role: String,
    pub capabilities: Vec<String>,
    pub instances: u32,
}

/// A node's load as it announces it.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Load {
    pub running: usize,
    pub queued: usize,
    pub actors: usize,
}

/// The cluster as the admin listener reads it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterSnapshot {
    pub cluster: String,
    pub node: String,
    /// The bus as this node has it: `connected`, `degraded`, `connecting`.
    pub bus: String,
    pub members: Vec<MemberView>,
    /// Tasks this node has taken over from nodes that were gone.
    pub tasks_taken_over: u64,
    /// Received bytes on the bridge that were not a readable envelope.
    pub decode_errors: u64,
}

/// The snapshot, and the membership actor for requests to it (drain), while it runs.
#[derive(Default)]
pub struct ClusterView {
    snapshot: RwLock<ClusterSnapshot>,
    membership: RwLock<Option<ActorRef<MembershipMsg>>>,
    /// Cancelled when this node starts draining (never undone): its agent services then
    /// leave the roles' queue groups.
    draining: CancellationToken,
}

impl ClusterView {
    pub fn set(&self, snapshot: ClusterSnapshot) {
        if let Ok(mut v) = self.snapshot.write() {
            *v = snapshot;
        }
    }

    pub fn get(&self) -> ClusterSnapshot {
        self.snapshot.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// Reads the snapshot in place (no copy), for questions asked per step.
    pub fn with<R>(&self, read: impl FnOnce(&ClusterSnapshot) -> R) -> R {
        match self.snapshot.read() {
            Ok(v) => read(&v),
            Err(_) => read(&ClusterSnapshot::default()),
        }
    }

    pub fn set_membership(&self, actor: Option<ActorRef<MembershipMsg>>) {
        if let Ok(mut m) = self.membership.write() {
            *m = actor;
        }
    }

    pub fn membership(&self) -> Option<ActorRef<MembershipMsg>> {
        self.membership.read().ok().and_then(|m| m.clone())
    }

    /// Marks this node draining (see [`ClusterView::draining`]).
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    /// Done once this node is draining.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }
}
