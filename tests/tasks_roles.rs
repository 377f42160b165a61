//! The Worker's data steps and the Memory role's steps, through the whole pipeline on both
//! backends: the router sends each step to an agent of the right role, its output feeds the
//! next step, and memory entries outlive the task that wrote them (or expire with a TTL);
//! session-scoped entries are shared by the tasks of one session only. And the Planner
//! agent planning a task given only a description, and replanning once a plan fails.

mod common;

use common::tasks::{scripted_node, step, submit, submit_ok, wait_final};
use common::{TestNode, postgres_database};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn output_text<'a>(task: &'a Value, id: &str) -> &'a str {
    step(task, id)["output"]["text"]
        .as_str()
        .unwrap_or_default()
}

fn agent_of<'a>(task: &'a Value, id: &str) -> &'a str {
    step(task, id)["attempts"][0]["agent"]
        .as_str()
        .unwrap_or_default()
}

async fn data_and_memory_steps(node: &TestNode) {
    let id = submit_ok(
        node,
        &json!({"steps": [
            {"id": "doc", "tool": "echo", "args": {"text": "{\"user\": {\"name\": \"Ada\"}}"}},
            {"id": "name", "tool": "json", "input_from": "doc", "args": {"pointer": "/user/name"}},
            {"id": "greet", "tool": "template", "input_from": "name",
             "args": {"template": "{{salute}}, {{input}}!", "vars": {"salute": "Hello"}}},
            {"id": "digest", "tool": "hash", "input_from": "greet"},
            {"id": "keep", "tool": "memory", "input_from": "greet",
             "args": {"op": "put", "key": "greeting", "tags": ["people"], "scope": "global"}},
        ]}),
    )
    .await;
    let task = wait_final(node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(output_text(&task, "name"), "Ada");
    assert_eq!(output_text(&task, "greet"), "Hello, Ada!");
    // sha256("Hello, Ada!")
    assert_eq!(
        output_text(&task, "digest"),
        "fc80a614993089e736b5321633d88401ea4fecdeddecaff5cf05d619bd941a90"
    );
    for s in ["name", "greet", "digest"] {
        assert!(agent_of(&task, s).starts_with("worker-"), "{s}: {task:#}");
    }
    assert!(agent_of(&task, "keep").starts_with("memory-"), "{task:#}");

    // A later task reads what the first one wrote (global scope), and finds it by tag and text.
    let id = submit_ok(
        node,
        &json!({"steps": [
            {"id": "recall", "tool": "memory", "args": {"op": "get", "key": "greeting", "scope": "global"}},
            {"id": "find", "tool": "memory",
             "args": {"op": "search", "tags": ["people"], "query": "ADA", "scope": "global"}},
            {"id": "miss", "tool": "memory",
             "args": {"op": "search", "tags": ["animals"], "scope": "global"}},
            {"id": "mine", "tool": "memory", "args": {"op": "search", "scope": "task"}},
        ]}),
    )
    .await;
    let task = wait_final(node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(output_text(&task, "recall"), "Hello, Ada!");
    let found = &step(&task, "find")["output"]["json"];
    assert_eq!(found[0]["key"], "greeting", "{task:#}");
    assert_eq!(step(&task, "miss")["output"]["json"], json!([]), "{task:#}");
    // Task scope is the task's own: this task wrote nothing there.
    assert_eq!(step(&task, "mine")["output"]["json"], json!([]), "{task:#}");

    // Session scope: shared by the tasks of one session, invisible to another session's.
    let note = |session: &str, op: Value| {
        json!({"session": session, "max_attempts": 1,
        "steps": [{"id": "m", "tool": "memory", "args": op}]})
    };
    let put = json!({"op": "put", "key": "topic", "value": "sails", "scope": "session"});
    let get = json!({"op": "get", "key": "topic", "scope": "session"});
    let wrote = wait_final(node, &submit_ok(node, &note("s-1", put)).await).await;
    assert_eq!(wrote["status"], "succeeded", "{wrote:#}");
    let same = wait_final(node, &submit_ok(node, &note("s-1", get.clone())).await).await;
    assert_eq!(output_text(&same, "m"), "sails", "{same:#}");
    let other = wait_final(node, &submit_ok(node, &note("s-2", get)).await).await;
    assert_eq!(
        other["status"], "failed",
        "another session sees nothing: {other:#}"
    );
}

#[tokio::test]
async fn worker_and_memory_steps_on_sqlite() {
    let node = TestNode::start(&[], &[]).await;
    data_and_memory_steps(&node).await;
}

#[tokio::test]
async fn worker_and_memory_steps_on_postgres() {
    let db = postgres_database().await;
    let node = TestNode::start(&["--database", &db.url], &[]).await;
    data_and_memory_steps(&node).await;
}

#[tokio::test]
async fn memory_entries_expire_after_their_ttl() {
    let node = TestNode::start(&[], &[]).await;
    let put = submit_ok(
        &node,
        &json!({"steps": [{"id": "put", "tool": "memory",
            "args": {"op": "put", "key": "brief", "value": "soon gone", "ttl_secs": 0.2}}]}),
    )
    .await;
    assert_eq!(wait_final(&node, &put).await["status"], "succeeded");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let get = submit_ok(
        &node,
        &json!({"max_attempts": 1, "steps": [{"id": "get", "tool": "memory",
            "args": {"op": "get", "key": "brief"}}]}),
    )
    .await;
    let task = wait_final(&node, &get).await;
    // Task scope: a different task never sees another task's entry, expired or not.
    assert_eq!(task["status"], "failed", "{task:#}");
    let global = submit_ok(
        &node,
        &json!({"steps": [
            {"id": "put", "tool": "memory",
             "args": {"op": "put", "key": "brief", "value": "soon gone", "ttl_secs": 0.2, "scope": "global"}},
            {"id": "now", "tool": "memory", "depends_on": ["put"],
             "args": {"op": "get", "key": "brief", "scope": "global"}},
        ]}),
    )
    .await;
    let task = wait_final(&node, &global).await;
    assert_eq!(output_text(&task, "now"), "soon gone", "{task:#}");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let later = submit_ok(
        &node,
        &json!({"max_attempts": 1, "steps": [{"id": "later", "tool": "memory",
            "args": {"op": "get", "key": "brief", "scope": "global"}}]}),
    )
    .await;
    let task = wait_final(&node, &later).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    let reason = step(&task, "later")["attempts"][0]["verdict"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("no memory entry"), "{task:#}");
}

#[tokio::test]
async fn bad_worker_and_memory_arguments_are_refused_at_submission() {
    let node = TestNode::start(&[], &[]).await;
    let cases = [
        (
            json!({"id": "h", "tool": "hash", "args": {"algorithm": "md5"}}),
            "algorithm",
        ),
        (
            json!({"id": "j", "tool": "json", "args": {"pointer": "no-slash"}}),
            "pointer",
        ),
        (
            json!({"id": "m", "tool": "memory", "args": {"op": "fly"}}),
            "args.op",
        ),
        (
            json!({"id": "m", "tool": "memory", "args": {"op": "get"}}),
            "args.key",
        ),
        (
            json!({"id": "l", "tool": "llm", "args": {"prompt": "hi"}}),
            "llm.provider",
        ),
        (
            json!({"id": "m", "tool": "memory", "args": {"op": "get", "key": "k", "scope": "session"}}),
            "steps[0].args.scope",
        ),
        (
            json!({"id": "m", "tool": "memory", "args": {"op": "get", "key": "k", "scope": "team"}}),
            "task, session, global",
        ),
    ];
    for (bad, named) in cases {
        let (status, body) = submit(&node, &json!({"steps": [bad]})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{named}: {body}");
    }
}

#[tokio::test]
async fn the_critic_asks_the_llm_judge_when_a_step_wants_one() {
    let node = scripted_node(&json!({"replies": [
        {"match": "Criterion: is it polite", "reply": "PASS it says please"},
        {"match": "Criterion: is it rude", "reply": "FAIL it is perfectly polite"}
    ]}))
    .await;
    let critic = ["orchestration", "critic-1"];
    let handled = |actor: &Value| actor["messages_handled"].as_u64().unwrap_or_default();
    let before = handled(&node.actor(&critic).await);
    let id = submit_ok(
        &node,
        &json!({"max_attempts": 1, "steps": [
            {"id": "ask", "tool": "echo", "args": {"text": "please pass the salt"},
             "expect": {"contains": "please", "judge": "is it polite"}},
            {"id": "insult", "tool": "echo", "args": {"text": "please pass the salt"},
             "expect": {"judge": "is it rude"}},
        ]}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    let verdict = |s: &str| step(&task, s)["attempts"][0]["verdict"].clone();
    assert_eq!(verdict("ask")["passed"], true, "{task:#}");
    assert!(
        verdict("ask")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("says please")
    );
    assert_eq!(verdict("insult")["passed"], false, "{task:#}");
    assert!(
        verdict("insult")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("LLM judge")
    );
    // The judgements were the Critic agent's work: two jobs, each a message and its
    // slot's release.
    let after = handled(&node.actor(&critic).await);
    assert!(
        after >= before + 4,
        "critic-1 handled {before} then {after} messages"
    );
}

#[tokio::test]
async fn an_llm_judgement_without_a_provider_is_refused() {
    let node = TestNode::start(&[], &[]).await;
    let (status, body) = submit(
        &node,
        &json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "x"},
                           "expect": {"judge": "is it good"}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["fields"][0]["field"], "steps[0].expect.judge",
        "{body}"
    );
}

/// A task given only a description is planned by a Planner agent (the Router picks it; the
/// trace names it), and runs the plan; a description the Planner cannot plan fails the
/// task saying why.
#[tokio::test]
async fn the_planner_agent_plans_a_described_task() {
    let plan = json!({"steps": [{"id": "hi", "tool": "echo", "args": {"text": "planned hello"}}]});
    let node = scripted_node(&json!({"replies": [
        {"match": "nonsense", "reply": "I would rather not."},
        {"match": "say hello", "reply": format!("Here is the plan: {plan}")}
    ]}))
    .await;

    let id = submit_ok(&node, &json!({"description": "say hello"})).await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(output_text(&task, "hi"), "planned hello", "{task:#}");
    let planned = common::tasks::events(&task)
        .iter()
        .find(|e| e["kind"] == "planned")
        .cloned()
        .unwrap_or_else(|| panic!("no `planned` event: {task:#}"));
    assert_eq!(planned["data"]["steps"], 1, "{planned}");
    let planner = planned["data"]["agent"].as_str().unwrap_or_default();
    assert!(
        planner.starts_with("planner"),
        "planned by {planner:?}: {planned}"
    );

    let id = submit_ok(&node, &json!({"description": "plan some nonsense"})).await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    let error = task["error"].as_str().unwrap_or_default();
    assert!(error.contains("not a plan"), "{error}");
}

/// A plan that fails is replanned once: the Planner is told what failed, its second plan's
/// steps (ids prefixed `re_`) run beside the failed ones and decide the outcome; a second
/// plan that fails too fails the task, with no third.
#[tokio::test]
async fn a_failed_plan_is_replanned_once() {
    let plan = |id: &str, text: &str, want: &str| {
        json!({"steps": [{"id": id, "tool": "echo", "args": {"text": text},
                          "expect": {"contains": want}}]})
        .to_string()
    };
    let node = scripted_node(&json!({"replies": [
            {"match": "greet loudly\n\nA previous plan for this task failed", "reply": plan("fix", "HELLO", "HELLO")},
            {"match": "greet loudly", "reply": plan("shout", "hello", "HELLO")},
            {"match": "hopeless", "reply": plan("try", "no", "yes")}
        ]})).await;
    let kinds = |task: &Value| -> Vec<String> {
        common::tasks::events(task)
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .filter(|k| k.contains("plan"))
            .map(str::to_string)
            .collect()
    };

    let id = submit_ok(
        &node,
        &json!({"description": "greet loudly", "max_attempts": 1}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(step(&task, "shout")["status"], "failed", "{task:#}");
    assert_eq!(output_text(&task, "re_fix"), "HELLO", "{task:#}");
    assert_eq!(
        kinds(&task),
        ["planned", "replanning", "replanned"],
        "{task:#}"
    );

    let id = submit_ok(
        &node,
        &json!({"description": "hopeless", "max_attempts": 1}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(step(&task, "re_try")["status"], "failed", "{task:#}");
    assert_eq!(
        kinds(&task),
        ["planned", "replanning", "replanned"],
        "{task:#}"
    );
    let error = task["error"].as_str().unwrap_or_default();
    assert!(error.contains("re_try"), "{error}");
}
