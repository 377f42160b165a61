//! Anthropic's streamed messages (`"stream": true`): `message_start` (model, input
//! tokens), per content block a `content_block_start` (`text`, or `tool_use` with its id
//! and name) and `content_block_delta`s (`text_delta`, or `input_json_delta` pieces of the
//! call's input), `message_delta` (output tokens), `message_stop`; an `error` event fails
//! the call. [`Assembly`] folds them into the [`Completion`] a plain answer gives.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Completion, DeltaSink, LlmError, ToolCall};

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: Message,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    MessageDelta {
        #[serde(default)]
        usage: Option<Usage>,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

/// A tool call being streamed: id, name, the input's JSON so far.
struct Call {
    id: String,
    name: String,
    input: String,
}

/// A streamed answer so far.
pub(super) struct Assembly {
    sink: DeltaSink,
    text: String,
    calls: BTreeMap<usize, Call>,
    model: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    done: bool,
}

impl Assembly {
    pub fn new(sink: DeltaSink) -> Assembly {
        Assembly {
            sink,
            text: String::new(),
            calls: BTreeMap::new(),
            model: None,
            input_tokens: None,
            output_tokens: None,
            done: false,
        }
    }
}

impl super::http::Fold for Assembly {
    fn feed(&mut self, data: &str) -> Result<(), LlmError> {
        let event: Event = serde_json::from_str(data).map_err(|e| {
            LlmError::BadResponse(format!(
                "{e} in stream event {}",
                super::http::quote(data.as_bytes())
            ))
        })?;
        match event {
            Event::MessageStart { message } => {
                self.model = message.model;
                self.input_tokens = message.usage.and_then(|u| u.input_tokens);
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } if content_block.kind == "tool_use" => {
                let call = Call {
                    id: content_block.id.unwrap_or_default(),
                    name: content_block.name.unwrap_or_default(),
                    input: String::new(),
                };
                self.calls.insert(index, call);
            }
            Event::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => {
                    self.sink.send(&text);
                    self.text.push_str(&text);
                }
                BlockDelta::InputJsonDelta { partial_json } => {
                    if let Some(call) = self.calls.get_mut(&index) {
                        call.input.push_str(&partial_json);
                    }
                }
                BlockDelta::Other => {}
            },
            Event::MessageDelta { usage } => {
                self.output_tokens = usage.and_then(|u| u.output_tokens).or(self.output_tokens);
            }
            Event::MessageStop => self.done = true,
            Event::Error { error } => {
                return Err(LlmError::BadResponse(format!(
                    "the stream failed: {}",
                    error.message
                )));
            }
            Event::ContentBlockStart { .. } | Event::Other => {}
        }
        Ok(())
    }

    fn finish(self, model: &str) -> Result<Completion, LlmError> {
        if !self.done {
            return Err(LlmError::BadResponse(
                "the stream ended before `message_stop`".into(),
            ));
        }
        let mut tool_calls = Vec::new();
        for call in self.calls.into_values() {
            if call.id.is_empty() || call.name.is_empty() {
                return Err(LlmError::BadResponse(
                    "a tool_use block without its id or name".into(),
                ));
            }
            // A call without input deltas has the empty object as its input.
            let arguments = if call.input.trim().is_empty() {
                "{}".to_string()
            } else {
                call.input
            };
            tool_calls.push(ToolCall {
                id: call.id,
                name: call.name,
                arguments,
            });
        }
        Ok(Completion {
            text: self.text,
            tool_calls,
            model: self.model.unwrap_or_else(|| model.to_string()),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::http::Fold as _;
    use super::*;

    #[test]
    fn events_fold_into_text_calls_and_usage_and_text_streams_out() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            DeltaSink::new(move |t: &str| seen.lock().unwrap().push(t.to_string()))
        };
        let mut a = Assembly::new(sink);
        for data in [
            r#"{"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":9,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"check."}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"tu_1","name":"echo","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"text\": "}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"hi\"}"}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":12}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            a.feed(data).unwrap();
        }
        let c = a.finish("m").unwrap();
        assert_eq!(c.text, "Let me check.");
        assert_eq!(c.model, "claude-x");
        assert_eq!((c.input_tokens, c.output_tokens), (Some(9), Some(12)));
        assert_eq!(c.tool_calls[0].name, "echo");
        assert_eq!(c.tool_calls[0].arguments, "{\"text\": \"hi\"}");
        assert_eq!(*seen.lock().unwrap(), ["Let me ", "check."]);

        let mut failed = Assembly::new(DeltaSink::new(|_: &str| {}));
        let error =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(failed.feed(error).is_err());
    }
}
