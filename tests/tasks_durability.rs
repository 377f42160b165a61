//! What the task machinery promises when things go wrong or get crowded (DESIGN §4, §5):
//! a node SIGKILLed mid-task is replaced by a new process on the same database, which
//! finishes every task without re-running recorded steps (SQLite and PostgreSQL);
//! executors killed through the admin API lose no task and record each step once; and with
//! one run slot, queued tasks start by priority.

mod common;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;

use common::tasks::{
    SHELL_ON, TASK_DEADLINE, attempts, event_kinds, events, eventually_within, executors, get_task,
    step, step_event, submit_ok, summary, wait_final, wait_task, workspace, write_config,
};
use common::{Launch, TestNode, postgres_database, temp_dir};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TASKS: usize = 4;

/// Checks what every finished task must satisfy whatever happened on the way: each step
/// succeeded once (final output = the last attempt's, which passed; earlier attempts
/// failed or were interrupted; one `step.succeeded` event), and a trace with dense, unique seq numbers that
/// starts with `submitted` and ends with `succeeded`.
fn assert_recorded_once(task: &Value) {
    assert_eq!(task["status"], "succeeded", "{}", summary(task));
    let steps = task["steps"].as_array().expect("steps");
    for s in steps {
        let id = s["id"].as_str().expect("step id");
        assert_eq!(s["status"], "succeeded", "step {id}: {s:#}");
        let tries = attempts(task, id);
        let (last, earlier) = tries.split_last().unwrap_or_else(|| panic!("{s:#}"));
        assert_eq!(last["verdict"]["passed"], true, "step {id}: {s:#}");
        assert!(s["output"].is_object(), "step {id}: {s:#}");
        assert_eq!(s["output"], last["output"], "step {id}: one final output");
        // An earlier attempt failed, or was in flight when its node was killed.
        for a in earlier {
            let interrupted = a["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("interrupted"));
            assert!(
                a["verdict"]["passed"] == false || (interrupted && a["verdict"].is_null()),
                "step {id}: {s:#}"
            );
        }
        for (n, a) in tries.iter().enumerate() {
            assert_eq!(a["attempt"], n as u64 + 1, "step {id}: {s:#}");
        }
        step_event(task, "step.succeeded", id);
    }
    let seqs: Vec<u64> = events(task)
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "dense seq numbers: {:#}",
        task["events"]
    );
    let kinds = event_kinds(task);
    assert_eq!(kinds.first().map(String::as_str), Some("submitted"));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("succeeded"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "succeeded").count(),
        1,
        "{kinds:?}"
    );
}

/// A node called `name` started with `args` in `dir` (a directory another node may have
/// used: same SQLite file and workspace).
async fn node_named(args: &[&str], name: &str, dir: tempfile::TempDir) -> TestNode {
    Launch::new()
        .args(args)
        .args(&["--node", name])
        .in_dir(dir)
        .start()
        .await
}

