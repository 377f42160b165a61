//! The task API's contract (DESIGN §4, §7): idempotent submission, every kind of bad input
//! refused with the right status and a body of the one error shape that names the problem
//! (and nothing stored), and listing with filters and paging.

mod common;

use std::collections::HashSet;

use common::tasks::{fields, post_raw, refused, submit, submit_ok, wait_final};
use common::{TestNode, assert_error_shape};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn echo(text: &str) -> Value {
    json!({"steps": [{"id": "say", "tool": "echo", "args": {"text": text}}]})
}

#[tokio::test]
async fn same_idempotency_key_gives_the_same_task() {
    let node = TestNode::start(&[], &[]).await;
    let mut task = echo("once");
    task["idempotency_key"] = json!("order-42");

    let (status, first) = submit(&node, &task).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["created"], true, "{first}");
    let id = first["task_id"].as_str().expect("task_id").to_string();

    let (status, second) = submit(&node, &task).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a repeated key is not a new task: {second}"
    );
    assert_eq!(second["created"], false, "{second}");
    assert_eq!(second["task_id"], id.as_str(), "{second}");

    // Still the same task once it has finished; the answer shows its status.
    let done = wait_final(&node, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let (status, third) = submit(&node, &task).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    assert_eq!(third["task_id"], id.as_str(), "{third}");
    assert_eq!(third["status"], "succeeded", "{third}");

    // Another key (or none) is another task.
    task["idempotency_key"] = json!("order-43");
    let other = submit_ok(&node, &task).await;
    assert_ne!(other, id);
    let unkeyed = submit_ok(&node, &echo("once")).await;
    assert_ne!(unkeyed, id);

    let (status, list) = node
        .get_json(&format!("{}/api/v1/tasks", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        list["tasks"].as_array().map(Vec::len),
        Some(3),
        "three tasks stored, not five: {list:#}"
    );
}

#[tokio::test]
async fn bad_submissions_are_refused_naming_the_problem_and_nothing_is_stored() {
    let node = TestNode::start(&[], &[]).await;
    let json_ct = Some("application/json");
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;

    let a = refused(
        &node,
        "malformed JSON",
        r#"{"steps": [{"id": "a""#,
        json_ct,
        StatusCode::BAD_REQUEST,
        &[],
    )
    .await;
    assert_eq!(a["error"]["code"], "malformed_json", "{a}");

    refused(
        &node,
        "unknown top-level field",
        r#"{"steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}], "colour": 1}"#,
        json_ct,
        unprocessable,
        &["colour"],
    )
    .await;
    refused(
        &node,
        "unknown step field",
        r#"{"steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}, "retries": 2}]}"#,
        json_ct,
        unprocessable,
        &["retries"],
    )
    .await;
    refused(
        &node,
        "wrong type",
        r#"{"steps": "all of them"}"#,
        json_ct,
        unprocessable,
        &["steps"],
    )
    .await;
    refused(
        &node,
        "not an object",
        "[1, 2]",
        json_ct,
        unprocessable,
        &[],
    )
    .await;

    for (case, body) in [
        ("neither steps nor description", "{}"),
        ("blank description", r#"{"description": "  "}"#),
    ] {
        let a = refused(&node, case, body, json_ct, unprocessable, &["steps"]).await;
        assert_eq!(fields(&a), ["steps"], "{case}: {a}");
    }
    let a = refused(
        &node,
        "empty plan",
        r#"{"steps": []}"#,
        json_ct,
        unprocessable,
        &["steps"],
    )
    .await;
    assert_eq!(fields(&a), ["steps"], "{a}");

    let cyclic = json!({"steps": [
        {"id": "a", "tool": "echo", "args": {"text": "x"}, "depends_on": ["c"]},
        {"id": "b", "tool": "echo", "args": {"text": "x"}, "depends_on": ["a"]},
        {"id": "c", "tool": "echo", "args": {"text": "x"}, "depends_on": ["b"]},
        {"id": "lone", "tool": "echo", "args": {"text": "x"}},
    ]});
    let a = refused(
        &node,
        "cycle",
        &cyclic.to_string(),
        json_ct,
        unprocessable,
        &["cycle", "a → b → c"],
    )
    .await;
    assert!(
        !a["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("lone"),
        "the step outside the cycle is not named: {a}"
    );

    let dangling = json!({"steps": [
        {"id": "a", "tool": "echo", "args": {"text": "x"}},
        {"id": "b", "tool": "echo", "args": {"text": "x"}, "depends_on": ["a", "ghost"]},
    ]});
    let a = refused(
        &node,
        "dangling depends_on",
        &dangling.to_string(),
        json_ct,
        unprocessable,
        &["steps[1].depends_on[1]", "ghost"],
    )
    .await;
    assert_eq!(fields(&a), ["steps[1].depends_on[1]"], "{a}");

    let a = refused(
        &node,
        "dangling input_from",
        r#"{"steps": [{"id": "a", "tool": "echo", "input_from": "nowhere"}]}"#,
        json_ct,
        unprocessable,
        &["steps[0].input_from", "nowhere"],
    )
    .await;
    assert_eq!(fields(&a), ["steps[0].input_from"], "{a}");

    let a = refused(
        &node,
        "unknown tool",
        r#"{"steps": [{"id": "a", "tool": "teleport"}]}"#,
        json_ct,
        unprocessable,
        &["steps[0].tool", "teleport"],
    )
    .await;
    assert_eq!(fields(&a), ["steps[0].tool"], "{a}");

    refused(
        &node,
        "shell is off by default",
        r#"{"steps": [{"id": "a", "tool": "shell", "args": {"argv": ["true"]}}]}"#,
        json_ct,
        unprocessable,
        &["steps[0].tool", "tools.shell.enabled"],
    )
    .await;
    refused(
        &node,
        "bad tool arguments",
        r#"{"steps": [{"id": "a", "tool": "sleep", "args": {"seconds": 1}}]}"#,
        json_ct,
        unprocessable,
        &["steps[0].tool", "seconds"],
    )
    .await;

    let duplicate = json!({"steps": [
        {"id": "a", "tool": "echo", "args": {"text": "x"}},
        {"id": "a", "tool": "echo", "args": {"text": "y"}},
    ]});
    let a = refused(
        &node,
        "duplicate step ids",
        &duplicate.to_string(),
        json_ct,
        unprocessable,
        &["steps[1].id", "duplicate"],
    )
    .await;
    assert_eq!(fields(&a), ["steps[1].id"], "{a}");

    refused(
        &node,
        "bad priority",
        r#"{"priority": "asap", "steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}"#,
        json_ct,
        unprocessable,
        &["priority", "asap", "urgent"],
    )
    .await;
    refused(
        &node,
        "zero attempts",
        r#"{"max_attempts": 0, "steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}"#,
        json_ct,
        unprocessable,
        &["max_attempts"],
    )
    .await;
    refused(
        &node,
        "negative timeout",
        r#"{"timeout_secs": -1, "steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}"#,
        json_ct,
        unprocessable,
        &["timeout_secs"],
    )
    .await;

    let valid = echo("x").to_string();
    for (case, ct) in [
        ("no content type", None),
        ("text/plain", Some("text/plain")),
    ] {
        let a = refused(
            &node,
            case,
            &valid,
            ct,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &["application/json"],
        )
        .await;
        assert_eq!(a["error"]["code"], "unsupported_media_type", "{a}");
    }

    // Other refusals of the task routes keep the shape too.
    let url = format!(
        "{}/api/v1/tasks/01900000-0000-7000-8000-000000000000",
        node.http_url()
    );
    let (status, body) = node.get_json(&url).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error_shape(&body, "GET of an unknown task");
    let (status, body) = node.get_json(&format!("{url}/cancel")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_error_shape(&body, "GET on the cancel route");

    // Not one of them left a task behind.
    let (status, list) = node
        .get_json(&format!("{}/api/v1/tasks", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(
        list["tasks"],
        json!([]),
        "refused submissions store nothing"
    );
}

#[tokio::test]
async fn oversize_body_gets_413_in_the_error_shape() {
    let node = TestNode::start(&[], &[("MISTER_SMITH__HTTP__BODY_LIMIT_BYTES", "1000")]).await;
    let mut big = echo("x");
    big["description"] = json!("y".repeat(5000));
    let body = big.to_string();
    assert!(body.len() > 5000);
    let (status, answer) = post_raw(&node, body, Some("application/json")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_error_shape(&answer, "oversize body");

    // The limit is the limit: a small task still goes through.
    let id = submit_ok(&node, &echo("small")).await;
    assert_eq!(wait_final(&node, &id).await["status"], "succeeded");
}

/// Every page of `GET /api/v1/tasks?<query>&limit=<limit>`, following `next_cursor`.
async fn all_pages(node: &TestNode, query: &str, limit: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("{}/api/v1/tasks?limit={limit}", node.http_url());
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = node.get_json(&url).await;
        assert_eq!(status, StatusCode::OK, "GET {url}: {page}");
        let tasks = page["tasks"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {url}: no tasks array: {page}"));
        assert!(
            tasks.len() <= limit,
            "GET {url}: more than the limit: {page}"
        );
        seen.extend(tasks.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(
                    tasks.len(),
                    limit,
                    "a cursor only after a full page: {page}"
                );
                cursor = Some(next.to_string());
            }
            None => {
                assert_eq!(page["next_cursor"], Value::Null, "{page}");
                return seen;
            }
        }
    }
    panic!("paging {query} with limit {limit} did not end in 100 pages");
}

fn ids(tasks: &[Value]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| t["task_id"].as_str().expect("task_id").to_string())
        .collect()
}

#[tokio::test]
async fn listing_filters_by_status_and_priority_and_pages_without_duplicates() {
    let node = TestNode::start(&[], &[]).await;
    let mut submitted = Vec::new(); // (id, priority, should succeed)
    for (priority, ok) in [
        ("low", true),
        ("high", true),
        ("low", true),
        ("high", false),
        ("normal", true),
        ("high", true),
        ("low", true),
    ] {
        let mut task = echo(priority);
        task["priority"] = json!(priority);
        if !ok {
            task["max_attempts"] = json!(1);
            task["steps"][0]["expect"] = json!({"contains": "zzz"});
        }
        submitted.push((submit_ok(&node, &task).await, priority, ok));
    }
    for (id, _, ok) in &submitted {
        let task = wait_final(&node, id).await;
        let want = if *ok { "succeeded" } else { "failed" };
        assert_eq!(task["status"], want, "{task:#}");
    }
    let all_ids: Vec<String> = submitted.iter().map(|(id, _, _)| id.clone()).collect();
    let newest_first: Vec<String> = all_ids.iter().rev().cloned().collect();

    // One page with everything, newest first, with the summary fields.
    let everything = all_pages(&node, "", 1000).await;
    assert_eq!(ids(&everything), newest_first);
    for t in &everything {
        let (_, priority, ok) = submitted
            .iter()
            .find(|(id, _, _)| t["task_id"] == id.as_str())
            .expect("a submitted task");
        assert_eq!(t["priority"], *priority, "{t}");
        assert_eq!(t["status"], if *ok { "succeeded" } else { "failed" }, "{t}");
        assert!(
            t["created_at"].is_string() && t["finished_at"].is_string(),
            "{t}"
        );
    }

    // Paging covers every task once, whatever the page size (7 is not a multiple of 3 or
    // 4; 7 is one full page of 7).
    for limit in [1, 3, 4, 7] {
        let paged = ids(&all_pages(&node, "", limit).await);
        assert_eq!(paged, newest_first, "limit {limit}");
        let unique: HashSet<&String> = paged.iter().collect();
        assert_eq!(
            unique.len(),
            paged.len(),
            "limit {limit}: duplicates in {paged:?}"
        );
    }

    let select = |f: &dyn Fn(&str, bool) -> bool| -> Vec<String> {
        submitted
            .iter()
            .rev()
            .filter(|(_, p, ok)| f(p, *ok))
            .map(|(id, _, _)| id.clone())
            .collect()
    };
    let cases: [(&str, Vec<String>); 6] = [
        ("status=failed", select(&|_, ok| !ok)),
        ("status=succeeded", select(&|_, ok| ok)),
        ("priority=low", select(&|p, _| p == "low")),
        (
            "priority=high&status=succeeded",
            select(&|p, ok| p == "high" && ok),
        ),
        ("priority=urgent", Vec::new()),
        ("status=queued", Vec::new()),
    ];
    for (query, want) in cases {
        assert_eq!(ids(&all_pages(&node, query, 2).await), want, "{query}");
    }

    for query in [
        "status=bogus",
        "priority=asap",
        "limit=0",
        "limit=many",
        "colour=red",
    ] {
        let url = format!("{}/api/v1/tasks?{query}", node.http_url());
        let (status, body) = node.get_json(&url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let (_, message) = assert_error_shape(&body, query);
        let key = query.split('=').next().unwrap_or_default();
        assert!(
            message.contains(key),
            "{query}: the message names {key}: {body}"
        );
    }
}
