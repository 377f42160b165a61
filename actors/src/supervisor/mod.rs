//! The generic supervisor actor: OTP's supervisor semantics on top of ractor's links.
//!
//! ractor ships links and supervision events but no strategies (DESIGN §2, §12); this actor
//! adds them: `one_for_one`, `one_for_all`, `rest_for_one`, dynamic children, the restart
//! types, restart intensity escalating upward, exponential backoff, and ordered graceful
//! shutdown. Every restart and escalation is an [`Event`] and a metric. ARCHITECTURE.md
//! records why this is ours rather than the `ractor-supervisor` crate's.

mod slot;
pub mod spec;

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use tokio::sync::oneshot;

use crate::context::NodeContext;
use crate::directory::{ActorKind, ActorMeta, ActorStats, ChildView, SlotState, SupervisorView};
use crate::events::Event;
use slot::{Exit, Slot, shut_down, spawn_reason, trim};
pub use spec::{
    Backoff, ChildKind, ChildSpec, Intensity, Restart, Shutdown, StartFn, Strategy, SupervisorSpec,
};

/// Errors a supervisor reports to callers and, on escalation, to its own supervisor.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    #[error("no child `{0}`")]
    NoSuchChild(String),
    #[error("child `{0}` already exists")]
    DuplicateChild(String),
    #[error("child `{0}` is not running")]
    NotRunning(String),
    #[error("child `{id}` failed to start: {reason}")]
    StartFailed { id: String, reason: String },
    #[error(
        "supervisor `{supervisor}` gave up: more than {max_restarts} restarts within {within_ms} ms \
         (last: child `{child}`: {reason})"
    )]
    IntensityExceeded {
        supervisor: String,
        child: String,
        reason: String,
        max_restarts: u32,
        within_ms: u64,
    },
}

/// Told to whoever started a supervisor without a parent (the node), when it gives up.
#[derive(Debug, Clone)]
pub struct Escalation {
    pub supervisor: String,
    pub child: String,
    pub reason: String,
}

pub enum SupervisorMsg {
    /// Adds and starts a dynamic child (OTP's `start_child`); replies with its pid.
    StartChild(ChildSpec, RpcReplyPort<Result<u64, SupervisorError>>),
    /// Stops a child and keeps it stopped (OTP's `terminate_child`).
    TerminateChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    /// Stops (if running) and starts a child again; replies with the new pid.
    RestartChild(String, RpcReplyPort<Result<u64, SupervisorError>>),
    /// The child slots, in start order (OTP's `which_children`).
    Which(RpcReplyPort<Vec<ChildView>>),
    /// Internal: a backoff delay has passed for these slots.
    RestartDue { ids: Vec<String>, token: u64 },
}

// ractor's `cluster` feature (for ractor_cluster) drops the blanket `Message` impl.
impl ractor::Message for SupervisorMsg {}

pub struct SupervisorArgs {
    pub spec: SupervisorSpec,
    pub ctx: Arc<NodeContext>,
    /// Role/domain shown for this supervisor in the tree.
    pub domain: Option<String>,
    /// Only for a supervisor without a parent: where its escalation goes.
    pub on_escalate: Option<oneshot::Sender<Escalation>>,
}

impl SupervisorArgs {
    pub fn new(spec: SupervisorSpec, ctx: Arc<NodeContext>) -> Self {
        SupervisorArgs {
            spec,
            ctx,
            domain: None,
            on_escalate: None,
        }
    }
}

pub struct SupervisorState {
    name: String,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Backoff,
    slots: Vec<Slot>,
    /// Restart times of all children within the intensity period.
    recent: VecDeque<Instant>,
    total_restarts: u64,
    /// Names backoff timers, so each slot starts only on the timer it waits for.
    token: u64,
    ctx: Arc<NodeContext>,
    view: Arc<RwLock<SupervisorView>>,
    stats: Arc<ActorStats>,
    on_escalate: Option<oneshot::Sender<Escalation>>,
}

