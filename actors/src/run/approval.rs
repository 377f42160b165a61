//! Tool calls that wait for a person (`tools.approval`): an agent's call of such a tool is
//! not launched; its step waits `awaiting_approval` (recorded, so it waits across restarts
//! and takeovers, and announced in the trace as `approval.requested`), and the run reads
//! the decisions taken through the API ([`crate::task::store::TaskStore::decisions`])
//! every [`APPROVAL_POLL`] while one waits. Approved, the step runs like any other;
//! denied, it fails with the reason, which the model reads as the call's result.
//!
//! Decisions live in storage, not in a message to this run, so one taken on any node of
//! the cluster, or while this node was down, reaches whichever run holds the task.

use std::collections::HashSet;
use std::time::Duration;

use ractor::ActorRef;
use serde_json::json;

use super::{RunMsg, RunState};
use crate::task::store::StoreError;
use crate::task::{Attempt, StepStatus};

/// How often a run with a step awaiting approval reads the decisions.
pub const APPROVAL_POLL: Duration = Duration::from_millis(250);

/// What a run knows of approvals: calls approved since it started, and whether a poll is
/// on its way.
#[derive(Default)]
pub struct Approvals {
    approved: HashSet<String>,
    poll_armed: bool,
}

impl RunState {
    /// Whether step `i` is an agent's tool call that needs approval it has not had.
    pub(super) fn needs_approval(&self, i: usize) -> bool {
        let step = &self.plan.steps[i].spec;
        self.spec.agent.is_some()
            && super::agent::is_tool_call(&step.id)
            && !self.approvals.approved.contains(&step.id)
            && self
                .services
                .as_ref()
                .is_some_and(|s| s.tools.config().needs_approval(&step.tool))
    }

    /// Parks step `i` until a person decides: recorded `awaiting_approval`, with the call
    /// in the trace.
    pub(super) fn await_approval(&mut self, i: usize) {
        let step = &mut self.plan.steps[i];
        step.state.status = StepStatus::AwaitingApproval;
        let state = step.state.clone();
        let data = json!({"step": step.spec.id, "tool": step.spec.tool, "args": step.spec.args});
        let event = self.event("approval.requested", data);
        let mut progress = self.progress();
        progress.steps.push(state);
        progress.events.push(event);
        self.record(progress);
    }

    fn awaiting(&self) -> bool {
        self.plan
            .steps
            .iter()
            .any(|s| s.state.status == StepStatus::AwaitingApproval)
    }

    /// Arms the next read of the decisions while a step awaits approval.
    pub(super) fn arm_approval_poll(&mut self, myself: &ActorRef<RunMsg>) {
        // Only an agent's calls wait (checked first: this runs after every message).
        if self.spec.agent.is_some() && !self.done && !self.approvals.poll_armed && self.awaiting()
        {
            self.approvals.poll_armed = true;
            myself.send_after(APPROVAL_POLL, || RunMsg::CheckApprovals);
        }
    }

    /// Applies the decisions taken on the steps awaiting approval. Storage out of reach
    /// only delays them: the next poll reads again.
    pub(super) async fn check_approvals(
        &mut self,
        myself: &ActorRef<RunMsg>,
    ) -> Result<(), StoreError> {
        self.approvals.poll_armed = false;
        if !self.awaiting() {
            return Ok(());
        }
        let store = self.services()?.store.clone();
        let decisions = match store.decisions(self.task_id.clone()).await {
            Ok(decisions) => decisions,
            Err(StoreError::Unavailable(why)) => {
                tracing::debug!(task_id = %self.task_id, %why, "cannot read approvals yet");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut progress = self.progress();
        for decision in decisions {
            let Some(i) = self.plan.position(&decision.step_id) else {
                continue;
            };
            if self.plan.steps[i].state.status != StepStatus::AwaitingApproval {
                continue;
            }
            let by = decision.by.clone().unwrap_or_else(|| "the operator".into());
            let reason = decision.reason.clone();
            let data = json!({"step": decision.step_id, "by": by, "reason": reason});
            let kind = if decision.approved {
                self.approvals.approved.insert(decision.step_id.clone());
                self.plan.steps[i].state.status = StepStatus::Pending;
                "approval.granted"
            } else {
                let step = &mut self.plan.steps[i];
                let now = crate::time::now_rfc3339();
                let why = reason.as_deref().unwrap_or("no reason given");
                step.state.attempts.push(Attempt {
                    attempt: step.state.attempts.len() as u32 + 1,
                    agent: None,
                    node: None,
                    output: None,
                    error: Some(format!("denied by {by}: {why}")),
                    verdict: None,
                    started_at: Some(now.clone()),
                    finished_at: Some(now),
                });
                step.state.status = StepStatus::Failed;
                "approval.denied"
            };
            progress.steps.push(self.plan.steps[i].state.clone());
            let event = self.event(kind, data);
            progress.events.push(event);
        }
        if !progress.steps.is_empty() {
            self.record(progress);
            self.advance(myself)?;
        }
        Ok(())
    }
}
