//! Worker: computational steps — `llm` completions, `json` transforms, `template` text and
//! `hash` digests — run off the async threads where they are heavy.
//!
//! These steps need no outside resource but the LLM provider, so they are checked and run
//! here rather than among the Executor's tools; they share the tools' output envelope
//! ([`ToolOutput`]) so the Critic judges them the same way.

use std::borrow::Cow;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha512};

use crate::llm::{ChatMessage, CompletionRequest, DeltaSink, Llm, ToolSpec};
use crate::tools::output::{Capped, parse_json, render};
use crate::tools::{ToolError, ToolOutput};

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &[
    "llm.complete",
    "data.transform",
    "text.template",
    "data.hash",
];

/// The step tools a worker runs, and the capability each is routed by.
pub const TOOLS: &[(&str, &str)] = &[
    ("llm", "llm.complete"),
    ("json", "data.transform"),
    ("template", "text.template"),
    ("hash", "data.hash"),
];

/// Inputs larger than this are hashed on a blocking thread.
const BLOCKING_ABOVE: usize = 64 * 1024;

/// Most tokens an `llm` step may ask for.
pub const MAX_TOKENS: u64 = 1_000_000;

pub fn is_worker_tool(tool: &str) -> bool {
    TOOLS.iter().any(|(t, _)| *t == tool)
}

/// Checks a worker step's arguments at submission.
pub fn validate(tool: &str, args: &Value, llm_configured: bool) -> Result<(), String> {
    let obj = args.as_object().ok_or("args: must be a JSON object")?;
    let allowed: &[&str] = match tool {
        "llm" => &["prompt", "messages", "tools", "system", "max_tokens"],
        "json" => &["pointer", "select"],
        "template" => &["template", "vars"],
        "hash" => &["algorithm", "text"],
        other => return Err(format!("unknown worker tool `{other}`")),
    };
    if let Some(key) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "args.{key}: unknown argument for `{tool}`; allowed: {}",
            allowed.join(", ")
        ));
    }
    match tool {
        "llm" if !llm_configured => Err(format!("`llm` steps need a provider: {}", crate::llm::NOT_CONFIGURED)),
        "llm" if obj.contains_key("messages") == obj.contains_key("prompt") => Err("args: give `prompt` (a string) or `messages` (a conversation), one of them".into()),
        "llm" if obj.get("prompt").is_some_and(|p| !p.is_string()) => Err("args.prompt: must be a string".into()),
        "llm" if obj.get("messages").is_some_and(|m| serde_json::from_value::<Vec<ChatMessage>>(m.clone()).is_err()) => {
            Err("args.messages: must be a list of {\"role\": system|user|assistant|tool, \"content\": text, ...}".into())
        }
        "llm" if obj.get("tools").is_some_and(|t| serde_json::from_value::<Vec<ToolSpec>>(t.clone()).is_err()) => {
            Err("args.tools: must be a list of {\"name\", \"description\", \"parameters\"}".into())
        }
        "llm" if obj.get("max_tokens").is_some_and(|n| !n.as_u64().is_some_and(|n| (1..=MAX_TOKENS).contains(&n))) => {
            Err(format!("args.max_tokens: must be a whole number from 1 to {MAX_TOKENS}"))
        }
        "json" => match (obj.get("pointer"), obj.get("select")) {
            (Some(Value::String(p)), None) if p.is_empty() || p.starts_with('/') => Ok(()),
            (None, Some(Value::Object(sel))) if sel.values().all(|v| v.as_str().is_some_and(|p| p.is_empty() || p.starts_with('/'))) => Ok(()),
            _ => Err("args: give `pointer` (a JSON pointer such as /a/0) or `select` (an object of name → pointer)".into()),
        },
        "template" if !obj.get("template").is_some_and(Value::is_string) => Err("args.template: a string is required".into()),
        "hash" => match obj.get("algorithm").and_then(Value::as_str).unwrap_or("sha256") {
            "sha256" | "sha512" => Ok(()),
            other => Err(format!("args.algorithm: `{other}` is not supported; allowed: sha256, sha512")),
        },
        _ => Ok(()),
    }
}

