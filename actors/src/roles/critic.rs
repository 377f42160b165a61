//! Critic: checks each step's output against its expectation (exit code, status,
//! contains, regex, JSON value, or an LLM judgement) and gives the task its final verdict.
//!
//! The rule-based checks are pure functions ([`judge`]), run by the coordinating run
//! itself: a round trip to a critic agent would add a mailbox hop per step for a
//! computation of microseconds. An LLM judgement is a Critic agent's job ([`run`]): the
//! attempt hands it the pseudo-tool `judge`, routed by `critique.step` like a step, so
//! the judging shows in the agent's counters, load and current work.

use crate::llm::{CompletionRequest, Llm};
use crate::task::{Expectation, Verdict};
use crate::tools::{ToolError, ToolOutput};

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["critique.step", "critique.task"];

/// Judges one attempt. Without an explicit `exit_code` or `status`, a non-zero exit code
/// or a non-2xx HTTP status fails the step, as a person would expect.
pub fn judge(expect: Option<&Expectation>, result: &Result<ToolOutput, ToolError>) -> Verdict {
    let output = match result {
        Ok(output) => output,
        Err(e) => return fail(e.to_string()),
    };
    let none = Expectation::default();
    let expect = expect.unwrap_or(&none);
    match (expect.exit_code, output.exit_code) {
        (Some(want), got) if got != Some(want) => {
            return fail(format!("exit code {} (expected {want})", show(got)));
        }
        (None, Some(got)) if got != 0 => return fail(format!("exit code {got} (expected 0)")),
        _ => {}
    }
    match (expect.status, output.status) {
        (Some(want), got) if got != Some(want) => {
            return fail(format!("HTTP status {} (expected {want})", show(got)));
        }
        (None, Some(got)) if !(200..300).contains(&got) => {
            return fail(format!("HTTP status {got} (expected 2xx)"));
        }
        _ => {}
    }
    if let Some(needle) = &expect.contains
        && !output.text.contains(needle.as_str())
    {
        return fail(format!("output does not contain {needle:?}"));
    }
    if let Some(pattern) = &expect.regex {
        match regex::Regex::new(pattern) {
            Ok(re) if re.is_match(&output.text) => {}
            Ok(_) => return fail(format!("output does not match /{pattern}/")),
            Err(e) => return fail(format!("invalid regex: {e}")),
        }
    }
    if let Some(json) = &expect.json {
        let found = output.json.as_ref().and_then(|v| v.pointer(&json.path));
        if found != Some(&json.equals) {
            let seen = found.map_or("nothing".to_string(), |v| v.to_string());
            return fail(format!(
                "JSON at {:?} is {seen} (expected {})",
                json.path, json.equals
            ));
        }
    }
    Verdict {
        passed: true,
        reason: "all checks passed".into(),
    }
}

/// The pseudo-tool an attempt hands a Critic agent (never a step of a plan).
pub const JUDGE_TOOL: &str = "judge";

/// The Critic agent's job: judges `args.output` against `args.question` with the LLM; the
/// verdict is the output's JSON.
pub async fn run(llm: &Llm, args: &serde_json::Value) -> Result<ToolOutput, ToolError> {
    let text = |key: &str| {
        args.get(key)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| ToolError::InvalidArgs(format!("args.{key}: a string is required")))
    };
    let verdict = judge_by_llm(llm, text("question")?, text("output")?).await;
    let json = serde_json::to_value(&verdict).map_err(|e| ToolError::Failed(e.to_string()))?;
    Ok(ToolOutput {
        bytes: verdict.reason.len() as u64,
        text: verdict.reason,
        json: Some(json),
        exit_code: Some(0),
        ..Default::default()
    })
}

/// The verdict in a Critic agent's output; a judgement that could not be had fails.
pub fn verdict_of(result: Result<ToolOutput, ToolError>) -> Verdict {
    match result {
        Ok(output) => output
            .json
            .and_then(|j| serde_json::from_value(j).ok())
            .unwrap_or_else(|| fail("the Critic agent gave no verdict".into())),
        Err(e) => fail(format!("LLM judgement unavailable: {e}")),
    }
}

/// Asks the LLM whether `output` satisfies `question`; the answer must start with PASS or
/// FAIL. A provider error is a failed verdict naming it (the step is retried as usual).
pub async fn judge_by_llm(llm: &Llm, question: &str, output: &str) -> Verdict {
    let prompt = format!(
        "Criterion: {question}\n\nOutput to judge:\n{output}\n\nAnswer PASS or FAIL, then one sentence why."
    );
    let request = CompletionRequest {
        system: Some("You are a strict reviewer of a task step's output.".into()),
        ..CompletionRequest::user(prompt)
    };
    match llm.complete(request).await {
        Err(e) => fail(format!("LLM judgement unavailable: {e}")),
        Ok(answer) => {
            let text = answer.text.trim();
            let upper = text.to_uppercase();
            if upper.starts_with("PASS") {
                Verdict {
                    passed: true,
                    reason: format!("LLM judge: {text}"),
                }
            } else if upper.starts_with("FAIL") {
                fail(format!("LLM judge: {text}"))
            } else {
                fail(format!("LLM judge gave no PASS/FAIL: {text}"))
            }
        }
    }
}

fn fail(reason: String) -> Verdict {
    Verdict {
        passed: false,
        reason,
    }
}

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("none".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::spec::JsonExpectation;
    use serde_json::json;

    fn out(text: &str, exit: Option<i32>, status: Option<u16>) -> Result<ToolOutput, ToolError> {
        Ok(ToolOutput {
            text: text.into(),
            exit_code: exit,
            status,
            json: serde_json::from_str(text).ok(),
            ..Default::default()
        })
    }

    #[test]
    fn defaults_fail_non_zero_exit_and_non_2xx() {
        assert!(judge(None, &out("", Some(0), None)).passed);
        assert!(!judge(None, &out("", Some(2), None)).passed);
        assert!(!judge(None, &out("", None, Some(500))).passed);
        let tolerate = Expectation {
            exit_code: Some(2),
            ..Default::default()
        };
        assert!(judge(Some(&tolerate), &out("", Some(2), None)).passed);
    }

    #[test]
    fn checks_text_regex_and_json() {
        let e = Expectation {
            contains: Some("world".into()),
            regex: Some(r#""n":\s*\d+"#.into()),
            json: Some(JsonExpectation {
                path: "/n".into(),
                equals: json!(3),
            }),
            ..Default::default()
        };
        assert!(
            judge(
                Some(&e),
                &out(r#"{"hello": "world", "n": 3}"#, Some(0), None)
            )
            .passed
        );
        let v = judge(
            Some(&e),
            &out(r#"{"hello": "world", "n": 4}"#, Some(0), None),
        );
        assert!(!v.passed && v.reason.contains("/n"), "{}", v.reason);
        assert!(!judge(Some(&e), &out("nope", Some(0), None)).passed);
    }

    #[test]
    fn tool_errors_fail_with_their_reason() {
        let v = judge(None, &Err(ToolError::Cancelled));
        assert!(!v.passed);
        assert!(!v.reason.is_empty());
    }
}
