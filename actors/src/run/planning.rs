//! How a run gets its plan from a Planner agent, and replans once when that plan fails.
//!
//! A task given only a description is planned by a Planner agent the Router picks (this
//! node's or another's), handed the pseudo-tool `plan` like a step. If the plan fails (a
//! step failed for good, a judgement included), the Planner is asked once more, told what
//! failed (DESIGN §3: the Coordinator "retries or replans"). The new plan's steps join the
//! old ones under ids prefixed [`REPLANNED`]: the failed steps stay in the task's view and
//! trace, and only the new steps decide how the task ends. The prefix is also how a run
//! restarted mid-way knows that the replan happened; one restarted while the Planner was
//! replanning asks again.

use ractor::ActorRef;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::{RunMsg, RunState};
use crate::agent::Work;
use crate::roles::planner::{PLAN_TOOL, PlanError};
use crate::task::store::StoreError;
use crate::task::{StepSpec, TaskStatus};

/// The prefix of a replanned step's id.
pub const REPLANNED: &str = "re_";

/// Whether the plan was replanned (it holds steps of the second plan).
pub fn replanned(plan: &Plan) -> bool {
    plan.steps.iter().any(|s| s.spec.id.starts_with(REPLANNED))
}

/// The Planner's second plan, its ids (and the references to them) prefixed.
fn prefixed(plan: Vec<StepSpec>) -> Vec<StepSpec> {
    let rename = |id: &str| format!("{REPLANNED}{id}");
    plan.into_iter()
        .map(|mut step| {
            step.id = rename(&step.id);
            step.depends_on = step.depends_on.iter().map(|d| rename(d)).collect();
            step.input_from = step.input_from.as_deref().map(rename);
            step
        })
        .collect()
}

impl RunState {
    /// Hands `description` to a Planner agent; its answer comes back as `Planned`.
    pub(super) fn ask_planner(
        &mut self,
        myself: &ActorRef<RunMsg>,
        description: String,
    ) -> Result<(), StoreError> {
        let services = self.services()?.clone();
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
        // The Planner is an agent: the Router picks one (this node's, or another's), and
        // its counters, load and restarts show the planning it does.
        let timeout = crate::time::secs(services.tools.config().default_timeout_secs);
        let work = Work {
            task_id: self.task_id.clone(),
            session: self.spec.session.clone(),
            principal: self.principal.clone(),
            step: StepSpec::internal("plan", PLAN_TOOL, json!({ "description": description })),
            input: None,
            timeout: Some(timeout),
            cancel: CancellationToken::new(),
            lease_until: None,
        };
        let (ctx, me) = (self.ctx.clone(), myself.clone());
        let remote = services.remote.clone();
        tokio::spawn(async move {
            let wait = crate::roles::coordinator::wait_for(Some(timeout));
            let (agent, result) = crate::roles::coordinator::route_and_run(
                &ctx,
                &crate::roles::capability_for(PLAN_TOOL),
                work,
                wait,
                remote,
            )
            .await;
            let plan = crate::roles::planner::planned(result);
            let _ = me.cast(RunMsg::Planned(plan, agent.map(|a| a.0)));
        });
        Ok(())
    }

    /// Stores the Planner's plan (the first, or the second beside the first) and runs it.
    pub(super) fn planned(
        &mut self,
        myself: &ActorRef<RunMsg>,
        plan: Vec<StepSpec>,
        agent: Option<String>,
    ) -> Result<(), StoreError> {
        let first = self.plan.steps.is_empty();
        let kind = if first { "planned" } else { "replanned" };
        let event = self.event(kind, json!({"steps": plan.len(), "agent": agent}));
        if first {
            self.plan = Plan::new(plan, Vec::new());
        } else {
            self.plan.extend(prefixed(plan));
        }
        self.replanning = None;
        let mut progress = self.progress();
        progress.status = Some(TaskStatus::Running);
        progress.plan = Some(self.plan.specs());
        progress.events.push(event);
        self.record(progress);
        self.advance(myself)
    }

    /// The Planner could not plan: the task fails (saying what failed first, on a replan).
    pub(super) fn plan_failed(&mut self, e: PlanError) -> Result<(), StoreError> {
        let reason = match self.replanning.take() {
            Some(failed) => format!("{failed}; the replan failed: {e}"),
            None => e.to_string(),
        };
        self.finish(TaskStatus::Failed, Some(reason))
    }

    /// Whether a failed plan may be replanned: the Planner made it, and has not replanned.
    pub(super) fn may_replan(&self) -> bool {
        self.spec.steps.is_none()
            && self.spec.agent.is_none()
            && !self.plan.steps.is_empty()
            && !replanned(&self.plan)
    }

    /// Asks the Planner for another plan, telling it how the first failed.
    pub(super) fn replan(
        &mut self,
        myself: &ActorRef<RunMsg>,
        failed: String,
    ) -> Result<(), StoreError> {
        let event = self.event("replanning", json!({"error": failed}));
        let mut progress = self.progress();
        progress.events.push(event);
        self.record(progress);
        let description = format!(
            "{}\n\nA previous plan for this task failed: {failed}\nMake a different plan that avoids this failure.",
            self.spec.description.as_deref().unwrap_or_default()
        );
        self.replanning = Some(failed);
        self.ask_planner(myself, description)
    }
}
