//! A task's output budget: how many bytes of step outputs and trace one task may store
//! (`tasks.max_output_bytes`). Without it a small request (one step's output fed to a
//! thousand `input_from` steps) writes gigabytes to the database and to one GET.
//!
//! The run counts what each attempt's result adds to storage (the output, kept on the
//! attempt and, once it passes, on the step; the error and the verdict's reason, on the
//! attempt and in the trace) before it records it; a result that would cross the budget
//! is recorded without its output, as a failure that is not retried (a retry would hit
//! the same wall).

use serde_json::Value;

use crate::task::store::StepState;

/// What a step reads when its result did not fit the task's budget.
pub fn exhausted(budget: u64) -> String {
    format!("output budget of the task exhausted: {budget} bytes")
}

/// Bytes a JSON value takes once serialized (as it is stored).
pub fn json_len(value: &Value) -> u64 {
    serde_json::to_vec(value).map_or(0, |v| v.len() as u64)
}

/// What a result costs: its output (twice when the step keeps it), its error and the
/// verdict's reason (each on the attempt and in the trace).
pub fn cost(output: Option<&Value>, passed: bool, error: Option<&str>, reason: &str) -> u64 {
    let out = output.map_or(0, json_len);
    let copies = if passed { 2 } else { 1 };
    out * copies + 2 * (error.map_or(0, |e| e.len() as u64) + reason.len() as u64)
}

/// What the recorded steps of a task already hold (a run that starts again goes on
/// counting from there).
pub fn recorded(steps: &[StepState]) -> u64 {
    steps
        .iter()
        .map(|s| {
            let attempts: u64 = s
                .attempts
                .iter()
                .map(|a| {
                    let reason = a.verdict.as_ref().map_or("", |v| v.reason.as_str());
                    cost(a.output.as_ref(), false, a.error.as_deref(), reason)
                })
                .sum();
            attempts + s.output.as_ref().map_or(0, json_len)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_passing_output_counts_twice() {
        let out = json!({"text": "abcd"});
        let once = json_len(&out);
        assert_eq!(cost(Some(&out), true, None, ""), 2 * once);
        assert_eq!(cost(Some(&out), false, Some("e"), "r"), once + 4);
    }

    #[test]
    fn recorded_counts_attempts_and_outputs() {
        let out = json!({"text": "x"});
        let step = StepState {
            step_id: "a".into(),
            status: crate::task::StepStatus::Succeeded,
            attempts: vec![crate::task::Attempt {
                attempt: 1,
                agent: None,
                node: None,
                output: Some(out.clone()),
                error: None,
                verdict: None,
                started_at: None,
                finished_at: None,
            }],
            output: Some(out.clone()),
        };
        assert_eq!(recorded(&[step]), 2 * json_len(&out));
    }
}
