//! Every duration and size a task carries is bounded when it is submitted (DESIGN §8: no
//! panics from input): out of bounds is a 422 naming the field, and a node that was sent
//! all of them is healthy and runs a task at the bounds.

mod common;

use common::TestNode;
use common::tasks::{fields, refused, submit_ok, wait_final};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn durations_and_sizes_out_of_bounds_are_refused_and_nothing_panics() {
    let node = TestNode::start(&[], &[]).await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let step = |tool: &str, args: Value| json!({"id": "a", "tool": tool, "args": args});
    let say = step("echo", json!({"text": "x"}));
    let with = |mut step: Value, key: &str, value: Value| {
        step[key] = value;
        step
    };
    let memory_put = |ttl: Value| {
        step(
            "memory",
            json!({"op": "put", "key": "k", "value": "v", "ttl_secs": ttl}),
        )
    };
    // (case, task, the field named, what the message names)
    let cases = [
        (
            "task timeout 1e308",
            json!({"timeout_secs": 1e308, "steps": [say]}),
            "timeout_secs",
            "at most",
        ),
        (
            "task timeout 0",
            json!({"timeout_secs": 0, "steps": [say]}),
            "timeout_secs",
            "above 0",
        ),
        (
            "task timeout past 30 days",
            json!({"timeout_secs": 2_592_001, "steps": [say]}),
            "timeout_secs",
            "2592000",
        ),
        (
            "step timeout 1e308",
            json!({"steps": [with(say.clone(), "timeout_secs", json!(1e308))]}),
            "steps[0].timeout_secs",
            "at most",
        ),
        (
            "step timeout -1",
            json!({"steps": [with(say.clone(), "timeout_secs", json!(-1))]}),
            "steps[0].timeout_secs",
            "above 0",
        ),
        (
            "step timeout 0",
            json!({"steps": [with(say.clone(), "timeout_secs", json!(0))]}),
            "steps[0].timeout_secs",
            "above 0",
        ),
        (
            "memory ttl 1e308",
            json!({"steps": [memory_put(json!(1e308))]}),
            "steps[0].tool",
            "ttl_secs",
        ),
        (
            "memory ttl -1",
            json!({"steps": [memory_put(json!(-1))]}),
            "steps[0].tool",
            "ttl_secs",
        ),
        (
            "sleep 1e308 ms",
            json!({"steps": [step("sleep", json!({"ms": 1e308}))]}),
            "steps[0].tool",
            "sleep",
        ),
        (
            "sleep past an hour",
            json!({"steps": [step("sleep", json!({"ms": 3_600_001}))]}),
            "steps[0].tool",
            "at most",
        ),
        (
            "sleep -1 ms",
            json!({"steps": [step("sleep", json!({"ms": -1}))]}),
            "steps[0].tool",
            "sleep",
        ),
    ];
    for (case, task, field, names) in cases {
        let a = refused(
            &node,
            case,
            &task.to_string(),
            Some("application/json"),
            unprocessable,
            &[field, names],
        )
        .await;
        assert_eq!(fields(&a), [field], "{case}: {a}");
    }
    refused(
        &node,
        "max_attempts 1e308",
        &json!({"max_attempts": 1e308, "steps": [say]}).to_string(),
        Some("application/json"),
        unprocessable,
        &["max_attempts"],
    )
    .await;
    // Past f64: JSON that serde will not read as a number at all (no infinity gets in).
    let a = refused(
        &node,
        "timeout 1e400",
        r#"{"timeout_secs": 1e400, "steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}"#,
        Some("application/json"),
        StatusCode::BAD_REQUEST,
        &["timeout_secs", "out of range"],
    )
    .await;
    assert_eq!(a["error"]["code"], "malformed_json", "{a}");

    // The node is healthy, stored none of them, and takes a task at the bounds.
    let (status, ready) = node
        .get_json(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    let (_, list) = node
        .get_json(&format!("{}/api/v1/tasks", node.http_url()))
        .await;
    assert_eq!(
        list["tasks"],
        json!([]),
        "refused submissions store nothing"
    );
    let at_bounds = json!({"timeout_secs": 2_592_000, "steps": [
        with(step("sleep", json!({"ms": 1})), "timeout_secs", json!(2_592_000)),
        {"id": "m", "tool": "memory", "args": {"op": "put", "key": "k", "value": "v", "ttl_secs": 315_360_000}},
    ]});
    let id = submit_ok(&node, &at_bounds).await;
    let done = wait_final(&node, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(!node.log().contains("panicked"), "{}", node.log());
}
