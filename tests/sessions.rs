//! Sessions (issue 11): a conversation with an agent, turn by turn, over the API and a
//! local server speaking OpenAI's wire format. A turn carries the conversation so far; a
//! session's numbers (turns, usage) come from what was recorded; the rules a session
//! keeps (one turn at a time, none after its end, its principal's only) hold under
//! concurrent requests; and a turn cut by SIGKILL finishes after a restart without a
//! finished LLM call being made again. On SQLite and on PostgreSQL.

mod common;

#[path = "../actors/tests/common/fake_llm.rs"]
mod fake_llm;
#[path = "../actors/tests/common/https.rs"]
mod https;
#[path = "../actors/tests/common/pki.rs"]
mod pki;

use std::net::SocketAddr;

use common::tasks::{TASK_DEADLINE, eventually_within, wait_task, write_config};
use common::{Launch, TestNode, postgres_database, temp_dir};
use fake_llm::{Fake, Reply, anthropic_stream, openai_calls, openai_ok, openai_stream};
use nix::sys::signal::Signal;
use pki::Pki;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A node's directory whose `llm.toml` points at the fake OpenAI server at `addr`, with
/// `more` configuration after it.
fn config_dir(addr: SocketAddr, more: &str) -> tempfile::TempDir {
    let dir = temp_dir();
    write_config(
        dir.path(),
        "llm.toml",
        &format!(
            "[llm]\nprovider = \"openai\"\nbase_url = \"http://{addr}/v1\"\nmodel = \"m\"\n{more}"
        ),
    );
    dir
}

/// A node in `dir` (see [`config_dir`]), with `extra` arguments.
async fn node_in(dir: tempfile::TempDir, extra: &[&str]) -> TestNode {
    Launch::new()
        .args(&["--config", "llm.toml"])
        .args(extra)
        .in_dir(dir)
        .start()
        .await
}

/// A node whose provider is the fake OpenAI server at `addr`, with `extra` arguments.
async fn node_on(addr: SocketAddr, extra: &[&str]) -> TestNode {
    node_in(config_dir(addr, ""), extra).await
}

fn url(node: &TestNode, path: &str) -> String {
    format!("{}/api/v1/sessions{path}", node.http_url())
}

/// Starts a session with `body`, which must be accepted with its first turn.
async fn start(node: &TestNode, body: &Value) -> String {
    let (status, started) = node.post_json(&url(node, ""), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}\n{}", node.log());
    assert_eq!(started["turn"]["turn"], 1, "{started}");
    started["session_id"]
        .as_str()
        .expect("a session id")
        .to_string()
}