pub struct Supervisor;

impl Supervisor {
    /// Spawns a supervisor with no parent (the node's root, or a test's).
    pub async fn start(
        args: SupervisorArgs,
    ) -> Result<(ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>), SpawnErr> {
        Actor::spawn(None, Supervisor, args).await
    }

    /// A child spec that runs a nested supervisor built from `spec`.
    pub fn child(spec: SupervisorSpec, ctx: Arc<NodeContext>, domain: Option<String>) -> ChildSpec {
        let id = spec.name.clone();
        ChildSpec::new(id, move |parent, _| {
            let args = SupervisorArgs {
                spec: spec.clone(),
                ctx: ctx.clone(),
                domain: domain.clone(),
                on_escalate: None,
            };
            async move {
                Actor::spawn_linked(None, Supervisor, args, parent)
                    .await
                    .map(|(r, _)| r.get_cell())
            }
        })
        .supervisor()
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let spec = args.spec;
        let view = Arc::new(RwLock::new(SupervisorView {
            strategy: spec.strategy,
            max_restarts: spec.intensity.max_restarts,
            within_ms: spec.intensity.within.as_millis() as u64,
            restarts: 0,
            children: Vec::new(),
        }));
        let meta = ActorMeta {
            name: spec.name.clone(),
            kind: ActorKind::Supervisor,
            role: Some("supervisor".into()),
            domain: args.domain,
        };
        let stats = args
            .ctx
            .directory
            .enter_with(&myself.get_cell(), meta, Some(view.clone()));
        // Registered at zero so dashboards see every supervisor before its first restart.
        for counter in [
            "ms_supervisor_restarts_total",
            "ms_supervisor_child_failures_total",
            "ms_supervisor_escalations_total",
        ] {
            metrics::counter!(counter, "supervisor" => spec.name.clone()).increment(0);
        }
        let mut state = SupervisorState {
            name: spec.name,
            strategy: spec.strategy,
            intensity: spec.intensity,
            backoff: spec.backoff,
            slots: Vec::with_capacity(spec.children.len()),
            recent: VecDeque::new(),
            total_restarts: 0,
            token: 0,
            ctx: args.ctx,
            view,
            stats,
            on_escalate: args.on_escalate,
        };
        for child in spec.children {
            if let Err(e) = state.add_child(&myself, child).await {
                state.stop_all().await;
                state.forget(&myself);
                return Err(e.into());
            }
        }
        state.ctx.name_supervisor(&state.name, Some(myself.clone()));
        // Published once, not per child: a view is O(children) to build, so publishing
        // after each start made starting n children O(n²) (BENCHMARKS.md).
        state.publish_view();
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_all().await;
        state.forget(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.handled();
        match msg {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = state.add_child(&myself, spec).await;
                if result.is_ok()
                    && let Some(slot) = state.slots.last_mut()
                {
                    slot.dynamic = true;
                }
                state.publish_view();
                let _ = reply.send(result);
            }
            SupervisorMsg::TerminateChild(id, reply) => {
                let _ = reply.send(state.terminate_child(&id).await);
            }
            SupervisorMsg::RestartChild(id, reply) => {
                let _ = reply.send(state.restart_child(&myself, &id).await);
            }
            SupervisorMsg::Which(reply) => {
                let _ = reply.send(state.child_views());
            }
            SupervisorMsg::RestartDue { ids, token } => {
                let ids = state.take_due(&ids, token);
                if !ids.is_empty() {
                    let mut result = Ok(());
                    if let Err((id, reason)) = state.start_slots(&myself, &ids).await {
                        result = state.recover(&myself, id, reason).await;
                    }
                    state.publish_view();
                    if result.is_err() {
                        // Escalating: post_stop will not run, so leave the directory here.
                        state.forget(&myself);
                    }
                    result?;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((pid, exit)) = Exit::of(&event) else {
            return Ok(());
        };
        let result = state.child_exited(&myself, pid, exit).await;
        state.publish_view();
        if result.is_err() {
            state.forget(&myself);
        }
        result
    }
}

impl SupervisorState {
    /// Leaves the directory and the name table (the actor is going away).
    fn forget(&self, myself: &ActorRef<SupervisorMsg>) {
        self.ctx.directory.leave(myself.get_id().pid());
        if self
            .ctx
            .supervisor(&self.name)
            .is_some_and(|s| s.get_id() == myself.get_id())
        {
            self.ctx.name_supervisor(&self.name, None);
        }
    }

    fn slot_index(&self, id: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.spec.id == id)
    }

    /// Starts a child and adds its slot; the caller publishes the view.
    async fn add_child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ChildSpec,
    ) -> Result<u64, SupervisorError> {
        if let Some(idx) = self.slot_index(&spec.id) {
            // A dynamic child an operator stopped keeps its slot (so it can be restarted
            // by name); starting it afresh takes that slot over, as OTP's
            // `simple_one_for_one` would start a new child.
            let slot = &self.slots[idx];
            if !(slot.dynamic && slot.state == SlotState::Stopped) {
                return Err(SupervisorError::DuplicateChild(spec.id));
            }
            self.slots.remove(idx);
        }
        let id = spec.id.clone();
        let cell =
            (spec.start)(myself.get_cell(), 0)
                .await
                .map_err(|e| SupervisorError::StartFailed {
                    id: id.clone(),
                    reason: spawn_reason(&e),
                })?;
        let pid = cell.get_id().pid();
        self.slots.push(Slot {
            spec,
            cell: Some(cell),
            state: SlotState::Running,
            restarts: 0,
            last_error: None,
            recent: VecDeque::new(),
            dynamic: false,
            pending: None,
        });
        Ok(pid)
    }

    async fn child_exited(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        pid: u64,
        exit: Exit,
    ) -> Result<(), ActorProcessingErr> {
        let Some(idx) = self
            .slots
            .iter()
            .position(|s| s.cell.as_ref().is_some_and(|c| c.get_id().pid() == pid))
        else {
            // A child we stopped ourselves, or one already replaced.
            return Ok(());
        };
        self.ctx.directory.remove_subtree(pid);
        let slot = &mut self.slots[idx];
        slot.cell = None;
        let reason = match &exit {
            Exit::Normal => "normal exit".to_string(),
            Exit::Abnormal(reason) => {
                slot.last_error = Some(reason.clone());
                metrics::counter!("ms_supervisor_child_failures_total", "supervisor" => self.name.clone())
                    .increment(1);
                tracing::warn!(supervisor = %self.name, child = %slot.spec.id, %reason, "child failed");
                self.ctx.events.publish(Event::ChildFailed {
                    supervisor: self.name.clone(),
                    child: slot.spec.id.clone(),
                    reason: reason.clone(),
                });
                reason.clone()
            }
        };
        match (slot.spec.restart, exit) {
            (Restart::Temporary, _) => {
                self.slots.remove(idx);
                Ok(())
            }
            (Restart::Transient, Exit::Normal) if slot.dynamic => {
                self.slots.remove(idx);
                Ok(())
            }
            (Restart::Transient, Exit::Normal) => {
                slot.state = SlotState::Stopped;
                Ok(())
            }
            _ => {
                let id = slot.spec.id.clone();
                self.recover(myself, id, reason).await
            }
        }
    }

    /// Restarts what the strategy prescribes after child `id` went down, retrying starts
    /// that fail, until everything runs, a backoff timer is pending, or intensity is exceeded.
    async fn recover(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        mut id: String,
        mut reason: String,
    ) -> Result<(), ActorProcessingErr> {
        loop {
            let Some((ids, delay, attempt)) = self.plan_restart(&id, &reason).await? else {
                return Ok(());
            };
            if !delay.is_zero() {
                self.token += 1;
                let token = self.token;
                for slot in self.slots.iter_mut().filter(|s| ids.contains(&s.spec.id)) {
                    slot.pending = Some(token);
                }
                for slot_id in &ids {
                    self.ctx.events.publish(Event::RestartScheduled {
                        supervisor: self.name.clone(),
                        child: slot_id.clone(),
                        attempt,
                        delay_ms: delay.as_millis() as u64,
                    });
                }
                myself.send_after(delay, move || SupervisorMsg::RestartDue { ids, token });
                return Ok(());
            }
            match self.start_slots(myself, &ids).await {
                Ok(()) => return Ok(()),
                Err((failed, why)) => (id, reason) = (failed, why),
            }
        }
    }

    /// Counts the restart against intensity (escalating if exceeded), stops the siblings the
    /// strategy takes down, drops temporary ones, and returns the slots to start with the delay.
    async fn plan_restart(
        &mut self,
        id: &str,
        reason: &str,
    ) -> Result<Option<(Vec<String>, Duration, u32)>, ActorProcessingErr> {
        let Some(idx) = self.slot_index(id) else {
            return Ok(None);
        };
        let now = Instant::now();
        let within = self.intensity.within;
        self.recent.push_back(now);
        trim(&mut self.recent, now, within);
        if self.recent.len() as u32 > self.intensity.max_restarts {
            return Err(self.escalate(id, reason).await.into());
        }
        let set: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![idx],
            Strategy::OneForAll => (0..self.slots.len()).collect(),
            Strategy::RestForOne => (idx..self.slots.len()).collect(),
        };
        for &i in set.iter().rev() {
            // A sibling stopped for good has nothing to stop and must keep its state.
            if i != idx && self.slots[i].state != SlotState::Stopped {
                self.stop_slot(i, SlotState::Restarting).await;
            }
        }
        let slot = &mut self.slots[idx];
        slot.recent.push_back(now);
        trim(&mut slot.recent, now, within);
        let attempt = slot.recent.len() as u32;
        let delay = self.backoff.delay(attempt);
        let mut ids = Vec::with_capacity(set.len());
        for &i in &set {
            let slot = &mut self.slots[i];
            // Siblings already stopped for good (transient normal exit, operator stop) stay so.
            if i != idx && slot.state == SlotState::Stopped {
                continue;
            }
            slot.state = SlotState::Restarting;
            ids.push(slot.spec.id.clone());
        }
        // Temporary children are never restarted, also not when a sibling takes them down.
        self.slots
            .retain(|s| !(s.spec.restart == Restart::Temporary && s.cell.is_none()));
        ids.retain(|i| self.slot_index(i).is_some());
        Ok(Some((ids, delay, attempt)))
    }

