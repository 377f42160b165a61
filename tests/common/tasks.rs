//! Helpers for the task tests (`tests/tasks_*.rs`): configuration files, submitting,
//! polling a task until it reaches a state, reading steps and the event trace, and the
//! executors of the supervision tree.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::{TestNode, actor_at, assert_error_shape};

/// How long a task (or anything a task test waits for) may take before the test fails.
/// Generous: the machine has two cores and the tests of a file run side by side.
pub const TASK_DEADLINE: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(50);

/// `[tools.shell]` on, with the programs the task tests run.
pub const SHELL_ON: &str = r#"
[tools.shell]
enabled = true
allow = ["wc", "sh", "cat", "false", "head"]
# `sh` runs anything: the tests opt in explicitly.
allow_run_anything = true

# The pipeline's http step calls a local upstream server.
[tools.http]
allow_hosts = ["127.0.0.1"]
allow_cidrs = ["127.0.0.1/32"]
"#;

/// Writes `toml` to `name` in `dir` and returns the absolute path (for `--config`).
pub fn write_config(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml)
        .unwrap_or_else(|e| panic!("writing the config file {}: {e}", path.display()));
    path
}

/// The `file` tool's workspace of a node started with the default `tools.file.workspace`.
pub fn workspace(node: &TestNode) -> PathBuf {
    node.dir().join("data/workspace")
}

/// Polls `probe` until it gives `Ok`, failing the test after `deadline` with `what` and
/// the last thing the probe saw.
pub async fn eventually_within<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() > deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// POSTs `body` (any bytes) to `/api/v1/tasks` with the given content type (none: no
/// header) and returns the status and the body parsed as JSON (the test fails if it is not
/// JSON: every answer of the API is).
pub async fn post_raw(
    node: &TestNode,
    body: impl Into<reqwest::Body>,
    content_type: Option<&str>,
) -> (StatusCode, Value) {
    let url = format!("{}/api/v1/tasks", node.http_url());
    let mut request = node.client.post(&url).body(body);
    if let Some(ct) = content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, ct);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}\nnode log:\n{}", node.log()));
    let status = response.status();
    let text = response.text().await.expect("reading the body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST {url} → {status}: body is not JSON ({e}): {text}"));
    (status, json)
}

/// POSTs a task as JSON.
pub async fn submit(node: &TestNode, task: &Value) -> (StatusCode, Value) {
    post_raw(node, task.to_string(), Some("application/json")).await
}

/// Submits a task that must be accepted (`202 {"task_id", "status": "queued", "created":
/// true}`) and returns its id.
/// A node on the embedded defaults whose LLM provider is `scripted` with `script`.
pub async fn scripted_node(script: &Value) -> TestNode {
    scripted_node_with(script, "").await
}

/// [`scripted_node`] with `more` configuration after the `[llm]` section.
pub async fn scripted_node_with(script: &Value, more: &str) -> TestNode {
    let dir = super::temp_dir();
    std::fs::write(dir.path().join("script.json"), script.to_string()).expect("script");
    write_config(
        dir.path(),
        "llm.toml",
        &format!("[llm]\nprovider = \"scripted\"\nscript = \"script.json\"\n{more}"),
    );
    super::Launch::new()
        .args(&["--config", "llm.toml"])
        .in_dir(dir)
        .start()
        .await
}

pub async fn submit_ok(node: &TestNode, task: &Value) -> String {
    let (status, body) = submit(node, task).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "submitting {task}: {body}\nnode log:\n{}",
        node.log()
    );
    assert_eq!(body["status"], "queued", "{body}");
    assert_eq!(body["created"], true, "{body}");
    body["task_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("no task_id in {body}"))
        .to_string()
}

/// `GET /api/v1/tasks/{id}`, which must answer 200.
pub async fn get_task(node: &TestNode, id: &str) -> Value {
    let url = format!("{}/api/v1/tasks/{id}", node.http_url());
    let (status, body) = node.get_json(&url).await;
    assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
    assert_eq!(body["task_id"], id, "{body}");
    body
}

/// Polls the task until `ready` holds, for up to [`TASK_DEADLINE`].
pub async fn wait_task(
    node: &TestNode,
    id: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    eventually_within(TASK_DEADLINE, &format!("task {id}: {what}"), || async {
        let task = get_task(node, id).await;
        if ready(&task) {
            Ok(task)
        } else {
            Err(summary(&task))
        }
    })
    .await
}

