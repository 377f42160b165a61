//! The Executor's tools: the atomic actions a step can take. `echo` and `sleep` are always
//! on (for trying things out, tests and benchmarks); `shell` runs allowed programs and is off
//! unless enabled; `http` calls allowed hosts; `file` reads and writes inside one workspace
//! directory. They share one envelope, so that a tool that fails, hangs or prints 100 MB is a
//! failed step with a clear reason, never a crashed or bloated node: every call has a
//! timeout and a cancellation token, and every output is capped at
//! [`ToolsConfig::max_output_bytes`] while the bytes beyond it are still counted.
//!
//! [`Tools::validate`] checks a step statically when a task is submitted (unknown tool,
//! disabled tool, bad arguments, denied program, host or path) so most mistakes are rejected
//! before anything runs; [`Tools::run`] checks again and carries the step out.

mod beneath;
mod config;
mod echo;
mod file;
mod http;
mod net_guard;
pub(crate) mod output;
pub mod programs;
mod reaper;
mod shell;
mod sleep;
mod workspace;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use config::{FileToolConfig, HttpToolConfig, MAX_TIMEOUT_SECS, ShellConfig, ToolsConfig};

/// One call of one tool, as a step asks for it.
pub struct ToolCall<'a> {
    pub tool: &'a str,
    pub args: &'a serde_json::Value,
    /// Output of the step named by `input_from`: stdin for `shell`, `{{input}}` for `echo`,
    /// the content for `file` writes that give none.
    pub input: Option<&'a str>,
    /// The step's own timeout; [`ToolsConfig::default_timeout_secs`] when `None`.
    pub timeout: Option<Duration>,
    pub cancel: CancellationToken,
}

/// What a tool produced. Texts are capped at [`ToolsConfig::max_output_bytes`] (lossy UTF-8).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ToolOutput {
    /// stdout, response body, file content or a short report, capped.
    pub text: String,
    /// stderr of `shell`, capped.
    pub stderr: Option<String>,
    /// Exit code of `shell` (0 for the tools that always succeed).
    pub exit_code: Option<i32>,
    /// HTTP status of `http`.
    pub status: Option<u16>,
    /// `text` parsed, when it is a whole JSON document (never when truncated).
    pub json: Option<serde_json::Value>,
    /// Whether anything was cut off at the cap.
    pub truncated: bool,
    /// Bytes produced in all, even beyond the cap.
    pub bytes: u64,
}

/// Why a tool call failed; each says what to change.
#[derive(thiserror::Error, Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum ToolError {
    #[error("unknown tool {0:?} (known tools: echo, sleep, shell, http, file)")]
    UnknownTool(String),
    #[error("tool disabled: {0}")]
    Disabled(String),
    #[error("denied: {0}")]
    Denied(String),
    #[error("invalid args: {0}")]
    InvalidArgs(String),
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("cancelled")]
    Cancelled,
    /// Not started: the node could not prove it still held its lease when the step's turn
    /// came (see `crate::lease`). The run records the attempt as not started.
    #[error("not started: this node could not prove that it still held its lease")]
    NotStarted,
    #[error("failed: {0}")]
    Failed(String),
}

/// The tools of one node, built from the `[tools]` section. Cheap to clone.
#[derive(Clone)]
pub struct Tools {
    inner: Arc<Inner>,
}

struct Inner {
    config: ToolsConfig,
    /// The workspace, canonical (symlinks resolved), created by [`Tools::new`].
    workspace: PathBuf,
    http: http::HttpTool,
    /// `tools.shell.allow`, resolved to files once, with the node's PATH at start.
    programs: programs::Programs,
}

const NAMES: &[&str] = &["echo", "sleep", "shell", "http", "file"];

impl Tools {
    /// Validates `config`, creates the workspace directory and the HTTP client.
    pub fn new(config: ToolsConfig) -> Result<Tools, String> {
        config.validate()?;
        let dir = &config.file.workspace;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("tools.file.workspace: cannot create {}: {e}", dir.display()))?;
        let workspace = dir.canonicalize().map_err(|e| {
            format!(
                "tools.file.workspace: cannot resolve {}: {e}",
                dir.display()
            )
        })?;
        let http = http::HttpTool::new(&config)?;
        let (programs, warnings) = programs::Programs::resolve(&config.shell);
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        if config.shell.enabled && !reaper::available() {
            tracing::warn!(
                "tools.shell: /proc/thread-self/children cannot be read; processes a shell step detaches (setsid) may outlive it"
            );
        }
        Ok(Tools {
            inner: Arc::new(Inner {
                config,
                workspace,
                http,
                programs,
            }),
        })
    }

    /// Every tool name, enabled or not.
    pub fn names() -> &'static [&'static str] {
        NAMES
    }

    /// The configuration these tools were built from.
    pub fn config(&self) -> &ToolsConfig {
        &self.inner.config
    }

    /// The canonical workspace directory.
    pub fn workspace(&self) -> &std::path::Path {
        &self.inner.workspace
    }

    /// Checks a step without running anything: known tool, enabled, arguments well formed,
    /// program, host and path allowed.
    pub fn validate(&self, tool: &str, args: &serde_json::Value) -> Result<(), ToolError> {
        let config = &self.inner.config;
        match tool {
            "echo" => echo::validate(args),
            "sleep" => sleep::validate(args),
            "shell" => shell::validate(config, &self.inner.programs, args),
            "http" => http::validate(config, args),
            "file" => file::validate(args),
            other => Err(ToolError::UnknownTool(other.to_owned())),
        }
    }

    /// Runs one call under its timeout and cancellation token.
    pub async fn run(&self, call: ToolCall<'_>) -> Result<ToolOutput, ToolError> {
        self.validate(call.tool, call.args)?;
        let timeout = call
            .timeout
            .unwrap_or_else(|| crate::time::secs(self.inner.config.default_timeout_secs));
        if call.cancel.is_cancelled() {
            return Err(ToolError::Cancelled);
        }
        let inner = &*self.inner;
        let cap = inner.config.max_output_bytes;
        // `shell` enforces timeout and cancellation itself, so that it can kill the process
        // group and reap the child before returning.
        if call.tool == "shell" {
            return shell::run(
                &inner.config,
                &inner.programs,
                &inner.workspace,
                call.args,
                call.input,
                timeout,
                &call.cancel,
            )
            .await;
        }
        let work = async {
            match call.tool {
                "echo" => echo::run(call.args, call.input, cap),
                "sleep" => sleep::run(call.args).await,
                "http" => http::run(&inner.config, &inner.http, call.args).await,
                "file" => file::run(&inner.workspace, cap, call.args, call.input).await,
                other => Err(ToolError::UnknownTool(other.to_owned())),
            }
        };
        tokio::select! {
            biased;
            _ = call.cancel.cancelled() => Err(ToolError::Cancelled),
            result = tokio::time::timeout(timeout, work) => {
                result.unwrap_or(Err(ToolError::TimedOut(timeout)))
            }
        }
    }
}

/// Parses a tool's arguments (`null` counts as `{}`); errors name the tool and the argument.
fn parse_args<T: DeserializeOwned>(tool: &str, args: &serde_json::Value) -> Result<T, ToolError> {
    let value = match args {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        serde_json::Value::Object(_) => args.clone(),
        other => {
            return Err(ToolError::InvalidArgs(format!(
                "{tool}: args must be a JSON object, not {other}"
            )));
        }
    };
    serde_json::from_value(value).map_err(|e| ToolError::InvalidArgs(format!("{tool}: {e}")))
}
