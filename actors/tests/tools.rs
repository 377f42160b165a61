//! The Executor's tools against real processes, a real local HTTP server and a real
//! directory: that each tool does its job, that every limit (allowlists, workspace, timeout,
//! cancellation, output cap) holds, and that `validate` rejects bad steps without running
//! anything. No assertion is on a duration: waits poll with generous deadlines.

use std::path::Path;
use std::time::Duration;

use actors::tools::{ToolCall, ToolError, ToolOutput, Tools, ToolsConfig};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

#[path = "common/https.rs"]
mod https;
#[path = "common/pki.rs"]
mod pki;

/// Outer guard against a hung call; never an assertion about speed.
const GUARD: Duration = Duration::from_secs(30);

fn tools_with(change: impl FnOnce(&mut ToolsConfig)) -> (Tools, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ToolsConfig::default();
    config.file.workspace = dir.path().join("ws");
    change(&mut config);
    (Tools::new(config).unwrap(), dir)
}

fn shell_tools(allow: &[&str]) -> (Tools, TempDir) {
    tools_with(|c| {
        c.shell.enabled = true;
        c.shell.allow = allow.iter().map(|s| s.to_string()).collect();
        // The tests run `sh` and `env`, which run anything: an explicit opt-in.
        c.shell.allow_run_anything = true;
        c.shell.env_allow = vec!["GREETING".into()];
    })
}

async fn run_full(
    tools: &Tools,
    tool: &str,
    args: Value,
    input: Option<&str>,
    timeout: Option<Duration>,
    cancel: CancellationToken,
) -> Result<ToolOutput, ToolError> {
    let call = ToolCall {
        tool,
        args: &args,
        input,
        timeout,
        cancel,
    };
    tokio::time::timeout(GUARD, tools.run(call))
        .await
        .expect("tool call did not return within the 30 s guard")
}

async fn run(
    tools: &Tools,
    tool: &str,
    args: Value,
    input: Option<&str>,
) -> Result<ToolOutput, ToolError> {
    run_full(tools, tool, args, input, None, CancellationToken::new()).await
}

#[test]
fn names_and_config_defaults_and_validation() {
    assert_eq!(Tools::names(), &["echo", "sleep", "shell", "http", "file"]);
    let config = ToolsConfig::default();
    assert_eq!(config.default_timeout_secs, 60.0);
    assert_eq!(config.max_output_bytes, 1024 * 1024);
    assert!(!config.shell.enabled);
    assert!(config.http.allow_hosts.is_empty());
    assert!(config.http.allow_cidrs.is_empty());
    assert_eq!(config.file.workspace, Path::new("data/workspace"));
    assert_eq!(config.validate(), Ok(()));

    let parsed: ToolsConfig =
        serde_json::from_value(json!({"shell": {"enabled": true, "allow": ["wc"]}})).unwrap();
    assert!(parsed.shell.enabled);
    assert_eq!(parsed.max_output_bytes, 1024 * 1024);
    let unknown = serde_json::from_value::<ToolsConfig>(json!({"shell": {"enable": true}}));
    assert!(unknown.unwrap_err().to_string().contains("enable"));

    let zero = ToolsConfig {
        max_output_bytes: 0,
        ..ToolsConfig::default()
    };
    assert_eq!(
        zero.validate(),
        Err("tools.max_output_bytes: must be at least 1".into())
    );
    let mut sh = ToolsConfig::default();
    sh.shell.use_sh = true;
    assert!(sh.validate().unwrap_err().starts_with("tools.shell.use_sh"));
    let mut host = ToolsConfig::default();
    host.http.allow_hosts = vec!["http://x/".into()];
    assert!(
        host.validate()
            .unwrap_err()
            .starts_with("tools.http.allow_hosts")
    );
    let timeout = ToolsConfig {
        default_timeout_secs: 0.0,
        ..ToolsConfig::default()
    };
    assert!(
        timeout
            .validate()
            .unwrap_err()
            .starts_with("tools.default_timeout_secs")
    );
    assert!(Tools::new(zero).is_err());
}

#[tokio::test]
async fn echo_with_and_without_input() {
    let (tools, _dir) = tools_with(|_| {});
    let out = run(
        &tools,
        "echo",
        json!({"text": "hi {{input}}"}),
        Some("there"),
    )
    .await
    .unwrap();
    assert_eq!(out.text, "hi there");
    assert_eq!(out.exit_code, Some(0));
    assert!(!out.truncated);
    let out = run(&tools, "echo", json!({"text": "plain"}), None)
        .await
        .unwrap();
    assert_eq!(out.text, "plain");
    assert_eq!(out.json, None);
    let out = run(&tools, "echo", json!({}), Some("{\"n\": 1}"))
        .await
        .unwrap();
    assert_eq!(out.text, "{\"n\": 1}");
    assert_eq!(out.json, Some(json!({"n": 1})));
    let err = run(&tools, "echo", json!({}), None).await.unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("text")),
        "{err:?}"
    );
}

