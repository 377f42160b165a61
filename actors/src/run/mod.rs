//! One task's run: the Coordinator's job (DESIGN §3). It takes the task (holding the lease
//! it was stored with, or claiming a new lease epoch), drives the plan's steps in dependency order — ready steps in parallel — asks
//! the Router for an executor for each, has the Critic judge each attempt, retries with
//! backoff up to the step's attempts, and records every step result and the outcome.
//!
//! A run is a transient child of the `runs` supervisor: if it crashes it is started again
//! and rebuilds itself from what is stored (recorded steps are not re-run; the step that
//! was in flight is retried). Every write is fenced by the lease epoch, so a run that lost
//! its task to another owner stops instead of overwriting the new owner's results.
//!
//! Writes per task are what bound throughput (one group-commit writer), so a run writes
//! as little as it can without weakening a promise: the first run of a task this node
//! just accepted needs no claim (the task was stored with its lease, [`Warm`]), and what
//! only marks work as started (`started`, running states) waits up to [`LAUNCH_FLUSH`]
//! to share the write of its result. Results, verdicts and outcomes are written at once.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::agent::Work;
use crate::context::{NodeContext, Services};
use crate::roles::{coordinator, critic};
use crate::scheduler::SchedulerMsg;
use crate::task::store::{Claim, FIRST_EPOCH, Progress, StoreError, TaskEvent, now_ms};
use crate::task::{Attempt, StepSpec, StepStatus, TaskSpec, TaskStatus};
use crate::tools::{ToolError, ToolOutput};
use plan::Plan;

mod plan;

/// A run that crashes this many times fails its task instead of looping.
const MAX_INCARNATIONS: u32 = 5;
/// How long a write that only marks work as started may wait for the write of its result.
pub const LAUNCH_FLUSH: Duration = Duration::from_millis(20);

/// A task this node has just accepted: its spec is in memory and it was stored with the
/// lease ([`FIRST_EPOCH`]) its first run holds, so that run skips the claim.
#[derive(Debug, Clone)]
pub struct Warm {
    pub spec: Arc<TaskSpec>,
    pub created_at_ms: i64,
}

pub enum RunMsg {
    /// Internal: claim the task and begin (sent by the run to itself after start).
    Start,
    /// Internal: an attempt finished.
    StepDone {
        index: usize,
        agent: Option<(String, String)>,
        result: Result<ToolOutput, ToolError>,
        /// The LLM judge's verdict, when the step's expectation asks for one.
        judged: Option<crate::task::Verdict>,
    },
    /// Internal: a retry's backoff has passed.
    Retry(usize),
    /// Internal: the task's deadline has passed.
    Deadline,
    /// Internal: time to write what waited to share a later write.
    Flush,
    /// Internal: the Planner answered.
    Planned(Result<Vec<StepSpec>, crate::roles::planner::PlanError>),
    /// Stop running steps and record the task cancelled; replies with the final status.
    Cancel(RpcReplyPort<TaskStatus>),
}

// ractor's `cluster` feature (for ractor_cluster) drops the blanket `Message` impl.
impl ractor::Message for RunMsg {}

pub struct RunArgs {
    ctx: Arc<NodeContext>,
    task_id: String,
    incarnation: u32,
    warm: Option<Warm>,
}

pub struct RunState {
    ctx: Arc<NodeContext>,
    services: Option<Arc<Services>>,
    task_id: String,
    incarnation: u32,
    warm: Option<Warm>,
    epoch: i64,
    spec: Arc<TaskSpec>,
    plan: Plan,
    next_seq: i64,
    done: bool,
    /// How the task ended, once it has.
    outcome: Option<TaskStatus>,
    /// What has changed and is not written yet (one record, one transaction).
    pending: Option<Progress>,
    /// `pending` holds a result: write it when this message's handling ends.
    flush_now: bool,
    /// A [`RunMsg::Flush`] is on its way.
    flush_armed: bool,
}

pub struct Run;

impl Run {
    pub async fn spawn_linked(
        ctx: Arc<NodeContext>,
        task_id: String,
        incarnation: u32,
        warm: Option<Warm>,
        supervisor: ActorCell,
    ) -> Result<ActorCell, SpawnErr> {
        let args = RunArgs {
            ctx,
            task_id,
            incarnation,
            warm,
        };
        Actor::spawn_linked(None, Run, args, supervisor)
            .await
            .map(|(r, _)| r.get_cell())
    }
}