/// Tasks (shell side effect → 5 s sleep → echo of the first output) are submitted to node
/// `first`; once every first step is recorded the process is SIGKILLed, and a node is
/// started on the same directory and database: on SQLite one called `second` (the file is
/// its alone: it adopts every unfinished task), on PostgreSQL `first` again (a node
/// without NATS takes no other node's tasks; a restarted one resumes its own).
async fn sigkill_and_resume(database: Option<&str>) {
    let dir = temp_dir();
    let config = write_config(dir.path(), "tasks.toml", SHELL_ON);
    let mut args = vec!["--config", config.to_str().expect("utf-8 path")];
    if let Some(url) = database {
        args.extend(["--database", url]);
    }
    let mut first = node_named(&args, "first", dir).await;
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let script = format!("echo ran >> ran-{i}.log; echo before-{i}");
        let task = json!({"max_attempts": 5, "steps": [
            {"id": "before", "tool": "shell", "args": {"argv": ["sh", "-c", script]}},
            {"id": "nap", "tool": "sleep", "args": {"ms": 5000}, "depends_on": ["before"]},
            {"id": "after", "tool": "echo", "args": {"text": "after {{input}}"},
             "input_from": "before", "depends_on": ["nap"]},
        ]});
        ids.push(submit_ok(&first, &task).await);
    }
    let mut before = Vec::new();
    for id in &ids {
        let task = wait_task(&first, id, "step `before` recorded", |t| {
            t["steps"][0]["status"] == "succeeded"
        })
        .await;
        before.push(step(&task, "before").clone());
    }

    first.signal(Signal::SIGKILL);
    let status = first.wait_exit().await;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    let work = workspace(&first);
    let resumer = if database.is_some() {
        "first"
    } else {
        "second"
    };
    let second = node_named(&args, resumer, first.into_dir()).await;

    for (i, id) in ids.iter().enumerate() {
        let task = wait_final(&second, id).await;
        assert_recorded_once(&task);
        assert_eq!(task["owner"], resumer, "{task:#}");
        assert_eq!(task["lease_epoch"], 2, "{task:#}");

        // The step recorded before the kill was not run again: the same single attempt on
        // `first`, the same output, and its side effect happened once.
        let b = step(&task, "before");
        assert_eq!(b, &before[i], "step `before` unchanged by the takeover");
        assert_eq!(attempts(&task, "before").len(), 1, "{b:#}");
        assert_eq!(b["attempts"][0]["node"], "first", "{b:#}");
        assert_eq!(b["output"]["text"], format!("before-{i}\n"));
        let ran = std::fs::read_to_string(work.join(format!("ran-{i}.log")))
            .unwrap_or_else(|e| panic!("ran-{i}.log: {e}"));
        assert_eq!(ran, "ran\n", "task {i}: the shell step ran exactly once");

        // What was in flight or not yet started ran on `second`.
        for s in ["nap", "after"] {
            let last = attempts(&task, s).last().cloned().expect("an attempt");
            assert_eq!(last["node"], resumer, "step {s}: {task:#}");
        }
        assert_eq!(
            step(&task, "after")["output"]["text"],
            format!("after before-{i}\n")
        );

        // The trace: started by `first` at epoch 1, started again by `second` at epoch 2.
        let started: Vec<&Value> = events(&task)
            .iter()
            .filter(|e| e["kind"] == "started")
            .map(|e| &e["data"])
            .collect();
        assert_eq!(
            started,
            [
                &json!({"node": "first", "epoch": 1}),
                &json!({"node": resumer, "epoch": 2})
            ],
            "{:#}",
            task["events"]
        );
        let second_start = events(&task)
            .iter()
            .position(|e| e["kind"] == "started" && e["data"]["epoch"] == 2)
            .expect("second start");
        assert!(
            step_event(&task, "step.succeeded", "before") < second_start,
            "`before` was recorded once, before the takeover: {:#}",
            task["events"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_resumes_its_tasks_without_rerunning_recorded_steps_on_sqlite() {
    sigkill_and_resume(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_resumes_its_tasks_without_rerunning_recorded_steps_on_postgres() {
    let db = postgres_database().await;
    sigkill_and_resume(Some(&db.url)).await;
}

/// The default domains, with an execution domain that tolerates many restarts (the test
/// kills executors faster than the default intensity of 3 in 5 s allows; what is tested
/// here is the tasks, not the escalation).
const TOLERANT_EXECUTION: &str = r#"
[[domains]]
name = "orchestration"
agents = [
  { role = "coordinator", instances = 2 },
  { role = "planner", instances = 1 },
  { role = "router", instances = 1 },
  { role = "critic", instances = 1 },
]

[[domains]]
name = "execution"
max_restarts = 10000
within_secs = 5.0
agents = [
  { role = "executor", instances = 4 },
  { role = "worker", instances = 2 },
]

[[domains]]
name = "knowledge"
agents = [{ role = "memory", instances = 1 }]

[[domains]]
name = "operations"
agents = [{ role = "monitor", instances = 1 }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_killed_while_tasks_run_lose_no_task_and_record_each_step_once() {
    let dir = temp_dir();
    let config = write_config(dir.path(), "domains.toml", TOLERANT_EXECUTION);
    let node = Launch::new()
        .args(&["--config", config.to_str().expect("utf-8 path")])
        .in_dir(dir)
        .start()
        .await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let task = json!({"max_attempts": 5, "steps": [
            {"id": "s1", "tool": "sleep", "args": {"ms": 300}},
            {"id": "s2", "tool": "sleep", "args": {"ms": 300}, "depends_on": ["s1"]},
            {"id": "s3", "tool": "sleep", "args": {"ms": 300}, "depends_on": ["s2"]},
            {"id": "s4", "tool": "sleep", "args": {"ms": 300}, "depends_on": ["s3"]},
            {"id": "done", "tool": "echo", "args": {"text": format!("task {i}")},
             "depends_on": ["s4"]},
        ]});
        ids.push(submit_ok(&node, &task).await);
    }

    // Kill an executor (a busy one when there is one) every ~50 ms until every task has
    // finished, keeping at least two executors up.
    let admin = node.admin_url();
    let list = format!("{}/api/v1/tasks?limit=1000", node.http_url());
    let mut kills = 0u64;
    let mut busy_kills = 0u64;
    let started = std::time::Instant::now();
    for round in 0usize.. {
        let running: Vec<Value> = executors(&node)
            .await
            .into_iter()
            .filter(|e| e["status"] == "running" && e["id"].is_string())
            .collect();
        if running.len() >= 3 {
            let victim = running
                .iter()
                .find(|e| e["current_work"].is_string())
                .unwrap_or(&running[round % running.len()]);
            let id = victim["id"].as_str().expect("id");
            let (status, body) = node.post(&format!("{admin}/admin/actors/{id}/kill")).await;
            // The victim may have been replaced between the look and the kill.
            if status == StatusCode::ACCEPTED {
                assert_eq!(body["killed"], true, "{body}");
                kills += 1;
                if victim["current_work"].is_string() {
                    busy_kills += 1;
                }
            }
        }
        let (status, page) = node.get_json(&list).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let open = page["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter(|t| {
                !matches!(
                    t["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled" | "timed_out")
                )
            })
            .count();
        if open == 0 {
            break;
        }
        assert!(
            started.elapsed() < TASK_DEADLINE,
            "{open} tasks still not finished after {TASK_DEADLINE:?} ({kills} kills)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!("{kills} executor kills, {busy_kills} of busy executors");
    assert!(
        busy_kills >= 3,
        "the test must kill executors while they work: {kills} kills, {busy_kills} busy"
    );

    // None lost: exactly the 30 tasks, every one succeeded with each step recorded once.
    let (_, page) = node.get_json(&list).await;
    let listed: HashSet<&str> = page["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["task_id"].as_str().expect("task_id"))
        .collect();
    let submitted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(listed, submitted);
    let mut retried = 0;
    for (i, id) in ids.iter().enumerate() {
        let task = get_task(&node, id).await;
        assert_recorded_once(&task);
        for s in task["steps"].as_array().expect("steps") {
            retried += s["attempts"].as_array().map_or(0, |a| a.len() - 1);
        }
        assert_eq!(task["lease_epoch"], 1, "the run itself was not restarted");
        assert_eq!(step(&task, "done")["output"]["text"], format!("task {i}"));
    }

    eprintln!("{retried} attempts retried");

    // Every kill was a real kill, and every executor killed came back: all four run again
    // and their restarts add up to the kills.
    eventually_within(
        TASK_DEADLINE,
        "every executor back after its kills",
        || async {
            let executors = executors(&node).await;
            let restarts: u64 = executors
                .iter()
                .map(|e| e["restarts"].as_u64().unwrap_or(0))
                .sum();
            let running = executors
                .iter()
                .filter(|e| e["status"] == "running")
                .count();
            if restarts == kills && running == 4 {
                Ok(())
            } else {
                let shown: Vec<String> = executors
                    .iter()
                    .map(|e| format!("{} {} restarts={}", e["name"], e["status"], e["restarts"]))
                    .collect();
                Err(format!("{restarts} restarts for {kills} kills: {shown:?}"))
            }
        },
    )
    .await;
}

/// A node with one run slot and the shell tool on.
async fn one_slot_node() -> TestNode {
    let dir = temp_dir();
    let toml = format!("{SHELL_ON}\n[scheduler]\nmax_running = 1\n");
    let config = write_config(dir.path(), "one-slot.toml", &toml);
    Launch::new()
        .args(&["--config", config.to_str().expect("utf-8 path")])
        .in_dir(dir)
        .start()
        .await
}

/// A task that appends `name` to `order.log` in the workspace.
fn marker(name: &str, priority: &str) -> Value {
    json!({"priority": priority, "steps": [
        {"id": "mark", "tool": "file",
         "args": {"op": "append", "path": "order.log", "content": format!("{name}\n")}}
    ]})
}

/// A task that holds the node's only run slot until the file `open` appears in the
/// workspace, then appends `name` to `order.log`.
fn gated(name: &str) -> Value {
    json!({"steps": [
        {"id": "gate", "tool": "shell", "timeout_secs": 600,
         "args": {"argv": ["sh", "-c", "while [ ! -e open ]; do sleep 0.05; done"]}},
        {"id": "mark", "tool": "file", "depends_on": ["gate"],
         "args": {"op": "append", "path": "order.log", "content": format!("{name}\n")}}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_start_by_priority() {
    let node = one_slot_node().await;
    let long = submit_ok(&node, &gated("long")).await;
    wait_task(&node, &long, "the gated task running", |t| {
        t["status"] == "running"
    })
    .await;
    let mut queued = Vec::new();
    for (name, priority) in [
        ("low-1", "low"),
        ("low-2", "low"),
        ("background", "background"),
        ("low-3", "low"),
        ("high", "high"),
        ("urgent", "urgent"),
    ] {
        queued.push((name, submit_ok(&node, &marker(name, priority)).await));
    }
    for (name, id) in &queued {
        let task = get_task(&node, id).await;
        assert_eq!(
            task["status"], "queued",
            "{name} waits for the slot: {task:#}"
        );
    }
    std::fs::write(workspace(&node).join("open"), b"").expect("opening the gate");
    for id in std::iter::once(&long).chain(queued.iter().map(|(_, id)| id)) {
        let task = wait_final(&node, id).await;
        assert_eq!(task["status"], "succeeded", "{}", summary(&task));
    }
    let order = std::fs::read_to_string(workspace(&node).join("order.log")).expect("order.log");
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(
        order,
        [
            "long",
            "urgent",
            "high",
            "low-1",
            "low-2",
            "low-3",
            "background"
        ],
        "with one slot, queued tasks start by priority, FIFO within one"
    );
    // The recorded times agree with the order (finished_at is RFC 3339 in UTC, so it
    // sorts as text).
    let finished = |id: &str| {
        let id = id.to_string();
        let node = &node;
        async move {
            get_task(node, &id).await["finished_at"]
                .as_str()
                .expect("finished_at")
                .to_string()
        }
    };
    let urgent = finished(&queued[5].1).await;
    for (name, id) in &queued[..4] {
        let other = finished(id).await;
        assert!(
            urgent <= other,
            "urgent finished at {urgent}, {name} at {other}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_cancelled_while_queued_never_starts() {
    let node = one_slot_node().await;
    let long = submit_ok(&node, &gated("long")).await;
    wait_task(&node, &long, "the gated task running", |t| {
        t["status"] == "running"
    })
    .await;
    let waiting = submit_ok(&node, &marker("cancelled", "urgent")).await;
    let after = submit_ok(&node, &marker("after", "low")).await;

    let (status, body) = node
        .post(&format!(
            "{}/api/v1/tasks/{waiting}/cancel",
            node.http_url()
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    let task = get_task(&node, &waiting).await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
    assert!(task["finished_at"].is_string(), "{task:#}");

    std::fs::write(workspace(&node).join("open"), b"").expect("opening the gate");
    assert_eq!(wait_final(&node, &after).await["status"], "succeeded");
    assert_eq!(wait_final(&node, &long).await["status"], "succeeded");
    let order = std::fs::read_to_string(workspace(&node).join("order.log")).expect("order.log");
    assert_eq!(order, "long\nafter\n", "the cancelled task never ran");

    let task = get_task(&node, &waiting).await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
    assert_eq!(
        step(&task, "mark")["status"],
        "cancelled",
        "a step of a cancelled task that never ran reads cancelled, as when a running \
         task is cancelled: {task:#}"
    );
    assert!(attempts(&task, "mark").is_empty(), "{task:#}");
    let kinds = event_kinds(&task);
    assert!(
        !kinds.iter().any(|k| k == "started"),
        "never started: {kinds:?}"
    );
    assert_eq!(
        kinds,
        ["submitted", "cancelled"],
        "the trace records the cancellation like any other end: {task:#}"
    );
}

/// Whether process `pid` still runs (a zombie waiting for a reaper does not).
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name in parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The pids the shell step appended to `file`, once one more than `known` is there and
/// has become `sleep`.
async fn shell_pids(file: &std::path::Path, known: usize) -> Vec<u32> {
    eventually_within(TASK_DEADLINE, "the shell step's pid", || async {
        let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
        let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let Some(&last) = pids.get(known) else {
            return Err(format!("pids so far: {pids:?}"));
        };
        let cmdline = std::fs::read(format!("/proc/{last}/cmdline")).unwrap_or_default();
        if cmdline.starts_with(b"sleep\0") {
            Ok(pids)
        } else {
            Err(format!(
                "{last}: cmdline {:?}",
                String::from_utf8_lossy(&cmdline)
            ))
        }
    })
    .await
}

/// A node SIGKILLed while a shell step runs leaves no child behind (the kernel kills it),
/// the step shows as running while it runs, and the node that takes the task over runs
/// the step in flight again as a second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_no_shell_child_and_the_step_runs_again() {
    let dir = temp_dir();
    let config = write_config(dir.path(), "tasks.toml", SHELL_ON);
    let args = ["--config", config.to_str().expect("utf-8 path")];
    let mut first = node_named(&args, "first", dir).await;
    let id = submit_ok(
        &first,
        &json!({"steps": [{"id": "proc", "tool": "shell", "timeout_secs": 3600,
            "args": {"argv": ["sh", "-c", "echo $$ >> proc.pids; exec sleep 1000"]}}]}),
    )
    .await;
    let pid_file = workspace(&first).join("proc.pids");
    let pid = shell_pids(&pid_file, 0).await[0];
    let task = wait_task(&first, &id, "step `proc` shown running", |t| {
        t["steps"][0]["status"] == "running"
    })
    .await;
    assert_eq!(task["status"], "running", "{task:#}");
    assert_eq!(attempts(&task, "proc").len(), 1, "{task:#}");

    first.signal(Signal::SIGKILL);
    first.wait_exit().await;
    eventually_within(
        TASK_DEADLINE,
        "the killed node's shell child to be gone",
        || async {
            if running(pid) {
                Err(format!("{pid} still runs"))
            } else {
                Ok(())
            }
        },
    )
    .await;

    let second = node_named(&args, "second", first.into_dir()).await;
    let pids = shell_pids(&pid_file, 1).await;
    assert_ne!(pids[1], pid, "a new child for the retried step");
    let task = wait_task(&second, &id, "the retried attempt shown", |t| {
        t["steps"][0]["attempts"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let tries = attempts(&task, "proc");
    let interrupted = tries[0]["error"].as_str().unwrap_or_default();
    assert!(interrupted.contains("interrupted"), "{task:#}");
    assert!(tries[1]["error"].is_null(), "{task:#}");
    assert_eq!(task["owner"], "second", "{task:#}");

    let cancel = format!("{}/api/v1/tasks/{id}/cancel", second.http_url());
    let (status, body) = second.post(&cancel).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    eventually_within(
        TASK_DEADLINE,
        "the cancelled step's child to be gone",
        || async {
            if running(pids[1]) {
                Err(format!("{} still runs", pids[1]))
            } else {
                Ok(())
            }
        },
    )
    .await;
}
