//! The `scripted` provider: replies read from a JSON file, no network, fully deterministic.
//!
//! It exists so the whole system (planning included) can be tried out and tested offline.
//! The file:
//!
//! ```json
//! { "replies": [ {"match": "plan", "reply": "{\"steps\": []}"} ], "default": "ok" }
//! ```
//!
//! The first reply whose `match` occurs in the last message said to the model (a user's,
//! or a tool's result), or in the system prompt, wins; otherwise `default`; otherwise the
//! call fails with [`LlmError::NoScriptedReply`](super::LlmError::NoScriptedReply).
//!
//! A reply can call tools, as a model would, and then match the tools' results:
//!
//! ```json
//! { "replies": [
//!     {"match": "It is 21°C", "reply": "Warm today."},
//!     {"match": "weather", "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}
//! ] }
//! ```
//!
//! A call's id is `call_<n>_<i>`: `n` the number of messages before the answer, `i` its place
//! in the answer, so the same conversation gets the same ids (a replayed turn matches).
//! `arguments` may be a string, to script arguments that are not valid JSON.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    BoxFuture, Completion, CompletionRequest, LlmError, Provider, ProviderError, ProviderKind,
    Role, ToolCall,
};

/// How much of the unmatched message an error quotes.
const QUOTE_CHARS: usize = 200;

/// The parsed reply file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Script {
    #[serde(default)]
    pub replies: Vec<ScriptedReply>,
    #[serde(default)]
    pub default: Option<String>,
}

/// One rule of the reply file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ScriptedReply {
    /// A substring to look for (case-sensitive).
    #[serde(rename = "match")]
    pub pattern: String,
    /// The answer's text (may be empty when it calls tools).
    #[serde(default)]
    pub reply: String,
    #[serde(default)]
    pub tool_calls: Vec<ScriptedCall>,
}

/// A tool call a scripted reply makes.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    pub name: String,
    /// An object, or a string sent as the raw arguments.
    #[serde(default)]
    pub arguments: serde_json::Value,
}

#[derive(Debug)]
pub(crate) struct Scripted {
    script: Script,
    path: PathBuf,
}

impl Scripted {
    /// Reads and parses the file now, so a bad file stops the node at start, not mid-task.
    pub fn load(path: &Path) -> Result<Scripted, LlmError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            LlmError::NotConfigured(format!("llm.script: cannot read {}: {e}", path.display()))
        })?;
        let script: Script = serde_json::from_str(&text).map_err(|e| {
            LlmError::NotConfigured(format!(
                "llm.script: {} is not a valid script ({e}); expected \
                 {{\"replies\": [{{\"match\": \"…\", \"reply\": \"…\"}}], \"default\": \"…\"}}",
                path.display()
            ))
        })?;
        Ok(Scripted {
            script,
            path: path.to_path_buf(),
        })
    }

    fn answer(&self, request: &CompletionRequest) -> Result<Completion, LlmError> {
        let last_user = request
            .messages
            .iter()
            .rev()
            .find(|m| matches!(m.role, Role::User | Role::Tool))
            .map(|m| m.content.as_str())
            .unwrap_or("");
        let system: Vec<&str> = request
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
        let found = self.script.replies.iter().find(|r| {
            last_user.contains(&r.pattern) || system.iter().any(|s| s.contains(&r.pattern))
        });
        let (text, calls) = match (found, &self.script.default) {
            (Some(rule), _) => (rule.reply.clone(), rule.tool_calls.as_slice()),
            (None, Some(default)) => (default.clone(), &[][..]),
            (None, None) => {
                let mut quoted: String = last_user.chars().take(QUOTE_CHARS).collect();
                if quoted.len() < last_user.len() {
                    quoted.push('…');
                }
                return Err(LlmError::NoScriptedReply(format!(
                    "{quoted:?} (no rule of {} matches and it has no default)",
                    self.path.display()
                )));
            }
        };
        let n = request.messages.len();
        let tool_calls = calls
            .iter()
            .enumerate()
            .map(|(i, call)| ToolCall {
                id: format!("call_{n}_{i}"),
                name: call.name.clone(),
                arguments: match &call.arguments {
                    serde_json::Value::String(raw) => raw.clone(),
                    serde_json::Value::Null => "{}".into(),
                    other => other.to_string(),
                },
            })
            .collect();
        Ok(Completion {
            text,
            tool_calls,
            model: "scripted".into(),
            input_tokens: None,
            output_tokens: None,
        })
    }
}

impl Provider for Scripted {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Scripted
    }

    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        let result = self.answer(request).map_err(ProviderError::from);
        // Streamed word by word, as a model would.
        if let (Ok(completion), Some(sink)) = (&result, &request.stream) {
            completion
                .text
                .split_inclusive(' ')
                .for_each(|word| sink.send(word));
        }
        Box::pin(std::future::ready(result))
    }
}