/// Runs a worker step on `input` (the output of its `input_from` step); texts it builds
/// are kept up to `cap` bytes (`tools.max_output_bytes`).
pub async fn run(
    tool: &str,
    args: &Value,
    input: Option<&str>,
    llm: &Llm,
    cap: usize,
    stream: Option<DeltaSink>,
) -> Result<ToolOutput, ToolError> {
    validate(tool, args, llm.is_configured()).map_err(ToolError::InvalidArgs)?;
    let text = match tool {
        "llm" if args.get("messages").is_some() => return converse(args, llm, cap, stream).await,
        "llm" => {
            let prompt = fill(
                args["prompt"].as_str().unwrap_or_default(),
                input,
                &Map::new(),
                cap,
            )
            .into_text();
            let request = CompletionRequest {
                system: system(args),
                max_tokens: max_tokens(args),
                stream,
                ..CompletionRequest::user(prompt)
            };
            llm.complete(request)
                .await
                .map_err(|e| ToolError::Failed(e.to_string()))?
                .text
        }
        "json" => transform(args, input)?,
        "template" => {
            let vars = args
                .get("vars")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let out = fill(
                args["template"].as_str().unwrap_or_default(),
                input,
                &vars,
                cap,
            );
            let (bytes, truncated) = (out.bytes(), out.truncated());
            let text = out.into_text();
            return Ok(ToolOutput {
                bytes,
                json: parse_json(&text, truncated),
                exit_code: Some(0),
                text,
                truncated,
                ..Default::default()
            });
        }
        "hash" => {
            let data = args
                .get("text")
                .and_then(Value::as_str)
                .or(input)
                .unwrap_or_default()
                .to_string();
            let algorithm = args
                .get("algorithm")
                .and_then(Value::as_str)
                .unwrap_or("sha256")
                .to_string();
            let digest = move || match algorithm.as_str() {
                "sha512" => hex::encode(Sha512::digest(data.as_bytes())),
                _ => hex::encode(Sha256::digest(data.as_bytes())),
            };
            if input.map_or(0, str::len) > BLOCKING_ABOVE {
                tokio::task::spawn_blocking(digest)
                    .await
                    .map_err(|e| ToolError::Failed(e.to_string()))?
            } else {
                digest()
            }
        }
        other => return Err(ToolError::UnknownTool(other.to_string())),
    };
    Ok(ToolOutput {
        bytes: text.len() as u64,
        json: serde_json::from_str(&text).ok(),
        exit_code: Some(0),
        text,
        ..Default::default()
    })
}

/// An `llm` step given a conversation (and maybe tools): the answer's text, and as its
/// JSON the whole completion, the tool calls the model asks for included.
async fn converse(
    args: &Value,
    llm: &Llm,
    cap: usize,
    stream: Option<DeltaSink>,
) -> Result<ToolOutput, ToolError> {
    let field = |name: &str| args.get(name).cloned().unwrap_or(Value::Null);
    let invalid = |e: serde_json::Error| ToolError::InvalidArgs(e.to_string());
    let request = CompletionRequest {
        system: system(args),
        messages: serde_json::from_value(field("messages")).map_err(invalid)?,
        tools: match args.get("tools") {
            Some(tools) => serde_json::from_value(tools.clone()).map_err(invalid)?,
            None => Vec::new(),
        },
        max_tokens: max_tokens(args),
        temperature: None,
        stream,
    };
    let completion = llm
        .complete(request)
        .await
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    let mut text = Capped::new(cap);
    text.push(completion.text.as_bytes());
    Ok(ToolOutput {
        json: serde_json::to_value(&completion).ok(),
        exit_code: Some(0),
        truncated: text.truncated(),
        bytes: text.bytes(),
        text: text.into_text(),
        ..Default::default()
    })
}

