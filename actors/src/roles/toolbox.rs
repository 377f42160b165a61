//! The step tools an agent's LLM may call, as the model sees them: a name, what the tool
//! does, and a JSON Schema of its arguments. The schemas say what the tools' own parsers
//! accept; a call is still checked by those parsers (and the node's tool settings) before
//! it runs, and a refusal goes back to the model as the call's result.

use serde_json::{Value, json};

use crate::llm::ToolSpec;

/// (name, description, argument schema) of every tool an agent may be given.
fn table() -> [(&'static str, &'static str, Value); 8] {
    [
        (
            "echo",
            "Returns the given text unchanged.",
            object(json!({"text": {"type": "string"}}), &["text"]),
        ),
        (
            "sleep",
            "Waits the given number of milliseconds (at most one hour).",
            object(
                json!({"ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000}}),
                &["ms"],
            ),
        ),
        (
            "http",
            "Makes an HTTP request to an allowed host and returns the status and the body.",
            object(
                json!({"url": {"type": "string"},
                       "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]},
                       "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                       "body": {}}),
                &["url"],
            ),
        ),
        (
            "file",
            "Reads, writes, appends to, lists or deletes a file of the task's workspace.",
            object(
                json!({"op": {"type": "string", "enum": ["read", "write", "append", "list", "delete"]},
                       "path": {"type": "string"},
                       "content": {"type": "string"}}),
                &["op"],
            ),
        ),
        (
            "shell",
            "Runs an allowed program with arguments (no shell syntax) and returns its output.",
            object(
                json!({"argv": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                       "env": {"type": "object", "additionalProperties": {"type": "string"}},
                       "cwd": {"type": "string"}}),
                &["argv"],
            ),
        ),
        (
            "memory",
            "Keeps facts: put a value under a key, get or delete it, or search by text and tags; \
             scope `task`, `session` (across the session's tasks) or `global`.",
            object(
                json!({"op": {"type": "string", "enum": ["put", "get", "search", "delete"]},
                       "key": {"type": "string"},
                       "value": {},
                       "tags": {"type": "array", "items": {"type": "string"}},
                       "query": {"type": "string"},
                       "scope": {"type": "string", "enum": ["task", "session", "global"]},
                       "ttl_secs": {"type": "number", "exclusiveMinimum": 0}}),
                &["op"],
            ),
        ),
        (
            "template",
            "Fills {{name}} placeholders of a template with the given variables.",
            object(
                json!({"template": {"type": "string"},
                       "vars": {"type": "object"}}),
                &["template"],
            ),
        ),
        (
            "hash",
            "Returns the hex digest of a text.",
            object(
                json!({"text": {"type": "string"},
                       "algorithm": {"type": "string", "enum": ["sha256", "sha512"]}}),
                &["text"],
            ),
        ),
    ]
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required,
           "additionalProperties": false})
}

/// The names of the tools an agent may be given.
pub fn names() -> Vec<&'static str> {
    table().iter().map(|(name, _, _)| *name).collect()
}

/// The specs of `tools` (names [`names`] knows; others are left out).
pub fn specs(tools: &[String]) -> Vec<ToolSpec> {
    table()
        .into_iter()
        .filter(|(name, _, _)| tools.iter().any(|t| t == name))
        .map(|(name, description, parameters)| ToolSpec {
            name: name.to_string(),
            description: description.to_string(),
            parameters,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_an_agent_can_call_is_a_step_tool() {
        let step_tools: Vec<&str> = crate::tools::Tools::names()
            .iter()
            .copied()
            .chain(crate::roles::worker::TOOLS.iter().map(|(t, _)| *t))
            .chain(["memory"])
            .collect();
        for name in names() {
            assert!(step_tools.contains(&name), "{name} is not a step tool");
        }
        let picked = specs(&["http".into(), "echo".into(), "nope".into()]);
        let picked: Vec<&str> = picked.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(picked, ["echo", "http"]);
    }
}
