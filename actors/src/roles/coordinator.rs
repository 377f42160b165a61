//! Coordinator: owns a task's run. Asks the Planner for a plan, drives the steps in
//! dependency order, asks the Router for agents, collects results, asks the Critic for
//! verdicts, retries or replans, and finishes the task.
//!
//! The run actor (`crate::run`) holds a task's state and decides; this file holds the one
//! piece of its job that happens off its mailbox: carrying out one attempt of a step.

use std::time::Duration;

use crate::agent::{AgentMsg, Work};
use crate::context::NodeContext;
use crate::registry::{AgentRecord, RegistryMsg};
use crate::remote::{RemoteAgents, RemoteStep};
use crate::roles::{critic, router};
use crate::task::Verdict;
use crate::tools::{ToolError, ToolOutput};
use ractor::ActorRef;

/// Extra time an agent gets beyond the step timeout before the run gives up on it.
pub const AGENT_GRACE: Duration = Duration::from_secs(5);

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["task.coordinate"];

/// What one attempt of a step came to.
pub struct AttemptDone {
    /// The agent that ran it, and its node (none when no agent could be found).
    pub agent: Option<(String, String)>,
    pub result: Result<ToolOutput, ToolError>,
    /// The LLM judge's verdict, when the step's expectation asks for one.
    pub judged: Option<Verdict>,
}

/// Runs one attempt: the Router picks an agent for the step's capability, the agent runs
/// it, and (when asked for) the LLM judge gives its verdict. Meant for a spawned task.
pub async fn attempt(ctx: &NodeContext, work: Work) -> AttemptDone {
    let question = work.step.expect.as_ref().and_then(|e| e.judge.clone());
    let capability = crate::roles::capability_for(&work.step.tool);
    let wait = work.timeout.unwrap_or(Duration::from_secs(3600)) + AGENT_GRACE;
    let local = router::route(ctx, &capability).await;
    let remote = ctx
        .services()
        .and_then(|s| s.remote.clone())
        .filter(|r| router::prefer_remote(&local) && r.offers(&capability));
    let (agent, result) = match (remote, local) {
        (Some(remote), _) => remotely(remote.as_ref(), &capability, work, wait).await,
        (None, Err(e)) => (None, Err(ToolError::Failed(e.to_string()))),
        (None, Ok(found)) => locally(ctx, found, work, wait).await,
    };
    let judged = match (question, &result, ctx.services()) {
        (Some(question), Ok(output), Some(services)) => {
            Some(critic::judge_by_llm(&services.llm, &question, output).await)
        }
        _ => None,
    };
    AttemptDone {
        agent,
        result,
        judged,
    }
}

/// Runs `work` on `found`, the local agent the Router picked; the agent replies when the
/// tool is done. Also how this node serves the steps other nodes send it.
pub async fn locally(
    ctx: &NodeContext,
    found: (AgentRecord, ActorRef<AgentMsg>),
    work: Work,
    wait: Duration,
) -> (Option<(String, String)>, Result<ToolOutput, ToolError>) {
    let (record, executor) = found;
    let who = (record.identity.name.clone(), record.identity.node.clone());
    let reply = executor
        .call(|r| AgentMsg::Execute(Box::new(work), r), Some(wait))
        .await;
    // The agent's circuit counts whether it answered, not what the tool did.
    let answered = matches!(reply, Ok(ractor::rpc::CallResult::Success(_)));
    if let Some(registry) = ctx.registry() {
        let _ = registry.cast(RegistryMsg::ReportOutcome {
            instance_id: record.identity.instance_id.clone(),
            ok: answered,
        });
    }
    let result = match reply {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(ractor::rpc::CallResult::Timeout) => Err(ToolError::TimedOut(wait)),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(ToolError::Failed(format!(
            "agent {} stopped before answering",
            who.0
        ))),
    };
    (Some(who), result)
}

/// The attempt on an agent of another node (over NATS); a cancel stops waiting for it.
async fn remotely(
    remote: &dyn RemoteAgents,
    capability: &str,
    work: Work,
    wait: Duration,
) -> (Option<(String, String)>, Result<ToolOutput, ToolError>) {
    let step = RemoteStep {
        task_id: work.task_id.clone(),
        session: work.session.clone(),
        step: work.step.clone(),
        input: work.input.clone(),
        timeout_ms: work.timeout.map(|t| t.as_millis() as u64),
    };
    tokio::select! {
        done = remote.execute(capability, step, wait) => match done {
            Ok(done) => (Some((done.agent, done.node)), done.result),
            Err(e) => (None, Err(ToolError::Failed(e.to_string()))),
        },
        () = work.cancel.cancelled() => (None, Err(ToolError::Cancelled)),
    }
}
