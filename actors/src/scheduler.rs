//! The scheduler: admits submitted tasks, stores them, queues them by priority with aging,
//! and starts one run (a [`crate::run::Run`] actor under the `runs` supervisor) per task
//! while fewer than `max_running` are in flight.
//!
//! Storing happens off the mailbox (a spawned task awaits the group commit), so the
//! scheduler keeps admitting while commits are in flight. At start it resumes every
//! unfinished task from the store.
//!
//! A task accepted here is stored with this node's lease; while few are waiting, the
//! scheduler keeps its spec in memory ([`Warm`]) so its run starts without a claim (one
//! write and one read fewer per task). Beyond [`WARM_MAX`] waiting tasks only ids are kept
//! and those runs claim from the store, so a deep queue costs little memory.
//!
//! Nothing is stuck: every [`RECONCILE`] the scheduler compares the started tasks this
//! node owns in storage (`planning`, `running`) with the runs it has, and queues any task
//! nobody works on (a task given back to this node while its old run was still winding
//! down, a `runs` supervisor that gave up); every [`FULL_RECONCILE`] (and at start, which
//! is how a restarted node resumes) it does so with all its unfinished tasks, queued ones
//! too. Runs stopped from outside say so and their tasks are queued again; slots of runs
//! that died without a word are freed and their tasks queued again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use serde::Serialize;

use crate::context::{NodeContext, SchedulerSettings};
use crate::directory::{ActorKind, ActorMeta, ActorStats};
use crate::run::{Run, RunMsg, Warm};
use crate::supervisor::{ChildSpec, Restart, SupervisorMsg};
use crate::task::store::{NewTask, StoreError, Submitted, now_ms};
use crate::task::{Priority, TaskStatus};

/// Most queued tasks whose specs are kept in memory for a claim-free start.
pub const WARM_MAX: usize = 4096;
/// How often owned tasks are reconciled with the runs in flight.
pub const RECONCILE: std::time::Duration = std::time::Duration::from_secs(5);
/// A task offered to the cluster's work queue and still owned here (nobody claimed it)
/// after this long is run here: its ticket may be lost (a NATS restart with empty storage).
/// Twice the work queue's redelivery wait; a late puller's claim is fenced either way.
const SPILL_STALE: std::time::Duration = std::time::Duration::from_secs(60);
/// How often the reconcile also covers queued tasks (a read of the whole queue's ids).
pub const FULL_RECONCILE: std::time::Duration = std::time::Duration::from_secs(60);
/// Tasks younger than this are left out of a reconcile: their submission's hand-over to
/// this scheduler may still be on its way.
const RECONCILE_MIN_AGE_MS: i64 = 2_000;

/// Why a submission was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("the task queue is full ({0} tasks waiting); retry later")]
    QueueFull(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the node is not ready to take tasks (storage not open)")]
    NotReady,
    #[error("the node is draining (it takes no new tasks); submit to another node")]
    Draining,
    #[error(
        "idempotency_key: used before for another request (task {0}); use a new key for a new task"
    )]
    KeyReused(String),
    /// The session's next turn was taken by another request first; nothing was stored.
    #[error("another turn of this session was taken first; wait for it to finish")]
    TurnTaken,
}

/// What a cancel request found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CancelOutcome {
    pub task_id: String,
    pub status: TaskStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct SchedulerStats {
    pub queued: usize,
    pub running: usize,
    pub submitting: usize,
    pub draining: bool,
}

