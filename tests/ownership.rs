//! Tasks, their traces and their memory belong to the principal that submitted them: with
//! authentication on, a caller lists, reads, follows and cancels only its own tasks (404
//! for another's, as for one that does not exist) unless `tasks:read:all` (reads) or
//! `admin` (cancel) says otherwise; idempotency keys and `session`/`global` memory are
//! per principal. A session is its principal's in the same way (`admin` sees any). On both
//! backends.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::tasks::{TASK_DEADLINE, eventually_within};
use common::{Launch, TestNode, http_client, postgres_database};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "ownership-secret-of-at-least-32-bytes";

/// One API caller: its token and the node it calls.
struct Caller<'a> {
    node: &'a TestNode,
    token: String,
}

impl<'a> Caller<'a> {
    fn new(node: &'a TestNode, sub: &str, scope: &str) -> Self {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            + 600;
        let token = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": sub, "scope": scope, "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("signing a test token");
        Caller { node, token }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.node.http_url());
        let client = http_client();
        let mut request = match method {
            "POST" => client.post(&url),
            _ => client.get(&url),
        }
        .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the node answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn submit(&self, task: &Value) -> (StatusCode, String) {
        let (status, body) = self.call("POST", "/api/v1/tasks", Some(task)).await;
        let id = body["task_id"].as_str().unwrap_or_default().to_string();
        (status, id)
    }

    async fn submit_ok(&self, task: &Value) -> String {
        let (status, id) = self.submit(task).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{task}: {}", self.node.log());
        id
    }

    async fn wait_final(&self, id: &str) -> Value {
        eventually_within(TASK_DEADLINE, &format!("task {id} to end"), || async {
            let (status, task) = self.call("GET", &format!("/api/v1/tasks/{id}"), None).await;
            match task["status"].as_str() {
                Some("succeeded" | "failed" | "cancelled" | "timed_out") => Ok(task),
                _ => Err(format!("{status} {task}")),
            }
        })
        .await
    }

