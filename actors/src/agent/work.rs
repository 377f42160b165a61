//! The steps an agent runs (executors, workers, memory agents), and their bounds.
//!
//! An agent runs at most [`AgentLimits::max_in_flight`] steps at once, each in a task of
//! its own so the mailbox stays free. A step that arrives while every slot is taken waits in
//! the agent's queue (at most [`AgentLimits::max_waiting`]) and starts when a slot frees, in
//! arrival order. Past that the agent hands the step back ([`ExecuteReply::Busy`]): it was
//! never started, and the Coordinator waits and routes it again (to this agent or another),
//! so a full node slows its steps down rather than failing them. The load the agent reports
//! to the registry (what the Router balances on) is running plus waiting.
//!
//! A slot is released by a guard whatever ends the step's task, a panic included: the
//! caller is answered and the load goes down, so neither can leak.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{AgentMsg, Work};
use crate::context::Services;
use crate::directory::ActorStats;
use crate::roles::Role;
use crate::tools::{ToolCall, ToolError, ToolOutput};

/// How much work one agent takes (the `[agents]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentLimits {
    /// Steps an agent runs at once. From this load on, the Router prefers another node's
    /// agents when one offers the capability.
    pub max_in_flight: u32,
    /// Steps waiting inside an agent for a free slot; past them the step is handed back and
    /// the Coordinator routes it again after a pause.
    pub max_waiting: u32,
}

impl Default for AgentLimits {
    fn default() -> Self {
        AgentLimits {
            max_in_flight: 64,
            max_waiting: 1024,
        }
    }
}

/// Most steps one agent may be allowed to run at once, or to hold waiting.
pub const MAX_LIMIT: u32 = 1 << 20;

impl AgentLimits {
    /// Checks both settings; the error names the key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_LIMIT).contains(&self.max_in_flight) {
            return Err(format!(
                "agents.max_in_flight: must be between 1 and {MAX_LIMIT}, got {}",
                self.max_in_flight
            ));
        }
        if self.max_waiting > MAX_LIMIT {
            return Err(format!(
                "agents.max_waiting: must be at most {MAX_LIMIT}, got {}",
                self.max_waiting
            ));
        }
        Ok(())
    }
}

/// A step handed to an agent ([`AgentMsg::Execute`]).
pub struct Job {
    pub work: Work,
    /// Told when the step starts (after any wait in the queue), so that the caller's
    /// timeout counts from there.
    pub started: oneshot::Sender<Instant>,
    pub reply: oneshot::Sender<ExecuteReply>,
}

/// What an agent answers to a step.
pub enum ExecuteReply {
    /// The step ran (or could not): its result.
    Done(Result<ToolOutput, ToolError>),
    /// The agent is full: the step was not started; here it is back.
    Busy(Box<Work>),
}

/// The agent's slots: how many steps run, and those waiting for one.
#[derive(Default)]
pub(super) struct Slots {
    running: u32,
    waiting: VecDeque<Box<Job>>,
}

impl Slots {
    /// Running plus waiting: the load the Router balances on.
    pub(super) fn load(&self) -> u32 {
        let waiting = u32::try_from(self.waiting.len()).unwrap_or(u32::MAX);
        self.running.saturating_add(waiting)
    }

    pub(super) fn running(&self) -> u32 {
        self.running
    }

    /// Takes `job`: starts it when a slot is free, queues it when the queue has room, and
    /// hands it back otherwise.
    pub(super) fn offer(&mut self, job: Box<Job>, limits: AgentLimits, run: &Runner) {
        if self.running < limits.max_in_flight {
            self.start(job, run);
            return;
        }
        if self.waiting.len() >= limits.max_waiting as usize {
            // Callers that gave up (cancelled, timed out) need no place in the queue.
            self.waiting.retain(|j| !j.reply.is_closed());
        }
        if self.waiting.len() < limits.max_waiting as usize {
            self.waiting.push_back(job);
        } else {
            let Job { work, reply, .. } = *job;
            let _ = reply.send(ExecuteReply::Busy(Box::new(work)));
        }
    }

    /// One step ended: its slot is free.
    pub(super) fn release(&mut self) {
        self.running = self.running.saturating_sub(1);
    }

    /// Free slots go to the steps waiting, first come first served.
    pub(super) fn fill(&mut self, limits: AgentLimits, run: &Runner) {
        while self.running < limits.max_in_flight {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.start(job, run);
        }
    }