pub enum SchedulerMsg {
    /// Store a new task and queue it; the reply comes after the commit.
    Submit(NewTask, RpcReplyPort<Result<Submitted, SubmitError>>),
    /// Internal: a stored (or resumed) task to run.
    Enqueue {
        task_id: String,
        priority: Priority,
        enqueued_ms: i64,
        /// Set for a task this node has just stored.
        warm: Option<Warm>,
        /// Whether it may go to the cluster's work queue when the queue here is deep (a
        /// task just accepted; not one resumed, taken over or pulled from the queue).
        spill: bool,
        /// The node that offered it on the work queue (its run may claim it from there).
        origin: Option<String>,
    },
    /// Internal: time to reconcile owned tasks with the runs in flight.
    Reconcile,
    /// Internal: the unfinished tasks this node owns, as storage has them (`full`: queued
    /// ones too), or none if storage could not say.
    Reconciled {
        owned: Option<Vec<(String, Priority)>>,
        full: bool,
    },
    /// Internal: a submission's store write finished (accepted or not).
    Stored,
    /// A run started; it can be reached for a cancel.
    RunStarted {
        task_id: String,
        run: ActorRef<RunMsg>,
    },
    /// A run ended (finished, fenced, or gave up); `requeue` when it was stopped from
    /// outside before its task ended (the task is queued again).
    RunFinished {
        task_id: String,
        requeue: bool,
    },
    Cancel(String, RpcReplyPort<Result<CancelOutcome, StoreError>>),
    Stats(RpcReplyPort<SchedulerStats>),
    /// Take no new tasks and start no queued ones (the node is leaving); runs in flight
    /// finish. Answers with the counts at that moment.
    Drain(RpcReplyPort<SchedulerStats>),
}

// ractor's `cluster` feature (for ractor_cluster) drops the blanket `Message` impl.
impl ractor::Message for SchedulerMsg {}

pub struct Scheduler;

pub struct SchedulerState {
    ctx: Arc<NodeContext>,
    settings: SchedulerSettings,
    /// Ordered by `enqueued_ms + rank * aging_ms`: older tasks climb above newer urgent ones.
    queue: BinaryHeap<Reverse<(i64, u64, String)>>,
    queued: HashSet<String>,
    /// Specs of queued tasks this node accepted, while there are few (see [`WARM_MAX`]).
    warm: HashMap<String, Warm>,
    seq: u64,
    running: HashMap<String, Option<ActorRef<RunMsg>>>,
    /// Work-queue origins of queued tasks (see [`SchedulerMsg::Enqueue`]).
    origins: HashMap<String, String>,
    /// Tasks offered to the cluster's work queue (another node's run will claim them).
    /// (when; a ticket not taken up for [`SPILL_STALE`] is taken back: it may be lost.)
    spilled: HashMap<String, std::time::Instant>,
    /// Tasks handed here again while an earlier run of theirs was still in flight: queued
    /// when that run ends (it may have been fenced by this very hand-over).
    rerun: HashMap<String, Priority>,
    /// Runs found stopped at the last reconcile without having said so.
    silent: HashSet<String>,
    reconciling: bool,
    /// When a reconcile last covered queued tasks too (none yet: the first one does).
    last_full: Option<std::time::Instant>,
    submitting: usize,
    draining: bool,
    stats: Arc<ActorStats>,
}