    /// Starts the given slots in start order. On a start failure, returns that child's id
    /// and the reason so it can be handled like any other failure.
    async fn start_slots(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        ids: &[String],
    ) -> Result<(), (String, String)> {
        for id in ids {
            let Some(idx) = self.slot_index(id) else {
                continue;
            };
            let slot = &mut self.slots[idx];
            if slot.state != SlotState::Restarting {
                continue;
            }
            let incarnation = slot.restarts + 1;
            match (slot.spec.start)(myself.get_cell(), incarnation).await {
                Ok(cell) => {
                    let pid = cell.get_id().pid();
                    slot.cell = Some(cell);
                    slot.state = SlotState::Running;
                    slot.restarts = incarnation;
                    self.total_restarts += 1;
                    metrics::counter!("ms_supervisor_restarts_total", "supervisor" => self.name.clone())
                        .increment(1);
                    self.ctx.events.publish(Event::ChildRestarted {
                        supervisor: self.name.clone(),
                        child: id.clone(),
                        pid,
                        restarts: incarnation,
                    });
                }
                Err(e) => {
                    let reason = format!("restart failed: {}", spawn_reason(&e));
                    slot.last_error = Some(reason.clone());
                    return Err((id.clone(), reason));
                }
            }
        }
        Ok(())
    }