    fn start(&mut self, job: Box<Job>, run: &Runner) {
        let Job {
            work,
            started,
            reply,
        } = *job;
        if reply.is_closed() {
            return; // its caller is gone: nothing to run it for
        }
        if work.cancel.is_cancelled() {
            let _ = reply.send(ExecuteReply::Done(Err(ToolError::Cancelled)));
            return;
        }
        // Record before effect: the attempt was committed under the lease as it was then;
        // if that lease lapsed while the step waited here, another node may own the task.
        if let Some(until) = work.lease_until
            && !run.ctx.lease().still(until)
        {
            let _ = reply.send(ExecuteReply::Done(Err(ToolError::NotStarted)));
            return;
        }
        self.running += 1;
        let _ = started.send(Instant::now());
        run.stats.set_work(Some(format!(
            "task {} step {} ({})",
            work.task_id, work.step.id, work.step.tool
        )));
        let slot = Slot {
            agent: run.agent.clone(),
            reply: Some(reply),
            result: None,
            stats: run.stats.clone(),
        };
        let (services, role) = (run.services.clone(), run.role);
        // An LLM call streams its text to whoever on this node watches the task.
        let stream = (role == Role::Worker && work.step.tool == "llm")
            .then(|| run.ctx.deltas.sink(&work.task_id, &work.step.id))
            .flatten();
        tokio::spawn(async move {
            let at = Instant::now();
            let result = perform(&services, role, &work, stream).await;
            metrics::histogram!("ms_step_duration_seconds", "role" => role.as_str())
                .record(at.elapsed().as_secs_f64());
            slot.finish(result);
        });
    }
}

/// What a started step needs from its agent.
pub(super) struct Runner {
    /// The node's lease is checked right before a step with side effects starts.
    pub ctx: Arc<crate::context::NodeContext>,
    pub agent: ActorRef<AgentMsg>,
    pub role: Role,
    pub services: Arc<Services>,
    pub stats: Arc<ActorStats>,
}

/// Runs `job` within the step's timeout (an hour when it has none), until it is cancelled.
async fn bounded(
    work: &Work,
    job: impl std::future::Future<Output = Result<ToolOutput, ToolError>>,
) -> Result<ToolOutput, ToolError> {
    let limit = work.timeout.unwrap_or(Duration::from_secs(3600));
    tokio::select! {
        r = tokio::time::timeout(limit, job) => r.unwrap_or(Err(ToolError::TimedOut(limit))),
        () = work.cancel.cancelled() => Err(ToolError::Cancelled),
    }
}

/// Carries out one step as its agent's role does.
async fn perform(
    services: &Services,
    role: Role,
    work: &Work,
    stream: Option<crate::llm::DeltaSink>,
) -> Result<ToolOutput, ToolError> {
    let step = &work.step;
    match role {
        Role::Memory => {
            let job = crate::roles::memory::run(
                services.memory.as_ref(),
                &work.task_id,
                work.session.as_deref(),
                work.principal.as_deref(),
                &step.args,
                work.input.as_deref(),
            );
            tokio::select! {
                r = job => r,
                () = work.cancel.cancelled() => Err(ToolError::Cancelled),
            }
        }
        Role::Critic => {
            let job = crate::roles::critic::run(&services.llm, &step.args);
            bounded(work, job).await
        }
        Role::Planner => {
            let job = crate::roles::planner::run(&services.llm, &services.tools, &step.args);
            bounded(work, job).await
        }
        Role::Worker => {
            let cap = services.tools.config().max_output_bytes;
            let job = crate::roles::worker::run(
                &step.tool,
                &step.args,
                work.input.as_deref(),
                &services.llm,
                cap,
                stream,
            );
            bounded(work, job).await
        }
        _ => {
            services
                .tools
                .run(ToolCall {
                    tool: &step.tool,
                    args: &step.args,
                    input: work.input.as_deref(),
                    timeout: work.timeout,
                    cancel: work.cancel.clone(),
                })
                .await
        }
    }
}

/// A step's slot. However the step's task ends (its result, a panic, the task dropped),
/// the agent gets [`AgentMsg::WorkDone`] and then the caller its answer, in that order, so
/// a caller's next step finds the slot free.
struct Slot {
    agent: ActorRef<AgentMsg>,
    reply: Option<oneshot::Sender<ExecuteReply>>,
    result: Option<Result<ToolOutput, ToolError>>,
    stats: Arc<ActorStats>,
}

impl Slot {
    fn finish(mut self, result: Result<ToolOutput, ToolError>) {
        self.result = Some(result);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self.agent.cast(AgentMsg::WorkDone);
        // No result: the task panicked (or was dropped) before the step was done.
        let result = self.result.take().unwrap_or_else(|| {
            Err(ToolError::Failed(
                "the step's work ended without a result (it panicked; the node's log has why)"
                    .into(),
            ))
        });
        if result.is_err() {
            self.stats.errored();
        }
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(ExecuteReply::Done(result));
        }
    }
}
