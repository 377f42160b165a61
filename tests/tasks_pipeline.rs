//! Tasks end to end (DESIGN §4): real nodes run real tools (echo, sleep, shell, http,
//! file) for plans submitted over HTTP, and every step's attempts, agents, outputs, the
//! Critic's verdicts and the event trace are checked through `GET /api/v1/tasks/{id}`.
//! Also: failure and retry, cancel (the shell child is really stopped), timeout, and a tool
//! that prints 100 MB. The pipeline runs on SQLite and on PostgreSQL.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::tasks::{
    SHELL_ON, TASK_DEADLINE, attempts, event_kinds, eventually_within, executor_work_on, get_task,
    proc_status_kb, step, step_event, submit_ok, wait_final, wait_no_executor_work, wait_task,
    workspace, write_config,
};
use common::{Launch, TestNode, assert_error_shape, postgres_database, temp_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Starts a node named `name` with the shell tool on, plus `args`.
async fn shell_node(name: &str, args: &[&str]) -> TestNode {
    let dir = temp_dir();
    let config = write_config(dir.path(), "tasks.toml", SHELL_ON);
    Launch::new()
        .args(&[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--node",
            name,
        ])
        .args(args)
        .in_dir(dir)
        .start()
        .await
}

/// A local HTTP server for the `http` tool: `POST /echo` answers
/// `{"received": <the JSON body>, "n": 3}` and counts its hits.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn upstream() -> Upstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"received": body, "n": 3}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the upstream server");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream { addr, hits }
}

fn text(output: &Value) -> &str {
    output["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in output {output}"))
}