    async fn listed(&self) -> Vec<String> {
        let (status, page) = self.call("GET", "/api/v1/tasks?limit=1000", None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["tasks"]
            .as_array()
            .expect("a list of tasks")
            .iter()
            .filter_map(|t| t["task_id"].as_str().map(str::to_string))
            .collect()
    }
}

async fn jwt_node(args: &[&str]) -> TestNode {
    let dir = common::temp_dir();
    std::fs::write(dir.path().join("script.json"), r#"{"default": "hello"}"#).expect("script");
    common::tasks::write_config(
        dir.path(),
        "llm.toml",
        "[llm]\nprovider = \"scripted\"\nscript = \"script.json\"\n",
    );
    Launch::new()
        .args(&["--config", "llm.toml"])
        .args(args)
        .in_dir(dir)
        .envs(&[
            ("MISTER_SMITH__AUTH__MODE", "jwt"),
            ("MISTER_SMITH__AUTH__SECRET", SECRET),
        ])
        .start()
        .await
}

fn echo(text: &str) -> Value {
    json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": text}}]})
}

/// A slow task, so that a cancel finds it unfinished.
fn slow() -> Value {
    json!({"steps": [{"id": "s", "tool": "sleep", "args": {"ms": 30000}}]})
}

async fn callers_see_only_their_own_tasks(node: &TestNode) {
    let alice = Caller::new(node, "alice", "tasks:read tasks:write");
    let bob = Caller::new(node, "bob", "tasks:read tasks:write");
    let auditor = Caller::new(node, "auditor", "tasks:read:all");
    let ops = Caller::new(node, "ops", "tasks:read tasks:write admin");

    let a = alice.submit_ok(&echo("alice's secret")).await;
    let b = bob.submit_ok(&echo("bob's")).await;
    let task = alice.wait_final(&a).await;
    assert_eq!(task["principal"], "alice", "{task}");
    assert_eq!(
        task["steps"][0]["output"]["text"], "alice's secret",
        "{task}"
    );
    bob.wait_final(&b).await;

    // Another principal's task does not exist for bob, by any route.
    for path in [
        format!("/api/v1/tasks/{a}"),
        format!("/api/v1/tasks/{a}/events"),
        format!("/api/v1/tasks/{a}/steps/a/output"),
    ] {
        let (status, body) = bob.call("GET", &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "GET {path} as bob: {body}");
        assert!(!body.to_string().contains("secret"), "{body}");
    }
    let (status, _) = alice
        .call("GET", &format!("/api/v1/tasks/{a}/steps/a/output"), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    assert!(alice.listed().await.contains(&a));
    assert!(!alice.listed().await.contains(&b));
    assert!(bob.listed().await.contains(&b));
    assert!(!bob.listed().await.contains(&a));
    let all = auditor.listed().await;
    assert!(all.contains(&a) && all.contains(&b), "{all:?}");
    let (status, task) = auditor
        .call("GET", &format!("/api/v1/tasks/{a}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{task}");

    // Cancel: not another's task (it keeps running), but `admin` may.
    let long = alice.submit_ok(&slow()).await;
    let (status, body) = bob
        .call("POST", &format!("/api/v1/tasks/{long}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, task) = alice
        .call("GET", &format!("/api/v1/tasks/{long}"), None)
        .await;
    assert_ne!(task["status"], "cancelled", "{task}");
    let (status, body) = ops
        .call("POST", &format!("/api/v1/tasks/{long}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(alice.wait_final(&long).await["status"], "cancelled");

    // Idempotency keys are per principal: the same key is a new task for another caller
    // (never the first caller's task, nor a conflict that would reveal it).
    let keyed = |text: &str| json!({"idempotency_key": "order-1", "steps": [{"id": "a", "tool": "echo", "args": {"text": text}}]});
    let first = alice.submit_ok(&keyed("one")).await;
    let (status, other) = bob.submit(&keyed("two")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other, first);
    let (status, again) = alice.submit(&keyed("one")).await;
    assert_eq!((status, again), (StatusCode::OK, first));
}

async fn memory_is_per_principal(node: &TestNode) {
    let alice = Caller::new(node, "alice", "tasks:read tasks:write");
    let bob = Caller::new(node, "bob", "tasks:read tasks:write");
    let put = |scope: &str, value: &str| {
        json!({"session": "shared-name", "steps": [{"id": "m", "tool": "memory",
            "args": {"op": "put", "key": "k", "value": value, "scope": scope}}]})
    };
    let get = |scope: &str| {
        json!({"session": "shared-name", "max_attempts": 1, "steps": [{"id": "m", "tool": "memory",
            "args": {"op": "get", "key": "k", "scope": scope}}]})
    };
    for scope in ["global", "session"] {
        let wrote = alice.submit_ok(&put(scope, "alice's")).await;
        assert_eq!(alice.wait_final(&wrote).await["status"], "succeeded");
        let read = bob.submit_ok(&get(scope)).await;
        let task = bob.wait_final(&read).await;
        // A missing key fails the step: bob's namespace holds nothing.
        assert_eq!(task["status"], "failed", "{scope}: {task}");
        assert!(!task.to_string().contains("alice's"), "{scope}: {task}");
        let read = alice.submit_ok(&get(scope)).await;
        let task = alice.wait_final(&read).await;
        assert_eq!(
            task["steps"][0]["output"]["text"], "alice's",
            "{scope}: {task}"
        );
    }
}

/// Bob cannot see, continue or end Alice's session: 404 as for none; an admin can.
async fn sessions_are_per_principal(node: &TestNode) {
    let scopes = "sessions:write sessions:read tasks:read";
    let alice = Caller::new(node, "alice", scopes);
    let bob = Caller::new(node, "bob", scopes);
    let admin = Caller::new(node, "root", "admin sessions:read");
    let (status, started) = alice
        .call("POST", "/api/v1/sessions", Some(&json!({"message": "hi"})))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["session_id"].as_str().expect("an id");
    let path = format!("/api/v1/sessions/{id}");
    let turn = json!({"message": "me too"});
    for (method, path, body) in [
        ("GET", path.clone(), None),
        ("POST", format!("{path}/turns"), Some(&turn)),
        ("POST", format!("{path}/end"), None),
    ] {
        let (status, answer) = bob.call(method, &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
    }
    let (_, bobs) = bob.call("GET", "/api/v1/sessions", None).await;
    assert_eq!(bobs["sessions"], json!([]), "{bobs}");
    let (_, alices) = alice.call("GET", "/api/v1/sessions", None).await;
    assert_eq!(alices["sessions"][0]["session_id"], id, "{alices}");
    // The turn's task is Alice's too.
    let task = started["turn"]["task_id"].as_str().expect("a task");
    let done = alice.wait_final(task).await;
    assert_eq!(done["principal"], "alice", "{done}");
    let (status, seen) = admin.call("GET", &path, None).await;
    assert_eq!(
        (status, &seen["principal"]),
        (StatusCode::OK, &json!("alice")),
        "{seen}"
    );
    assert_eq!(seen["turns"][0]["answer"], "hello", "{seen}");
    // Without the sessions scope, no session.
    let tasks_only = Caller::new(node, "carol", "tasks:write tasks:read");
    let (status, body) = tasks_only
        .call("POST", "/api/v1/sessions", Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn ownership_on_sqlite() {
    let node = jwt_node(&[]).await;
    callers_see_only_their_own_tasks(&node).await;
    memory_is_per_principal(&node).await;
    sessions_are_per_principal(&node).await;
}

#[tokio::test]
async fn ownership_on_postgres() {
    let db = postgres_database().await;
    let node = jwt_node(&["--database", &db.url]).await;
    callers_see_only_their_own_tasks(&node).await;
    memory_is_per_principal(&node).await;
    sessions_are_per_principal(&node).await;
}

#[tokio::test]
async fn a_key_or_session_with_a_control_character_is_refused() {
    let node = jwt_node(&[]).await;
    let alice = Caller::new(&node, "alice", "tasks:write");
    for task in [
        json!({"idempotency_key": "a\nb", "steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}),
        json!({"session": "s\u{7}", "steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}),
    ] {
        let (status, body) = alice.call("POST", "/api/v1/tasks", Some(&task)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{task}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("control character")),
            "{body}"
        );
    }
}
