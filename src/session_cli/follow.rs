//! Following one turn to its end, for people: each tool call as the model asks for it,
//! each result as it is recorded, then the answer (or why there is none). Shared by the
//! `session` commands and the chat shell. Ctrl-C (or any `interrupt` future) cancels the
//! turn's task and follows it to its cancelled end.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::client::{ClientError, text};
use crate::task_cli::api::Api;
use crate::task_cli::render::one_line;
use crate::task_cli::transient;

/// How often a followed turn's task is read.
const POLL: Duration = Duration::from_millis(100);
/// How long the node may be out of reach (a restart) before following gives up.
const LOST_GRACE: Duration = Duration::from_secs(30);
/// Characters of a tool's arguments or result shown.
const SHOWN: usize = 100;

/// How a followed turn ended: its task as last read.
pub struct Ended {
    pub task: Value,
    pub status: String,
}

impl Ended {
    /// The answer: the last LLM call's text, once the turn succeeded.
    pub fn answer(&self) -> Option<String> {
        if self.status != "succeeded" {
            return None;
        }
        steps(&self.task)
            .filter(|s| text(&s["id"]).starts_with("llm_"))
            .filter_map(|s| s["output"]["text"].as_str())
            .next_back()
            .map(str::to_string)
    }

    /// Why there is no answer.
    pub fn error(&self) -> String {
        self.task["error"]
            .as_str()
            .map_or_else(|| self.status.clone(), |e| format!("{}: {e}", self.status))
    }
}

fn steps(task: &Value) -> impl DoubleEndedIterator<Item = &Value> {
    task["steps"].as_array().into_iter().flatten()
}

/// What a finished step adds to the transcript: the calls an LLM step asked for, or a
/// tool call's result.
fn lines_of(step: &Value) -> Vec<String> {
    let id = text(&step["id"]);
    if id.starts_with("llm_") {
        return step["output"]["json"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|call| {
                format!(
                    "  → {} {}",
                    text(&call["name"]),
                    one_line(&text(&call["arguments"]), SHOWN)
                )
            })
            .collect();
    }
    let result = match step["status"].as_str() {
        Some("succeeded") => text(&step["output"]["text"]),
        _ => step["attempts"]
            .as_array()
            .and_then(|a| a.last())
            .map_or_else(|| text(&step["status"]), |a| text(&a["error"])),
    };
    vec![format!(
        "  ← {} {}: {}",
        text(&step["tool"]),
        text(&step["status"]),
        one_line(&result, SHOWN)
    )]
}

/// Where following a turn stopped: at its end, or at tool calls awaiting a person's
/// approval (each announced once; follow again after deciding).
pub enum Followed {
    Ended(Ended),
    /// The calls newly awaiting approval: step id, tool, arguments.
    Awaiting(Vec<(String, String, String)>),
}

/// What a follower has shown of a turn, so that following again after an approval shows
/// only what is new.
#[derive(Default)]
pub struct Follower {
    shown: std::collections::HashSet<String>,
    asked: std::collections::HashSet<String>,
}

impl Follower {
    /// Reads task `task_id` until it ends or a call awaits approval, handing each new
    /// transcript line to `show`. On `interrupt`, the task is cancelled (once) and
    /// followed to its end.
    pub async fn follow(
        &mut self,
        api: &Api,
        task_id: &str,
        mut show: impl FnMut(&str),
        interrupt: impl Future<Output = ()>,
    ) -> Result<Followed, ClientError> {
        let mut lost_since: Option<Instant> = None;
        let mut interrupt = std::pin::pin!(interrupt);
        let mut cancelled = false;
        loop {
            match api.task(task_id).await {
                Ok(task) => {
                    lost_since = None;
                    let mut awaiting = Vec::new();
                    for step in steps(&task) {
                        let id = text(&step["id"]);
                        match step["status"].as_str() {
                            Some("pending" | "running") => {}
                            Some("awaiting_approval") => {
                                if !cancelled && self.asked.insert(id.clone()) {
                                    let args = one_line(&step_args(&task, &id), SHOWN);
                                    awaiting.push((id, text(&step["tool"]), args));
                                }
                            }
                            _ => {
                                if self.shown.insert(id) {
                                    lines_of(step).iter().for_each(|l| show(l));
                                }
                            }
                        }
                    }
                    let status = text(&task["status"]);
                    if crate::task_cli::final_exit_code(&status).is_some() {
                        return Ok(Followed::Ended(Ended { task, status }));
                    }
                    if !awaiting.is_empty() {
                        return Ok(Followed::Awaiting(awaiting));
                    }
                }
                Err(e) if transient(&e) => {
                    if lost_since.get_or_insert_with(Instant::now).elapsed() > LOST_GRACE {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = &mut interrupt, if !cancelled => {
                    cancelled = true;
                    show("  (cancelling the turn)");
                    let url = api.url(&["api", "v1", "tasks", task_id, "cancel"])?;
                    let answer = api.send(Method::POST, url, &[], None, POLL * 100).await?;
                    if !answer.status.is_success() {
                        return Err(answer.refused());
                    }
                }
            }
        }
    }
}

/// The arguments of step `id` as the task's view shows them: the tool call's, from the
/// `approval.requested` event that announced it.
fn step_args(task: &Value, id: &str) -> String {
    task["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "approval.requested" && e["data"]["step"] == id)
        .map(|e| e["data"]["args"].to_string())
        .next_back()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_results_and_the_answer_read_from_a_turns_task() {
        let task = json!({"status": "succeeded", "steps": [
            {"id": "llm_1", "tool": "llm", "status": "succeeded", "output": {"text": "",
             "json": {"tool_calls": [{"name": "echo", "arguments": "{\"text\":\"hi\"}"}]}}},
            {"id": "t1_0", "tool": "echo", "status": "succeeded", "output": {"text": "hi"}},
            {"id": "t1_1", "tool": "http", "status": "failed", "attempts": [{"error": "refused"}]},
            {"id": "llm_2", "tool": "llm", "status": "succeeded", "output": {"text": "Said hi."}},
        ]});
        let lines: Vec<String> = steps(&task).flat_map(lines_of).collect();
        assert_eq!(
            lines,
            [
                "  → echo {\"text\":\"hi\"}",
                "  ← echo succeeded: hi",
                "  ← http failed: refused"
            ]
        );
        let ended = Ended {
            task: task.clone(),
            status: "succeeded".into(),
        };
        assert_eq!(ended.answer().as_deref(), Some("Said hi."));
        let failed = Ended {
            task: json!({"status": "failed", "error": "no answer"}),
            status: "failed".into(),
        };
        assert_eq!(
            (failed.answer(), failed.error()),
            (None, "failed: no answer".into())
        );
    }
}
