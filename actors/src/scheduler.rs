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
    },
    /// Internal: a submission's store write finished (accepted or not).
    Stored,
    /// A run started; it can be reached for a cancel.
    RunStarted {
        task_id: String,
        run: ActorRef<RunMsg>,
    },
    /// A run ended (finished, fenced, or gave up).
    RunFinished {
        task_id: String,
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
        // Resume what a previous life of this node (or a crashed scheduler) left unfinished.
        let store = services.store.clone();
        let me = myself.clone();
        let owner = settings.resume_own_only.then(|| ctx.node.clone());
        tokio::spawn(async move {
            match store.unfinished(owner).await {
                Ok(tasks) => {
                    if !tasks.is_empty() {
                        tracing::info!(tasks = tasks.len(), "resuming unfinished tasks");
                    }
                    for (task_id, priority) in tasks {
                        let _ = me.cast(SchedulerMsg::Enqueue {
                            task_id,
                            priority,
                            enqueued_ms: 0,
                            warm: None,
                            spill: false,
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list unfinished tasks to resume"),
            }
        });
        Ok(SchedulerState {
            ctx,
            settings,
            queue: BinaryHeap::new(),
            queued: HashSet::new(),
            warm: HashMap::new(),
            seq: 0,
            running: HashMap::new(),
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
            } => {
                if spill && state.spill(&myself, &task_id, priority, enqueued_ms, &warm) {
                    // Offered to the cluster; it comes back here if that fails.
                } else if !state.running.contains_key(&task_id)
                    && state.queued.insert(task_id.clone())
                {
                    if let Some(warm) = warm
                        && state.warm.len() < WARM_MAX
                    {
                        state.warm.insert(task_id.clone(), warm);
                    }
                    let key = enqueued_ms + priority.rank() * state.settings.aging_ms as i64;
                    state.seq += 1;
                    state.queue.push(Reverse((key, state.seq, task_id)));
                }
            }
            SchedulerMsg::RunStarted { task_id, run } => {
                state.running.insert(task_id, Some(run));
            }
            SchedulerMsg::RunFinished { task_id } => {
                state.running.remove(&task_id);
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
                });
            }
        });
        true
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
            };
            let result = store.submit(task).await.map_err(SubmitError::from);
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
            let spec = ChildSpec::new(task_id.clone(), move |sup, incarnation| {
                // A restarted run rebuilds itself from the store.
                let warm = if incarnation == 0 { warm.clone() } else { None };
                Run::spawn_linked(ctx.clone(), id.clone(), incarnation, warm, sup)
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
                        let _ = me.cast(SchedulerMsg::RunFinished { task_id });
                    }
                    Err(e) => {
                        tracing::error!(task_id = %task_id, error = %e, "the runs supervisor is not answering");
                        let _ = me.cast(SchedulerMsg::RunFinished { task_id });
                    }
                }
            });
        }
    }

    fn cancel(&mut self, task_id: String, reply: RpcReplyPort<Result<CancelOutcome, StoreError>>) {
        if let Some(Some(run)) = self.running.get(&task_id) {
            let run = run.clone();
            tokio::spawn(async move {
                let result = ractor::call!(run, RunMsg::Cancel).map_err(|e| {
                    StoreError::Unavailable(format!("the task's run did not answer: {e}"))
                });
                let _ = reply.send(result.map(|status| CancelOutcome { task_id, status }));
            });
            return;
        }
        self.queued.remove(&task_id);
        self.warm.remove(&task_id);
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
