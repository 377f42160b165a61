//! The `openai` provider: OpenAI's chat-completions wire format, which OpenAI, vLLM, Ollama
//! and llama.cpp's server all speak, so one client covers hosted and self-hosted models.
//!
//! `POST {base_url}/chat/completions` with `Authorization: Bearer {api_key}` (omitted when no
//! key is configured, as self-hosted servers usually want none). Tools go as `tools` of
//! type `function`; the calls come back as the message's `tool_calls`, and each result goes
//! as a `tool` message naming its `tool_call_id`. A request with a delta sink is streamed
//! (`openai_stream.rs`). One call is one attempt; retries and the breaker live in
//! [`super::Llm`].

use serde::{Deserialize, Serialize};

use super::http::HttpClient;
use super::{
    BoxFuture, ChatMessage, Completion, CompletionRequest, LlmError, Provider, ProviderError,
    ProviderKind, Role, ToolCall,
};

#[derive(Debug)]
pub(crate) struct OpenAi {
    http: HttpClient,
    url: String,
    authorization: Option<super::Secret>,
    model: String,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    /// Streamed as Server-Sent Events ([`super::openai_stream`]), with the usage at the end.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    /// `null` for an assistant message that only calls tools.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a serde_json::Value,
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireCalled<'a>,
}

#[derive(Serialize)]
struct WireCalled<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireAnswer,
}

#[derive(Deserialize)]
struct WireAnswer {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireCallIn>>,
}

#[derive(Deserialize)]
struct WireCallIn {
    id: String,
    function: WireCalledIn,
}

#[derive(Deserialize)]
struct WireCalledIn {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireError {
    error: WireErrorBody,
}

#[derive(Deserialize)]
struct WireErrorBody {
    message: String,
}

impl OpenAi {
    pub fn new(http: HttpClient, root: &str, api_key: Option<&str>, model: &str) -> OpenAi {
        OpenAi {
            http,
            url: format!("{root}/chat/completions"),
            authorization: api_key
                .filter(|k| !k.is_empty())
                .map(|k| super::Secret::new(format!("Bearer {k}"))),
            model: model.to_string(),
        }
    }

    async fn attempt(&self, request: &CompletionRequest) -> Result<Completion, ProviderError> {
        let system = request.system.as_deref().map(|content| WireMessage {
            role: Role::System,
            content: Some(content),
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
        let messages = system
            .into_iter()
            .chain(request.messages.iter().map(wire_message))
            .collect();
        let tools = request
            .tools
            .iter()
            .map(|t| WireTool {
                kind: "function",
                function: WireFunction {
                    name: &t.name,
                    description: &t.description,
                    parameters: &t.parameters,
                },
            })
            .collect();
        let body = WireRequest {
            model: &self.model,
            messages,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            tools,
            stream: request.stream.is_some(),
            stream_options: request
                .stream
                .as_ref()
                .map(|_| serde_json::json!({"include_usage": true})),
        };
        let headers: Vec<(&str, &str)> = self
            .authorization
            .iter()
            .map(|value| ("authorization", value.expose()))
            .collect();
        let answer = match &request.stream {
            None => self.http.post_json(&self.url, &headers, &body).await?,
            // An error, or a server that answered whole, is read as usual.
            Some(sink) => {
                let fold = super::openai_stream::Assembly::new(sink.clone());
                let streamed =
                    self.http
                        .post_streamed(&self.url, &headers, &body, fold, &self.model);
                match streamed.await? {
                    Ok(completion) => return Ok(completion),
                    Err(answer) => answer,
                }
            }
        };
        let response: WireResponse = answer.into_result(|body| {
            serde_json::from_slice::<WireError>(body)
                .ok()
                .map(|e| e.error.message)
        })?;
        let Some(choice) = response.choices.into_iter().next() else {
            return Err(LlmError::BadResponse("no choices in the answer".into()).into());
        };
        let tool_calls: Vec<ToolCall> = choice
            .message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: c.function.arguments,
            })
            .collect();
        // A message that calls tools may have no text; one that does neither says nothing.
        let text = match choice.message.content {
            Some(text) => text,
            None if !tool_calls.is_empty() => String::new(),
            None => {
                return Err(LlmError::BadResponse(
                    "choices[0].message has neither content nor tool_calls".into(),
                )
                .into());
            }
        };
        let usage = response.usage;
        Ok(Completion {
            text,
            tool_calls,
            model: response.model.unwrap_or_else(|| self.model.clone()),
            input_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
            output_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
        })
    }
}

/// One message as OpenAI wants it: an assistant's calls as `tool_calls` (its content
/// `null` when it said nothing), a result with its `tool_call_id`.
fn wire_message(m: &ChatMessage) -> WireMessage<'_> {
    let calls_only = m.role == Role::Assistant && !m.tool_calls.is_empty() && m.content.is_empty();
    WireMessage {
        role: m.role,
        content: (!calls_only).then_some(m.content.as_str()),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| WireCall {
                id: &c.id,
                kind: "function",
                function: WireCalled {
                    name: &c.name,
                    arguments: &c.arguments,
                },
            })
            .collect(),
        tool_call_id: m.tool_call_id.as_deref(),
    }
}

impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }

    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        Box::pin(self.attempt(request))
    }
}
