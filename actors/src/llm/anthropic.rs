//! The `anthropic` provider: Anthropic's messages API.
//!
//! `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version: 2023-06-01`. The
//! API wants the system prompt beside the messages, not among them, and always a
//! `max_tokens`, so system-role messages are folded into `system` and `max_tokens` defaults
//! to [`DEFAULT_MAX_TOKENS`]. Tools go as `tools` with an `input_schema`; the model's calls
//! are `tool_use` blocks, and their results go back as `tool_result` blocks of one user
//! message (consecutive results are gathered into it, as the API requires). A request
//! with a delta sink is streamed (`anthropic_stream.rs`). One call is one attempt; retries
//! and the breaker live in [`super::Llm`].

use serde::{Deserialize, Serialize};

use super::http::HttpClient;
use super::{
    BoxFuture, ChatMessage, Completion, CompletionRequest, LlmError, Provider, ProviderError,
    ProviderKind, Role, ToolCall,
};

/// The API version this client speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` sent when the request sets none (the API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

#[derive(Debug)]
pub(crate) struct Anthropic {
    http: HttpClient,
    url: String,
    api_key: super::Secret,
    model: String,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    /// Streamed as Server-Sent Events ([`super::anthropic_stream`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: WireContent<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    Blocks(Vec<WireBlockOut<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlockOut<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: serde_json::Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
    },
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a serde_json::Value,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    content: Vec<WireBlock>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: String,
}

fn error_message(body: &[u8]) -> Option<String> {
    let e = serde_json::from_slice::<WireError>(body).ok()?.error;
    Some(match e.kind {
        Some(kind) => format!("{kind}: {}", e.message),
        None => e.message,
    })
}

impl Anthropic {
    pub fn new(http: HttpClient, root: &str, api_key: &str, model: &str) -> Anthropic {
        Anthropic {
            http,
            url: format!("{root}/v1/messages"),
            api_key: super::Secret::new(api_key),
            model: model.to_string(),
        }
    }

    async fn attempt(&self, request: &CompletionRequest) -> Result<Completion, ProviderError> {
        let system_parts: Vec<&str> = request
            .system
            .as_deref()
            .into_iter()
            .chain(
                request
                    .messages
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .map(|m| m.content.as_str()),
            )
            .collect();
        let system = (!system_parts.is_empty()).then(|| system_parts.join("\n\n"));
        let body = WireRequest {
            model: &self.model,
            max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            system,
            messages: wire_messages(&request.messages),
            temperature: request.temperature,
            tools: request
                .tools
                .iter()
                .map(|t| WireTool {
                    name: &t.name,
                    description: &t.description,
                    input_schema: &t.parameters,
                })
                .collect(),
            stream: request.stream.is_some(),
        };
        let headers = [
            ("x-api-key", self.api_key.expose()),
            ("anthropic-version", ANTHROPIC_VERSION),
        ];
        let answer = match &request.stream {
            None => self.http.post_json(&self.url, &headers, &body).await?,
            // An error, or a server that answered whole, is read as usual.
            Some(sink) => {
                let fold = super::anthropic_stream::Assembly::new(sink.clone());
                let streamed =
                    self.http
                        .post_streamed(&self.url, &headers, &body, fold, &self.model);
                match streamed.await? {
                    Ok(completion) => return Ok(completion),
                    Err(answer) => answer,
                }
            }
        };
        let response: WireResponse = answer.into_result(error_message)?;
        // An answer may legitimately hold no text block (e.g. an empty turn): that is "".
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in response.content {
            match block.kind.as_str() {
                "text" => text.extend(block.text),
                "tool_use" => tool_calls.push(tool_call(block)?),
                _ => {}
            }
        }
        let usage = response.usage;
        Ok(Completion {
            text,
            tool_calls,
            model: response.model.unwrap_or_else(|| self.model.clone()),
            input_tokens: usage.as_ref().and_then(|u| u.input_tokens),
            output_tokens: usage.as_ref().and_then(|u| u.output_tokens),
        })
    }
}

/// A `tool_use` block as a call; one without its id or name cannot be answered.
fn tool_call(block: WireBlock) -> Result<ToolCall, ProviderError> {
    match (block.id, block.name) {
        (Some(id), Some(name)) => Ok(ToolCall {
            id,
            name,
            arguments: block
                .input
                .unwrap_or_else(|| serde_json::json!({}))
                .to_string(),
        }),
        _ => Err(LlmError::BadResponse("a tool_use block without its id or name".into()).into()),
    }
}

/// The conversation as Anthropic wants it: no system messages (they went to `system`), an
/// assistant's calls as `tool_use` blocks after its text, and each run of tool results as
/// one user message of `tool_result` blocks.
fn wire_messages(messages: &[ChatMessage]) -> Vec<WireMessage<'_>> {
    let mut wire: Vec<WireMessage<'_>> = Vec::new();
    for m in messages.iter().filter(|m| m.role != Role::System) {
        match m.role {
            Role::Tool => {
                let result = WireBlockOut::ToolResult {
                    tool_use_id: m.tool_call_id.as_deref().unwrap_or_default(),
                    content: &m.content,
                };
                match wire.last_mut() {
                    Some(WireMessage {
                        role: Role::User,
                        content: WireContent::Blocks(blocks),
                    }) if blocks
                        .iter()
                        .all(|b| matches!(b, WireBlockOut::ToolResult { .. })) =>
                    {
                        blocks.push(result)
                    }
                    _ => wire.push(WireMessage {
                        role: Role::User,
                        content: WireContent::Blocks(vec![result]),
                    }),
                }
            }
            Role::Assistant if !m.tool_calls.is_empty() => {
                let text =
                    (!m.content.is_empty()).then_some(WireBlockOut::Text { text: &m.content });
                let calls = m.tool_calls.iter().map(|c| WireBlockOut::ToolUse {
                    id: &c.id,
                    name: &c.name,
                    // The API wants an object; arguments that were not one are sent as none.
                    input: serde_json::from_str::<serde_json::Value>(&c.arguments)
                        .ok()
                        .filter(serde_json::Value::is_object)
                        .unwrap_or_else(|| serde_json::json!({})),
                });
                wire.push(WireMessage {
                    role: Role::Assistant,
                    content: WireContent::Blocks(text.into_iter().chain(calls).collect()),
                });
            }
            role => wire.push(WireMessage {
                role,
                content: WireContent::Text(&m.content),
            }),
        }
    }
    wire
}

impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        Box::pin(self.attempt(request))
    }
}
