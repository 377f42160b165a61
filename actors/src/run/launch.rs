//! How a run starts a step's attempt: recorded first (before its effect, for a tool with
//! side effects), started once what it depends on is committed, and only while this node
//! can prove that it holds its lease (DESIGN §5, "record before effect").

use ractor::ActorRef;
use tokio_util::sync::CancellationToken;

use super::{LEASE_RECHECK, RunMsg, RunState, plan};
use crate::agent::Work;
use crate::roles::coordinator;
use crate::task::{Attempt, StepStatus};

impl RunState {
    /// Readies an attempt of step `i` (on an executor chosen by the Router when it
    /// starts): records it, and starts it once that may happen ([`Self::start_launches`]).
    /// An agent's call that needs approval waits for it instead ([`super::approval`]).
    pub(super) fn launch(&mut self, i: usize) {
        if self.needs_approval(i) {
            self.await_approval(i);
            return;
        }
        let input = self.plan.input_for(i);
        let timeout = self.plan.steps[i]
            .spec
            .timeout_secs
            .map(crate::time::secs)
            .or_else(|| {
                self.services
                    .as_ref()
                    .map(|s| crate::time::secs(s.tools.config().default_timeout_secs))
            });
        let step = &mut self.plan.steps[i];
        let cancel = CancellationToken::new();
        step.cancel = Some(cancel.clone());
        step.state.status = StepStatus::Running;
        // An attempt that never started (no proof of the lease) is replaced, not piled on:
        // a node waiting for its lease keeps one such attempt per step, not one per try.
        if step
            .state
            .attempts
            .last()
            .is_some_and(|a| a.error.as_deref() == Some(plan::NOT_STARTED))
        {
            step.state.attempts.pop();
        }
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
        let mut spec = step.spec.clone();
        if let Some(agent) = &self.spec.agent
            && super::agent::llm_number(&spec.id).is_some()
        {
            // An agent's LLM call is sent the conversation so far.
            spec.args = super::agent::llm_args(&self.plan, i, agent, &self.tool_check());
        }
        let step = &mut self.plan.steps[i];
        let work = Work {
            task_id: self.task_id.clone(),
            session: self.spec.session.clone(),
            principal: self.principal.clone(),
            step: spec,
            input,
            timeout,
            cancel,
            lease_until: None, // set when it starts (see `start_launches`)
        };
        let running = step.state.clone();
        let mut progress = self.progress();
        progress.steps.push(running);
        if crate::roles::has_effects(&work.step.tool) {
            self.record(progress); // record before effect
        } else {
            self.note(progress);
        }
        self.launching.push((i, work));
    }

    /// Starts the attempts whose prerequisites are committed: a pure tool's once no result
    /// waits to be written, one with side effects once its own attempt is written too
    /// (both are what `flush_now` still being set would mean). One with side effects
    /// starts only if this node's lease held without a break from that commit to the
    /// start: the lease as of now (just after the commit) must still hold when the spawned
    /// attempt begins, else the attempt is given up as not started and the step tried
    /// again (a new attempt, recorded and fenced anew).
    pub(super) fn start_launches(&mut self, myself: &ActorRef<RunMsg>) {
        if self.launching.is_empty() || self.flush_now {
            return;
        }
        // The lease as of just before the commit that recorded these attempts.
        let until = self.lease_at_commit;
        for (i, mut work) in std::mem::take(&mut self.launching) {
            let effects = crate::roles::has_effects(&work.step.tool);
            if effects {
                work.lease_until = Some(until);
            }
            let (ctx, me) = (self.ctx.clone(), myself.clone());
            tokio::spawn(async move {
                if effects && !ctx.lease().still(until) {
                    let _ = me.cast(RunMsg::NotStarted(i));
                    return;
                }
                let done = coordinator::attempt(&ctx, work).await;
                let _ = me.cast(RunMsg::StepDone {
                    index: i,
                    agent: done.agent,
                    result: done.result,
                    judged: done.judged,
                });
            });
        }
    }

    /// An attempt with side effects was recorded but not started (this node could not
    /// prove it still held its lease): it reads so, does not count, and the step is tried
    /// again after [`LEASE_RECHECK`].
    pub(super) fn not_started(&mut self, myself: &ActorRef<RunMsg>, i: usize) {
        let Some(step) = self.plan.steps.get_mut(i) else {
            return;
        };
        if step.state.status != StepStatus::Running {
            return;
        }
        tracing::warn!(task_id = %self.task_id, step = %step.spec.id, "this node cannot prove it holds its lease; the step waits");
        if let Some(last) = step.state.attempts.last_mut() {
            last.error = Some(plan::NOT_STARTED.to_string());
            last.finished_at = Some(crate::time::now_rfc3339());
        }
        step.state.status = StepStatus::Pending;
        step.cancel = Some(CancellationToken::new()); // holds the slot until the retry
        myself.send_after(LEASE_RECHECK, move || RunMsg::Retry(i));
        let state = step.state.clone();
        let mut progress = self.progress();
        progress.steps.push(state);
        self.record(progress);
    }
}
