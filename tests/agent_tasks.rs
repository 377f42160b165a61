//! Agent tasks (issue 11): `{"agent": {"message", "tools"}}` runs an LLM tool-calling loop
//! whose every LLM call and tool call is a recorded step. Against the scripted provider
//! (calls become steps, a refused call is a result the model reads, the answer ends the
//! task), against a local server speaking OpenAI's wire format (a node SIGKILLed in the
//! middle of the loop resumes it without making a finished LLM call again), and the
//! submissions that are refused.

mod common;

#[path = "../actors/tests/common/fake_llm.rs"]
mod fake_llm;
#[path = "../actors/tests/common/https.rs"]
mod https;
#[path = "../actors/tests/common/pki.rs"]
mod pki;

use common::tasks::{
    attempts, scripted_node, step, submit, submit_ok, wait_final, wait_task, write_config,
};
use common::{Launch, temp_dir};
use fake_llm::{Fake, openai_calls, openai_ok};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn step_ids(task: &Value) -> Vec<String> {
    task["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn the_model_calls_tools_as_steps_and_reads_their_results_and_refusals() {
    let node = scripted_node(&json!({"replies": [
        {"match": "is not a tool you may call", "reply": "The echo said ECHOED; http was refused."},
        {"match": "please use the echo", "tool_calls": [
            {"name": "echo", "arguments": {"text": "ECHOED"}},
            {"name": "http", "arguments": {"url": "http://example.com/"}}]}
    ]}))
    .await;
    let id = submit_ok(
        &node,
        &json!({"agent": {"message": "please use the echo", "tools": ["echo"]}}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(step_ids(&task), ["llm_1", "t1_0", "llm_2"], "{task:#}");
    assert_eq!(step(&task, "t1_0")["output"]["text"], "ECHOED", "{task:#}");
    assert_eq!(
        step(&task, "llm_2")["output"]["text"],
        "The echo said ECHOED; http was refused.",
        "{task:#}"
    );
    // Each call went to the agent of its role.
    let agent_of = |s: &str| {
        attempts(&task, s)[0]["agent"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(agent_of("llm_1").starts_with("worker"), "{task:#}");
    assert!(agent_of("t1_0").starts_with("executor"), "{task:#}");
    // The first answer's calls are in its recorded output, the refused one included.
    let calls = &step(&task, "llm_1")["output"]["json"]["tool_calls"];
    assert_eq!(calls.as_array().map(Vec::len), Some(2), "{task:#}");
}

#[tokio::test]
async fn an_agent_that_never_stops_calling_tools_fails_at_its_iteration_limit() {
    let node = scripted_node(&json!({"replies": [], "default": ""})).await;
    // A default reply with no calls ends at once: succeeded with an empty answer.
    let id = submit_ok(&node, &json!({"agent": {"message": "hi"}})).await;
    assert_eq!(wait_final(&node, &id).await["status"], "succeeded");

    let node = scripted_node(&json!({"replies": [
        {"match": "", "tool_calls": [{"name": "echo", "arguments": {"text": "again"}}]}
    ]}))
    .await;
    let id = submit_ok(
        &node,
        &json!({"agent": {"message": "loop", "tools": ["echo"], "max_iterations": 3}}),
    )
    .await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert!(
        task["error"]
            .as_str()
            .unwrap_or_default()
            .contains("max_iterations"),
        "{task:#}"
    );
    assert_eq!(
        step_ids(&task),
        ["llm_1", "t1_0", "llm_2", "t2_0", "llm_3"],
        "{task:#}"
    );
}

#[tokio::test]
async fn bad_agent_tasks_are_refused_naming_the_field() {
    let node = scripted_node(&json!({"replies": [], "default": "ok"})).await;
    for (task, field) in [
        (
            json!({"agent": {"message": "x", "tools": ["rm"]}}),
            "agent.tools[0]",
        ),
        (
            json!({"agent": {"message": "x", "tools": ["echo", "echo"]}}),
            "agent.tools[1]",
        ),
        (json!({"agent": {"message": "  "}}), "agent.message"),
        (
            json!({"agent": {"message": "x", "max_iterations": 0}}),
            "agent.max_iterations",
        ),
        (
            json!({"agent": {"message": "x"}, "steps": [{"id": "a", "tool": "echo"}]}),
            "agent",
        ),
        (
            json!({"agent": {"message": "x", "history": [{"role": "system", "content": "s"}]}}),
            "agent.history[0].role",
        ),
        (
            json!({"agent": {"message": "x", "history": [{"role": "tool", "content": "r"}]}}),
            "agent.history[0].tool_call_id",
        ),
    ] {
        let (status, body) = submit(&node, &task).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{task}: {body}");
        assert!(body.to_string().contains(field), "{task}: {body}");
    }
    let (status, body) = submit(&node, &json!({"agent": {"message": "x", "colour": 1}})).await;
    assert!(status.is_client_error(), "{body}");

    // Without a provider there is no loop to run.
    let bare = Launch::new().start().await;
    let (status, body) = submit(&bare, &json!({"agent": {"message": "x"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("provider"), "{body}");
}

/// The loop over real HTTP: the first LLM call asks for a 4 s sleep and an echo; the node
/// is SIGKILLed while the sleep runs, and a node on the same directory finishes the task.
/// The provider saw two requests in all: the first call was recorded and not made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_resumes_the_loop_without_calling_the_llm_again() {
    let calls = openai_calls(json!([
        {"id": "call_nap", "type": "function",
         "function": {"name": "sleep", "arguments": "{\"ms\": 4000}"}},
        {"id": "call_echo", "type": "function",
         "function": {"name": "echo", "arguments": "{\"text\": \"before the kill\"}"}}]));
    let (fake, addr) = Fake::start(vec![calls], openai_ok("All done.")).await;
    let dir = temp_dir();
    write_config(
        dir.path(),
        "llm.toml",
        &format!("[llm]\nprovider = \"openai\"\nbase_url = \"http://{addr}/v1\"\nmodel = \"m\"\n"),
    );
    let args = ["--config", "llm.toml"];
    let mut first = Launch::new()
        .args(&args)
        .args(&["--node", "first"])
        .in_dir(dir)
        .start()
        .await;
    let id = submit_ok(
        &first,
        &json!({"agent": {"message": "nap, then echo", "tools": ["sleep", "echo"]}}),
    )
    .await;
    wait_task(&first, &id, "the echo recorded while the sleep runs", |t| {
        t["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["id"] == "t1_1" && s["status"] == "succeeded")
    })
    .await;
    assert_eq!(fake.hits(), 1);
    first.signal(Signal::SIGKILL);
    first.wait_exit().await;

    let second = Launch::new()
        .args(&args)
        .args(&["--node", "second"])
        .in_dir(first.into_dir())
        .start()
        .await;
    let task = wait_final(&second, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        fake.hits(),
        2,
        "the first LLM call was not made again: {task:#}"
    );
    assert_eq!(attempts(&task, "llm_1").len(), 1, "{task:#}");
    assert_eq!(attempts(&task, "llm_1")[0]["node"], "first");
    assert_eq!(
        attempts(&task, "t1_1").len(),
        1,
        "the echo ran once: {task:#}"
    );
    assert_eq!(
        attempts(&task, "llm_2").last().expect("an attempt")["node"],
        "second"
    );
    assert_eq!(step(&task, "llm_2")["output"]["text"], "All done.");

    // The second request carried the first answer's calls and both results.
    let body = fake.seen.lock().unwrap()[1].body.clone();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 4, "{body:#}");
    assert_eq!(messages[1]["tool_calls"][0]["id"], "call_nap", "{body:#}");
    assert_eq!(
        messages[2],
        json!({"role": "tool", "content": "slept 4000 ms", "tool_call_id": "call_nap"}),
        "{body:#}"
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "content": "before the kill", "tool_call_id": "call_echo"}),
        "{body:#}"
    );
    let tools: Vec<&str> = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(tools, ["echo", "sleep"], "{body:#}");
}
