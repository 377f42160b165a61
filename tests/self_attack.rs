//! The self-attack of issue 10, end to end: an unauthenticated task whose `http` step
//! calls the node's own admin listener (stop every executor, drain the node) must not
//! reach it, whatever an operator opened: nothing on default settings, loopback refused by
//! resolved IP when `allow_hosts` lists it, and the node's own listeners refused even
//! when `allow_cidrs` opens loopback. A local upstream proves each configuration's http
//! tool does reach what it allows (so the refusals are the guard's, not a broken tool).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::tasks::{executors, submit, submit_ok, wait_final, write_config};
use common::{Launch, TestNode, temp_dir};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A local server that counts the requests it gets.
async fn upstream() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the upstream server");
    let port = listener.local_addr().expect("upstream address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

fn post(url: &str) -> Value {
    json!({"max_attempts": 1,
        "steps": [{"id": "attack", "tool": "http", "args": {"method": "POST", "url": url}}]})
}

/// The admin URLs an attacker would call: stop the first executor, drain the node.
async fn targets(node: &TestNode) -> Vec<String> {
    let executor = executors(node).await[0]["id"]
        .as_str()
        .expect("an executor id")
        .to_string();
    let (_, ready) = node
        .get_json(&format!("{}/health/ready", node.http_url()))
        .await;
    let name = ready["node"].as_str().expect("the node's name").to_string();
    let admin = node.admin_url();
    vec![
        format!("{admin}/admin/actors/{executor}/stop"),
        format!("{admin}/admin/nodes/{name}/drain"),
    ]
}

/// Every attack is refused (at submission or as a failed step naming why) and the node
/// is whole afterwards: every executor running, ready, not draining.
async fn attacks_fail(node: &TestNode, refusal: &str) {
    let before = executors(node).await.len();
    assert!(before > 0);
    for url in targets(node).await {
        let (status, body) = submit(node, &post(&url)).await;
        let why = if status == StatusCode::ACCEPTED {
            let id = body["task_id"].as_str().expect("a task id");
            let task = wait_final(node, id).await;
            assert_eq!(task["status"], "failed", "{url}: {task:#}");
            task["steps"][0]["attempts"][0]["error"].to_string()
        } else {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
            body.to_string()
        };
        assert!(
            why.contains(refusal),
            "{url}: expected {refusal:?} in {why}"
        );
    }
    let running = executors(node)
        .await
        .iter()
        .filter(|e| e["status"] == "running")
        .count();
    assert_eq!(running, before, "{:#}", node.tree().await);
    let (status, ready) = node
        .get_json(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{ready}");
}

async fn node_with(http: &str) -> TestNode {
    let dir = temp_dir();
    let config = write_config(dir.path(), "http.toml", http);
    Launch::new()
        .in_dir(dir)
        .args(&["--config", &config.to_string_lossy()])
        .start()
        .await
}

#[tokio::test]
async fn default_settings_allow_no_http_at_all() {
    let node = TestNode::start(&[], &[]).await;
    attacks_fail(&node, "allow_hosts").await;
}

#[tokio::test]
async fn loopback_listed_as_a_host_is_still_refused_by_its_address() {
    let (port, hits) = upstream().await;
    let node = node_with("[tools.http]\nallow_hosts = [\"127.0.0.1\"]\n").await;
    attacks_fail(&node, "127.0.0.1").await;
    // The same setting to the upstream is refused too: loopback needs allow_cidrs.
    let id = submit_ok(&node, &post(&format!("http://127.0.0.1:{port}/x"))).await;
    assert_eq!(wait_final(&node, &id).await["status"], "failed");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_nodes_own_listeners_stay_refused_when_loopback_is_opened() {
    let (port, hits) = upstream().await;
    let node = node_with(
        "[tools.http]\nallow_hosts = [\"127.0.0.1\"]\nallow_cidrs = [\"127.0.0.1/32\"]\n",
    )
    .await;
    attacks_fail(&node, "listener").await;
    // Loopback is open: the upstream is reached, so the refusals above are the guard's.
    let id = submit_ok(&node, &post(&format!("http://127.0.0.1:{port}/x"))).await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