impl Scheduler {
    pub async fn spawn_linked(
        ctx: Arc<NodeContext>,
        supervisor: ActorCell,
    ) -> Result<ActorCell, SpawnErr> {
        Actor::spawn_linked(None, Scheduler, ctx, supervisor)
            .await
            .map(|(r, _)| r.get_cell())
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let services = ctx.services().ok_or(
            "the scheduler needs storage and tools; provide them before starting the tree",
        )?;
        let settings = services.scheduler;
        let stats = ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: "scheduler".into(),
                kind: ActorKind::Service,
                role: Some("scheduler".into()),
                domain: None,
            },
        );
        ctx.set_scheduler(Some(myself.clone()));
        // Resume what a previous life of this node (or a crashed scheduler) left
        // unfinished: the first reconcile, at once.
        let _ = myself.cast(SchedulerMsg::Reconcile);
        myself.send_interval(RECONCILE, || SchedulerMsg::Reconcile);
        Ok(SchedulerState {
            ctx,
            settings,
            queue: BinaryHeap::new(),
            queued: HashSet::new(),
            warm: HashMap::new(),
            seq: 0,
            running: HashMap::new(),
            origins: HashMap::new(),
            spilled: HashMap::new(),
            rerun: HashMap::new(),
            silent: HashSet::new(),
            reconciling: false,
            last_full: None,
            submitting: 0,
            draining: false,
            stats,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.set_scheduler(None);
        state.ctx.directory.leave(myself.get_id().pid());
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
            SchedulerMsg::Submit(task, reply) => state.submit(&myself, task, reply),
            SchedulerMsg::Stored => state.submitting = state.submitting.saturating_sub(1),
            SchedulerMsg::Enqueue {
                task_id,
                priority,
                enqueued_ms,
                warm,
                spill,
                origin,
            } => {
                if spill && state.spill(&myself, &task_id, priority, enqueued_ms, &warm) {
                    // Offered to the cluster; it comes back here if that fails.
                    state.spilled.insert(task_id, std::time::Instant::now());
                } else if state.running.contains_key(&task_id) {
                    state.rerun.insert(task_id, priority);
                } else if state.queued.insert(task_id.clone()) {
                    state.spilled.remove(&task_id);
                    if let Some(warm) = warm
                        && state.warm.len() < WARM_MAX
                    {
                        state.warm.insert(task_id.clone(), warm);
                    }
                    if let Some(origin) = origin {
                        state.origins.insert(task_id.clone(), origin);
                    }
                    state.push(task_id, priority, enqueued_ms);
                }
            }
            SchedulerMsg::RunStarted { task_id, run } => {
                state.running.insert(task_id, Some(run));
            }
            SchedulerMsg::RunFinished { task_id, requeue } => {
                state.running.remove(&task_id);
                match state.rerun.remove(&task_id) {
                    Some(priority) => state.requeue(task_id, priority),
                    None if requeue => state.requeue(task_id, Priority::default()),
                    None => {}
                }
            }
            SchedulerMsg::Reconcile => state.reconcile(&myself),
            SchedulerMsg::Reconciled { owned, full } => {
                state.reconciling = false;
                if let Some(owned) = owned {
                    // The first one resumes what an earlier life of this node left:
                    // nothing of it can still be on its way here, however young.
                    let first = state.last_full.is_none();
                    if full {
                        state.last_full = Some(std::time::Instant::now());
                    }
                    state.reconciled(owned, full, first);
                }
            }
            SchedulerMsg::Cancel(task_id, reply) => state.cancel(task_id, reply),
            SchedulerMsg::Stats(reply) => {
                let _ = reply.send(state.counts());
            }
            SchedulerMsg::Drain(reply) => {
                if !state.draining {
                    tracing::info!(
                        running = state.running.len(),
                        queued = state.queued.len(),
                        "draining"
                    );
                }
                state.draining = true;
                let _ = reply.send(state.counts());
            }
        }
        state.pump(&myself);
        metrics::gauge!("ms_tasks_queued").set(state.queued.len() as f64);
        metrics::gauge!("ms_tasks_running").set(state.running.len() as f64);
        Ok(())
    }
}

impl SchedulerState {
    fn counts(&self) -> SchedulerStats {
        SchedulerStats {
            queued: self.queued.len(),
            running: self.running.len(),
            submitting: self.submitting,
            draining: self.draining,
        }
    }

    /// Offers a just-accepted task to the cluster's work queue when the queue here is deep;
    /// whether it did. If the offer fails, the task is queued here after all.
    fn spill(
        &self,
        myself: &ActorRef<SchedulerMsg>,
        task_id: &str,
        priority: Priority,
        enqueued_ms: i64,
        warm: &Option<Warm>,
    ) -> bool {
        // Checked first: this runs for every accepted task, and the queue is rarely deep.
        let deep = self
            .settings
            .spill_above
            .is_some_and(|n| self.queued.len() >= n);
        if !deep {
            return false;
        }
        let Some(queue) = self.ctx.services().and_then(|s| s.work_queue.clone()) else {
            return false;
        };
        let (me, task_id, warm) = (myself.clone(), task_id.to_string(), warm.clone());
        tokio::spawn(async move {
            if !queue.offer(task_id.clone(), priority).await {
                let _ = me.cast(SchedulerMsg::Enqueue {
                    task_id,
                    priority,
                    enqueued_ms,
                    warm,
                    spill: false,
                    origin: None,
                });
            }
        });
        true
    }

    /// Queues a task found again (reconciled, or handed back while its run ended).
    fn requeue(&mut self, task_id: String, priority: Priority) {
        if self.running.contains_key(&task_id) || !self.queued.insert(task_id.clone()) {
            return;
        }
        // Found again means waiting since long ago: ahead of newer tasks of its priority.
        self.push(task_id, priority, 0);
    }

