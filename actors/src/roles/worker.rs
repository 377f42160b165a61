//! Worker: computational steps — `llm` completions, `json` transforms, `template` text and
//! `hash` digests — run off the async threads where they are heavy.
//!
//! These steps need no outside resource but the LLM provider, so they are checked and run
//! here rather than among the Executor's tools; they share the tools' output envelope
//! ([`ToolOutput`]) so the Critic judges them the same way.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha512};

use crate::llm::{CompletionRequest, Llm};
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

pub fn is_worker_tool(tool: &str) -> bool {
    TOOLS.iter().any(|(t, _)| *t == tool)
}

/// Checks a worker step's arguments at submission.
pub fn validate(tool: &str, args: &Value, llm_configured: bool) -> Result<(), String> {
    let obj = args.as_object().ok_or("args: must be a JSON object")?;
    let allowed: &[&str] = match tool {
        "llm" => &["prompt", "system", "max_tokens"],
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
        "llm" if !obj.get("prompt").is_some_and(Value::is_string) => Err("args.prompt: a string is required".into()),
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

/// Runs a worker step on `input` (the output of its `input_from` step).
pub async fn run(
    tool: &str,
    args: &Value,
    input: Option<&str>,
    llm: &Llm,
) -> Result<ToolOutput, ToolError> {
    validate(tool, args, llm.is_configured()).map_err(ToolError::InvalidArgs)?;
    let text = match tool {
        "llm" => {
            let prompt = fill(
                args["prompt"].as_str().unwrap_or_default(),
                input,
                &Map::new(),
            );
            let request = CompletionRequest {
                system: args
                    .get("system")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                max_tokens: args
                    .get("max_tokens")
                    .and_then(Value::as_u64)
                    .map(|n| n as u32),
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
            fill(args["template"].as_str().unwrap_or_default(), input, &vars)
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

/// `{{input}}` and `{{name}}` (from `vars`) replaced; unknown names are left as they are.
fn fill(template: &str, input: Option<&str>, vars: &Map<String, Value>) -> String {
    let mut out = template.replace("{{input}}", input.unwrap_or_default());
    for (name, value) in vars {
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        out = out.replace(&format!("{{{{{name}}}}}"), &text);
    }
    out
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

    fn none() -> Llm {
        Llm::new(&crate::llm::LlmConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn data_steps_compute_what_they_say() {
        let llm = none();
        let doc = r#"{"a": [{"b": "x"}, {"b": 2}]}"#;
        let out = run("json", &json!({"pointer": "/a/1/b"}), Some(doc), &llm)
            .await
            .unwrap();
        assert_eq!(out.text, "2");
        let out = run(
            "json",
            &json!({"select": {"first": "/a/0/b"}}),
            Some(doc),
            &llm,
        )
        .await
        .unwrap();
        assert_eq!(out.json, Some(json!({"first": "x"})));
        let out = run(
            "template",
            &json!({"template": "{{greet}}, {{input}}!", "vars": {"greet": "Hi"}}),
            Some("Bob"),
            &llm,
        )
        .await
        .unwrap();
        assert_eq!(out.text, "Hi, Bob!");
        let out = run("hash", &json!({}), Some("abc"), &llm).await.unwrap();
        assert_eq!(
            out.text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            run("json", &json!({"pointer": "/zz"}), Some(doc), &llm)
                .await
                .is_err()
        );
        assert!(
            run("json", &json!({"pointer": "/a"}), Some("not json"), &llm)
                .await
                .is_err()
        );
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
