//! The `openai` provider: OpenAI's chat-completions wire format, which OpenAI, vLLM, Ollama
//! and llama.cpp's server all speak, so one client covers hosted and self-hosted models.
//!
//! `POST {base_url}/chat/completions` with `Authorization: Bearer {api_key}` (omitted when no
//! key is configured, as self-hosted servers usually want none). One call is one attempt;
//! retries and the breaker live in [`super::Llm`].

use serde::{Deserialize, Serialize};

use super::http::HttpClient;
use super::{
    BoxFuture, ChatMessage, Completion, CompletionRequest, LlmError, Provider, ProviderError,
    ProviderKind, Role,
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
            content,
        });
        let messages = system
            .into_iter()
            .chain(request.messages.iter().map(|m: &ChatMessage| WireMessage {
                role: m.role,
                content: &m.content,
            }))
            .collect();
        let body = WireRequest {
            model: &self.model,
            messages,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        let headers: Vec<(&str, &str)> = self
            .authorization
            .iter()
            .map(|value| ("authorization", value.expose()))
            .collect();
        let answer = self.http.post_json(&self.url, &headers, &body).await?;
        let response: WireResponse = answer.into_result(|body| {
            serde_json::from_slice::<WireError>(body)
                .ok()
                .map(|e| e.error.message)
        })?;
        let Some(choice) = response.choices.into_iter().next() else {
            return Err(LlmError::BadResponse("no choices in the answer".into()).into());
        };
        let Some(text) = choice.message.content else {
            return Err(
                LlmError::BadResponse("choices[0].message.content is missing".into()).into(),
            );
        };
        let usage = response.usage;
        Ok(Completion {
            text,
            model: response.model.unwrap_or_else(|| self.model.clone()),
            input_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
            output_tokens: usage.as_ref().and_then(|u| u.completion_tokens),
        })
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
