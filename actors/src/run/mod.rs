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
//! Record before effect: an attempt of a step whose tool has side effects
//! ([`crate::roles::has_effects`]) starts only after the write that records it has committed
//! (fenced by the lease epoch, so a run that lost its task starts nothing) and while this
//! node can prove it holds its lease; every step starts only after the results it depends
//! on are committed. Pure tools start at once and their running state shares a later write.
//!
//! Storage being unreachable is not a crash: the run keeps what it has not written, waits
//! with backoff and writes it when storage is back, starting nothing that depends on it
//! meanwhile. Only a real fault counts as one of the run's incarnations.
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
use crate::roles::critic;
use crate::scheduler::SchedulerMsg;
use crate::task::store::{Claim, FIRST_EPOCH, Progress, StoreError, TaskEvent, now_ms};
use crate::task::{StepSpec, StepStatus, TaskSpec, TaskStatus};
use crate::tools::{ToolError, ToolOutput};
use plan::Plan;

pub mod agent;
mod approval;
mod budget;
mod launch;
mod plan;
mod planning;
mod record;
pub mod summary;

/// A run that crashes this many times fails its task instead of looping.
const MAX_INCARNATIONS: u32 = 5;
/// How long a write that only marks work as started may wait for the write of its result.
pub const LAUNCH_FLUSH: Duration = Duration::from_millis(20);
/// First wait before writing again while storage is unreachable; it doubles up to
/// [`STORAGE_BACKOFF_MAX`].
const STORAGE_BACKOFF: Duration = Duration::from_millis(100);
const STORAGE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How soon a step whose attempt could not start (this node could not prove that it held
/// its lease) is tried again.
const LEASE_RECHECK: Duration = Duration::from_millis(250);

/// A task this node has just accepted: its spec is in memory and it was stored with the
/// lease ([`FIRST_EPOCH`]) its first run holds, so that run skips the claim.
#[derive(Debug, Clone)]
pub struct Warm {
    pub spec: Arc<TaskSpec>,
    pub created_at_ms: i64,
    pub principal: Option<String>,
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
    /// Internal: an attempt with side effects was not started (the lease did not hold).
    NotStarted(usize),
    /// Internal: the task's deadline has passed.
    Deadline,
    /// Internal: time to write what waited to share a later write.
    Flush,
    /// Internal: the Planner answered (and which agent did, when one was reached).
    Planned(
        Result<Vec<StepSpec>, crate::roles::planner::PlanError>,
        Option<String>,
    ),
    /// Stop running steps and record the task cancelled; replies with the final status.
    Cancel(RpcReplyPort<TaskStatus>),
    /// Internal: read the decisions on the steps awaiting approval ([`approval`]).
    CheckApprovals,
}

// ractor's `cluster` feature (for ractor_cluster) drops the blanket `Message` impl.
impl ractor::Message for RunMsg {}

pub struct RunArgs {
    ctx: Arc<NodeContext>,
    task_id: String,
    incarnation: u32,
    warm: Option<Warm>,
    origin: Option<String>,
}

pub struct RunState {
    ctx: Arc<NodeContext>,
    services: Option<Arc<Services>>,
    task_id: String,
    incarnation: u32,
    warm: Option<Warm>,
    /// The node that accepted the task, when this node pulled it from the cluster's work
    /// queue: the claim may take it from that node (otherwise only from this one).
    origin: Option<String>,
    epoch: i64,
    spec: Arc<TaskSpec>,
    /// Who submitted the task (from the claim): its steps' memory is this principal's.
    principal: Option<String>,
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
    /// Attempts ready to start once what they depend on is committed (see [`Run`]).
    launching: Vec<(usize, Work)>,
    /// This node's lease as of just before the last commit ([`crate::lease::NodeLease::until`]).
    lease_at_commit: u64,
    /// The claim is done (the run knows its lease epoch).
    started: bool,
    /// Storage is unreachable: the wait before the next try.
    storage_backoff: Option<Duration>,
    /// The retry of a failed write is due (its [`RunMsg::Flush`] came).
    retry_due: bool,
    /// The task was taken over by another owner: stop without writing.
    lost: bool,
    /// Cancellers waiting for the cancelled outcome to be committed.
    cancel_replies: Vec<RpcReplyPort<TaskStatus>>,
    /// The scheduler was told this run ended.
    reported: bool,
    /// Bytes of outputs and trace this task has stored ([`budget`]).
    output_used: u64,
    /// The first plan's failure, while the Planner replans ([`planning`]).
    replanning: Option<String>,
    /// Tool calls approved and the decisions' poll ([`approval`]).
    approvals: approval::Approvals,
    /// A session turn's Coordinator agent (told when the run starts and ends), by name.
    coordinator: Option<(ActorRef<crate::agent::AgentMsg>, String)>,
}

pub struct Run;

impl Run {
    pub async fn spawn_linked(
        ctx: Arc<NodeContext>,
        task_id: String,
        incarnation: u32,
        warm: Option<Warm>,
        origin: Option<String>,
        supervisor: ActorCell,
    ) -> Result<ActorCell, SpawnErr> {
        let args = RunArgs {
            ctx,
            task_id,
            incarnation,
            warm,
            origin,
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
            origin: args.origin,
            epoch: 0,
            spec: Arc::default(),
            principal: None,
            plan: Plan::default(),
            next_seq: 0,
            done: false,
            outcome: None,
            pending: None,
            flush_now: false,
            flush_armed: false,
            launching: Vec::new(),
            lease_at_commit: 0,
            started: false,
            storage_backoff: None,
            retry_due: false,
            lost: false,
            cancel_replies: Vec::new(),
            reported: false,
            output_used: 0,
            replanning: None,
            approvals: approval::Approvals::default(),
            coordinator: None,
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
        // Stopped from outside (an operator, the `runs` supervisor shutting down): the
        // scheduler's slot is freed and the unfinished task queued again.
        state.report_finished();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut result = Ok(());
        match msg {
            // Once done, only the write of the outcome (if storage kept it waiting) and
            // cancellers (answered once it is committed) are of interest.
            RunMsg::Cancel(reply) if state.done => state.cancel_replies.push(reply),
            RunMsg::Flush => {
                state.flush_armed = false;
                state.flush_now = true;
                state.retry_due = true;
            }
            _ if state.done => {}
            RunMsg::Start => result = state.start(&myself).await,
            // The agent found the lease lapsed when the step's turn came.
            RunMsg::StepDone {
                index,
                result: Err(ToolError::NotStarted),
                ..
            } => state.not_started(&myself, index),
            RunMsg::StepDone {
                index,
                agent,
                result: done,
                judged,
            } => result = state.step_done(&myself, index, agent, done, judged),
            RunMsg::Retry(index) => {
                // A cancel or deadline during the backoff has already settled the step.
                if state
                    .plan
                    .steps
                    .get(index)
                    .is_some_and(|s| s.state.status == StepStatus::Pending)
                {
                    state.launch(index);
                }
            }
            RunMsg::NotStarted(index) => state.not_started(&myself, index),
            RunMsg::Deadline => {
                result = state.stop_all(TaskStatus::TimedOut, "the task's timeout passed")
            }
            RunMsg::Planned(Ok(plan), agent) => result = state.planned(&myself, plan, agent),
            RunMsg::Planned(Err(e), _) => result = state.plan_failed(e),
            RunMsg::Cancel(reply) => {
                state.cancel_replies.push(reply);
                result = state.stop_all(TaskStatus::Cancelled, "cancelled on request");
            }
            RunMsg::CheckApprovals => result = state.check_approvals(&myself).await,
        }
        let result = match result {
            Ok(()) => state.flush(&myself).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                state.start_launches(&myself);
                state.arm_approval_poll(&myself);
            }
            Err(StoreError::Fenced { task_id, epoch }) => {
                tracing::warn!(%task_id, epoch, "lost the task's lease; stopping this run");
                state.lost = true;
                state.launching.clear();
            }
            Err(StoreError::Unavailable(e)) => state.wait_for_storage(&myself, &e),
            Err(e) => return Err(e.into()),
        }
        let committed = state.done && state.pending.is_none();
        if committed || state.lost {
            // The canceller hears back only once the outcome is committed; a run that lost
            // its task drops the replies, which tells the canceller so (503, not a wrong
            // status).
            let replies = std::mem::take(&mut state.cancel_replies);
            if committed {
                let outcome = state.outcome.unwrap_or(TaskStatus::Cancelled);
                for reply in replies {
                    let _ = reply.send(outcome);
                }
            }
            state.report_finished();
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

    /// Tells the scheduler this run is over (once), so its slot is free.
    fn report_finished(&mut self) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        if let Some((agent, _)) = self.coordinator.take() {
            let _ = agent.cast(crate::agent::AgentMsg::Coordinate {
                task_id: self.task_id.clone(),
                what: String::new(),
                on: false,
            });
        }
        if let Some(scheduler) = self.ctx.scheduler() {
            let _ = scheduler.cast(SchedulerMsg::RunFinished {
                task_id: self.task_id.clone(),
                requeue: !self.done && !self.lost,
            });
        }
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
                principal: warm.principal,
            },
            None => {
                let claimed = services
                    .store
                    .claim(
                        self.task_id.clone(),
                        self.ctx.node.clone(),
                        self.origin.clone(),
                    )
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
        self.started = true;
        if self.storage_backoff.take().is_some() {
            tracing::info!(task_id = %self.task_id, "storage is back; the run starts");
        }
        self.epoch = claim.epoch;
        self.next_seq = claim.next_seq;
        self.spec = claim.spec;
        self.principal = claim.principal;
        self.output_used = budget::recorded(&claim.steps);
        self.take_coordinator().await;
        let mut data = json!({"node": self.ctx.node, "epoch": claim.epoch});
        if let Some((_, name)) = &self.coordinator {
            data["coordinator"] = json!(name);
        }
        let started = self.event("started", data);
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
            let deadline =
                claim.created_at_ms.saturating_add(
                    crate::time::secs(timeout).as_millis().min(i64::MAX as u128) as i64,
                );
            let left = Duration::from_millis((deadline - now_ms()).max(0) as u64);
            myself.send_after(left, || RunMsg::Deadline);
        }
        let stored_plan = claim.plan.is_some();
        let plan = claim
            .plan
            .or_else(|| self.spec.steps.clone())
            .or_else(|| self.spec.agent.as_ref().map(agent::first_plan));
        match plan {
            Some(plan) => {
                self.plan = Plan::new(plan, claim.steps);
                self.plan.tolerant = self.spec.agent.is_some();
                if self.spec.agent.is_some() && !stored_plan {
                    // The loop's plan grows and is stored as it does; store its start.
                    let mut progress = self.progress();
                    progress.plan = Some(self.plan.specs());
                    self.note(progress);
                }
                self.advance(myself)
            }
            None => {
                let description = self.spec.description.clone().unwrap_or_default();
                self.ask_planner(myself, description)
            }
        }
    }

    /// A session's turn is coordinated by its session's Coordinator agent on this node
    /// ([`crate::roles::coordinator::of_session`]): the agent is told, so its load and
    /// current work show the turn while this run lasts, and the trace names it.
    async fn take_coordinator(&mut self) {
        let Some(session) = self
            .spec
            .session
            .clone()
            .filter(|_| self.spec.agent.is_some())
        else {
            return;
        };
        let Some(record) = crate::roles::coordinator::of_session(&self.ctx, &session).await else {
            return;
        };
        let Some(agent) = record.agent else {
            return;
        };
        let what = self
            .spec
            .description
            .clone()
            .unwrap_or_else(|| format!("session {session}"));
        let _ = agent.cast(crate::agent::AgentMsg::Coordinate {
            task_id: self.task_id.clone(),
            what: format!("{what} (task {})", self.task_id),
            on: true,
        });
        self.coordinator = Some((agent, record.identity.name));
    }

    /// Launches every step whose prerequisites succeeded, skips those whose prerequisites
    /// failed, and finishes the task when nothing is left to run (or replans it once).
    fn advance(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), StoreError> {
        let (ready, skipped) = self.plan.scan();
        for i in ready {
            self.launch(i);
        }
        if !skipped.is_empty() {
            let mut progress = self.progress();
            progress.steps = skipped;
            self.record(progress);
        }
        let outcome = match &self.spec.agent {
            Some(agent) => agent::outcome(&self.plan, agent),
            None if planning::replanned(&self.plan) => self
                .plan
                .outcome_of(|s| s.id.starts_with(planning::REPLANNED)),
            None => self.plan.outcome(),
        };
        match outcome {
            Some((TaskStatus::Failed, Some(error))) if self.may_replan() => {
                self.replan(myself, error)
            }
            Some((status, error)) => self.finish(status, error),
            None => Ok(()),
        }
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
        let mut max_attempts = step.spec.max_attempts.unwrap_or(self.spec.max_attempts);
        let mut output = result
            .as_ref()
            .ok()
            .and_then(|o| serde_json::to_value(o).ok());
        let mut error = result.as_ref().err().map(ToString::to_string);
        let mut verdict = verdict;
        // The task's output budget: a result that does not fit is kept out of storage and
        // fails the step for good (a retry would meet the same wall).
        let limit = self
            .services
            .as_ref()
            .map_or(u64::MAX, |s| s.scheduler.max_task_output_bytes);
        let cost = budget::cost(
            output.as_ref(),
            verdict.passed,
            error.as_deref(),
            &verdict.reason,
        );
        if self.output_used.saturating_add(cost) > limit {
            let reason = budget::exhausted(limit);
            tracing::warn!(task_id = %self.task_id, step = %step.spec.id, limit, "{reason}");
            output = None;
            error = Some(reason.clone());
            verdict = crate::task::Verdict {
                passed: false,
                reason,
            };
            max_attempts = 0;
        }
        self.output_used = self.output_used.saturating_add(budget::cost(
            output.as_ref(),
            verdict.passed,
            error.as_deref(),
            &verdict.reason,
        ));
        if let Some(attempt) = step.state.attempts.last_mut() {
            attempt.agent = agent.as_ref().map(|a| a.0.clone());
            attempt.node = agent.map(|a| a.1);
            attempt.output = output.clone();
            attempt.error = error;
            attempt.verdict = Some(verdict.clone());
            attempt.finished_at = Some(crate::time::now_rfc3339());
        }
        // An attempt cut short by a crash or a lost node is the infrastructure's, not the
        // step's: it does not count against the step's attempts.
        let attempts = step
            .state
            .attempts
            .iter()
            .filter(|a| !plan::interrupted(a))
            .count() as u32;
        let kind = if verdict.passed {
            step.state.status = StepStatus::Succeeded;
            step.state.output = output;
            "step.succeeded"
        } else if attempts < max_attempts {
            step.state.status = StepStatus::Pending;
            let backoff = Duration::from_millis(100u64 << attempts.saturating_sub(1).min(6))
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
        // An agent's LLM call that asked for tools grows the plan, stored with its result.
        if verdict.passed
            && let Some(agent) = &self.spec.agent
        {
            let grown = agent::grow(&self.plan, i, agent, &self.tool_check());
            if !grown.is_empty() {
                self.plan.extend(grown);
                progress.plan = Some(self.plan.specs());
            }
        }
        self.record(progress);
        self.advance(myself)
    }

    /// Checks a step's tool and arguments as a submitted step is checked (an agent's tool
    /// calls, before they become steps).
    fn tool_check(&self) -> impl Fn(&str, &Value) -> Result<(), String> + use<> {
        let services = self.services.clone();
        move |tool: &str, args: &Value| match &services {
            Some(s) => {
                crate::roles::validate_step_tool(&s.tools, s.llm.is_configured(), tool, args)
            }
            None => Err("this node has no tools".into()),
        }
    }

    /// Cancels or times out the task: stops running steps and records the outcome.
    fn stop_all(&mut self, status: TaskStatus, reason: &str) -> Result<(), StoreError> {
        self.launching.clear(); // readied, never started
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
