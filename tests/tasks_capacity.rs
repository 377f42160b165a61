//! Scheduler capacity is never leaked (issue 9, "work is bounded and accounted"): runs
//! stopped from outside — one run stopped by an operator, or the whole `runs` supervisor
//! killed and restarted by the root — give their slots back, and the tasks they were
//! running are picked up again by the scheduler's reconcile, so every task still ends.

mod common;

use common::tasks::{submit_ok, wait_final, wait_task, write_config};
use common::{Launch, TestNode, actor_at, id_of, temp_dir};
use serde_json::{Value, json};

/// Two run slots: two long tasks fill them.
const TWO_SLOTS: &str = "[scheduler]\nmax_running = 2\n";

async fn node_with_two_slots() -> TestNode {
    let dir = temp_dir();
    let config = write_config(dir.path(), "slots.toml", TWO_SLOTS);
    Launch::new()
        .args(&["--config", config.to_str().expect("utf-8 path")])
        .in_dir(dir)
        .start()
        .await
}

fn long_task() -> Value {
    json!({"steps": [{"id": "nap", "tool": "sleep", "args": {"ms": 3000}}]})
}

fn quick_task() -> Value {
    json!({"steps": [{"id": "hi", "tool": "echo", "args": {"text": "hi"}}]})
}

/// The `runs` supervisor's actor, and the runs under it.
async fn runs(node: &TestNode) -> Value {
    let tree = node.tree().await;
    actor_at(&tree["root"], &["runs"])
        .unwrap_or_else(|| panic!("no runs supervisor in {tree:#}"))
        .clone()
}

async fn fill_both_slots(node: &TestNode) -> Vec<String> {
    let mut long = Vec::new();
    for _ in 0..2 {
        let id = submit_ok(node, &long_task()).await;
        wait_task(node, &id, "running", |t| t["status"] == "running").await;
        long.push(id);
    }
    long
}

/// Both slots busy, then the whole `runs` supervisor killed: the root restarts it, its
/// runs die without a word, and yet queued tasks start and the killed ones finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_runs_supervisor_leaks_no_slot_and_loses_no_task() {
    let node = node_with_two_slots().await;
    let long = fill_both_slots(&node).await;
    let before = runs(&node).await;
    assert_eq!(
        before["children"].as_array().map(Vec::len),
        Some(2),
        "{before:#}"
    );
    let admin = node.admin_url();
    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{}/kill", id_of(&before)))
        .await;
    assert!(status.is_success(), "{status} {body}");

    let quick: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(submit_ok(&node, &quick_task()).await);
        }
        ids
    };
    for id in quick.iter().chain(&long) {
        let task = wait_final(&node, id).await;
        assert_eq!(task["status"], "succeeded", "{task:#}\n{}", node.log());
    }
    let after = runs(&node).await;
    assert_ne!(
        id_of(&after),
        id_of(&before),
        "the runs supervisor was restarted"
    );
}

/// Both slots busy, then one run stopped by an operator: its slot is given back (a
/// queued task starts) and its task is run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_an_operator_gives_its_slot_back_and_its_task_ends() {
    let node = node_with_two_slots().await;
    let long = fill_both_slots(&node).await;
    let supervisor = runs(&node).await;
    let victim = supervisor["children"]
        .as_array()
        .and_then(|c| c.first())
        .cloned()
        .unwrap_or_else(|| panic!("no run in {supervisor:#}"));
    // Runs are not in the actor directory: an operator names one `{supervisor}:{task}`.
    let victim = victim["id"].as_str().expect("the run's id").to_string();
    let admin = node.admin_url();
    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{victim}/stop"))
        .await;
    assert!(status.is_success(), "{status} {body}");

    let quick = submit_ok(&node, &quick_task()).await;
    let task = wait_final(&node, &quick).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    for id in &long {
        let task = wait_final(&node, id).await;
        assert_eq!(task["status"], "succeeded", "{task:#}\n{}", node.log());
    }
}
