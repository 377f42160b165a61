//! OpenAI's streamed chat completion (`"stream": true`): `data:` chunks whose `delta`s
//! carry the text and, by `index`, each tool call's id, name and arguments in pieces;
//! with `stream_options.include_usage`, a last chunk carries the usage; `data: [DONE]`
//! ends it. [`Assembly`] folds the chunks into the [`Completion`] a plain answer gives.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Completion, DeltaSink, LlmError, ToolCall};

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ChunkError>,
}

#[derive(Deserialize)]
struct ChunkError {
    message: String,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<CallDelta>,
}

#[derive(Deserialize)]
struct CallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// A streamed answer so far.
pub(super) struct Assembly {
    sink: DeltaSink,
    text: String,
    calls: BTreeMap<usize, ToolCall>,
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
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            LlmError::BadResponse(format!(
                "{e} in stream chunk {}",
                super::http::quote(data.as_bytes())
            ))
        })?;
        if let Some(error) = chunk.error {
            return Err(LlmError::BadResponse(format!(
                "the stream failed: {}",
                error.message
            )));
        }
        self.model = chunk.model.or(self.model.take());
        if let Some(usage) = chunk.usage {
            self.input_tokens = usage.prompt_tokens.or(self.input_tokens);
            self.output_tokens = usage.completion_tokens.or(self.output_tokens);
        }
        for delta in chunk.choices.into_iter().filter_map(|c| c.delta) {
            if let Some(text) = delta.content {
                self.sink.send(&text);
                self.text.push_str(&text);
            }
            for call in delta.tool_calls {
                let entry = self.calls.entry(call.index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = call.id {
                    entry.id = id;
                }
                if let Some(function) = call.function {
                    if let Some(name) = function.name {
                        entry.name.push_str(&name);
                    }
                    if let Some(arguments) = function.arguments {
                        entry.arguments.push_str(&arguments);
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(self, model: &str) -> Result<Completion, LlmError> {
        if !self.done {
            return Err(LlmError::BadResponse(
                "the stream ended before `data: [DONE]`".into(),
            ));
        }
        if let Some(call) = self.calls.values().find(|c| c.name.is_empty()) {
            return Err(LlmError::BadResponse(format!(
                "a streamed tool call has no name (id {:?})",
                call.id
            )));
        }
        Ok(Completion {
            text: self.text,
            tool_calls: self.calls.into_values().collect(),
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
    fn chunks_fold_into_text_calls_and_usage_and_text_streams_out() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            DeltaSink::new(move |t: &str| seen.lock().unwrap().push(t.to_string()))
        };
        let mut a = Assembly::new(sink);
        for data in [
            r#"{"model":"m-1","choices":[{"delta":{"role":"assistant","content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"content":"lo"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"echo","arguments":"{\"te"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"xt\":1}"}}]}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            "[DONE]",
        ] {
            a.feed(data).unwrap();
        }
        let c = a.finish("m").unwrap();
        assert_eq!(c.text, "Hello");
        assert_eq!(c.model, "m-1");
        assert_eq!((c.input_tokens, c.output_tokens), (Some(5), Some(2)));
        assert_eq!(c.tool_calls.len(), 1);
        assert_eq!(c.tool_calls[0].arguments, "{\"text\":1}");
        assert_eq!(*seen.lock().unwrap(), ["Hel", "lo"]);

        let mut cut = Assembly::new(DeltaSink::new(|_: &str| {}));
        cut.feed(r#"{"choices":[{"delta":{"content":"x"}}]}"#)
            .unwrap();
        assert!(cut.finish("m").is_err(), "no [DONE]: cut short");
        assert!(
            Assembly::new(DeltaSink::new(|_: &str| {}))
                .feed("{nope")
                .is_err()
        );
    }
}
