//! A supervisor's child slot (what it knows of one child across restarts), how a child's
//! end is classified in OTP's terms, and how a child is stopped: gracefully within its
//! shutdown timeout, then killed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ractor::{ActorCell, SpawnErr, SupervisionEvent};

use super::spec::{ChildSpec, Shutdown};
use crate::directory::{ChildView, SlotState};

/// How long a child may take to die after a kill before we stop waiting for it.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Slot {
    pub spec: ChildSpec,
    pub cell: Option<ActorCell>,
    pub state: SlotState,
    /// The backoff timer this slot waits for, if any (a later schedule replaces it).
    pub pending: Option<u64>,
    pub restarts: u32,
    pub last_error: Option<String>,
    /// This slot's restart times within the intensity period; drives its backoff.
    pub recent: VecDeque<Instant>,
    /// Added at run time (`StartChild`): its slot goes once it will not be restarted.
    pub dynamic: bool,
}

/// How a child ended, in OTP's terms.
pub(super) enum Exit {
    Normal,
    Abnormal(String),
}

impl Exit {
    pub(super) fn of(event: &SupervisionEvent) -> Option<(u64, Exit)> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                Some((cell.get_id().pid(), Exit::Abnormal(err.to_string())))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let exit = match reason.as_deref() {
                    Some(r @ ("killed" | "actor_task_cancelled")) => Exit::Abnormal(r.to_string()),
                    _ => Exit::Normal,
                };
                Some((cell.get_id().pid(), exit))
            }
            _ => None,
        }
    }
}

impl Slot {
    pub(super) fn view(&self) -> ChildView {
        ChildView {
            id: self.spec.id.clone(),
            pid: self.cell.as_ref().map(|c| c.get_id().pid()),
            kind: self.spec.kind,
            restart: self.spec.restart,
            state: self.state,
            restarts: self.restarts,
            last_error: self.last_error.clone(),
        }
    }

    /// Overwrites `child` with this slot's view, allocating only where a string grew.
    pub(super) fn update(&self, child: &mut ChildView) {
        if child.id != self.spec.id {
            child.id.clone_from(&self.spec.id);
        }
        if child.last_error != self.last_error {
            child.last_error.clone_from(&self.last_error);
        }
        child.pid = self.cell.as_ref().map(|c| c.get_id().pid());
        child.kind = self.spec.kind;
        child.restart = self.spec.restart;
        child.state = self.state;
        child.restarts = self.restarts;
    }
}

pub(super) fn trim(times: &mut VecDeque<Instant>, now: Instant, within: Duration) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) > within)
    {
        times.pop_front();
    }
}

pub(super) fn spawn_reason(e: &SpawnErr) -> String {
    match e {
        SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// Graceful stop within the child's shutdown timeout, then kill.
pub(super) async fn shut_down(cell: ActorCell, shutdown: Shutdown) {
    if let Shutdown::Timeout(timeout) = shutdown
        && cell
            .stop_and_wait(Some("shutdown".into()), Some(timeout))
            .await
            .is_ok()
    {
        return;
    }
    if cell.get_status() != ractor::ActorStatus::Stopped {
        let _ = cell.kill_and_wait(Some(KILL_WAIT)).await;
    }
}
