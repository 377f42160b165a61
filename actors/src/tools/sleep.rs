//! `sleep`: waits `ms` milliseconds and succeeds. Always on; it stands in for slow work so
//! that timeouts, cancellation, load balancing and takeover can be tried and tested without
//! granting any real capability. The caller's timeout and cancellation token end it early.

use std::time::Duration;

use serde::Deserialize;

use super::{ToolError, ToolOutput, parse_args};

/// Longest sleep a step may ask for: one hour.
const MAX_MS: u64 = 3_600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    ms: u64,
}

fn parse(args: &serde_json::Value) -> Result<u64, ToolError> {
    let Args { ms } = parse_args("sleep", args)?;
    if ms > MAX_MS {
        return Err(ToolError::InvalidArgs(format!(
            "sleep: `ms` must be at most {MAX_MS} (one hour), got {ms}"
        )));
    }
    Ok(ms)
}

pub(super) fn validate(args: &serde_json::Value) -> Result<(), ToolError> {
    parse(args).map(|_| ())
}

pub(super) async fn run(args: &serde_json::Value) -> Result<ToolOutput, ToolError> {
    let ms = parse(args)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let text = format!("slept {ms} ms");
    Ok(ToolOutput {
        bytes: text.len() as u64,
        text,
        exit_code: Some(0),
        ..ToolOutput::default()
    })
}