/// The pipeline: echo → shell (`wc -c` on the echo's output) → file write → file read →
/// echo of what was read, with an http step beside them that the last echo also waits for.
async fn pipeline(database: Option<&str>) {
    let name = "pipeline-node";
    let args: Vec<&str> = database
        .map(|url| vec!["--database", url])
        .unwrap_or_default();
    let node = shell_node(name, &args).await;
    let server = upstream().await;
    let task = json!({
        "description": "pipeline",
        "priority": "high",
        "steps": [
            {"id": "greet", "tool": "echo", "args": {"text": "hello"},
             "expect": {"contains": "hell"}},
            {"id": "count", "tool": "shell", "args": {"argv": ["wc", "-c"]},
             "input_from": "greet", "expect": {"exit_code": 0, "regex": r"^\s*5\s*$"}},
            {"id": "fetch", "tool": "http",
             "args": {"url": format!("http://{}/echo", server.addr), "method": "POST",
                      "body": {"word": "hello"}},
             "expect": {"status": 200, "json": {"path": "/received/word", "equals": "hello"}}},
            {"id": "save", "tool": "file", "args": {"op": "write", "path": "out/count.txt"},
             "input_from": "count"},
            {"id": "load", "tool": "file", "args": {"op": "read", "path": "out/count.txt"},
             "depends_on": ["save"], "expect": {"contains": "5"}},
            {"id": "report", "tool": "echo", "args": {"text": "count={{input}}"},
             "input_from": "load", "depends_on": ["fetch"]},
        ]
    });
    let id = submit_ok(&node, &task).await;
    let task = wait_final(&node, &id).await;

    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["error"], Value::Null, "{task:#}");
    assert_eq!(task["priority"], "high");
    assert_eq!(task["description"], "pipeline");
    assert_eq!(task["owner"], name);
    assert_eq!(task["lease_epoch"], 1);
    assert!(task["finished_at"].is_string(), "{task:#}");

    // Every step: succeeded at its first attempt on one of this node's executors, judged
    // by the Critic, its output the one recorded with the attempt.
    let ids = ["greet", "count", "fetch", "save", "load", "report"];
    let shown: Vec<&str> = task["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["id"].as_str().expect("step id"))
        .collect();
    assert_eq!(shown, ids, "steps in plan order");
    for id in ids {
        let s = step(&task, id);
        assert_eq!(s["status"], "succeeded", "step {id}: {s:#}");
        let tries = attempts(&task, id);
        assert_eq!(tries.len(), 1, "step {id}: {s:#}");
        let a = &tries[0];
        assert_eq!(a["attempt"], 1, "step {id}: {a:#}");
        let agent = a["agent"].as_str().unwrap_or_default();
        assert!(agent.starts_with("executor-"), "step {id}: agent {a:#}");
        assert_eq!(a["node"], name, "step {id}: {a:#}");
        assert_eq!(a["error"], Value::Null, "step {id}: {a:#}");
        assert_eq!(
            a["verdict"],
            json!({"passed": true, "reason": "all checks passed"}),
            "step {id}"
        );
        assert!(
            a["started_at"].is_string() && a["finished_at"].is_string(),
            "{a:#}"
        );
        assert!(s["output"].is_object(), "step {id}: {s:#}");
        assert_eq!(
            s["output"], a["output"],
            "step {id}: final output = attempt's"
        );
        assert_eq!(s["output"]["truncated"], false, "step {id}");
    }
    assert_eq!(step(&task, "greet")["tool"], "echo");
    assert_eq!(step(&task, "count")["tool"], "shell");
    assert_eq!(step(&task, "fetch")["tool"], "http");
    assert_eq!(step(&task, "load")["depends_on"], json!(["save"]));
    assert_eq!(step(&task, "report")["depends_on"], json!(["fetch"]));

    // Outputs: each step saw what the one before it produced.
    let out = |id: &str| step(&task, id)["output"].clone();
    assert_eq!(text(&out("greet")), "hello");
    assert_eq!(text(&out("count")).trim(), "5", "wc -c of \"hello\"");
    assert_eq!(out("count")["exit_code"], 0);
    assert_eq!(out("count")["stderr"], "");
    assert_eq!(out("fetch")["status"], 200);
    assert_eq!(
        out("fetch")["json"],
        json!({"received": {"word": "hello"}, "n": 3})
    );
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "one request upstream"
    );
    let wc = text(&out("count")).to_string();
    assert_eq!(
        text(&out("save")),
        format!("wrote {} bytes to out/count.txt", wc.len())
    );
    assert_eq!(text(&out("load")), wc);
    assert_eq!(text(&out("report")), format!("count={wc}"));
    let written = workspace(&node).join("out/count.txt");
    assert_eq!(
        std::fs::read_to_string(&written)
            .unwrap_or_else(|e| panic!("reading {}: {e}", written.display())),
        wc
    );

    // The trace: submitted, started (epoch 1, this node), step events with one
    // step.succeeded per step in dependency order, succeeded; seq numbers dense from 0.
    let kinds = event_kinds(&task);
    assert!(kinds.len() >= 3 + ids.len(), "{kinds:?}");
    assert_eq!(kinds[0], "submitted", "{kinds:?}");
    assert_eq!(kinds[1], "started", "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("succeeded"),
        "{kinds:?}"
    );
    assert!(
        kinds[2..kinds.len() - 1]
            .iter()
            .all(|k| k.starts_with("step.")),
        "{kinds:?}"
    );
    assert!(
        !kinds
            .iter()
            .any(|k| k == "step.retrying" || k == "step.failed"),
        "{kinds:?}"
    );
    let events = task["events"].as_array().expect("events");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "{e}");
    }
    assert_eq!(events[1]["data"], json!({"node": name, "epoch": 1}));
    let at = |s: &str| step_event(&task, "step.succeeded", s);
    assert!(at("greet") < at("count"));
    assert!(at("count") < at("save"));
    assert!(at("save") < at("load"));
    assert!(at("load") < at("report"));
    assert!(at("fetch") < at("report"));
    for id in ids {
        let data = &events[at(id)]["data"];
        assert_eq!(data["attempt"], 1, "{data}");
        assert_eq!(data["verdict"]["passed"], true, "{data}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_real_tools_succeeds_on_sqlite() {
    pipeline(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_real_tools_succeeds_on_postgres() {
    let db = postgres_database().await;
    pipeline(Some(&db.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_expectation_fails_the_step_after_its_attempts_and_skips_dependents() {
    let node = TestNode::start(&[], &[]).await;
    let id = submit_ok(
        &node,
        &json!({
            "max_attempts": 2,
            "steps": [
                {"id": "check", "tool": "echo", "args": {"text": "hello"},
                 "expect": {"contains": "zzz"}},
                {"id": "after", "tool": "echo", "args": {"text": "x"}, "depends_on": ["check"]},
                {"id": "last", "tool": "echo", "args": {"text": "{{input}}"},
                 "input_from": "after"},
                {"id": "free", "tool": "echo", "args": {"text": "independent"}},
            ]
        }),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("`check`") && error.contains("zzz"),
        "the error names the step and the reason: {error:?}"
    );

    let check = step(&task, "check");
    assert_eq!(check["status"], "failed", "{check:#}");
    assert_eq!(check["output"], Value::Null, "a failed step has no output");
    let tries = attempts(&task, "check");
    assert_eq!(tries.len(), 2, "max_attempts 2: {check:#}");
    for (n, a) in tries.iter().enumerate() {
        assert_eq!(a["attempt"], n as u64 + 1, "{a:#}");
        assert_eq!(a["verdict"]["passed"], false, "{a:#}");
        let reason = a["verdict"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("zzz"), "{a:#}");
        assert_eq!(
            a["output"]["text"], "hello",
            "the output judged is kept: {a:#}"
        );
    }
    for skipped in ["after", "last"] {
        let s = step(&task, skipped);
        assert_eq!(s["status"], "skipped", "{s:#}");
        assert!(attempts(&task, skipped).is_empty(), "never run: {s:#}");
    }
    assert_eq!(step(&task, "free")["status"], "succeeded");
    assert_eq!(step(&task, "free")["output"]["text"], "independent");

    let kinds = event_kinds(&task);
    assert_eq!(kinds.first().map(String::as_str), Some("submitted"));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("failed"),
        "{kinds:?}"
    );
    let retry = step_event(&task, "step.retrying", "check");
    let failed = step_event(&task, "step.failed", "check");
    assert!(retry < failed, "{kinds:?}");
    assert_eq!(task["events"][retry]["data"]["attempt"], 1);
    assert_eq!(task["events"][failed]["data"]["attempt"], 2);
    assert!(
        !kinds.iter().any(|k| k == "succeeded"),
        "a failed task has no succeeded event: {kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_step_that_fails_once_succeeds_on_its_second_attempt() {
    let node = shell_node("retry-node", &[]).await;
    let script = "if [ -e marker ]; then echo second try; \
                  else touch marker; echo first try; exit 1; fi";
    let id = submit_ok(
        &node,
        &json!({"steps": [
            {"id": "flaky", "tool": "shell", "args": {"argv": ["sh", "-c", script]}}
        ]}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let tries = attempts(&task, "flaky");
    assert_eq!(tries.len(), 2, "{task:#}");
    assert_eq!(tries[0]["verdict"]["passed"], false, "{:#}", tries[0]);
    assert_eq!(
        tries[0]["verdict"]["reason"], "exit code 1 (expected 0)",
        "{:#}",
        tries[0]
    );
    assert_eq!(tries[0]["output"]["exit_code"], 1);
    assert_eq!(tries[0]["output"]["text"], "first try\n");
    assert_eq!(tries[1]["verdict"]["passed"], true, "{:#}", tries[1]);
    assert_eq!(tries[1]["output"]["text"], "second try\n");
    assert_eq!(tries[1]["attempt"], 2);
    let s = step(&task, "flaky");
    assert_eq!(s["status"], "succeeded");
    assert_eq!(
        s["output"], tries[1]["output"],
        "the final output is the second one"
    );
    assert!(workspace(&node).join("marker").exists());
    let kinds = event_kinds(&task);
    assert_eq!(kinds[..2], ["submitted", "started"], "{kinds:?}");
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("succeeded"),
        "{kinds:?}"
    );
    let retry = step_event(&task, "step.retrying", "flaky");
    let success = step_event(&task, "step.succeeded", "flaky");
    assert!(retry < success, "{kinds:?}");
    assert_eq!(task["events"][retry]["data"]["attempt"], 1);
    assert_eq!(task["events"][retry]["data"]["verdict"]["passed"], false);
    assert_eq!(task["events"][success]["data"]["attempt"], 2);
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_steps_and_kills_the_shell_child() {
    let node = shell_node("cancel-node", &[]).await;
    let id = submit_ok(
        &node,
        &json!({"steps": [
            {"id": "nap", "tool": "sleep", "args": {"ms": 600_000}, "timeout_secs": 3600},
            {"id": "proc", "tool": "shell", "timeout_secs": 3600,
             "args": {"argv": ["sh", "-c", "echo $$ > proc.pid; exec sleep 1000"]}},
            {"id": "then", "tool": "echo", "args": {"text": "never"}, "depends_on": ["nap"]},
        ]}),
    )
    .await;

    // Both steps are really in flight: the shell child runs `sleep 1000`, and an executor
    // reports the sleep step as its current work.
    let pid_file = workspace(&node).join("proc.pid");
    let pid: u32 = eventually_within(TASK_DEADLINE, "the shell step's pid file", || async {
        let text = std::fs::read_to_string(&pid_file).map_err(|e| e.to_string())?;
        let pid: u32 = text.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
        if cmdline.starts_with(b"sleep\0") {
            Ok(pid)
        } else {
            Err(format!("cmdline {:?}", String::from_utf8_lossy(&cmdline)))
        }
    })
    .await;
    let work = eventually_within(TASK_DEADLINE, "an executor working on the task", || async {
        let work = executor_work_on(&node, &id).await;
        if work.is_empty() {
            Err("no executor reports work on the task".to_string())
        } else {
            Ok(work)
        }
    })
    .await;
    assert!(
        work.iter().all(|w| w.contains("nap") || w.contains("proc")),
        "{work:?}"
    );
    // Launches are recorded within `run::LAUNCH_FLUSH` (sharing a result's write if one
    // comes first), so the task reads running shortly after its work starts.
    let before = wait_task(&node, &id, "the task shown running", |t| {
        t["status"] == "running"
    })
    .await;
    assert_eq!(step(&before, "proc")["status"], "running", "{before:#}");

    let cancel = format!("{}/api/v1/tasks/{id}/cancel", node.http_url());
    let (status, body) = node.post(&cancel).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["task_id"], id.as_str(), "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");

    // 202 means recorded: the task reads as cancelled at once.
    let task = get_task(&node, &id).await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
    for s in ["nap", "proc", "then"] {
        assert_eq!(step(&task, s)["status"], "cancelled", "step {s}: {task:#}");
    }
    assert!(task["finished_at"].is_string(), "{task:#}");
    assert!(
        task["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cancel"),
        "{task:#}"
    );
    assert_eq!(
        event_kinds(&task).last().map(String::as_str),
        Some("cancelled"),
        "{task:#}"
    );

    // The shell child is really gone (killed and reaped), and no executor still works on
    // the task.
    eventually_within(TASK_DEADLINE, "the shell child to be gone", || async {
        if process_alive(pid) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            Err(format!("/proc/{pid} still exists: {stat}"))
        } else {
            Ok(())
        }
    })
    .await;
    wait_no_executor_work(&node, &id).await;

    // Cancelling a task that already finished: 409. An unknown task: 404.
    let done = submit_ok(
        &node,
        &json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "hi"}}]}),
    )
    .await;
    let finished = wait_final(&node, &done).await;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    let (status, body) = node
        .post(&format!("{}/api/v1/tasks/{done}/cancel", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, message) = assert_error_shape(&body, "cancel of a finished task");
    assert!(message.contains("succeeded"), "{message}");
    assert_eq!(get_task(&node, &done).await["status"], "succeeded");

    let (status, body) = node
        .post(&format!(
            "{}/api/v1/tasks/01900000-0000-7000-8000-000000000000/cancel",
            node.http_url()
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error_shape(&body, "cancel of an unknown task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_past_its_timeout_is_timed_out() {
    let node = TestNode::start(&[], &[]).await;
    let id = submit_ok(
        &node,
        &json!({"timeout_secs": 1, "steps": [
            {"id": "nap", "tool": "sleep", "args": {"ms": 60_000}, "timeout_secs": 3600},
            {"id": "after", "tool": "echo", "args": {"text": "x"}, "depends_on": ["nap"]},
        ]}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "timed_out", "{task:#}");
    assert_eq!(step(&task, "nap")["status"], "cancelled", "{task:#}");
    assert_eq!(step(&task, "after")["status"], "cancelled", "{task:#}");
    assert!(
        task["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timeout"),
        "{task:#}"
    );
    assert_eq!(
        event_kinds(&task).last().map(String::as_str),
        Some("timed_out")
    );
    wait_no_executor_work(&node, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_printing_100_mb_is_truncated_and_the_node_stays_small() {
    let node = shell_node("flood-node", &[]).await;
    let id = submit_ok(
        &node,
        &json!({"steps": [
            {"id": "flood", "tool": "shell",
             "args": {"argv": ["head", "-c", "100000000", "/dev/zero"]}}
        ]}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    let s = step(&task, "flood");
    assert_eq!(
        task["status"],
        "succeeded",
        "{}",
        common::tasks::summary(&task)
    );
    // The task's view shows the output cut to `tasks.inline_output_bytes`; its route
    // gives what was kept.
    assert_eq!(s["output_truncated"], true, "{s}");
    let url = format!("{}/api/v1/tasks/{id}/steps/flood/output", node.http_url());
    let (status, whole) = node.get_json(&url).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    let output = &whole["output"];
    assert_eq!(output["truncated"], true);
    assert_eq!(output["bytes"], 100_000_000u64, "every byte counted");
    assert_eq!(output["exit_code"], 0);
    assert_eq!(output["json"], Value::Null);
    let kept = text(output).len();
    assert_eq!(kept, 1_048_576, "tools.max_output_bytes is kept, no more");

    // Still ready and still working, and its memory stayed bounded.
    let (status, body) = node
        .get_text(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let next = submit_ok(
        &node,
        &json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "still here"}}]}),
    )
    .await;
    let next = wait_final(&node, &next).await;
    assert_eq!(next["status"], "succeeded", "{next:#}");
    let rss = proc_status_kb(node.pid(), "VmRSS");
    let peak = proc_status_kb(node.pid(), "VmHWM");
    assert!(rss < 300 * 1024, "VmRSS {rss} kB after a 100 MB output");
    assert!(
        peak < 300 * 1024,
        "VmHWM (peak RSS) {peak} kB during a 100 MB output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_task_sees_it_running_before_it_finishes() {
    // A plan whose second step waits on a gate file: the task is observed `running`
    // with its first step recorded and the second not yet, then finishes once the gate
    // opens. (Shows progress is recorded as it happens, not only at the end.)
    let node = shell_node("progress-node", &[]).await;
    let id = submit_ok(
        &node,
        &json!({"steps": [
            {"id": "first", "tool": "echo", "args": {"text": "one"}},
            {"id": "gate", "tool": "shell", "depends_on": ["first"],
             "args": {"argv": ["sh", "-c", "while [ ! -e open ]; do sleep 0.05; done; echo through"]}},
        ]}),
    )
    .await;
    let during = wait_task(&node, &id, "step `first` recorded", |t| {
        t["steps"][0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(during["status"], "running", "{during:#}");
    assert_ne!(step(&during, "gate")["status"], "succeeded", "{during:#}");
    assert_eq!(during["finished_at"], Value::Null, "{during:#}");
    std::fs::write(workspace(&node).join("open"), b"").expect("opening the gate");
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(step(&task, "gate")["output"]["text"], "through\n");
}