impl Actor for Run {
    type Msg = RunMsg;
    type State = RunState;
    type Arguments = RunArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RunArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Long work never blocks a start: the claim happens in the first message.
        let _ = myself.cast(RunMsg::Start);
        Ok(RunState {
            services: args.ctx.services().cloned(),
            ctx: args.ctx,
            task_id: args.task_id,
            incarnation: args.incarnation,
            warm: args.warm,
            epoch: 0,
            spec: Arc::default(),
            plan: Plan::default(),
            next_seq: 0,
            done: false,
            outcome: None,
            pending: None,
            flush_now: false,
            flush_armed: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for step in &state.plan.steps {
            if let Some(cancel) = &step.cancel {
                cancel.cancel();
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.done {
            if let RunMsg::Cancel(reply) = msg {
                let _ = reply.send(state.outcome.unwrap_or(TaskStatus::Cancelled));
            }
            return Ok(());
        }
        let mut cancelled = None;
        let result = match msg {
            RunMsg::Start => state.start(&myself).await,
            RunMsg::StepDone {
                index,
                agent,
                result,
                judged,
            } => state.step_done(&myself, index, agent, result, judged),
            RunMsg::Retry(index) => {
                // A cancel or deadline during the backoff has already settled the step.
                if state
                    .plan
                    .steps
                    .get(index)
                    .is_some_and(|s| s.state.status == StepStatus::Pending)
                {
                    state.launch(&myself, index);
                }
                Ok(())
            }
            RunMsg::Flush => {
                state.flush_armed = false;
                state.flush_now = true;
                Ok(())
            }
            RunMsg::Deadline => state.stop_all(TaskStatus::TimedOut, "the task's timeout passed"),
            RunMsg::Planned(Ok(plan)) => state.planned(&myself, plan),
            RunMsg::Planned(Err(e)) => state.finish(TaskStatus::Failed, Some(e.to_string())),
            RunMsg::Cancel(reply) => {
                cancelled = Some(reply);
                state.stop_all(TaskStatus::Cancelled, "cancelled on request")
            }
        };
        let result = match result {
            Ok(()) => state.flush(&myself).await,
            Err(e) => Err(e),
        };
        // The canceller hears back only once the cancellation is committed; if it could
        // not be, the dropped reply tells the canceller so (503, not a wrong status).
        if let Some(reply) = cancelled
            && result.is_ok()
        {
            let _ = reply.send(TaskStatus::Cancelled);
        }
        match result {
            Ok(()) => {}
            Err(StoreError::Fenced { task_id, epoch }) => {
                tracing::warn!(%task_id, epoch, "lost the task's lease; stopping this run");
                state.done = true;
            }
            Err(e) => return Err(e.into()),
        }
        if state.done {
            if let Some(scheduler) = state.ctx.scheduler() {
                let _ = scheduler.cast(SchedulerMsg::RunFinished {
                    task_id: state.task_id.clone(),
                });
            }
            myself.stop(None);
        }
        Ok(())
    }
}

impl RunState {
    fn services(&self) -> Result<&Arc<Services>, StoreError> {
        self.services
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("storage is not open".into()))
    }

    fn event(&mut self, kind: &str, data: Value) -> TaskEvent {
        let seq = self.next_seq;
        self.next_seq += 1;
        TaskEvent {
            seq,
            at_ms: now_ms(),
            kind: kind.to_string(),
            data,
        }
    }

    /// Adds a result to what will be written when this message's handling ends.
    fn record(&mut self, progress: Progress) {
        self.flush_now = true;
        self.note(progress);
    }

    /// Adds changes that may wait (up to [`LAUNCH_FLUSH`]) to share a later write.
    fn note(&mut self, progress: Progress) {
        match &mut self.pending {
            Some(pending) => pending.merge(progress),
            None => self.pending = Some(progress),
        }
    }

    /// Writes what is pending in one fenced transaction — now if it holds a result, else
    /// after [`LAUNCH_FLUSH`] — then publishes its trace entries (so live watchers only
    /// ever see what is committed).
    async fn flush(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), StoreError> {
        if self.pending.is_none() {
            return Ok(());
        }
        if !self.flush_now {
            if !self.flush_armed {
                self.flush_armed = true;
                myself.send_after(LAUNCH_FLUSH, || RunMsg::Flush);
            }
            return Ok(());
        }
        self.flush_now = false;
        let Some(progress) = self.pending.take() else {
            return Ok(());
        };
        let events = progress.events.clone();
        self.services()?.store.record(progress).await?;
        for event in events {
            self.publish(event);
        }
        Ok(())
    }

    fn publish(&self, event: TaskEvent) {
        self.ctx.events.publish(crate::events::Event::Task {
            task_id: self.task_id.clone(),
            seq: event.seq,
            at_ms: event.at_ms,
            what: event.kind,
            data: event.data,
        });
    }

    fn progress(&self) -> Progress {
        Progress {
            task_id: self.task_id.clone(),
            epoch: self.epoch,
            ..Default::default()
        }
    }

    async fn start(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), StoreError> {
        let services = self.services()?.clone();
        let claim = match self.warm.take() {
            Some(warm) => Claim {
                epoch: FIRST_EPOCH,
                spec: warm.spec,
                status: TaskStatus::Queued,
                plan: None,
                steps: Vec::new(),
                next_seq: 1, // after `submitted`
                created_at_ms: warm.created_at_ms,
            },
            None => {
                let claimed = services
                    .store
                    .claim(self.task_id.clone(), self.ctx.node.clone())
                    .await?;
                let Some(claim) = claimed else {
                    self.done = true; // already final
                    return Ok(());
                };
                claim
            }
        };
        if let Some(scheduler) = self.ctx.scheduler() {
            let _ = scheduler.cast(SchedulerMsg::RunStarted {
                task_id: self.task_id.clone(),
                run: myself.clone(),
            });
        }
        self.epoch = claim.epoch;
        self.next_seq = claim.next_seq;
        self.spec = claim.spec;
        let started = self.event(
            "started",
            json!({"node": self.ctx.node, "epoch": claim.epoch}),
        );
        let mut progress = self.progress();
        progress.status = Some(TaskStatus::Running);
        progress.events.push(started);
        self.note(progress);
        if self.incarnation > MAX_INCARNATIONS {
            let reason = format!(
                "the task's run crashed {} times; giving up",
                self.incarnation
            );
            return self.finish(TaskStatus::Failed, Some(reason));
        }
        if let Some(timeout) = self.spec.timeout_secs {
            let deadline = claim.created_at_ms + (timeout * 1000.0) as i64;
            let left = Duration::from_millis((deadline - now_ms()).max(0) as u64);
            myself.send_after(left, || RunMsg::Deadline);
        }
        match claim.plan.or_else(|| self.spec.steps.clone()) {
            Some(plan) => {
                self.plan = Plan::new(plan, claim.steps);
                self.advance(myself)
            }
            None => self.ask_planner(myself),
        }
    }

    /// Hands the description to the Planner; its answer comes back as `Planned`.
    fn ask_planner(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), StoreError> {
        let services = self.services()?.clone();
        let description = self.spec.description.clone().unwrap_or_default();
        if !services.llm.is_configured() {
            let reason = format!(
                "this task has no steps and needs the Planner: {}; or submit explicit `steps`",
                crate::llm::NOT_CONFIGURED
            );
            return self.finish(TaskStatus::Failed, Some(reason));
        }
        let mut progress = self.progress();
        progress.status = Some(TaskStatus::Planning);
        self.record(progress);
        let me = myself.clone();
        tokio::spawn(async move {
            let plan =
                crate::roles::planner::plan(&services.llm, &services.tools, &description).await;
            let _ = me.cast(RunMsg::Planned(plan));
        });
        Ok(())
    }

    /// Stores the Planner's plan and starts running it.
    fn planned(
        &mut self,
        myself: &ActorRef<RunMsg>,
        plan: Vec<StepSpec>,
    ) -> Result<(), StoreError> {
        let mut progress = self.progress();
        progress.status = Some(TaskStatus::Running);
        progress.plan = Some(plan.clone());
        progress
            .events
            .push(self.event("planned", json!({"steps": plan.len()})));
        self.record(progress);
        self.plan = Plan::new(plan, Vec::new());
        self.advance(myself)
    }

    /// Launches every step whose prerequisites succeeded, skips those whose prerequisites
    /// failed, and finishes the task when nothing is left to run.
    fn advance(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), StoreError> {
        let (ready, skipped) = self.plan.scan();
        for i in ready {
            self.launch(myself, i);
        }
        if !skipped.is_empty() {
            let mut progress = self.progress();
            progress.steps = skipped;
            self.record(progress);
        }
        match self.plan.outcome() {
            Some((status, error)) => self.finish(status, error),
            None => Ok(()),
        }
    }

    /// Starts an attempt of step `i` on an executor chosen by the Router.
    fn launch(&mut self, myself: &ActorRef<RunMsg>, i: usize) {
        let input = self.plan.input_for(i);
        let timeout = self.plan.steps[i]
            .spec
            .timeout_secs
            .map(Duration::from_secs_f64)
            .or_else(|| {
                self.services
                    .as_ref()
                    .map(|s| Duration::from_secs_f64(s.tools.config().default_timeout_secs))
            });
        let step = &mut self.plan.steps[i];
        let cancel = CancellationToken::new();
        step.cancel = Some(cancel.clone());
        step.state.status = StepStatus::Running;
        step.state.attempts.push(Attempt {
            attempt: step.state.attempts.len() as u32 + 1,
            agent: None,
            node: None,
            output: None,
            error: None,
            verdict: None,
            started_at: Some(crate::time::now_rfc3339()),
            finished_at: None,
        });
        let work = Work {
            task_id: self.task_id.clone(),
            session: self.spec.session.clone(),
            step: step.spec.clone(),
            input,
            timeout,
            cancel,
        };
        let running = step.state.clone();
        let mut progress = self.progress();
        progress.steps.push(running);
        self.note(progress);
        let ctx = self.ctx.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let done = coordinator::attempt(&ctx, work).await;
            let _ = me.cast(RunMsg::StepDone {
                index: i,
                agent: done.agent,
                result: done.result,
                judged: done.judged,
            });
        });
    }

