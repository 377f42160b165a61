//! Bounds what one read of a task carries: `GET /api/v1/tasks/{id}` shows each output up
//! to `tasks.inline_output_bytes` (cut, with `output_truncated` set on its step), and one
//! step's whole output is read at `GET /api/v1/tasks/{id}/steps/{step}/output` (bounded
//! by the task's output budget). Without this one GET of a task with large outputs built
//! a response of gigabytes in memory.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::state::AppState;

/// Bytes of each output a task's view carries inline (`tasks.inline_output_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct InlineOutput(pub usize);

impl Default for InlineOutput {
    fn default() -> Self {
        InlineOutput(64 * 1024)
    }
}

/// Cuts every output of a task's view (steps' and attempts') to `cap` bytes of text,
/// marking the steps whose outputs were cut.
pub fn cap_outputs(task: &mut Value, cap: usize) {
    let Some(steps) = task.get_mut("steps").and_then(Value::as_array_mut) else {
        return;
    };
    for step in steps {
        let mut cut = step.get_mut("output").is_some_and(|o| cap_output(o, cap));
        if let Some(attempts) = step.get_mut("attempts").and_then(Value::as_array_mut) {
            for attempt in attempts {
                if let Some(output) = attempt.get_mut("output") {
                    cut |= cap_output(output, cap);
                }
            }
        }
        if let Some(step) = step.as_object_mut() {
            step.insert("output_truncated".into(), Value::Bool(cut));
        }
    }
}

/// Cuts one output to about `cap` bytes: its texts to `cap` each (on a character
/// boundary), its parsed JSON dropped. Returns whether anything was cut.
fn cap_output(output: &mut Value, cap: usize) -> bool {
    if serde_json::to_vec(output).map_or(0, |v| v.len()) <= cap {
        return false;
    }
    let Some(fields) = output.as_object_mut() else {
        // Not a tool's output object: too large to show inline at all.
        *output = Value::Null;
        return true;
    };
    for key in ["text", "stderr"] {
        if let Some(Value::String(text)) = fields.get_mut(key) {
            let mut end = cap.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
    }
    if fields.get("json").is_some_and(|j| !j.is_null()) {
        fields.insert("json".into(), Value::Null);
    }
    true
}

/// The whole output of one step: the step's result, or its last attempt's output when it
/// has none (failed or running).
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/steps/{step}/output",
    operation_id = "get_step_output",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task's id"),
        ("step" = String, Path, description = "The step's id in the task's plan"),
    ),
    responses(
        (status = 200, description = "The step's whole output (`output` is null when it has none yet)", body = crate::http::openapi::StepOutput),
        (status = 404, description = "`not_found`: no such task, or no such step in it", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn get(
    State(node): State<AppState>,
    caller: crate::http::owned::Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    // An id that cannot be decoded names no task.
    let Path((id, step_id)) = path.map_err(|_| ApiError::not_found("no such task or step"))?;
    let view = crate::http::owned::readable(&node, &id, &caller).await?;
    let step = view
        .steps
        .into_iter()
        .find(|s| s.id == step_id)
        .ok_or_else(|| ApiError::not_found(format!("task {id} has no step `{step_id}`")))?;
    let output = step
        .output
        .or_else(|| step.attempts.into_iter().rev().find_map(|a| a.output));
    Ok(Json(
        json!({"task_id": id, "step_id": step_id, "status": step.status, "output": output}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_output_is_cut_and_marked() {
        let long = "é".repeat(100);
        let mut task = json!({"steps": [
            {"output": {"text": long, "json": {"a": 1}}, "attempts": [{"output": {"text": "short"}}]},
            {"output": null, "attempts": []},
        ]});
        cap_outputs(&mut task, 51);
        let text = task["steps"][0]["output"]["text"].as_str().expect("text");
        assert_eq!(text.len(), 50, "cut on a character boundary");
        assert_eq!(task["steps"][0]["output"]["json"], Value::Null);
        assert_eq!(task["steps"][0]["output_truncated"], true);
        assert_eq!(task["steps"][0]["attempts"][0]["output"]["text"], "short");
        assert_eq!(task["steps"][1]["output_truncated"], false);
    }
}