/// Polls the task until its status is final and returns it.
pub async fn wait_final(node: &TestNode, id: &str) -> Value {
    wait_task(node, id, "a final status", |t| {
        matches!(
            t["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled" | "timed_out")
        )
    })
    .await
}

/// A short account of a task for failure messages: its status, its steps' statuses and
/// its event kinds.
pub fn summary(task: &Value) -> String {
    format!(
        "status={} error={} steps=[{}] events={:?}",
        task["status"],
        task["error"],
        step_states(task).join(", "),
        event_kinds(task)
    )
}

/// Each step as `id=status(N attempts)`.
pub fn step_states(task: &Value) -> Vec<String> {
    let Some(steps) = task["steps"].as_array() else {
        return Vec::new();
    };
    steps
        .iter()
        .map(|s| {
            format!(
                "{}={}({} attempts)",
                s["id"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?"),
                s["attempts"].as_array().map_or(0, Vec::len)
            )
        })
        .collect()
}

/// The step with this id (the test fails if there is none).
pub fn step<'a>(task: &'a Value, id: &str) -> &'a Value {
    task["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id:?} in {task:#}"))
}

/// The step's attempts (the test fails if there is no array).
pub fn attempts<'a>(task: &'a Value, id: &str) -> &'a Vec<Value> {
    step(task, id)["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("step {id:?} has no attempts array: {task:#}"))
}

/// The kinds of the task's events, in trace order.
pub fn event_kinds(task: &Value) -> Vec<String> {
    task["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The task's events (the test fails if there is no array).
pub fn events(task: &Value) -> &Vec<Value> {
    task["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array in {task:#}"))
}

/// Position in the trace of the event `kind` about step `step_id` (the test fails if there
/// is not exactly one).
pub fn step_event(task: &Value, kind: &str, step_id: &str) -> usize {
    let found: Vec<usize> = events(task)
        .iter()
        .enumerate()
        .filter(|(_, e)| e["kind"] == kind && e["data"]["step"] == step_id)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} event for step {step_id}: {:#}",
        task["events"]
    );
    found[0]
}

/// The executor slots of the node (children of the `execution` domain with role
/// `executor`, or vacant slots named `executor-N`), as the admin tree shows them.
pub async fn executors(node: &TestNode) -> Vec<Value> {
    let tree = node.tree().await;
    let domain = actor_at(&tree["root"], &["execution"])
        .unwrap_or_else(|| panic!("no execution domain in {tree:#}"));
    domain["children"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|a| {
                    // A vacant slot (restarting) has no role; its name is the child id.
                    a["role"] == "executor"
                        || a["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("executor-"))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// What the executors report as their current work on this task (`current_work` names
/// the task, the step and the tool). An executor running two steps at once shows one.
pub async fn executor_work_on(node: &TestNode, task_id: &str) -> Vec<String> {
    executors(node)
        .await
        .into_iter()
        .filter_map(|e| e["current_work"].as_str().map(str::to_string))
        .filter(|w| w.contains(task_id))
        .collect()
}

/// Waits until no executor reports work on the task.
pub async fn wait_no_executor_work(node: &TestNode, task_id: &str) {
    eventually_within(TASK_DEADLINE, "no executor working on the task", || async {
        let work = executor_work_on(node, task_id).await;
        if work.is_empty() {
            Ok(())
        } else {
            Err(format!("{work:?}"))
        }
    })
    .await
}

/// A field of `/proc/<pid>/status` in kB (e.g. `VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}:\n{text}"))
}

/// Submits `body` and checks the status, the error shape, and that the message (or one of
/// the listed fields) names each of `names`.
pub async fn refused(
    node: &TestNode,
    case: &str,
    body: &str,
    content_type: Option<&str>,
    want: StatusCode,
    names: &[&str],
) -> Value {
    let (status, answer) = post_raw(node, body.to_string(), content_type).await;
    assert_eq!(status, want, "{case}: {answer}");
    let (_, message) = assert_error_shape(&answer, case);
    for name in names {
        assert!(
            message.contains(name),
            "{case}: the message does not name {name:?}: {answer}"
        );
    }
    answer
}

/// The `field` of every entry of `error.fields`.
pub fn fields(answer: &Value) -> Vec<String> {
    answer["error"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no error.fields in {answer}"))
        .iter()
        .map(|f| f["field"].as_str().unwrap_or_default().to_string())
        .collect()
}
