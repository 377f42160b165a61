//! A run's plan: its steps with what is known of each (state, attempts, output, the
//! attempt in flight), and the DAG questions the run asks of it — which steps can start,
//! which must be skipped, and how the task ends. No messaging and no storage here.

use std::collections::HashMap;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::task::store::StepState;
use crate::task::{Attempt, StepSpec, StepStatus, TaskStatus};

/// What an attempt that was in flight when its run stopped (node killed, run crashed) reads.
const INTERRUPTED: &str = "interrupted: the run making this attempt stopped before it finished";
/// What a recorded attempt reads that never started its tool (no proof of the lease).
pub const NOT_STARTED: &str =
    "interrupted: not started, this node could not prove that it still held its lease";

/// Whether `attempt` was cut short by the infrastructure (its run stopped, or it never
/// started for want of the lease), not by the step's own failure.
pub fn interrupted(attempt: &Attempt) -> bool {
    attempt.error.as_deref() == Some(INTERRUPTED) || attempt.error.as_deref() == Some(NOT_STARTED)
}

pub struct StepRun {
    pub spec: StepSpec,
    pub state: StepState,
    /// Set while an attempt runs (or a retry waits): cancels it.
    pub cancel: Option<CancellationToken>,
}

#[derive(Default)]
pub struct Plan {
    pub steps: Vec<StepRun>,
    index: HashMap<String, usize>,
    /// A step waits for its prerequisites to end, not to succeed, and none is skipped (an
    /// agent's plan: a failed tool call is a result its next LLM call reads).
    pub tolerant: bool,
}

impl Plan {
    /// The steps of `plan`, with what was recorded of them. An attempt recorded as running
    /// was interrupted: it is marked so and the step runs again.
    pub fn new(plan: Vec<StepSpec>, recorded: Vec<StepState>) -> Plan {
        let mut recorded: HashMap<String, StepState> = recorded
            .into_iter()
            .map(|s| (s.step_id.clone(), s))
            .collect();
        let index = plan
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let steps = plan
            .into_iter()
            .map(|spec| {
                let mut state = recorded.remove(&spec.id).unwrap_or(StepState {
                    step_id: spec.id.clone(),
                    status: StepStatus::Pending,
                    attempts: Vec::new(),
                    output: None,
                });
                if state.status == StepStatus::Running {
                    state.status = StepStatus::Pending;
                    if let Some(last) = state.attempts.last_mut()
                        && last.finished_at.is_none()
                    {
                        last.error = Some(INTERRUPTED.to_string());
                        last.finished_at = Some(crate::time::now_rfc3339());
                    }
                }
                StepRun {
                    spec,
                    state,
                    cancel: None,
                }
            })
            .collect();
        Plan {
            steps,
            index,
            tolerant: false,
        }
    }

    /// Adds steps to the plan (an agent's loop growing); they start pending.
    pub fn extend(&mut self, specs: Vec<StepSpec>) {
        for spec in specs {
            self.index.insert(spec.id.clone(), self.steps.len());
            self.steps.push(StepRun {
                state: StepState {
                    step_id: spec.id.clone(),
                    status: StepStatus::Pending,
                    attempts: Vec::new(),
                    output: None,
                },
                spec,
                cancel: None,
            });
        }
    }

    /// The plan's steps as specs (what is stored as the task's plan).
    pub fn specs(&self) -> Vec<StepSpec> {
        self.steps.iter().map(|s| s.spec.clone()).collect()
    }

    /// Where the step `id` is.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Marks skipped every waiting step whose prerequisites cannot all succeed any more
    /// (returning their states), and lists the steps that can start now.
    pub fn scan(&mut self) -> (Vec<usize>, Vec<StepState>) {
        let mut skipped = Vec::new();
        loop {
            let mut changed = false;
            for i in 0..self.steps.len() {
                if !self.tolerant
                    && self.waiting(i)
                    && self
                        .prerequisites(i)
                        .any(|s| s.is_final() && s != StepStatus::Succeeded)
                {
                    self.steps[i].state.status = StepStatus::Skipped;
                    skipped.push(self.steps[i].state.clone());
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let ready = (0..self.steps.len())
            .filter(|&i| {
                self.waiting(i)
                    && self
                        .prerequisites(i)
                        .all(|s| s == StepStatus::Succeeded || (self.tolerant && s.is_final()))
            })
            .collect();
        (ready, skipped)
    }

    /// Pending and not already started (or holding its slot for a retry).
    fn waiting(&self, i: usize) -> bool {
        self.steps[i].state.status == StepStatus::Pending && self.steps[i].cancel.is_none()
    }

    fn prerequisites(&self, i: usize) -> impl Iterator<Item = StepStatus> + '_ {
        self.steps[i]
            .spec
            .prerequisites()
            .filter_map(|p| self.index.get(p))
            .map(|&j| self.steps[j].state.status)
    }

    /// The text output of the step step `i` takes its input from.
    pub fn input_for(&self, i: usize) -> Option<String> {
        let from = self.steps[i].spec.input_from.as_ref()?;
        let j = *self.index.get(from)?;
        self.steps[j]
            .state
            .output
            .as_ref()?
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// How the task ends, once every step is final: succeeded, or failed naming the first
    /// step that did not succeed and why.
    pub fn outcome(&self) -> Option<(TaskStatus, Option<String>)> {
        self.outcome_of(|_| true)
    }

    /// [`Self::outcome`] decided by the steps `counts` picks (once every step is final).
    pub fn outcome_of(
        &self,
        counts: impl Fn(&StepSpec) -> bool,
    ) -> Option<(TaskStatus, Option<String>)> {
        if !self.steps.iter().all(|s| s.state.status.is_final()) {
            return None;
        }
        let Some(step) = self
            .steps
            .iter()
            .filter(|s| counts(&s.spec))
            .find(|s| s.state.status != StepStatus::Succeeded)
        else {
            return Some((TaskStatus::Succeeded, None));
        };
        let error = format!(
            "step `{}` {}: {}",
            step.spec.id,
            step.state.status,
            failure(step)
        );
        Some((TaskStatus::Failed, Some(error)))
    }
}

/// Why a step did not succeed: its last attempt's verdict or error, else its status.
pub fn failure(step: &StepRun) -> String {
    step.state
        .attempts
        .last()
        .and_then(|a| {
            a.verdict
                .as_ref()
                .map(|v| v.reason.clone())
                .or(a.error.clone())
        })
        .unwrap_or_else(|| step.state.status.to_string())
}