#[tokio::test]
async fn echo_repeating_a_long_input_keeps_only_the_output_cap() {
    let (tools, _dir) = tools_with(|c| c.max_output_bytes = 1000);
    let input = "x".repeat(1 << 20);
    // 100 000 copies of 1 MiB would be 100 GiB if the text were built before the cap.
    let text = "{{input}}".repeat(100_000);
    let out = run(&tools, "echo", json!({ "text": text }), Some(&input))
        .await
        .unwrap();
    assert!(out.truncated);
    assert_eq!(out.text, "x".repeat(1000));
    assert_eq!(out.bytes, 100_000 << 20);
}

#[tokio::test]
async fn sleep_ms_out_of_range_is_refused_before_running() {
    let (tools, _dir) = tools_with(|_| {});
    for ms in [json!(3_600_001), json!(-1), json!(1e308), json!(u64::MAX)] {
        let err = tools.validate("sleep", &json!({ "ms": ms })).unwrap_err();
        assert!(matches!(err, ToolError::InvalidArgs(_)), "{ms}: {err:?}");
    }
}

#[tokio::test]
async fn sleep_finishes_times_out_and_is_cancelled() {
    let (tools, _dir) = tools_with(|_| {});
    let out = run(&tools, "sleep", json!({"ms": 1}), None).await.unwrap();
    assert_eq!(out.text, "slept 1 ms");

    let timeout = Duration::from_millis(50);
    let err = run_full(
        &tools,
        "sleep",
        json!({"ms": 3_600_000}),
        None,
        Some(timeout),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err, ToolError::TimedOut(timeout));

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.cancel();
    });
    let err = run_full(
        &tools,
        "sleep",
        json!({"ms": 3_600_000}),
        None,
        None,
        cancel,
    )
    .await
    .unwrap_err();
    assert_eq!(err, ToolError::Cancelled);

    let err = run(&tools, "sleep", json!({"ms": 3_600_001}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("ms")),
        "{err:?}"
    );
}

#[path = "tools/shell.rs"]
mod shell;

#[path = "tools/http.rs"]
mod http;

#[path = "tools/file.rs"]
mod file;

#[tokio::test]
async fn validate_rejects_bad_steps_without_running_them() {
    let (tools, dir) = tools_with(|_| {});
    let err = tools.validate("teleport", &json!({})).unwrap_err();
    assert!(
        err.to_string().contains("echo, sleep, shell, http, file"),
        "{err}"
    );
    assert!(matches!(err, ToolError::UnknownTool(ref t) if t == "teleport"));
    let err = tools.validate("echo", &json!({"txt": "x"})).unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("txt")),
        "{err:?}"
    );
    let err = tools.validate("sleep", &json!({})).unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("ms")),
        "{err:?}"
    );
    let err = tools.validate("sleep", &json!("100")).unwrap_err();
    assert!(matches!(err, ToolError::InvalidArgs(_)), "{err:?}");
    let err = tools
        .validate("shell", &json!({"argv": ["touch", "marker"]}))
        .unwrap_err();
    assert!(matches!(err, ToolError::Disabled(_)), "{err:?}");
    let err = tools
        .validate("http", &json!({"url": "http://example.com/"}))
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Denied(m) if m.contains("tools.http.allow_hosts")),
        "{err:?}"
    );
    let err = tools
        .validate("http", &json!({"url": "ftp://127.0.0.1/"}))
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("http or https")),
        "{err:?}"
    );
    let err = tools
        .validate("file", &json!({"op": "chmod", "path": "x"}))
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("chmod")),
        "{err:?}"
    );
    assert_eq!(
        tools.validate(
            "file",
            &json!({"op": "write", "path": "made", "content": "x"})
        ),
        Ok(())
    );
    assert!(
        !dir.path().join("ws/made").exists(),
        "validate must not write"
    );

    let (tools, dir) = shell_tools(&["touch"]);
    assert_eq!(
        tools.validate("shell", &json!({"argv": ["touch", "marker"]})),
        Ok(())
    );
    let err = tools
        .validate("shell", &json!({"argv": ["touch", "m"], "sudo": true}))
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("sudo")),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !dir.path().join("ws/marker").exists(),
        "validate must not run the program"
    );
}
