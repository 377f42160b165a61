//! The storage port the task actors write through. The node implements it over SQL
//! (`src/store`); the actors never see SQL.
//!
//! Writes are fenced by the task's lease epoch: a run that lost its lease (its node was
//! cut off and another took the task over) gets [`StoreError::Fenced`] and must stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::{Attempt, Priority, StepSpec, StepStatus, TaskSpec, TaskStatus};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Storage refused the write itself (bad data, a constraint): trying again cannot
    /// help, so a run that gets it fails like a crash would, not waits.
    #[error("storage refused the write: {0}")]
    Rejected(String),
    #[error("task {task_id}: lease epoch {epoch} is no longer current; another owner took over")]
    Fenced { task_id: String, epoch: i64 },
    #[error("no task {0}")]
    NotFound(String),
}

/// A task to store, already validated. It is stored owned by `owner` (the node that
/// accepted it) with lease epoch 1, so that node's first run of it needs no claim.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub spec: Arc<TaskSpec>,
    pub created_at_ms: i64,
    pub owner: String,
    /// Who submitted it (the API token's `sub`), when the API authenticates: the task, its
    /// trace and its `session`/`global` memory are that principal's.
    pub principal: Option<String>,
    /// The session turn this task is, taken in the same commit that stores it.
    pub turn: Option<TurnClaim>,
}

/// A session's next turn, claimed by the task that runs it: stored only if the session
/// still has `after` turns when the task is (so two requests never take one turn, and a
/// turn and its task are stored together or not at all).
#[derive(Debug, Clone)]
pub struct TurnClaim {
    pub session_id: String,
    /// The session's turn count as read when the turn was prepared.
    pub after: i64,
    pub message: String,
    /// The last turn the summary this turn makes covers, if it makes one.
    pub summarized_through: Option<i64>,
}

impl NewTask {
    /// A task to store under a fresh time-ordered id; the scheduler that stores it makes
    /// its node the owner.
    pub fn new(spec: TaskSpec) -> NewTask {
        NewTask {
            id: uuid::Uuid::now_v7().to_string(),
            spec: Arc::new(spec),
            created_at_ms: now_ms(),
            owner: String::new(),
            principal: None,
            turn: None,
        }
    }
}

/// The lease epoch a task is stored with: its accepting node's first run holds it.
pub const FIRST_EPOCH: i64 = 1;

/// What a submission got: the task's id (an earlier one for a repeated idempotency key).
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    pub task_id: String,
    pub created: bool,
    /// The idempotency key was used before with another request: `task_id` is the earlier
    /// task, which this request must not be mistaken for.
    #[serde(skip)]
    pub conflict: bool,
    pub status: TaskStatus,
    pub priority: Priority,
    /// The turn taken with the task ([`NewTask::turn`]); `None` with `turn_taken` when
    /// another request took it first (then nothing was stored).
    #[serde(skip)]
    pub turn: Option<i64>,
    #[serde(skip)]
    pub turn_taken: bool,
}

/// A step as recorded: its state, every attempt, and its final output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepState {
    pub step_id: String,
    pub status: StepStatus,
    pub attempts: Vec<Attempt>,
    pub output: Option<Value>,
}

/// One entry of a task's append-only trace.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskEvent {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    /// Any JSON value (what happened, in detail).
    pub data: Value,
}

/// A task taken over by a run: the new lease epoch and everything recorded so far.
/// A claim only fences: the run records `started` and the running status itself.
#[derive(Debug, Clone)]
pub struct Claim {
    pub epoch: i64,
    pub spec: Arc<TaskSpec>,
    pub status: TaskStatus,
    pub plan: Option<Vec<StepSpec>>,
    pub steps: Vec<StepState>,
    pub next_seq: i64,
    pub created_at_ms: i64,
    /// Who submitted it ([`NewTask::principal`]).
    pub principal: Option<String>,
}

/// Changes a run records in one go (one transaction, fenced by `epoch`).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub task_id: String,
    pub epoch: i64,
    pub status: Option<TaskStatus>,
    pub plan: Option<Vec<StepSpec>>,
    pub error: Option<String>,
    pub steps: Vec<StepState>,
    pub events: Vec<TaskEvent>,
}

impl Progress {
    /// Folds `later` into these changes: later values win, steps are replaced by id,
    /// events are appended. Several changes of one task become one record.
    pub fn merge(&mut self, later: Progress) {
        self.epoch = later.epoch;
        self.status = later.status.or(self.status);
        self.plan = later.plan.or(self.plan.take());
        self.error = later.error.or(self.error.take());
        for step in later.steps {
            match self.steps.iter_mut().find(|s| s.step_id == step.step_id) {
                Some(old) => *old = step,
                None => self.steps.push(step),
            }
        }
        self.events.extend(later.events);
    }
}

/// A person's decision on an agent's tool call that awaited approval.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub step_id: String,
    pub approved: bool,
    /// Why (what the model is told of a denial).
    pub reason: Option<String>,
    /// Who decided (the API token's `sub`), when the API authenticates.
    pub by: Option<String>,
}

pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task (or finds the one with the same idempotency key). Resolves only
    /// after the commit.
    fn submit(&self, task: NewTask) -> BoxFuture<'_, Result<Submitted, StoreError>>;

    /// Takes a task for a run on `node`: bumps its lease epoch (fencing any earlier
    /// holder) and returns what is recorded. Only a task `node` owns (accepted, resumed or
    /// taken over through the arbiter), or one `origin` owns and nobody started (a ticket
    /// of the cluster's work queue that `origin` offered), can be claimed: a node that lost
    /// a task never claims it back. `None` when the task is final or not claimable.
    fn claim(
        &self,
        task_id: String,
        node: String,
        origin: Option<String>,
    ) -> BoxFuture<'_, Result<Option<Claim>, StoreError>>;

    /// Records a run's progress, unless its lease epoch is stale.
    /// `progress` is borrowed: the caller keeps it until the write is committed.
    fn record<'a>(&'a self, progress: &'a Progress) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Cancels a task that is still queued (no run has recorded anything of it), bumping
    /// its lease epoch so a run that holds it is fenced; returns its status after the attempt.
    fn cancel_queued(
        &self,
        task_id: String,
        at_ms: i64,
    ) -> BoxFuture<'_, Result<TaskStatus, StoreError>>;

    /// The decisions taken on the task's tool calls that awaited approval.
    fn decisions(&self, task_id: String) -> BoxFuture<'_, Result<Vec<Decision>, StoreError>>;

    /// The tasks `owner` holds that are not final, oldest first (to resume and
    /// reconcile); only those a run has started (`planning`, `running`) when
    /// `started_only`, a cheap question however deep the queue.
    fn unfinished(
        &self,
        owner: String,
        started_only: bool,
    ) -> BoxFuture<'_, Result<Vec<(String, Priority)>, StoreError>>;
}

/// Milliseconds since the Unix epoch, as stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