/// An `llm` step's system prompt.
fn system(args: &Value) -> Option<String> {
    args.get("system")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// An `llm` step's token bound (checked at submission to fit).
fn max_tokens(args: &Value) -> Option<u32> {
    args.get("max_tokens")
        .and_then(Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// `{{input}}` and `{{name}}` (from `vars`) replaced in one pass, within `cap` bytes;
/// unknown names are left as they are, and what is put in is not expanded again.
fn fill<'v>(
    template: &str,
    input: Option<&'v str>,
    vars: &'v Map<String, Value>,
    cap: usize,
) -> Capped {
    render(template, cap, |name| {
        if name == "input" {
            return Some(Cow::Borrowed(input.unwrap_or_default()));
        }
        vars.get(name).map(|value| match value.as_str() {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(value.to_string()),
        })
    })
}

fn transform(args: &Value, input: Option<&str>) -> Result<String, ToolError> {
    let doc: Value = serde_json::from_str(input.unwrap_or_default())
        .map_err(|e| ToolError::Failed(format!("the input is not JSON: {e}")))?;
    let pick = |pointer: &str| {
        doc.pointer(pointer)
            .cloned()
            .ok_or_else(|| ToolError::Failed(format!("nothing at {pointer:?} in the input")))
    };
    let out = match (
        args.get("pointer").and_then(Value::as_str),
        args.get("select"),
    ) {
        (Some(pointer), _) => pick(pointer)?,
        (None, Some(Value::Object(select))) => {
            let mut obj = Map::new();
            for (name, pointer) in select {
                obj.insert(name.clone(), pick(pointer.as_str().unwrap_or_default())?);
            }
            Value::Object(obj)
        }
        _ => return Err(ToolError::InvalidArgs("give `pointer` or `select`".into())),
    };
    Ok(match out {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CAP: usize = 1 << 20;

    fn none() -> Llm {
        Llm::new(&crate::llm::LlmConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn data_steps_compute_what_they_say() {
        let llm = none();
        let doc = r#"{"a": [{"b": "x"}, {"b": 2}]}"#;
        let out = run(
            "json",
            &json!({"pointer": "/a/1/b"}),
            Some(doc),
            &llm,
            CAP,
            None,
        )
        .await
        .unwrap();
        assert_eq!(out.text, "2");
        let out = run(
            "json",
            &json!({"select": {"first": "/a/0/b"}}),
            Some(doc),
            &llm,
            CAP,
            None,
        )
        .await
        .unwrap();
        assert_eq!(out.json, Some(json!({"first": "x"})));
        let out = run(
            "template",
            &json!({"template": "{{greet}}, {{input}}!", "vars": {"greet": "Hi"}}),
            Some("Bob"),
            &llm,
            CAP,
            None,
        )
        .await
        .unwrap();
        assert_eq!(out.text, "Hi, Bob!");
        let out = run("hash", &json!({}), Some("abc"), &llm, CAP, None)
            .await
            .unwrap();
        assert_eq!(
            out.text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            run(
                "json",
                &json!({"pointer": "/zz"}),
                Some(doc),
                &llm,
                CAP,
                None
            )
            .await
            .is_err()
        );
        assert!(
            run(
                "json",
                &json!({"pointer": "/a"}),
                Some("not json"),
                &llm,
                CAP,
                None
            )
            .await
            .is_err()
        );
    }

    #[tokio::test]
    async fn templates_expand_once_and_within_the_cap() {
        let llm = none();
        // Values are not expanded again: no doubling from one variable to the next.
        let vars = json!({"a": "{{b}}{{b}}", "b": "{{input}}{{input}}"});
        let args = json!({"template": "{{a}}|{{b}}|{{input}}", "vars": vars});
        let out = run("template", &args, Some("{{a}}"), &llm, CAP, None)
            .await
            .unwrap();
        assert_eq!(out.text, "{{b}}{{b}}|{{input}}{{input}}|{{a}}");
        // A template repeating its input is cut at the cap and counted in full.
        let args = json!({"template": "{{input}}".repeat(10_000)});
        let input = "y".repeat(100_000);
        let out = run("template", &args, Some(&input), &llm, 64, None)
            .await
            .unwrap();
        assert!(out.truncated);
        assert_eq!(out.text, "y".repeat(64));
        assert_eq!(out.bytes, 1_000_000_000);
    }

    #[test]
    fn max_tokens_is_a_bounded_count() {
        for n in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(1e308),
            json!(MAX_TOKENS + 1),
        ] {
            let args = json!({"prompt": "x", "max_tokens": n});
            let e = validate("llm", &args, true).unwrap_err();
            assert!(e.starts_with("args.max_tokens"), "{n}: {e}");
        }
        validate("llm", &json!({"prompt": "x", "max_tokens": 64}), true).unwrap();
    }

    #[test]
    fn validation_names_the_argument() {
        assert!(
            validate("hash", &json!({"algorithm": "md5"}), false)
                .unwrap_err()
                .contains("algorithm")
        );
        assert!(validate("json", &json!({"pointer": "a"}), false).is_err());
        assert!(
            validate("template", &json!({"template": "x", "colour": 1}), false)
                .unwrap_err()
                .contains("colour")
        );
        assert!(
            validate("llm", &json!({"prompt": "x"}), false)
                .unwrap_err()
                .contains("llm.provider")
        );
        assert!(validate("llm", &json!({"prompt": "x"}), true).is_ok());
    }
}
