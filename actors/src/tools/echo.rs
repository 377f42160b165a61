//! `echo`: returns its text, with `{{input}}` replaced by the step's input. Always on and
//! free of side effects, it is how a task is tried out without granting anything, and the
//! cheapest step for tests and benchmarks of the machinery around the tools.

use serde::Deserialize;

use super::output::{lossy_text, parse_json};
use super::{ToolError, ToolOutput, parse_args};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    text: Option<String>,
}

pub(super) fn validate(args: &serde_json::Value) -> Result<(), ToolError> {
    parse_args::<Args>("echo", args).map(|_| ())
}

pub(super) fn run(
    args: &serde_json::Value,
    input: Option<&str>,
    cap: usize,
) -> Result<ToolOutput, ToolError> {
    let args: Args = parse_args("echo", args)?;
    let text = match (args.text, input) {
        (Some(text), Some(input)) => text.replace("{{input}}", input),
        (Some(text), None) => text,
        (None, Some(input)) => input.to_owned(),
        (None, None) => {
            return Err(ToolError::InvalidArgs(
                "echo: `text` is required when the step has no input".into(),
            ));
        }
    };
    let bytes = text.len() as u64;
    let truncated = text.len() > cap;
    let text = lossy_text(text.as_bytes(), cap, truncated);
    Ok(ToolOutput {
        json: parse_json(&text, truncated),
        text,
        exit_code: Some(0),
        truncated,
        bytes,
        ..ToolOutput::default()
    })
}