    fn step_done(
        &mut self,
        myself: &ActorRef<RunMsg>,
        i: usize,
        agent: Option<(String, String)>,
        result: Result<ToolOutput, ToolError>,
        judged: Option<crate::task::Verdict>,
    ) -> Result<(), StoreError> {
        let Some(step) = self.plan.steps.get_mut(i) else {
            return Ok(());
        };
        if step.state.status != StepStatus::Running {
            return Ok(()); // cancelled or timed out meanwhile
        }
        step.cancel = None;
        let verdict = match critic::judge(step.spec.expect.as_ref(), &result) {
            rules if rules.passed => judged.unwrap_or(rules),
            failed => failed,
        };
        let max_attempts = step.spec.max_attempts.unwrap_or(self.spec.max_attempts);
        let output = result
            .as_ref()
            .ok()
            .and_then(|o| serde_json::to_value(o).ok());
        if let Some(attempt) = step.state.attempts.last_mut() {
            attempt.agent = agent.as_ref().map(|a| a.0.clone());
            attempt.node = agent.map(|a| a.1);
            attempt.output = output.clone();
            attempt.error = result.as_ref().err().map(ToString::to_string);
            attempt.verdict = Some(verdict.clone());
            attempt.finished_at = Some(crate::time::now_rfc3339());
        }
        let attempts = step.state.attempts.len() as u32;
        let kind = if verdict.passed {
            step.state.status = StepStatus::Succeeded;
            step.state.output = output;
            "step.succeeded"
        } else if attempts < max_attempts {
            step.state.status = StepStatus::Pending;
            let backoff = Duration::from_millis(100u64.saturating_mul(1 << (attempts - 1).min(6)))
                .min(Duration::from_secs(5));
            step.cancel = Some(CancellationToken::new()); // holds the slot until the retry
            myself.send_after(backoff, move || RunMsg::Retry(i));
            "step.retrying"
        } else {
            step.state.status = StepStatus::Failed;
            "step.failed"
        };
        let state = step.state.clone();
        let data = json!({"step": state.step_id, "attempt": attempts, "verdict": verdict});
        let event = self.event(kind, data);
        let mut progress = self.progress();
        progress.steps.push(state);
        progress.events.push(event);
        self.record(progress);
        self.advance(myself)
    }

    /// Cancels or times out the task: stops running steps and records the outcome.
    fn stop_all(&mut self, status: TaskStatus, reason: &str) -> Result<(), StoreError> {
        let mut touched = Vec::new();
        for step in &mut self.plan.steps {
            if let Some(cancel) = step.cancel.take() {
                cancel.cancel();
            }
            if !step.state.status.is_final() {
                step.state.status = StepStatus::Cancelled;
                touched.push(step.state.clone());
            }
        }
        let mut progress = self.progress();
        progress.steps = touched;
        self.record(progress);
        self.finish(status, Some(reason.to_string()))
    }

    fn finish(&mut self, status: TaskStatus, error: Option<String>) -> Result<(), StoreError> {
        let event = self.event(status.as_str(), json!({"error": error}));
        let mut progress = self.progress();
        progress.status = Some(status);
        progress.error = error;
        progress.events.push(event);
        self.record(progress);
        metrics::counter!("ms_tasks_finished_total", "status" => status.as_str()).increment(1);
        self.done = true;
        self.outcome = Some(status);
        Ok(())
    }
}
