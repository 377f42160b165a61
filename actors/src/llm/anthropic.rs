//! The `anthropic` provider: Anthropic's messages API.
//!
//! `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version: 2023-06-01`. The
//! API wants the system prompt beside the messages, not among them, and always a
//! `max_tokens`, so system-role messages are folded into `system` and `max_tokens` defaults
//! to [`DEFAULT_MAX_TOKENS`]. One call is one attempt; retries and the breaker live in
//! [`super::Llm`].

use serde::{Deserialize, Serialize};

use super::http::HttpClient;
use super::{
    BoxFuture, Completion, CompletionRequest, Provider, ProviderError, ProviderKind, Role,
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
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: &'a str,
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
        let messages = request
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| WireMessage {
                role: m.role,
                content: &m.content,
            })
            .collect();
        let body = WireRequest {
            model: &self.model,
            max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            system,
            messages,
            temperature: request.temperature,
        };
        let headers = [
            ("x-api-key", self.api_key.expose()),
            ("anthropic-version", ANTHROPIC_VERSION),
        ];
        let answer = self.http.post_json(&self.url, &headers, &body).await?;
        let response: WireResponse = answer.into_result(error_message)?;
        // An answer may legitimately hold no text block (e.g. an empty turn): that is "".
        let text: String = response
            .content
            .into_iter()
            .filter(|b| b.kind == "text")
            .filter_map(|b| b.text)
            .collect();
        let usage = response.usage;
        Ok(Completion {
            text,
            model: response.model.unwrap_or_else(|| self.model.clone()),
            input_tokens: usage.as_ref().and_then(|u| u.input_tokens),
            output_tokens: usage.as_ref().and_then(|u| u.output_tokens),
        })
    }
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