    /// Puts a task (already in `queued`) in the priority queue, ordered by
    /// `enqueued_ms + rank × aging`.
    fn push(&mut self, task_id: String, priority: Priority, enqueued_ms: i64) {
        let key = enqueued_ms + priority.rank() * self.settings.aging_ms as i64;
        self.seq += 1;
        self.queue.push(Reverse((key, self.seq, task_id)));
    }

    /// Asks storage, off the mailbox, for the unfinished tasks this node owns; also frees
    /// the slots of runs that stopped without saying so (seen stopped twice in a row, so
    /// a run the `runs` supervisor is restarting right now is left alone).
    fn reconcile(&mut self, myself: &ActorRef<SchedulerMsg>) {
        let stopped: HashSet<String> = self
            .running
            .iter()
            .filter(|(_, run)| {
                run.as_ref()
                    .is_some_and(|r| r.get_status() == ractor::ActorStatus::Stopped)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let dead: Vec<String> = stopped.intersection(&self.silent).cloned().collect();
        for id in dead {
            tracing::warn!(task_id = %id, "a run stopped without reporting; its slot is freed and its task queued again");
            self.running.remove(&id);
            self.requeue(id, Priority::default()); // a finished one is let go by its claim
        }
        self.silent = stopped;
        if self.reconciling {
            return;
        }
        let Some(services) = self.ctx.services() else {
            return;
        };
        self.reconciling = true;
        let (store, me, node) = (
            services.store.clone(),
            myself.clone(),
            self.ctx.node.clone(),
        );
        let full = self
            .last_full
            .is_none_or(|at| at.elapsed() >= FULL_RECONCILE);
        tokio::spawn(async move {
            let owned = match store.unfinished(node, !full).await {
                Ok(owned) => Some(owned),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot reconcile owned tasks now");
                    None
                }
            };
            let _ = me.cast(SchedulerMsg::Reconciled { owned, full });
        });
    }

    /// Queues every owned unfinished task that is neither queued, running, nor offered to
    /// the cluster's work queue.
    fn reconciled(&mut self, owned: Vec<(String, Priority)>, full: bool, first: bool) {
        if full {
            // Offered tasks that are no longer this node's (claimed elsewhere) or are final.
            let ids: HashSet<&str> = owned.iter().map(|(id, _)| id.as_str()).collect();
            self.spilled.retain(|id, _| ids.contains(id.as_str()));
        }
        let mut found = 0;
        let young = if first {
            i64::MAX
        } else {
            now_ms() - RECONCILE_MIN_AGE_MS
        };
        for (task_id, priority) in owned {
            if created_ms(&task_id).is_some_and(|at| at > young)
                || self.queued.contains(&task_id)
                || self.running.contains_key(&task_id)
                || self
                    .spilled
                    .get(&task_id)
                    .is_some_and(|at| at.elapsed() < SPILL_STALE)
            {
                continue;
            }
            found += 1;
            self.requeue(task_id, priority);
        }
        if found > 0 {
            tracing::info!(tasks = found, "queued owned tasks that nobody was running");
        }
    }

    fn submit(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        mut task: NewTask,
        reply: RpcReplyPort<Result<Submitted, SubmitError>>,
    ) {
        if self.draining {
            let _ = reply.send(Err(SubmitError::Draining));
            return;
        }
        let waiting = self.queued.len() + self.submitting;
        if waiting >= self.settings.max_queued {
            let _ = reply.send(Err(SubmitError::QueueFull(waiting)));
            return;
        }
        let Some(services) = self.ctx.services() else {
            let _ = reply.send(Err(SubmitError::NotReady));
            return;
        };
        self.submitting += 1;
        task.owner.clone_from(&self.ctx.node);
        let store = services.store.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let enqueued_ms = task.created_at_ms;
            let warm = Warm {
                spec: task.spec.clone(),
                created_at_ms: task.created_at_ms,
                principal: task.principal.clone(),
            };
            let result = match store.submit(task).await {
                Ok(s) if s.conflict => Err(SubmitError::KeyReused(s.task_id)),
                Ok(s) if s.turn_taken => Err(SubmitError::TurnTaken),
                other => other.map_err(SubmitError::from),
            };
            if let Ok(s) = &result
                && !s.status.is_final()
            {
                let _ = me.cast(SchedulerMsg::Enqueue {
                    task_id: s.task_id.clone(),
                    priority: s.priority,
                    enqueued_ms,
                    // An earlier task found by its idempotency key may have any history.
                    warm: s.created.then_some(warm),
                    spill: s.created,
                    origin: None,
                });
            }
            let _ = me.cast(SchedulerMsg::Stored);
            let _ = reply.send(result);
        });
    }

    /// Starts runs while there is room.
    fn pump(&mut self, myself: &ActorRef<SchedulerMsg>) {
        let Some(runs) = self.ctx.supervisor("runs") else {
            return;
        };
        // A draining node leaves its queued tasks to the others (they take them over
        // when it has left).
        if self.draining {
            return;
        }
        while self.running.len() < self.settings.max_running {
            let Some(Reverse((_, _, task_id))) = self.queue.pop() else {
                break;
            };
            if !self.queued.remove(&task_id) {
                continue; // cancelled while queued
            }
            self.running.insert(task_id.clone(), None);
            let ctx = self.ctx.clone();
            let id = task_id.clone();
            let warm = self.warm.remove(&task_id);
            let origin = self.origins.remove(&task_id);
            let spec = ChildSpec::new(task_id.clone(), move |sup, incarnation| {
                // A restarted run rebuilds itself from the store.
                let warm = if incarnation == 0 { warm.clone() } else { None };
                Run::spawn_linked(
                    ctx.clone(),
                    id.clone(),
                    incarnation,
                    warm,
                    origin.clone(),
                    sup,
                )
            })
            .restart(Restart::Transient);
            let me = myself.clone();
            let runs = runs.clone();
            tokio::spawn(async move {
                let started = ractor::call!(runs, SupervisorMsg::StartChild, spec);
                match started {
                    Ok(Ok(_)) => {}
                    // Already running (a resumed task whose run survived a scheduler restart).
                    Ok(Err(crate::supervisor::SupervisorError::DuplicateChild(_))) => {}
                    Ok(Err(e)) => {
                        tracing::error!(task_id = %task_id, error = %e, "cannot start the task's run");
                        let _ = me.cast(SchedulerMsg::RunFinished {
                            task_id,
                            requeue: false,
                        });
                    }
                    Err(e) => {
                        tracing::error!(task_id = %task_id, error = %e, "the runs supervisor is not answering");
                        let _ = me.cast(SchedulerMsg::RunFinished {
                            task_id,
                            requeue: false,
                        });
                    }
                }
            });
        }
    }

    fn cancel(&mut self, task_id: String, reply: RpcReplyPort<Result<CancelOutcome, StoreError>>) {
        if let Some(Some(run)) = self.running.get(&task_id) {
            let run = run.clone();
            let store = self.ctx.services().map(|s| s.store.clone());
            tokio::spawn(async move {
                let result = match ractor::call!(run, RunMsg::Cancel) {
                    Ok(status) => Ok(status),
                    // The run ended between the lookup and the call (it stops once its
                    // outcome is committed): what is stored says how the task ended.
                    Err(e) => match store {
                        Some(store) => match store.cancel_queued(task_id.clone(), now_ms()).await {
                            Ok(status) if status.is_final() => Ok(status),
                            Ok(status) => Err(StoreError::Unavailable(format!(
                                "the task's run stopped while it was cancelled (task {status}); retry"
                            ))),
                            Err(e) => Err(e),
                        },
                        None => Err(StoreError::Unavailable(format!(
                            "the task's run did not answer: {e}"
                        ))),
                    },
                };
                let _ = reply.send(result.map(|status| CancelOutcome { task_id, status }));
            });
            return;
        }
        self.queued.remove(&task_id);
        self.warm.remove(&task_id);
        self.origins.remove(&task_id);
        let Some(services) = self.ctx.services() else {
            let _ = reply.send(Err(StoreError::Unavailable("storage not open".into())));
            return;
        };
        let store = services.store.clone();
        tokio::spawn(async move {
            let result = store.cancel_queued(task_id.clone(), now_ms()).await;
            let _ = reply.send(result.map(|status| CancelOutcome { task_id, status }));
        });
    }
}

/// When a task was created, read from its id (a UUIDv7 carries its creation time).
fn created_ms(task_id: &str) -> Option<i64> {
    let (secs, nanos) = uuid::Uuid::parse_str(task_id)
        .ok()?
        .get_timestamp()?
        .to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}
