//! The `scripted` provider: replies read from a JSON file, no network, fully deterministic.
//!
//! It exists so the whole system (planning included) can be tried out and tested offline.
//! The file:
//!
//! ```json
//! { "replies": [ {"match": "plan", "reply": "{\"steps\": []}"} ], "default": "ok" }
//! ```
//!
//! The first reply whose `match` occurs in the last user message, or in the system prompt,
//! wins; otherwise `default`; otherwise the call fails with
//! [`LlmError::NoScriptedReply`](super::LlmError::NoScriptedReply).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    BoxFuture, Completion, CompletionRequest, LlmError, Provider, ProviderError, ProviderKind, Role,
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
    pub reply: String,
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
            .find(|m| m.role == Role::User)
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
        let text = match (found, &self.script.default) {
            (Some(rule), _) => rule.reply.clone(),
            (None, Some(default)) => default.clone(),
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
        Ok(Completion {
            text,
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
        Box::pin(std::future::ready(result))
    }
}
