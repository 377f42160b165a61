//! `echo`: returns its text, with `{{input}}` replaced by the step's input. Always on and
//! free of side effects, it is how a task is tried out without granting anything, and the
//! cheapest step for tests and benchmarks of the machinery around the tools.

use std::borrow::Cow;

use serde::Deserialize;

use super::output::{Capped, parse_json, render};
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
    // Rendered within the cap: `{{input}}` repeated cannot multiply a long input in memory.
    let out = match (args.text, input) {
        (Some(text), input) => render(&text, cap, |name| {
            input.filter(|_| name == "input").map(Cow::Borrowed)
        }),
        (None, Some(input)) => {
            let mut out = Capped::new(cap);
            out.push(input.as_bytes());
            out
        }
        (None, None) => {
            return Err(ToolError::InvalidArgs(
                "echo: `text` is required when the step has no input".into(),
            ));
        }
    };
    let (bytes, truncated) = (out.bytes(), out.truncated());
    let text = out.into_text();
    Ok(ToolOutput {
        json: parse_json(&text, truncated),
        text,
        exit_code: Some(0),
        truncated,
        bytes,
        ..ToolOutput::default()
    })
}