    async fn terminate_child(&mut self, id: &str) -> Result<(), SupervisorError> {
        let idx = self
            .slot_index(id)
            .ok_or_else(|| SupervisorError::NoSuchChild(id.to_string()))?;
        if self.slots[idx].state == SlotState::Stopped {
            return Err(SupervisorError::NotRunning(id.to_string()));
        }
        self.stop_slot(idx, SlotState::Stopped).await;
        if self.slots[idx].spec.restart == Restart::Temporary {
            self.slots.remove(idx);
        }
        self.publish_view();
        Ok(())
    }

    async fn restart_child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: &str,
    ) -> Result<u64, SupervisorError> {
        let idx = self
            .slot_index(id)
            .ok_or_else(|| SupervisorError::NoSuchChild(id.to_string()))?;
        self.stop_slot(idx, SlotState::Restarting).await;
        let ids = [id.to_string()];
        let result = self.start_slots(myself, &ids).await;
        self.publish_view();
        match result {
            Ok(()) => Ok(self.slots[idx]
                .cell
                .as_ref()
                .map(|c| c.get_id().pid())
                .unwrap_or_default()),
            Err((id, reason)) => {
                self.slots[idx].state = SlotState::Stopped;
                self.publish_view();
                Err(SupervisorError::StartFailed { id, reason })
            }
        }
    }

    /// Stops one child per its shutdown policy, leaving its slot in `next` state.
    async fn stop_slot(&mut self, idx: usize, next: SlotState) {
        let slot = &mut self.slots[idx];
        slot.state = next;
        slot.pending = None;
        if let Some(cell) = slot.cell.take() {
            self.ctx.directory.remove_subtree(cell.get_id().pid());
            shut_down(cell, slot.spec.shutdown).await;
        }
    }

    /// The slots of `ids` still waiting for timer `token` (and no longer waiting).
    fn take_due(&mut self, ids: &[String], token: u64) -> Vec<String> {
        let mut due = Vec::new();
        for slot in self.slots.iter_mut().filter(|s| ids.contains(&s.spec.id)) {
            if slot.pending == Some(token) {
                slot.pending = None;
                due.push(slot.spec.id.clone());
            }
        }
        due
    }

    /// Stops every child in reverse start order.
    async fn stop_all(&mut self) {
        for idx in (0..self.slots.len()).rev() {
            self.stop_slot(idx, SlotState::Stopped).await;
        }
    }

    async fn escalate(&mut self, child: &str, reason: &str) -> SupervisorError {
        self.stop_all().await;
        let error = SupervisorError::IntensityExceeded {
            supervisor: self.name.clone(),
            child: child.to_string(),
            reason: reason.to_string(),
            max_restarts: self.intensity.max_restarts,
            within_ms: self.intensity.within.as_millis() as u64,
        };
        tracing::error!(supervisor = %self.name, %child, %reason, "{error}; escalating");
        metrics::counter!("ms_supervisor_escalations_total", "supervisor" => self.name.clone())
            .increment(1);
        self.ctx.events.publish(Event::Escalated {
            supervisor: self.name.clone(),
            child: child.to_string(),
            reason: reason.to_string(),
        });
        if let Some(hook) = self.on_escalate.take() {
            let _ = hook.send(Escalation {
                supervisor: self.name.clone(),
                child: child.to_string(),
                reason: reason.to_string(),
            });
        }
        error
    }

    fn child_views(&self) -> Vec<ChildView> {
        self.slots.iter().map(Slot::view).collect()
    }

    /// Brings the shared view up to date in place. A supervisor of many dynamic children
    /// (the `runs` supervisor) publishes on every start and exit, so this reuses the
    /// existing entries' allocations instead of rebuilding the list (BENCHMARKS.md).
    fn publish_view(&self) {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        view.restarts = self.total_restarts;
        view.children.truncate(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            match view.children.get_mut(i) {
                Some(child) => slot.update(child),
                None => view.children.push(slot.view()),
            }
        }
    }
}
