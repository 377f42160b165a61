//! Coordinator: owns a task's run. Asks the Planner for a plan, drives the steps in
//! dependency order, asks the Router for agents, collects results, asks the Critic for
//! verdicts, retries or replans, and finishes the task.
//!
//! The run actor (`crate::run`) holds a task's state and decides; this file holds the one
//! piece of its job that happens off its mailbox: carrying out one attempt of a step.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentLimits, AgentMsg, ExecuteReply, Job, Work};
use crate::context::NodeContext;
use crate::registry::{AgentRecord, RegistryMsg};
use crate::remote::{RemoteAgents, RemoteError, RemoteStep};
use crate::roles::{critic, router};
use crate::task::Verdict;
use crate::tools::{ToolError, ToolOutput};
use ractor::ActorRef;

/// Extra time an agent gets beyond the step timeout before the run gives up on it.
pub const AGENT_GRACE: Duration = Duration::from_secs(5);

/// How long a step waits before it is routed again when every agent was full; doubled
/// up to [`BUSY_PAUSE_MAX`] while they stay full.
const BUSY_PAUSE: Duration = Duration::from_millis(10);
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["task.coordinate"];

/// The Coordinator agent of this node that coordinates session `session`'s turns: the
/// same one for every turn while the node's coordinators stay the same (picked by the
/// session's id among the active ones, by name), so a session keeps its Coordinator
/// across turns; on another node (after a takeover), one of that node's.
pub async fn of_session(ctx: &NodeContext, session: &str) -> Option<AgentRecord> {
    use std::hash::{Hash, Hasher};
    let registry = ctx.registry()?;
    let found = ractor::call_t!(
        registry,
        RegistryMsg::Discover,
        2_000,
        CAPABILITIES[0].to_string()
    )
    .ok()?;
    let mut active: Vec<AgentRecord> = found
        .into_iter()
        .filter(|a| a.state == crate::agent::Lifecycle::Active && a.agent.is_some())
        .collect();
    active.sort_by(|a, b| a.identity.name.cmp(&b.identity.name));
    let mut hasher = std::hash::DefaultHasher::new();
    session.hash(&mut hasher);
    let n = active.len();
    (n > 0).then(|| active.swap_remove(hasher.finish() as usize % n))
}

/// What one attempt of a step came to.
pub struct AttemptDone {
    /// The agent that ran it, and its node (none when no agent could be found).
    pub agent: Option<(String, String)>,
    pub result: Result<ToolOutput, ToolError>,
    /// The LLM judge's verdict, when the step's expectation asks for one.
    pub judged: Option<Verdict>,
}

/// An attempt's outcome: the agent (and node) that ran it, and its result.
pub type Ran = (Option<(String, String)>, Result<ToolOutput, ToolError>);

/// What came of handing a step to one agent.
pub enum Handed {
    Ran(Ran),
    /// The agent was full and gave the step back, unstarted.
    Busy(Box<Work>),
}

/// How long the run waits for an agent with a step of this timeout.
pub fn wait_for(timeout: Option<Duration>) -> Duration {
    timeout
        .unwrap_or(Duration::from_secs(3600))
        .saturating_add(AGENT_GRACE)
}

/// Runs one attempt: the Router picks an agent for the step's capability, the agent runs
/// it, and (when asked for) the LLM judge gives its verdict. Meant for a spawned task.
pub async fn attempt(ctx: &NodeContext, work: Work) -> AttemptDone {
    let question = work.step.expect.as_ref().and_then(|e| e.judge.clone());
    let capability = crate::roles::capability_for(&work.step.tool);
    let wait = wait_for(work.timeout);
    let remote = ctx.services().and_then(|s| s.remote.clone());
    // What the judgement, if one is asked for, is handed with.
    let judging = question.map(|question| (question, judge_work(&work)));
    let (agent, result) = route_and_run(ctx, &capability, work, wait, remote.clone()).await;
    let judged = match (judging, &result) {
        (Some((question, mut judge)), Ok(output)) => {
            judge.step.args = serde_json::json!({"question": question, "output": output.text});
            let capability = crate::roles::capability_for(critic::JUDGE_TOOL);
            let (_, verdict) = route_and_run(ctx, &capability, judge, wait, remote).await;
            Some(critic::verdict_of(verdict))
        }
        _ => None,
    };
    AttemptDone {
        agent,
        result,
        judged,
    }
}

/// The Critic agent's job for an attempt of `work`: the pseudo-step `judge` of the same
/// task (its arguments are set once the output is known), cancelled with the attempt.
fn judge_work(work: &Work) -> Work {
    Work {
        task_id: work.task_id.clone(),
        session: work.session.clone(),
        principal: work.principal.clone(),
        step: crate::task::StepSpec::internal(
            format!("{}.judge", work.step.id),
            critic::JUDGE_TOOL,
            serde_json::Value::Null,
        ),
        input: None,
        timeout: work.timeout,
        cancel: work.cancel.clone(),
        lease_until: None,
    }
}

