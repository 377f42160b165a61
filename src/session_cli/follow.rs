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
    /// Steps whose lines are printed (shared with [`print_deltas`], which prints a tool
    /// call's result as soon as the trace says it is in).
    pub shown: Shown,
    asked: std::collections::HashSet<String>,
}

/// The steps of a turn whose lines are printed.
pub type Shown = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// Hands `step`'s lines to `show` unless they were shown.
fn show_once(shown: &Shown, step: &Value, show: &mut impl FnMut(&str)) {
    let first = shown
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(text(&step["id"]));
    if first {
        lines_of(step).iter().for_each(|l| show(l));
    }
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
                            _ => show_once(&self.shown, step, &mut show),
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

/// What a turn's deltas printed so far: the step being streamed and its text.
#[derive(Default)]
pub struct Printed {
    step: String,
    text: String,
}

/// Waits for the delta printer to end (its stream ends after the turn's final entry, so
/// the last pieces are printed), giving up after a second.
pub async fn drain(printer: Option<tokio::task::JoinHandle<()>>) {
    if let Some(mut printer) = printer
        && tokio::time::timeout(Duration::from_secs(1), &mut printer)
            .await
            .is_err()
    {
        printer.abort();
    }
}

impl Printed {
    /// Ends the streamed line and says whether `answer` was streamed whole (then it need
    /// not be printed again).
    pub fn finish(&self, answer: Option<&str>) -> bool {
        if self.text.is_empty() {
            return false;
        }
        println!();
        answer == Some(self.text.as_str())
    }
}

/// Prints the text of turn `turn` of session `session` as its LLM calls stream it (from
/// the turn's event stream: `agent> ` and the pieces as they come), until aborted. Best
/// effort: a stream that cannot be opened prints nothing, and the answer is printed whole
/// at the end instead.
pub fn print_deltas(
    api: &Api,
    task_id: &str,
    session: &str,
    turn: &str,
    printed: std::sync::Arc<std::sync::Mutex<Printed>>,
    shown: Shown,
) -> Option<tokio::task::JoinHandle<()>> {
    let url = api
        .url(&["api", "v1", "sessions", session, "turns", turn, "events"])
        .ok()?;
    let mut request = api.client.get(url);
    if let Some(token) = &api.token {
        request = request.bearer_auth(token);
    }
    let (api, task_id) = (api.clone(), task_id.to_string());
    Some(tokio::spawn(async move {
        let Ok(mut response) = request.send().await else {
            return;
        };
        if !response.status().is_success() {
            return;
        }
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if block.lines().any(|l| l.starts_with("event: step.")) {
                    // A call's result is in: its line now, before the text that follows it.
                    print_results(&api, &task_id, &printed, &shown).await;
                    continue;
                }
                if !block.lines().any(|l| l == "event: delta") {
                    continue;
                }
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) else {
                    continue;
                };
                let Ok(delta) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                let (step, text) = (text(&delta["step"]), text(&delta["text"]));
                let mut printed = printed.lock().unwrap_or_else(|e| e.into_inner());
                if printed.step != step {
                    if !printed.text.is_empty() {
                        println!();
                    }
                    print!("agent> ");
                    printed.step = step;
                    printed.text.clear();
                }
                print!("{text}");
                printed.text.push_str(&text);
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
        }
    }))
}

/// Prints the lines of the turn's finished steps not shown yet, ending a streamed line
/// first.
async fn print_results(
    api: &Api,
    task_id: &str,
    printed: &std::sync::Mutex<Printed>,
    shown: &Shown,
) {
    let Ok(task) = api.task(task_id).await else {
        return;
    };
    // Every finished step in plan order (an LLM call's `→` lines before its calls' `←`);
    // what the follower printed already is not printed again.
    let finished = steps(&task).filter(|s| {
        !matches!(
            s["status"].as_str(),
            Some("pending" | "running" | "awaiting_approval")
        )
    });
    for step in finished {
        show_once(shown, step, &mut |line: &str| {
            let mut printed = printed.lock().unwrap_or_else(|e| e.into_inner());
            if !printed.text.is_empty() {
                println!();
                printed.text.clear();
                printed.step.clear();
            }
            println!("{line}");
        });
    }
}
