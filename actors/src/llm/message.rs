//! What is said to an LLM and what it answers, independent of any provider's wire format:
//! messages, the tools the model may call, the calls it asks for and their results.
//!
//! Tool calling follows the shape both providers share: an assistant message carries the
//! calls it asks for, each with an id; each result comes back as a `tool` message naming
//! that id. A call's arguments stay the model's raw JSON text, so arguments that are not
//! valid JSON can be answered as a tool error the model sees, rather than lost.

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering one call of the assistant message before it.
    Tool,
}

/// One message of a conversation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// The tools an assistant message asks to call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Which call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    fn said(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::said(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::said(Role::Assistant, content)
    }

    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::said(Role::System, content)
    }

    /// What the model answered, its text and the calls it asked for, as history.
    pub fn answered(completion: &Completion) -> ChatMessage {
        ChatMessage {
            tool_calls: completion.tool_calls.clone(),
            ..ChatMessage::assistant(completion.text.clone())
        }
    }

    /// The result of the call `call_id` (an error is a result too: the model reads it).
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            tool_call_id: Some(call_id.into()),
            ..ChatMessage::said(Role::Tool, content)
        }
    }
}

/// A tool the model may call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema of the arguments (an object schema).
    pub parameters: serde_json::Value,
}

/// A call the model asked for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The provider's id of the call, which its result must name.
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not yet checked.
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as a JSON object, or why they are not one.
    pub fn parsed_arguments(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let text = if self.arguments.trim().is_empty() {
            "{}"
        } else {
            &self.arguments
        };
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(other) => Err(format!(
                "the arguments of {} must be a JSON object, not {other}",
                self.name
            )),
            Err(e) => Err(format!(
                "the arguments of {} are not valid JSON: {e}",
                self.name
            )),
        }
    }
}

/// A completion to ask for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CompletionRequest {
    /// The system prompt, if any.
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Upper bound on generated tokens (anthropic sends 1024 when unset).
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// The tools the model may call (none: a plain completion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Where the answer's text goes piece by piece as the provider streams it; `None`:
    /// ask for the answer whole.
    #[serde(skip)]
    pub stream: Option<DeltaSink>,
}

/// Takes an answer's text as it streams in ([`CompletionRequest::stream`]).
#[derive(Clone)]
pub struct DeltaSink(std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl DeltaSink {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> DeltaSink {
        DeltaSink(std::sync::Arc::new(f))
    }

    pub fn send(&self, text: &str) {
        if !text.is_empty() {
            (self.0)(text);
        }
    }
}

impl std::fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeltaSink")
    }
}

/// Where the text goes does not change what is asked: requests compare by their content.
impl PartialEq for DeltaSink {
    fn eq(&self, _: &DeltaSink) -> bool {
        true
    }
}

impl CompletionRequest {
    /// A request of one user message.
    pub fn user(content: impl Into<String>) -> CompletionRequest {
        CompletionRequest {
            messages: vec![ChatMessage::user(content)],
            ..CompletionRequest::default()
        }
    }
}

/// The answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    /// The tools the model asks to call before it answers (empty: this is its answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The model that answered, as the provider names it (`"scripted"` for scripted).
    pub model: String,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(arguments: &str) -> ToolCall {
        ToolCall {
            id: "c1".into(),
            name: "echo".into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn arguments_must_be_a_json_object() {
        assert_eq!(
            call(r#"{"text": "hi"}"#).parsed_arguments().unwrap()["text"],
            "hi"
        );
        assert!(call("").parsed_arguments().unwrap().is_empty());
        let not_json = call("{text: hi").parsed_arguments().unwrap_err();
        assert!(not_json.contains("not valid JSON"), "{not_json}");
        let array = call("[1]").parsed_arguments().unwrap_err();
        assert!(array.contains("must be a JSON object"), "{array}");
    }

    #[test]
    fn plain_messages_serialize_as_before() {
        let text = serde_json::to_string(&ChatMessage::user("hi")).unwrap();
        assert_eq!(text, r#"{"role":"user","content":"hi"}"#);
        let back: ChatMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ChatMessage::user("hi"));
    }
}