async fn session(node: &TestNode, id: &str) -> Value {
    let (status, body) = node.get_json(&url(node, &format!("/{id}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Waits until turn `turn` of session `id` has a final status, and returns the session.
async fn wait_turn(node: &TestNode, id: &str, turn: usize) -> Value {
    eventually_within(
        TASK_DEADLINE,
        &format!("turn {turn} of {id} to end"),
        || async {
            let s = session(node, id).await;
            let status = s["turns"][turn - 1]["status"].as_str().unwrap_or_default();
            match status {
                "succeeded" | "failed" | "cancelled" | "timed_out" => Ok(s),
                _ => Err(s.to_string()),
            }
        },
    )
    .await
}

async fn send(node: &TestNode, id: &str, message: &str) -> (StatusCode, Value) {
    node.post_json(
        &url(node, &format!("/{id}/turns")),
        &json!({"message": message}),
    )
    .await
}

/// The roles and texts of the messages a request to the provider carried.
fn said(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_string(),
                m["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect()
}

/// Two turns: the first calls a tool, the second is sent the first's message and answer.
async fn a_conversation_across_turns(extra: &[&str]) {
    let echo = openai_calls(json!([{"id": "call_1", "type": "function",
        "function": {"name": "echo", "arguments": "{\"text\": \"hello\"}"}}]));
    let (fake, addr) = Fake::start(
        vec![
            echo,
            openai_ok("Echoed hello."),
            openai_ok("You asked me to echo hello."),
        ],
        Reply::Raw(500, "no more replies scripted"),
    )
    .await;
    let node = node_on(addr, extra).await;
    let id = start(
        &node,
        &json!({"message": "echo hello", "system": "Be brief.", "tools": ["echo"]}),
    )
    .await;
    let s = wait_turn(&node, &id, 1).await;
    let first = &s["turns"][0];
    assert_eq!(first["status"], "succeeded", "{s:#}");
    assert_eq!(first["message"], "echo hello");
    assert_eq!(first["answer"], "Echoed hello.", "{s:#}");
    assert_eq!(
        first["usage"],
        json!({"llm_calls": 2, "tool_calls": 1, "input_tokens": 12, "output_tokens": 3}),
        "{s:#}"
    );
    // The turn is an agent task of the caller's, with its calls as steps.
    let task_id = first["task_id"].as_str().expect("a task id");
    let task = wait_task(&node, task_id, "the turn's task", |t| {
        t["status"] == "succeeded"
    })
    .await;
    let steps: Vec<&str> = task["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|st| st["id"].as_str())
        .collect();
    assert_eq!(steps, ["llm_1", "t1_0", "llm_2"], "{task:#}");

    let (status, body) = send(&node, &id, "what did I ask?").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["turn"], 2, "{body}");
    let s = wait_turn(&node, &id, 2).await;
    assert_eq!(
        s["turns"][1]["answer"], "You asked me to echo hello.",
        "{s:#}"
    );
    assert_eq!(
        s["usage"],
        json!({"llm_calls": 3, "tool_calls": 1, "input_tokens": 24, "output_tokens": 6}),
        "{s:#}"
    );
    assert_eq!(s["settings"]["system"], "Be brief.");
    assert!(s["node"].as_str().is_some_and(|n| !n.is_empty()), "{s:#}");
    // One Coordinator agent coordinated both turns.
    let coordinator = s["coordinator"].as_str().unwrap_or_default().to_string();
    assert!(coordinator.starts_with("coordinator"), "{s:#}");
    let first_started = first_turn_coordinator(&node, &s).await;
    assert_eq!(first_started, coordinator, "{s:#}");

    // The third request (turn 2) carried the first turn's message and answer.
    let third = fake.seen.lock().unwrap()[2].body.clone();
    assert_eq!(
        said(&third),
        pairs(&[
            ("system", "Be brief."),
            ("user", "echo hello"),
            ("assistant", "Echoed hello."),
            ("user", "what did I ask?"),
        ]),
        "{third:#}"
    );
    assert_eq!(fake.hits(), 3);

    // Listed, then ended: no more turns; ending again changes nothing.
    let (_, list) = node.get_json(&url(&node, "?status=open")).await;
    assert_eq!(list["sessions"][0]["session_id"], id.as_str(), "{list}");
    assert_eq!(list["sessions"][0]["turns"], 2, "{list}");
    let end = url(&node, &format!("/{id}/end"));
    let (status, body) = node.post(&end).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("ended")),
        "{body}"
    );
    let (status, body) = send(&node, &id, "one more").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "session_ended", "{body}");
    assert_eq!(node.post(&end).await.0, StatusCode::OK);
    let s = session(&node, &id).await;
    assert_eq!(s["status"], "ended");
    assert!(s["ended_at"].is_string(), "{s:#}");
    assert_eq!(s["turns"].as_array().map(Vec::len), Some(2), "{s:#}");
    let (_, list) = node.get_json(&url(&node, "?status=open")).await;
    assert_eq!(list["sessions"], json!([]), "{list}");
    assert_eq!(fake.hits(), 3, "nothing was sent after the end");
}

#[tokio::test]
async fn a_conversation_across_turns_on_sqlite() {
    a_conversation_across_turns(&[]).await;
}

#[tokio::test]
async fn a_conversation_across_turns_on_postgres() {
    let db = postgres_database().await;
    a_conversation_across_turns(&["--database", &db.url]).await;
}

/// One turn at a time: while a turn waits for its LLM call, another is a 409, as is
/// ending the session; of many requests at once after it, exactly one takes the next turn.
async fn one_turn_at_a_time(extra: &[&str]) {
    let gated = |text| Reply::Gated(Box::new(openai_ok(text)));
    let (fake, addr) = Fake::start(
        vec![gated("first"), gated("later")],
        Reply::Raw(500, "no more replies scripted"),
    )
    .await;
    let node = node_on(addr, extra).await;
    let id = start(&node, &json!({"message": "go"})).await;
    // While the turn runs, its session's Coordinator agent shows it as its current work.
    let task_id = session(&node, &id).await["turns"][0]["task_id"]
        .as_str()
        .expect("a task")
        .to_string();
    let coordinating = eventually_within(TASK_DEADLINE, "a coordinator at work", || async {
        let tree = node.tree().await;
        let mut found = Vec::new();
        collect_work(&tree["root"], &task_id, &mut found);
        // (The worker making the turn's LLM call shows it too.)
        found.retain(|name| name.starts_with("coordinator"));
        if found.is_empty() {
            Err(tree.to_string())
        } else {
            Ok(found)
        }
    })
    .await;
    assert_eq!(coordinating.len(), 1, "one coordinator: {coordinating:?}");
    let (status, body) = send(&node, &id, "too soon").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "turn_running", "{body}");
    let (status, body) = node.post(&url(&node, &format!("/{id}/end"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "turn_running", "{body}");
    fake.gate.add_permits(1);
    wait_turn(&node, &id, 1).await;

    let racers = (0..8).map(|i| {
        let node = &node;
        let id = &id;
        async move { send(node, id, &format!("racer {i}")).await }
    });
    let answers = futures::future::join_all(racers).await;
    let accepted = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    let refused = answers
        .iter()
        .filter(|(s, b)| *s == StatusCode::CONFLICT && b["error"]["code"] == "turn_running")
        .count();
    assert_eq!((accepted, refused), (1, 7), "{answers:?}");
    fake.gate.add_permits(1);
    let s = wait_turn(&node, &id, 2).await;
    assert_eq!(s["turns"].as_array().map(Vec::len), Some(2), "{s:#}");
    assert_eq!(s["turns"][1]["answer"], "later", "{s:#}");
}

#[tokio::test]
async fn one_turn_at_a_time_on_sqlite() {
    one_turn_at_a_time(&[]).await;
}

#[tokio::test]
async fn one_turn_at_a_time_on_postgres() {
    let db = postgres_database().await;
    one_turn_at_a_time(&["--database", &db.url]).await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let (_fake, addr) = Fake::start(vec![], openai_ok("ok")).await;
    let node = node_on(addr, &[]).await;
    let missing = "0190a0f0-0000-7000-8000-000000000000";
    for (status, body) in [
        node.get_json(&url(&node, &format!("/{missing}"))).await,
        send(&node, missing, "hi").await,
        node.post(&url(&node, &format!("/{missing}/end"))).await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    let (status, body) = node
        .post_json(
            &url(&node, ""),
            &json!({"tools": ["nope"], "max_iterations": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_session", "{body}");
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert!(fields.contains(&"max_iterations"), "{body}");
    assert!(fields.iter().any(|f| f.starts_with("tools")), "{body}");
    let (status, body) = node.post_json(&url(&node, ""), &json!({"colour": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_session", "{body}");

    // A session without a first message has no turn; an empty message is no turn.
    let (status, body) = node.post_json(&url(&node, ""), &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["turn"], Value::Null, "{body}");
    let id = body["session_id"].as_str().expect("an id").to_string();
    let (status, body) = send(&node, &id, "a\u{0}b").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = send(&node, &id, "  ").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_turn", "{body}");
    assert!(body["error"]["fields"][0]["field"] == "message", "{body}");
    // The refused turn was given back: the next one is turn 1.
    let (status, body) = send(&node, &id, "hello").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["turn"], 1, "{body}");
    let (status, body) = node
        .post_json(&url(&node, &format!("/{id}/turns")), &json!({"msg": "x"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    for query in ["?status=closed", "?limit=0", "?cursor=nope", "?colour=red"] {
        let (status, body) = node.get_json(&url(&node, query)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }

    // Without a provider there is no agent to talk to.
    let bare = Launch::new().start().await;
    let (status, body) = bare
        .post_json(&url(&bare, ""), &json!({"message": "hi"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("provider"), "{body}");
}

/// SIGKILL while a turn's tool runs: a node on the same directory finishes the turn, the
/// provider having seen the first call once, and the session goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_cut_by_sigkill_finishes_after_restart() {
    let nap = openai_calls(json!([{"id": "call_nap", "type": "function",
        "function": {"name": "sleep", "arguments": "{\"ms\": 4000}"}}]));
    let (fake, addr) = Fake::start(
        vec![nap, openai_ok("Rested."), openai_ok("Still here.")],
        Reply::Raw(500, "no more replies scripted"),
    )
    .await;
    let mut first = node_on(addr, &["--node", "first"]).await;
    let id = start(
        &first,
        &json!({"message": "take a nap", "tools": ["sleep"]}),
    )
    .await;
    let s = session(&first, &id).await;
    let task_id = s["turns"][0]["task_id"]
        .as_str()
        .expect("a task")
        .to_string();
    wait_task(&first, &task_id, "the nap running", |t| {
        t["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["id"] == "t1_0" && s["status"] == "running")
    })
    .await;
    assert_eq!(fake.hits(), 1);
    first.signal(Signal::SIGKILL);
    first.wait_exit().await;

    let dir = first.into_dir();
    let second = Launch::new()
        .args(&["--config", "llm.toml", "--node", "second"])
        .in_dir(dir)
        .start()
        .await;
    let s = wait_turn(&second, &id, 1).await;
    assert_eq!(s["turns"][0]["answer"], "Rested.", "{s:#}");
    assert_eq!(fake.hits(), 2, "the first LLM call was not made again");
    let (status, body) = send(&second, &id, "still there?").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let s = wait_turn(&second, &id, 2).await;
    assert_eq!(s["turns"][1]["answer"], "Still here.", "{s:#}");
    let last = fake.seen.lock().unwrap()[2].body.clone();
    assert_eq!(
        said(&last),
        pairs(&[
            ("user", "take a nap"),
            ("assistant", "Rested."),
            ("user", "still there?"),
        ]),
        "{last:#}"
    );
}

/// Continuity across nodes: two nodes of a cluster share the database; the node running a
/// session's turn is SIGKILLed in the middle of it, the other takes the turn over and
/// finishes it (the provider saw the finished call once), shows itself as the session's
/// node, and takes the next turn with the whole conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_node_dies_continues_on_another() {
    use common::cluster::{Member, cluster_name, wait_status};
    let nap = openai_calls(json!([{"id": "call_nap", "type": "function",
        "function": {"name": "sleep", "arguments": "{\"ms\": 3000}"}}]));
    let (fake, addr) = Fake::start(
        vec![nap, openai_ok("Rested."), openai_ok("Continued.")],
        Reply::Raw(500, "no more replies scripted"),
    )
    .await;
    let nats = common::nats::NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("sessions");
    let llm =
        format!("[llm]\nprovider = \"openai\"\nbase_url = \"http://{addr}/v1\"\nmodel = \"m\"\n");
    let member = |name| Member::new(&cluster, &db, nats.url(), name).config(&llm);
    let (mut a, b) = tokio::join!(member("a").start(), member("b").start());
    wait_status(&b, &["a"], "up").await;

    let id = start(&a, &json!({"message": "take a nap", "tools": ["sleep"]})).await;
    let task_id = session(&a, &id).await["turns"][0]["task_id"]
        .as_str()
        .expect("a task")
        .to_string();
    wait_task(&a, &task_id, "the nap running", |t| {
        t["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["id"] == "t1_0" && s["status"] == "running")
    })
    .await;
    assert_eq!(session(&b, &id).await["node"], "a");
    a.signal(Signal::SIGKILL);
    a.wait_exit().await;

    let s = wait_turn(&b, &id, 1).await;
    assert_eq!(s["turns"][0]["answer"], "Rested.", "{s:#}");
    assert_eq!(
        s["node"], "b",
        "the node that took the turn over owns the session: {s:#}"
    );
    assert!(
        s["coordinator"]
            .as_str()
            .is_some_and(|c| c.starts_with("coordinator")),
        "a Coordinator of b took the session over: {s:#}"
    );
    assert_eq!(fake.hits(), 2, "the first LLM call was not made again");
    let (status, body) = send(&b, &id, "go on").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let s = wait_turn(&b, &id, 2).await;
    assert_eq!(s["turns"][1]["answer"], "Continued.", "{s:#}");
    let last = fake.seen.lock().unwrap()[2].body.clone();
    assert_eq!(
        said(&last),
        pairs(&[
            ("user", "take a nap"),
            ("assistant", "Rested."),
            ("user", "go on")
        ]),
        "{last:#}"
    );
}

/// Waits until turn `turn` of session `id` has the status `status`.
async fn wait_turn_status(node: &TestNode, id: &str, turn: usize, status: &str) -> Value {
    eventually_within(
        TASK_DEADLINE,
        &format!("turn {turn} to be {status}"),
        || async {
            let s = session(node, id).await;
            if s["turns"][turn - 1]["status"] == status {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    )
    .await
}

/// A call of a tool marked `approval = "required"` waits, durably: across a SIGKILL and
/// a restart, until approved (it runs, and the model reads its result); a denied call's
/// reason is what the model reads as its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_needs_approval_waits_across_a_restart_until_decided_on_sqlite() {
    a_call_that_needs_approval_waits_across_a_restart_until_decided(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_needs_approval_waits_across_a_restart_until_decided_on_postgres() {
    let db = postgres_database().await;
    a_call_that_needs_approval_waits_across_a_restart_until_decided(&["--database", &db.url]).await;
}

async fn a_call_that_needs_approval_waits_across_a_restart_until_decided(extra: &[&str]) {
    let echo = |id: &str, text: &str| {
        openai_calls(json!([{"id": id, "type": "function",
            "function": {"name": "echo", "arguments": json!({"text": text}).to_string()}}]))
    };
    let (fake, addr) = Fake::start(
        vec![
            echo("call_1", "approved text"),
            openai_ok("It echoed."),
            echo("call_2", "secret"),
            openai_ok("Understood, not now."),
        ],
        Reply::Raw(500, "no more replies scripted"),
    )
    .await;
    let dir = config_dir(addr, ECHO_NEEDS_APPROVAL);
    let mut first = node_in(dir, extra).await;
    let id = start(
        &first,
        &json!({"message": "echo something", "tools": ["echo"]}),
    )
    .await;
    let s = wait_turn_status(&first, &id, 1, "awaiting_approval").await;
    assert_eq!(
        s["turns"][0]["awaiting_approval"],
        json!([{"step": "t1_0", "tool": "echo", "arguments": {"text": "approved text"}}]),
        "{s:#}"
    );
    first.signal(Signal::SIGKILL);
    first.wait_exit().await;

    let node = node_in(first.into_dir(), extra).await;
    wait_turn_status(&node, &id, 1, "awaiting_approval").await;
    assert_eq!(fake.hits(), 1, "nothing ran while the call waited");
    let approve = url(&node, &format!("/{id}/turns/1/approve"));
    let (status, body) = node.post_json(&approve, &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["steps"], json!(["t1_0"]), "{body}");
    let (status, body) = node.post_json(&approve, &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "nothing_awaits_approval", "{body}");
    let s = wait_turn(&node, &id, 1).await;
    assert_eq!(s["turns"][0]["answer"], "It echoed.", "{s:#}");
    let second = fake.seen.lock().unwrap()[1].body.clone();
    assert_eq!(
        said(&second).last().map(|(_, c)| c.as_str()),
        Some("approved text"),
        "{second:#}"
    );
    let task_id = s["turns"][0]["task_id"].as_str().expect("a task");
    let (_, task) = node
        .get_json(&format!("{}/api/v1/tasks/{task_id}", node.http_url()))
        .await;
    let kinds: Vec<&str> = task["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("approval."))
        .collect();
    let statuses: Vec<(&str, &str)> = task["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("llm_1", "succeeded"),
            ("t1_0", "succeeded"),
            ("llm_2", "succeeded")
        ],
        "{task:#}"
    );
    // The restarted run found the call waiting as recorded: it did not ask again.
    assert_eq!(
        kinds,
        ["approval.requested", "approval.granted"],
        "{task:#}"
    );

    let (status, body) = send(&node, &id, "echo the secret").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_turn_status(&node, &id, 2, "awaiting_approval").await;
    let deny = url(&node, &format!("/{id}/turns/2/deny"));
    let (status, body) = node
        .post_json(&deny, &json!({"reason": "not now", "colour": 1}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = node.post_json(&deny, &json!({"reason": "not now"})).await;
    assert_eq!(
        (status, &body["approved"]),
        (StatusCode::OK, &json!(false)),
        "{body}"
    );
    let s = wait_turn(&node, &id, 2).await;
    assert_eq!(s["turns"][1]["answer"], "Understood, not now.", "{s:#}");
    let fourth = fake.seen.lock().unwrap()[3].body.clone();
    let result = said(&fourth)
        .last()
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    assert_eq!(
        result, "error: denied by the operator: not now",
        "{fourth:#}"
    );
    let denied = s["turns"][1]["task_id"].as_str().expect("a task");
    let (_, task) = node
        .get_json(&format!("{}/api/v1/tasks/{denied}", node.http_url()))
        .await;
    assert_eq!(task["steps"][1]["status"], "failed", "{task:#}");
    let (status, _) = node
        .post_json(&url(&node, &format!("/{id}/turns/9/approve")), &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A session with a context window: once its turns outgrow it, the next turn first has
/// the LLM summarize the older ones (a recorded step, shown on the turn), is sent the
/// summary in its system prompt instead of them, and later turns start from that summary.
#[tokio::test]
async fn an_outgrown_context_window_is_summarized_and_slides() {
    // Each turn is ~160 tokens (300-byte message and answer); the window is 256.
    let long = |c: char| c.to_string().repeat(300);
    let (fake, addr) = Fake::start(
        vec![
            openai_ok(&long('a')),
            openai_ok(&long('b')),
            openai_ok("SUMMARY-ONE"),
            openai_ok(&long('c')),
            openai_ok("four"),
        ],
        Reply::Raw(500, "no more replies scripted"),
    )
    .await;
    let node = node_on(addr, &[]).await;
    let id = start(
        &node,
        &json!({"message": long('1'), "system": "Be brief.", "context_tokens": 256}),
    )
    .await;
    wait_turn(&node, &id, 1).await;
    for (turn, c) in [(2, '2'), (3, '3'), (4, '4')] {
        let (status, body) = send(&node, &id, &long(c)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let s = wait_turn(&node, &id, turn).await;
        assert_eq!(s["turns"][turn - 1]["status"], "succeeded", "{s:#}");
    }
    let s = session(&node, &id).await;
    let third = &s["turns"][2];
    assert_eq!(third["summary"], "SUMMARY-ONE", "{s:#}");
    assert_eq!(third["summarized_through"], 2, "{s:#}");
    assert_eq!(
        third["usage"]["llm_calls"], 2,
        "the summary is an LLM call: {s:#}"
    );
    assert_eq!(s["turns"][3]["summary"], Value::Null, "{s:#}");

    let seen: Vec<Value> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(seen.len(), 5);
    // Turn 2 was sent turn 1 whole.
    assert_eq!(said(&seen[1]).len(), 4, "{:#}", seen[1]);
    // Turn 3's first call summarized turns 1 and 2 ...
    let asked = said(&seen[2]);
    assert!(
        asked[0].1.starts_with("You summarize conversations"),
        "{asked:?}"
    );
    assert!(
        asked[1].1.contains(&format!("user: {}", long('1'))),
        "{asked:?}"
    );
    assert!(
        asked[1].1.contains(&format!("assistant: {}", long('b'))),
        "{asked:?}"
    );
    // ... and its answer was sent with the summary instead of them.
    assert_eq!(
        said(&seen[3]),
        pairs(&[
            (
                "system",
                "Be brief.\n\nSummary of the earlier conversation:\nSUMMARY-ONE"
            ),
            ("user", &long('3')),
        ])
    );
    // Turn 4 starts from that summary, with turn 3 whole.
    assert_eq!(
        said(&seen[4]),
        pairs(&[
            (
                "system",
                "Be brief.\n\nSummary of the earlier conversation:\nSUMMARY-ONE"
            ),
            ("user", &long('3')),
            ("assistant", &long('c')),
            ("user", &long('4')),
        ])
    );
    let (status, body) = node
        .post_json(&url(&node, ""), &json!({"context_tokens": 10}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["fields"][0]["field"], "context_tokens",
        "{body}"
    );
}

/// A Server-Sent Events stream read event by event: (event name, data as JSON).
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(node: &TestNode, url: &str) -> Events {
        let response = node.client.get(url).send().await.expect("the stream opens");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, `None` once the stream has ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        let read = async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let field = |name: &str| {
                        block
                            .lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    };
                    let Some(data) = field("data:") else {
                        continue; // a keep-alive comment
                    };
                    let event = field("event:").unwrap_or_else(|| "message".into());
                    return Some((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
                }
                let chunk = self.response.chunk().await.ok()??;
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        };
        tokio::time::timeout(TASK_DEADLINE, read)
            .await
            .expect("an event within the deadline")
    }
}

/// A turn's text reaches its event stream as the provider streams it: the first piece
/// arrives while the provider still holds the rest, then the others, then the trace's
/// final entry ends the stream; the recorded answer is the whole text. OpenAI's format
/// over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turns_text_streams_to_its_event_stream_as_it_arrives() {
    let echo = openai_calls(json!([{"id": "call_1", "type": "function",
        "function": {"name": "echo", "arguments": "{\"text\": \"hi\"}"}}]));
    let (fake, addr) = Fake::start(
        vec![echo, openai_stream(&["Hel", "lo ", "world"], 1)],
        Reply::Raw(500, "no more replies scripted"),
    )
    .await;
    let dir = config_dir(addr, ECHO_NEEDS_APPROVAL);
    streams_as_it_arrives(&fake, node_in(dir, &[]).await).await;
}

/// The same with Anthropic's format (a `tool_use` answer, then a streamed one) over TLS
/// with the provider's certificate from a CA of its own (`llm.ca_file`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_streams_from_anthropic_over_tls() {
    let pki = Pki::new();
    let tool_use = Reply::Json(
        200,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
               "content": [{"type": "tool_use", "id": "tu_1", "name": "echo", "input": {"text": "hi"}}],
               "stop_reason": "tool_use", "usage": {"input_tokens": 9, "output_tokens": 3}}),
    );
    let (fake, addr) = Fake::start_tls(
        vec![tool_use, anthropic_stream(&["Hel", "lo ", "world"], 3)],
        Reply::Raw(500, "no more replies scripted"),
        &pki,
    )
    .await;
    let dir = temp_dir();
    write_config(
        dir.path(),
        "llm.toml",
        &format!(
            "[llm]\nprovider = \"anthropic\"\nbase_url = \"https://{addr}\"\nmodel = \"m\"\n\
             api_key = \"sk-test\"\nca_file = \"{}\"\n{ECHO_NEEDS_APPROVAL}",
            pki.ca.display()
        ),
    );
    streams_as_it_arrives(&fake, node_in(dir, &[]).await).await;
    // Anthropic's wire format for the result: a `tool_result` block for `tu_1`.
    let second = fake.seen.lock().unwrap()[1].body.clone();
    let last = &second["messages"]
        .as_array()
        .expect("messages")
        .last()
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["content"][0]["type"], "tool_result", "{second:#}");
    assert_eq!(last["content"][0]["tool_use_id"], "tu_1", "{second:#}");
    assert_eq!(second["stream"], true, "{second:#}");
}

/// Agents' `echo` calls wait for a person's approval.
const ECHO_NEEDS_APPROVAL: &str = "[tools]\napproval = { echo = \"required\" }\n";

/// The node's session: an echo call (held by its approval until the stream is open: a
/// call streams only to those watching when it starts), then an answer streamed as
/// "Hel", "lo ", "world" that the fake holds after its first piece.
async fn streams_as_it_arrives(fake: &Fake, node: TestNode) {
    let id = start(&node, &json!({"message": "say hello", "tools": ["echo"]})).await;
    wait_turn_status(&node, &id, 1, "awaiting_approval").await;
    let mut events = Events::open(&node, &url(&node, &format!("/{id}/turns/1/events"))).await;
    let (status, body) = node
        .post_json(&url(&node, &format!("/{id}/turns/1/approve")), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut seen = Vec::new();
    let first_delta = loop {
        let (event, data) = events.next().await.expect("a delta before the end");
        if event == "delta" {
            break data;
        }
        seen.push(event);
    };
    assert_eq!(first_delta, json!({"step": "llm_2", "text": "Hel"}));
    // The stored trace came first, replayed.
    for kind in [
        "submitted",
        "started",
        "step.succeeded",
        "approval.requested",
    ] {
        assert!(seen.iter().any(|e| e == kind), "{kind} in {seen:?}");
    }
    let s = session(&node, &id).await;
    assert_eq!(s["turns"][0]["status"], "running", "still streaming: {s:#}");
    fake.stream_gate.add_permits(1);
    let mut rest = Vec::new();
    let mut last = String::new();
    while let Some((event, data)) = events.next().await {
        if event == "delta" {
            rest.push(data["text"].as_str().unwrap_or_default().to_string());
        }
        last = event;
    }
    assert_eq!(rest, ["lo ", "world"]);
    assert_eq!(
        last, "succeeded",
        "the stream ends with the task's final entry"
    );
    let s = wait_turn(&node, &id, 1).await;
    assert_eq!(s["turns"][0]["answer"], "Hello world", "{s:#}");
    let (status, _) = node
        .get_json(&url(&node, &format!("/{id}/turns/7/events")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The agent keeps a fact across turns with the `memory` tool (scope `session`): a later
/// turn's call reads what an earlier turn's call put, and the model is told it.
#[tokio::test]
async fn memory_keeps_facts_across_a_sessions_turns() {
    let call = |id: &str, args: Value| {
        openai_calls(json!([{"id": id, "type": "function",
            "function": {"name": "memory", "arguments": args.to_string()}}]))
    };
    let (fake, addr) = Fake::start(
        vec![
            call(
                "c1",
                json!({"op": "put", "scope": "session", "key": "name", "value": "Ada"}),
            ),
            openai_ok("Noted."),
            call(
                "c2",
                json!({"op": "get", "scope": "session", "key": "name"}),
            ),
            openai_ok("Your name is Ada."),
        ],
        Reply::Raw(500, "no more replies scripted"),
    )
    .await;
    let node = node_on(addr, &[]).await;
    let id = start(&node, &json!({"message": "I am Ada", "tools": ["memory"]})).await;
    let s = wait_turn(&node, &id, 1).await;
    assert_eq!(s["turns"][0]["answer"], "Noted.", "{s:#}");
    let (status, body) = send(&node, &id, "Who am I?").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let s = wait_turn(&node, &id, 2).await;
    assert_eq!(s["turns"][1]["answer"], "Your name is Ada.", "{s:#}");
    let fourth = fake.seen.lock().unwrap()[3].body.clone();
    let read = said(&fourth)
        .last()
        .map(|(_, c)| c.clone())
        .unwrap_or_default();
    assert!(
        read.contains("Ada"),
        "the get's result went to the model: {fourth:#}"
    );
}

/// NUL characters, which PostgreSQL's text refuses, never reach it: in ids they name
/// nothing (404); in what would be stored they are refused (422) naming the field.
#[tokio::test]
async fn nul_characters_are_refused_before_storage_on_postgres() {
    let db = postgres_database().await;
    let (_fake, addr) = Fake::start(vec![], openai_ok("ok")).await;
    let node = node_on(addr, &["--database", &db.url]).await;
    let api = |path: &str| format!("{}/api/v1{path}", node.http_url());
    for path in [
        "/tasks/a%00b",
        "/tasks/a%00b/events",
        "/tasks/a%00b/steps/x/output",
        "/sessions/a%00b",
    ] {
        let (status, body) = node.get_json(&api(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, body) = node.post(&api("/tasks/a%00b/cancel")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for task in [
        json!({"description": "a\u{0}b", "steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}),
        json!({"steps": [{"id": "m", "tool": "memory", "args": {"op": "put", "key": "k\u{0}", "value": "v"}}]}),
        json!({"agent": {"message": "a\u{0}b"}}),
    ] {
        let (status, body) = node.post_json(&api("/tasks"), &task).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{task}: {body}");
    }
    let id = start(&node, &json!({"message": "hi"})).await;
    let (status, body) = send(&node, &id, "a\u{0}b").await;
    assert!(
        status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::CONFLICT,
        "{body}"
    );
    wait_turn(&node, &id, 1).await;
    let (status, body) = send(&node, &id, "a\u{0}b").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let deny = url(&node, &format!("/{id}/turns/1/deny"));
    let (status, body) = node.post_json(&deny, &json!({"reason": "a\u{0}b"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = node.post_json(&deny, &json!({"step": "t\u{0}"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// The names of the actors below `actor` whose current work names `task_id`.
fn collect_work(actor: &Value, task_id: &str, found: &mut Vec<String>) {
    if actor["current_work"]
        .as_str()
        .is_some_and(|w| w.contains(task_id))
    {
        found.push(actor["name"].as_str().unwrap_or_default().to_string());
    }
    for child in actor["children"].as_array().into_iter().flatten() {
        collect_work(child, task_id, found);
    }
}

/// The Coordinator agent the first turn's trace names (its `started` entry).
async fn first_turn_coordinator(node: &TestNode, s: &Value) -> String {
    let task_id = s["turns"][0]["task_id"].as_str().expect("a task");
    let (_, task) = node
        .get_json(&format!("{}/api/v1/tasks/{task_id}", node.http_url()))
        .await;
    task["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["kind"] == "started")
        .and_then(|e| e["data"]["coordinator"].as_str())
        .unwrap_or_default()
        .to_string()
}
