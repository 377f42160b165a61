//! Native tool calling against real HTTP: the local server speaks OpenAI's `tools` /
//! `tool_calls` / `tool` messages and Anthropic's `tools` / `tool_use` / `tool_result`
//! blocks, and each test checks both directions: the calls read from the answer, and the
//! exact JSON of the next request that carries their results. Also the scripted provider's
//! tool calls, and answers whose calls are malformed.

use actors::llm::{
    ChatMessage, CompletionRequest, Llm, LlmConfig, LlmError, ProviderKind, ToolCall, ToolSpec,
};
use serde_json::{Value, json};

#[path = "common/fake_llm.rs"]
mod fake_llm;
#[path = "common/https.rs"]
mod https;
#[path = "common/pki.rs"]
mod pki;

use fake_llm::{Fake, Reply, anthropic_ok, complete, config, openai_ok};

fn echo_tool() -> ToolSpec {
    ToolSpec {
        name: "echo".into(),
        description: "Says the text back.".into(),
        parameters: json!({"type": "object", "properties": {"text": {"type": "string"}},
                           "required": ["text"]}),
    }
}

fn asking(question: &str) -> CompletionRequest {
    CompletionRequest {
        tools: vec![echo_tool()],
        ..CompletionRequest::user(question)
    }
}

/// The request after `first`: the model's answer and a result for each of its calls.
fn with_results(
    mut request: CompletionRequest,
    answer: &actors::llm::Completion,
) -> CompletionRequest {
    request.messages.push(ChatMessage::answered(answer));
    for call in &answer.tool_calls {
        let args = call
            .parsed_arguments()
            .expect("the fake's arguments are JSON");
        request.messages.push(ChatMessage::tool_result(
            &call.id,
            args["text"].as_str().unwrap_or(""),
        ));
    }
    request
}

fn last_body(fake: &Fake) -> Value {
    fake.seen
        .lock()
        .unwrap()
        .last()
        .expect("a request")
        .body
        .clone()
}

#[tokio::test]
async fn openai_tool_calls_are_read_and_their_results_sent_back() {
    let calls = Reply::Json(
        200,
        json!({"id": "c1", "model": "gpt-test", "choices": [{"index": 0,
            "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "echo", "arguments": "{\"text\":\"one\"}"}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "echo", "arguments": "{\"text\":\"two\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9}}),
    );
    let (fake, addr) = Fake::start(vec![calls], openai_ok("one and two")).await;
    let llm = Llm::new(&config(ProviderKind::Openai, addr)).unwrap();

    let first = complete(&llm, asking("Echo one and two")).await.unwrap();
    assert_eq!(first.text, "");
    assert_eq!(
        first.tool_calls,
        vec![
            ToolCall {
                id: "call_a".into(),
                name: "echo".into(),
                arguments: r#"{"text":"one"}"#.into()
            },
            ToolCall {
                id: "call_b".into(),
                name: "echo".into(),
                arguments: r#"{"text":"two"}"#.into()
            },
        ]
    );
    let tools = json!([{"type": "function", "function": {"name": "echo",
        "description": "Says the text back.", "parameters": echo_tool().parameters}}]);
    assert_eq!(last_body(&fake)["tools"], tools);

    let second = complete(&llm, with_results(asking("Echo one and two"), &first))
        .await
        .unwrap();
    assert_eq!(second.text, "one and two");
    assert!(second.tool_calls.is_empty());
    assert_eq!(
        last_body(&fake)["messages"],
        json!([
            {"role": "user", "content": "Echo one and two"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "echo", "arguments": "{\"text\":\"one\"}"}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "echo", "arguments": "{\"text\":\"two\"}"}}]},
            {"role": "tool", "content": "one", "tool_call_id": "call_a"},
            {"role": "tool", "content": "two", "tool_call_id": "call_b"}
        ])
    );
}