/// Runs `work` on the agent the Router picks: a local one, or another node's through
/// `remote` when no local agent is healthy or the least loaded one is full. When every
/// agent it tries is full, the step waits and is routed again; its cancel ends the wait.
/// With `remote` `None` (how a node serves other nodes' steps), local agents only.
pub async fn route_and_run(
    ctx: &NodeContext,
    capability: &str,
    mut work: Work,
    wait: Duration,
    remote: Option<Arc<dyn RemoteAgents>>,
) -> Ran {
    let full_at = ctx
        .services()
        .map_or(AgentLimits::default(), |s| s.agents)
        .max_in_flight;
    let mut pause = BUSY_PAUSE;
    loop {
        let local = router::route(ctx, capability).await;
        let far = remote
            .as_ref()
            .filter(|r| router::prefer_remote(&local, full_at) && r.offers(capability));
        let back = match (far, local) {
            (Some(far), _) => match remotely(far.as_ref(), capability, work, wait).await {
                Handed::Ran(ran) => return ran,
                Handed::Busy(back) => back,
            },
            (None, Err(e)) => return (None, Err(ToolError::Failed(e.to_string()))),
            (None, Ok(found)) => match locally(ctx, found, work, wait).await {
                Handed::Ran(ran) => return ran,
                Handed::Busy(back) => back,
            },
        };
        work = *back;
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = work.cancel.cancelled() => return (None, Err(ToolError::Cancelled)),
        }
        pause = pause.saturating_mul(2).min(BUSY_PAUSE_MAX);
    }
}

/// Runs `work` on `found`, the local agent the Router picked; the agent replies when the
/// step is done. `wait` counts from when the step starts, not while it waits in the
/// agent's queue; past it, the step is cancelled so its tool stops.
pub async fn locally(
    ctx: &NodeContext,
    found: (AgentRecord, ActorRef<AgentMsg>),
    work: Work,
    wait: Duration,
) -> Handed {
    let (record, executor) = found;
    let who = (record.identity.name.clone(), record.identity.node.clone());
    let cancel = work.cancel.clone();
    let (started, started_rx) = oneshot::channel();
    let (reply, reply_rx) = oneshot::channel();
    let job = Job {
        work,
        started,
        reply,
    };
    let reply = match executor.cast(AgentMsg::Execute(Box::new(job))) {
        Ok(()) => answer(reply_rx, started_rx, wait, &cancel).await,
        Err(_) => Err(Unanswered::Gone),
    };
    // The agent's circuit counts whether it answered, not what the tool did.
    if let Some(registry) = ctx.registry() {
        let _ = registry.cast(RegistryMsg::ReportOutcome {
            instance_id: record.identity.instance_id.clone(),
            ok: !matches!(reply, Err(Unanswered::Gone | Unanswered::TimedOut)),
        });
    }
    let result = match reply {
        Ok(ExecuteReply::Busy(work)) => return Handed::Busy(work),
        Ok(ExecuteReply::Done(result)) => result,
        Err(Unanswered::Cancelled) => Err(ToolError::Cancelled),
        Err(Unanswered::TimedOut) => {
            cancel.cancel();
            Err(ToolError::TimedOut(wait))
        }
        Err(Unanswered::Gone) => Err(ToolError::Failed(format!(
            "agent {} stopped before answering",
            who.0
        ))),
    };
    Handed::Ran((Some(who), result))
}

/// Why no answer came from an agent.
enum Unanswered {
    /// The agent stopped (its mailbox and queue went with it).
    Gone,
    /// Not within `wait` of the step's start.
    TimedOut,
    /// Cancelled before the step started.
    Cancelled,
}

/// Waits for the agent's answer. The clock starts at the hand-off and, if the step was
/// still waiting for a slot by then, again when it starts; the start is looked at only
/// then, so the common case waits on the answer alone.
async fn answer(
    mut reply: oneshot::Receiver<ExecuteReply>,
    mut started: oneshot::Receiver<std::time::Instant>,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<ExecuteReply, Unanswered> {
    let mut deadline = after(Instant::now(), wait);
    // None: not known yet; Some(false): waiting in the agent's queue; Some(true): running.
    let mut running = None;
    loop {
        tokio::select! {
            biased;
            answer = &mut reply => return answer.map_err(|_| Unanswered::Gone),
            at = &mut started, if running == Some(false) => match at {
                Ok(at) => {
                    running = Some(true);
                    deadline = after(Instant::from_std(at), wait);
                }
                Err(_) => return (&mut reply).await.map_err(|_| Unanswered::Gone),
            },
            // A step that runs answers its cancel itself; one that waits is not started.
            () = cancel.cancelled(), if running != Some(true) => match started.try_recv() {
                Ok(_) => running = Some(true),
                Err(_) => return Err(Unanswered::Cancelled),
            },
            () = tokio::time::sleep_until(deadline), if running != Some(false) => {
                if running == Some(true) {
                    return Err(Unanswered::TimedOut);
                }
                match started.try_recv() {
                    Ok(at) => {
                        running = Some(true);
                        deadline = after(Instant::from_std(at), wait);
                    }
                    Err(oneshot::error::TryRecvError::Empty) => running = Some(false),
                    Err(oneshot::error::TryRecvError::Closed) => return Err(Unanswered::TimedOut),
                }
            }
        }
    }
}

/// `at + wait`, saturating far in the future rather than overflowing.
fn after(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 24 * 3600))
}

/// The attempt on an agent of another node (over NATS); a cancel stops waiting for it,
/// and dropping the request tells the serving node to stop the step.
/// Runs `work` on another node; handed back when that node was busy (routed again, like
/// a step a full local agent gave back).
async fn remotely(
    remote: &dyn RemoteAgents,
    capability: &str,
    work: Work,
    wait: Duration,
) -> Handed {
    let step = RemoteStep {
        task_id: work.task_id.clone(),
        session: work.session.clone(),
        principal: work.principal.clone(),
        step: work.step.clone(),
        input: work.input.clone(),
        timeout_ms: work
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    };
    let cancel = work.cancel.clone();
    Handed::Ran(tokio::select! {
        done = remote.execute(capability, step, wait) => match done {
            Ok(done) => (Some((done.agent, done.node)), done.result),
            Err(RemoteError::Busy) => return Handed::Busy(Box::new(work)),
            Err(e) => (None, Err(ToolError::Failed(e.to_string()))),
        },
        () = cancel.cancelled() => (None, Err(ToolError::Cancelled)),
    })
}
