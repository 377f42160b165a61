//! The `task` commands (DESIGN §4, §8) against a real node: submit from a file and from
//! stdin, follow a task to its end (exit code by outcome), the node's field errors, get,
//! list with filters and paging, cancel and watch, and what they say when no node listens.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Instant;

use common::tasks::{TASK_DEADLINE, get_task, submit_ok, wait_final};
use common::{DEADLINE, Finished, TestNode, closed_addr, command, temp_dir};
use serde_json::{Value, json};

/// Exit codes of the `task` commands (see `mister-smith task --help`).
const EXIT_ERROR: i32 = 1;
const EXIT_INPUT: i32 = 2;
const EXIT_FAILED: i32 = 3;
const EXIT_CANCELLED: i32 = 5;

/// A `task` command being run: its process and where its output goes.
struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    what: String,
}

impl Running {
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the end (at most `deadline`; a process still running then is killed
    /// and the test fails).
    async fn finish_within(mut self, deadline: std::time::Duration) -> Finished {
        let start = Instant::now();
        let status: ExitStatus = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for mister-smith") {
                break status;
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` did not exit within {deadline:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

/// Starts `mister-smith task <args>` in `dir` with `stdin` as its input (none: empty),
/// output to files (nothing can block on a pipe).
fn spawn_task(dir: &Path, args: &[&str], stdin: Option<&str>) -> Running {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stdout = dir.join(format!(".task-{n}.stdout"));
    let stderr = dir.join(format!(".task-{n}.stderr"));
    let mut cmd = command(dir);
    cmd.arg("task")
        .args(args)
        .stdout(std::fs::File::create(&stdout).expect("creating a stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("creating a stderr file"));
    if let Some(input) = stdin {
        let path = dir.join(format!(".task-{n}.stdin"));
        std::fs::write(&path, input).expect("writing the stdin file");
        cmd.stdin(std::fs::File::open(&path).expect("opening the stdin file"));
    } else {
        cmd.stdin(Stdio::null());
    }
    let child = cmd.spawn().expect("spawning mister-smith task");
    Running {
        child,
        stdout,
        stderr,
        what: format!("mister-smith task {}", args.join(" ")),
    }
}

/// Runs `mister-smith task <args> --http <node>` to its end.
async fn task_cmd(node: &TestNode, args: &[&str], stdin: Option<&str>) -> Finished {
    let http = node.http.to_string();
    let mut all = args.to_vec();
    all.extend(["--http", &http]);
    spawn_task(node.dir(), &all, stdin)
        .finish_within(DEADLINE)
        .await
}

fn assert_code(out: &Finished, code: i32) {
    assert_eq!(out.code(), Some(code), "{}", out.describe());
}

/// The one line `submit` prints without --json: the task id.
fn printed_id(out: &Finished) -> String {
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line, the id: {}", out.describe());
    let id = lines[0].trim();
    assert!(
        id.len() >= 32 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
        "not a task id: {id:?}\n{}",
        out.describe()
    );
    id.to_string()
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a task file");
    path.display().to_string()
}

fn echo_steps() -> Value {
    json!([
        {"id": "first", "tool": "echo", "args": {"text": "hello from the cli"}},
        {"id": "second", "tool": "echo", "args": {"text": "got: {{input}}"},
         "input_from": "first", "depends_on": ["first"]}
    ])
}

fn step_ids(task: &Value) -> Vec<String> {
    task["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {task}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The task ids in the first column of `task list`'s table (the header skipped).
fn listed_ids(out: &Finished) -> Vec<String> {
    let mut lines = out.stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("STATUS") && header.contains("DESCRIPTION"),
        "header: {}",
        out.describe()
    );
    lines
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn submit_reads_a_file_or_stdin_and_flags_override_it() {
    let node = TestNode::start(&[], &[]).await;

    // A steps array from a file, with the task's fields from flags.
    let steps = write_file(node.dir(), "steps.json", &echo_steps().to_string());
    let out = task_cmd(
        &node,
        &[
            "submit",
            "--steps",
            &steps,
            "--description",
            "from flags",
            "--priority",
            "high",
        ],
        None,
    )
    .await;
    assert_code(&out, 0);
    let id = printed_id(&out);
    let task = get_task(&node, &id).await;
    assert_eq!(task["description"], "from flags", "{task}");
    assert_eq!(task["priority"], "high", "{task}");
    assert_eq!(step_ids(&task), ["first", "second"], "{task}");

    // A whole task object from stdin; a flag wins over the file, the rest of it stays.
    let whole = json!({"description": "from stdin", "priority": "low",
                       "steps": [{"id": "only", "tool": "echo", "args": {"text": "x"}}]});
    let out = task_cmd(
        &node,
        &["submit", "--steps", "-", "--priority", "urgent", "--json"],
        Some(&whole.to_string()),
    )
    .await;
    assert_code(&out, 0);
    let answer: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", out.describe()));
    assert_eq!(answer["status"], "queued", "{answer}");
    assert_eq!(answer["created"], true, "{answer}");
    let id = answer["task_id"].as_str().expect("task_id").to_string();
    let task = get_task(&node, &id).await;
    assert_eq!(task["description"], "from stdin", "{task}");
    assert_eq!(task["priority"], "urgent", "{task}");
    assert_eq!(step_ids(&task), ["only"], "{task}");

    // The same idempotency key twice: the same task, not a second one.
    let once = task_cmd(
        &node,
        &["submit", "--steps", &steps, "--idempotency-key", "k-1"],
        None,
    )
    .await;
    assert_code(&once, 0);
    let again = task_cmd(
        &node,
        &["submit", "--steps", &steps, "--idempotency-key", "k-1"],
        None,
    )
    .await;
    assert_code(&again, 0);
    assert_eq!(printed_id(&once), printed_id(&again));
}

#[tokio::test]
async fn submit_wait_exits_by_the_outcome() {
    let node = TestNode::start(&[], &[]).await;
    let steps = write_file(node.dir(), "ok.json", &echo_steps().to_string());
    let out = task_cmd(&node, &["submit", "--steps", &steps, "--wait"], None).await;
    assert_code(&out, 0);
    let id = out.stdout.lines().next().unwrap_or_default().to_string();
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("task {id} succeeded (2/2 steps done")),
        "the final status line: {}",
        out.describe()
    );
    assert_eq!(get_task(&node, &id).await["status"], "succeeded");

    // A step that can never pass, tried once.
    let failing = json!([{"id": "picky", "tool": "echo", "args": {"text": "hello"},
                          "expect": {"contains": "zzz"}, "max_attempts": 1}]);
    let out = task_cmd(
        &node,
        &["submit", "--steps", "-", "--wait"],
        Some(&failing.to_string()),
    )
    .await;
    assert_code(&out, EXIT_FAILED);
    let id = out.stdout.lines().next().unwrap_or_default().to_string();
    assert!(
        out.stdout
            .contains(&format!("task {id} failed (1/1 steps done")),
        "the final status line: {}",
        out.describe()
    );
    let error_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {}", out.describe()));
    assert!(
        error_line.contains("picky") && error_line.contains("zzz"),
        "the error names the step and the check: {error_line}"
    );
    let task = get_task(&node, &id).await;
    assert_eq!(task["status"], "failed", "{task}");
}

#[tokio::test]
async fn bad_input_exits_2_naming_what_is_wrong() {
    let node = TestNode::start(&[], &[]).await;

    // The node's field errors, one per line.
    let invalid = json!([{"id": "a", "tool": "no-such-tool"},
                         {"id": "b", "tool": "echo", "args": {"text": "x"}, "depends_on": ["ghost"]}]);
    let out = task_cmd(
        &node,
        &["submit", "--steps", "-"],
        Some(&invalid.to_string()),
    )
    .await;
    assert_code(&out, EXIT_INPUT);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("steps[0].tool:") && l.contains("no-such-tool")),
        "{}",
        out.describe()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("steps[1].depends_on[0]:") && l.contains("ghost")),
        "{}",
        out.describe()
    );
    assert!(out.stdout.is_empty(), "{}", out.describe());

    // Caught before anything is sent: not JSON, no such file, neither object nor array.
    let out = task_cmd(&node, &["submit", "--steps", "-"], Some("{\"steps\": [")).await;
    assert_code(&out, EXIT_INPUT);
    assert!(out.stderr.contains("not valid JSON"), "{}", out.describe());
    let missing = node.dir().join("missing.json").display().to_string();
    let out = task_cmd(&node, &["submit", "--steps", &missing], None).await;
    assert_code(&out, EXIT_INPUT);
    assert!(out.stderr.contains("missing.json"), "{}", out.describe());
    let out = task_cmd(&node, &["submit", "--steps", "-"], Some("42")).await;
    assert_code(&out, EXIT_INPUT);
    assert!(out.stderr.contains("a number"), "{}", out.describe());

    // Nothing was stored by any of them.
    let list = task_cmd(&node, &["list", "--json"], None).await;
    assert_code(&list, 0);
    let body: Value = serde_json::from_str(&list.stdout).expect("list --json");
    assert_eq!(body["tasks"], json!([]), "{body}");
}

#[tokio::test]
async fn get_shows_steps_attempts_verdicts_and_the_trace() {
    let node = TestNode::start(&["--node", "gotten"], &[]).await;
    let id = submit_ok(
        &node,
        &json!({"description": "to be read", "steps": echo_steps()}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task}");

    let out = task_cmd(&node, &["get", &id], None).await;
    assert_code(&out, 0);
    let text = &out.stdout;
    assert_eq!(
        text.lines().next(),
        Some(format!("task {id}  succeeded").as_str()),
        "{text}"
    );
    assert!(text.contains("to be read"), "{text}");
    let step_line = |id: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no line for step {id}:\n{text}"))
            .to_string()
    };
    for step in ["first", "second"] {
        let line = step_line(step);
        assert!(line.contains("succeeded"), "{line}");
        assert!(line.contains("attempts 1"), "{line}");
        let agent = task["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == step))
            .map(|s| {
                s["attempts"][0]["agent"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .expect("the step's agent");
        assert!(line.contains(&format!("{agent}@gotten")), "{line}");
    }
    assert!(step_line("second").contains("after first"), "{text}");
    assert!(text.contains("verdict  passed"), "{text}");
    assert!(
        text.contains("output   \"got: hello from the cli\""),
        "{text}"
    );
    for kind in ["submitted", "started", "step.succeeded", "succeeded"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(2) == Some(kind)),
            "no {kind} event line:\n{text}"
        );
    }

    let out = task_cmd(&node, &["get", &id, "--json"], None).await;
    assert_code(&out, 0);
    let json: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", out.describe()));
    assert_eq!(json, get_task(&node, &id).await, "the node's JSON as is");

    let out = task_cmd(&node, &["get", "no-such-task"], None).await;
    assert_code(&out, EXIT_ERROR);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("no task no-such-task"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn list_filters_by_status_and_follows_every_page() {
    let node = TestNode::start(&[], &[]).await;
    let mut succeeded = Vec::new();
    for n in 0..3 {
        let id = submit_ok(
            &node,
            &json!({"description": format!("fine {n}"),
                    "steps": [{"id": "a", "tool": "echo", "args": {"text": "ok"}}]}),
        )
        .await;
        assert_eq!(wait_final(&node, &id).await["status"], "succeeded");
        succeeded.push(id);
    }
    let failed = submit_ok(
        &node,
        &json!({"description": "doomed", "max_attempts": 1,
                "steps": [{"id": "a", "tool": "echo", "args": {"text": "ok"},
                           "expect": {"contains": "zzz"}}]}),
    )
    .await;
    assert_eq!(wait_final(&node, &failed).await["status"], "failed");

    let out = task_cmd(&node, &["list", "--status", "failed"], None).await;
    assert_code(&out, 0);
    assert_eq!(listed_ids(&out), vec![failed.clone()], "{}", out.describe());
    assert!(out.stdout.contains("doomed"), "{}", out.describe());

    let out = task_cmd(&node, &["list", "--status", "succeeded"], None).await;
    assert_code(&out, 0);
    let mut ids = listed_ids(&out);
    ids.sort();
    let mut want = succeeded.clone();
    want.sort();
    assert_eq!(ids, want, "{}", out.describe());

    // One page of two, and a hint where the next starts.
    let out = task_cmd(&node, &["list", "--limit", "2"], None).await;
    assert_code(&out, 0);
    assert_eq!(listed_ids(&out).len(), 2, "{}", out.describe());
    assert!(out.stderr.contains("--cursor"), "{}", out.describe());

    // Every page: each task exactly once.
    let mut all = succeeded.clone();
    all.push(failed.clone());
    all.sort();
    let out = task_cmd(&node, &["list", "--limit", "2", "--all"], None).await;
    assert_code(&out, 0);
    let mut ids = listed_ids(&out);
    ids.sort();
    assert_eq!(ids, all, "{}", out.describe());

    let out = task_cmd(&node, &["list", "--limit", "1", "--all", "--json"], None).await;
    assert_code(&out, 0);
    let body: Value = serde_json::from_str(&out.stdout).expect("list --json");
    let mut ids: Vec<String> = body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["task_id"].as_str().unwrap_or("?").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, all, "{body}");
    assert_eq!(body["next_cursor"], Value::Null, "{body}");
}

#[tokio::test]
async fn cancel_ends_a_long_task_and_watch_shows_it() {
    let node = TestNode::start(&[], &[]).await;
    let long = json!([{"id": "nap", "tool": "sleep", "args": {"ms": 600_000}}]);
    let out = task_cmd(&node, &["submit", "--steps", "-"], Some(&long.to_string())).await;
    assert_code(&out, 0);
    let id = printed_id(&out);

    // Follow it (stdout is a file: a line per change), and wait until it shows the nap.
    let http = node.http.to_string();
    let watch = spawn_task(node.dir(), &["watch", &id, "--http", &http], None);
    common::tasks::eventually_within(TASK_DEADLINE, "watch to show the running nap", || {
        let seen = watch.stdout();
        async move {
            if seen.lines().any(|l| l.contains("running: nap")) {
                Ok(())
            } else {
                Err(seen)
            }
        }
    })
    .await;

    let out = task_cmd(&node, &["cancel", &id], None).await;
    assert_code(&out, 0);
    assert_eq!(
        out.stdout.trim(),
        format!("task {id} cancelled"),
        "{}",
        out.describe()
    );

    let watched = watch.finish_within(TASK_DEADLINE).await;
    assert_code(&watched, EXIT_CANCELLED);
    assert!(
        watched
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("task {id} cancelled"))),
        "{}",
        watched.describe()
    );
    assert_eq!(get_task(&node, &id).await["status"], "cancelled");

    // Watching a finished task ends at once with its outcome.
    let out = task_cmd(&node, &["watch", &id], None).await;
    assert_code(&out, EXIT_CANCELLED);

    // A finished task cannot be cancelled (409), an unknown one is not there (404).
    let done = submit_ok(
        &node,
        &json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "ok"}}]}),
    )
    .await;
    assert_eq!(wait_final(&node, &done).await["status"], "succeeded");
    let out = task_cmd(&node, &["cancel", &done], None).await;
    assert_code(&out, EXIT_ERROR);
    assert!(out.stderr.contains("409"), "{}", out.describe());
    assert!(
        out.stderr.contains("already succeeded"),
        "{}",
        out.describe()
    );
    let out = task_cmd(&node, &["cancel", "no-such-task"], None).await;
    assert_code(&out, EXIT_ERROR);
    assert!(out.stderr.contains("404"), "{}", out.describe());
}

#[tokio::test]
async fn an_unreachable_node_is_one_line_naming_the_address() {
    let dir = temp_dir();
    let steps = write_file(dir.path(), "steps.json", &echo_steps().to_string());
    let addr = closed_addr();
    let commands: [&[&str]; 5] = [
        &["submit", "--steps", &steps, "--wait"],
        &["get", "some-id"],
        &["list", "--all"],
        &["cancel", "some-id"],
        &["watch", "some-id"],
    ];
    for args in commands {
        let mut all = args.to_vec();
        all.extend(["--http", &addr]);
        let out = spawn_task(dir.path(), &all, None)
            .finish_within(DEADLINE)
            .await;
        assert_code(&out, EXIT_ERROR);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.describe());
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{args:?}: {}",
            out.describe()
        );
        assert!(
            out.stderr.contains(&addr) && out.stderr.contains("cannot reach"),
            "{args:?}: {}",
            out.describe()
        );
    }
    // The address also comes from the environment, as for `agents`.
    let out = {
        let mut cmd = command(dir.path());
        cmd.args(["task", "list"])
            .env("MISTER_SMITH__HTTP__LISTEN", &addr);
        let output = cmd.output().expect("running mister-smith task list");
        Finished {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into(),
            stderr: String::from_utf8_lossy(&output.stderr).into(),
        }
    };
    assert_code(&out, EXIT_ERROR);
    assert!(out.stderr.contains(&addr), "{}", out.describe());
}