#[tokio::test]
async fn anthropic_tool_use_blocks_are_read_and_results_go_back_in_one_user_message() {
    let calls = Reply::Json(
        200,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
            "stop_reason": "tool_use",
            "content": [
                {"type": "text", "text": "Let me echo."},
                {"type": "tool_use", "id": "toolu_1", "name": "echo", "input": {"text": "one"}},
                {"type": "tool_use", "id": "toolu_2", "name": "echo", "input": {"text": "two"}}],
            "usage": {"input_tokens": 40, "output_tokens": 12}}),
    );
    let (fake, addr) = Fake::start(vec![calls], anthropic_ok(&["one and two"])).await;
    let llm = Llm::new(&config(ProviderKind::Anthropic, addr)).unwrap();

    let first = complete(&llm, asking("Echo one and two")).await.unwrap();
    assert_eq!(first.text, "Let me echo.");
    let ids: Vec<&str> = first.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["toolu_1", "toolu_2"]);
    assert_eq!(
        first.tool_calls[1].parsed_arguments().unwrap()["text"],
        "two"
    );
    assert_eq!(
        last_body(&fake)["tools"],
        json!([{"name": "echo", "description": "Says the text back.",
                "input_schema": echo_tool().parameters}])
    );

    let mut next = with_results(asking("Echo one and two"), &first);
    next.messages.push(ChatMessage::user("Thanks."));
    let second = complete(&llm, next).await.unwrap();
    assert_eq!(second.text, "one and two");
    assert_eq!(
        last_body(&fake)["messages"],
        json!([
            {"role": "user", "content": "Echo one and two"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me echo."},
                {"type": "tool_use", "id": "toolu_1", "name": "echo", "input": {"text": "one"}},
                {"type": "tool_use", "id": "toolu_2", "name": "echo", "input": {"text": "two"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "two"}]},
            {"role": "user", "content": "Thanks."}
        ])
    );
}

#[tokio::test]
async fn malformed_calls_reach_the_caller_as_data_or_a_bad_response_never_a_panic() {
    // OpenAI: arguments that are not JSON are kept raw, for the loop to answer as an error.
    let garbled = Reply::Json(
        200,
        json!({"choices": [{"message": {"role": "assistant", "tool_calls": [
            {"id": "call_x", "type": "function",
             "function": {"name": "echo", "arguments": "{text: unquoted"}}]}}]}),
    );
    let (_fake, addr) = Fake::start(vec![garbled], openai_ok("unused")).await;
    let llm = Llm::new(&config(ProviderKind::Openai, addr)).unwrap();
    let answer = complete(&llm, asking("x")).await.unwrap();
    let call = &answer.tool_calls[0];
    assert_eq!(call.arguments, "{text: unquoted");
    let why = call.parsed_arguments().unwrap_err();
    assert!(why.contains("not valid JSON"), "{why}");

    // OpenAI: neither text nor calls.
    let empty = Reply::Json(
        200,
        json!({"choices": [{"message": {"role": "assistant"}}]}),
    );
    let (_fake, addr) = Fake::start(vec![], empty).await;
    let mut c = config(ProviderKind::Openai, addr);
    c.max_retries = 0;
    let err = complete(&Llm::new(&c).unwrap(), asking("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::BadResponse(ref m) if m.contains("tool_calls")),
        "{err:?}"
    );

    // Anthropic: a tool_use block without its id cannot be answered.
    let no_id = Reply::Json(
        200,
        json!({"content": [{"type": "tool_use", "name": "echo", "input": {}}]}),
    );
    let (_fake, addr) = Fake::start(vec![], no_id).await;
    let mut c = config(ProviderKind::Anthropic, addr);
    c.max_retries = 0;
    let err = complete(&Llm::new(&c).unwrap(), asking("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::BadResponse(ref m) if m.contains("tool_use")),
        "{err:?}"
    );
}

#[tokio::test]
async fn scripted_replies_call_tools_then_answer_from_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        json!({"replies": [
            {"match": "ECHOED:", "reply": "The tool said it."},
            {"match": "echo please", "reply": "Calling.", "tool_calls": [
                {"name": "echo", "arguments": {"text": "ECHOED: hi"}},
                {"name": "echo", "arguments": "{broken"}]}
        ]})
        .to_string(),
    )
    .unwrap();
    let llm = Llm::new(&LlmConfig {
        provider: ProviderKind::Scripted,
        script: Some(script),
        ..LlmConfig::default()
    })
    .unwrap();
    let first = complete(&llm, asking("echo please")).await.unwrap();
    assert_eq!(first.text, "Calling.");
    assert_eq!(
        first.tool_calls,
        vec![
            ToolCall {
                id: "call_1_0".into(),
                name: "echo".into(),
                arguments: r#"{"text":"ECHOED: hi"}"#.into()
            },
            ToolCall {
                id: "call_1_1".into(),
                name: "echo".into(),
                arguments: "{broken".into()
            },
        ]
    );
    // The same conversation gets the same ids (a replayed turn matches its record).
    assert_eq!(complete(&llm, asking("echo please")).await.unwrap(), first);

    let mut next = asking("echo please");
    next.messages.push(ChatMessage::answered(&first));
    next.messages
        .push(ChatMessage::tool_result("call_1_0", "ECHOED: hi"));
    let second = complete(&llm, next).await.unwrap();
    assert_eq!(second.text, "The tool said it.");
    assert!(second.tool_calls.is_empty());
}
