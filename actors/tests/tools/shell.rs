//! The `shell` tool with real processes: off by default, the program allowlist, `cmd` only
//! with `use_sh`, stdin, exit codes, a clean environment, the output cap, and that timeout,
//! cancellation and a finished step leave no process of the step's group alive.

use std::path::Path;

use super::*;

/// Whether `pid` is a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

async fn assert_gone(pid: u32) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} is still alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a file holding a pid (written by a test's shell command).
async fn read_pid(path: &Path) -> u32 {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text.trim().parse().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shell_is_disabled_by_default() {
    let (tools, _dir) = tools_with(|_| {});
    let err = run(&tools, "shell", json!({"argv": ["true"]}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Disabled(m) if m.contains("tools.shell.enabled")),
        "{err:?}"
    );
}

#[tokio::test]
async fn shell_runs_allowed_argv_with_stdin_and_reports_exit_codes() {
    let (tools, _dir) = shell_tools(&["wc", "sh"]);
    let out = run(
        &tools,
        "shell",
        json!({"argv": ["wc", "-c"]}),
        Some("hello"),
    )
    .await
    .unwrap();
    assert_eq!(out.text.trim(), "5");
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.json, Some(json!(5)));

    let args = json!({"argv": ["sh", "-c", "echo out; echo oops >&2; exit 3"]});
    let out = run(&tools, "shell", args, None).await.unwrap();
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.text, "out\n");
    assert_eq!(out.stderr.as_deref(), Some("oops\n"));
}

#[tokio::test]
async fn shell_denies_programs_not_allowed_and_cmd_without_use_sh() {
    let (tools, _dir) = shell_tools(&["wc"]);
    for argv in [
        json!(["cat", "/etc/hostname"]),
        json!(["/usr/bin/wc", "-c"]),
    ] {
        let err = run(&tools, "shell", json!({"argv": argv}), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Denied(m) if m.contains("tools.shell.allow")),
            "{err:?}"
        );
    }
    let err = run(&tools, "shell", json!({"cmd": "wc -c"}), Some("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Denied(m) if m.contains("use_sh")),
        "{err:?}"
    );

    let (tools, _dir) = tools_with(|c| {
        c.shell.enabled = true;
        c.shell.allow = vec!["sh".into()];
        c.shell.use_sh = true;
        c.shell.allow_run_anything = true;
    });
    let out = run(&tools, "shell", json!({"cmd": "tr a-z A-Z"}), Some("hi"))
        .await
        .unwrap();
    assert_eq!(out.text, "HI");
}

#[tokio::test]
async fn shell_gets_a_clean_env_and_a_cwd_inside_the_workspace() {
    let (tools, dir) = shell_tools(&["env", "cat"]);
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "the test needs a variable to hide"
    );
    let out = run(
        &tools,
        "shell",
        json!({"argv": ["env"], "env": {"GREETING": "hi"}}),
        None,
    )
    .await
    .unwrap();
    assert!(out.text.lines().any(|l| l == "GREETING=hi"), "{}", out.text);
    assert!(!out.text.contains("CARGO_MANIFEST_DIR"), "{}", out.text);

    std::fs::create_dir_all(dir.path().join("ws/sub")).unwrap();
    std::fs::write(dir.path().join("ws/sub/x.txt"), "inside").unwrap();
    let out = run(
        &tools,
        "shell",
        json!({"argv": ["cat", "x.txt"], "cwd": "sub"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.text, "inside");
    let err = run(
        &tools,
        "shell",
        json!({"argv": ["cat", "x"], "cwd": ".."}),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Denied(_)), "{err:?}");
}

#[tokio::test]
async fn shell_output_beyond_the_cap_is_counted_not_kept() {
    let (tools, _dir) = shell_tools(&["head"]);
    let cap = tools.config().max_output_bytes;
    let args = json!({"argv": ["head", "-c", "100000000", "/dev/zero"]});
    let out = run(&tools, "shell", args, None).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.truncated);
    assert!(out.text.len() <= cap, "{} > {cap}", out.text.len());
    assert!(!out.text.is_empty());
    assert_eq!(out.bytes, 100_000_000);
    assert_eq!(out.json, None);
}

#[tokio::test]
async fn shell_timeout_kills_the_process() {
    let (tools, dir) = shell_tools(&["sh"]);
    let args = json!({"argv": ["sh", "-c", "echo $$ > pid; sleep 1000"]});
    let timeout = Duration::from_secs(3);
    let err = run_full(
        &tools,
        "shell",
        args,
        None,
        Some(timeout),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err, ToolError::TimedOut(timeout));
    let pid = read_pid(&dir.path().join("ws/pid")).await;
    assert_gone(pid).await;
}

#[tokio::test]
async fn shell_cancel_kills_the_whole_process_group() {
    let (tools, dir) = shell_tools(&["sh"]);
    let args = json!({"argv": ["sh", "-c", "sleep 1000 & echo $! > bg; echo $$ > pid; wait"]});
    let cancel = CancellationToken::new();
    let task = {
        let (tools, cancel) = (tools.clone(), cancel.clone());
        tokio::spawn(async move { run_full(&tools, "shell", args, None, None, cancel).await })
    };
    let pid = read_pid(&dir.path().join("ws/pid")).await;
    let bg = read_pid(&dir.path().join("ws/bg")).await;
    assert!(
        alive(pid) && alive(bg),
        "the processes should run until cancelled"
    );
    cancel.cancel();
    assert_eq!(task.await.unwrap().unwrap_err(), ToolError::Cancelled);
    assert_gone(pid).await;
    assert_gone(bg).await;
}

#[tokio::test]
async fn shell_leaves_no_background_process_behind() {
    let (tools, dir) = shell_tools(&["sh"]);
    let args = json!({"argv": ["sh", "-c", "sleep 1000 & echo $! > bg; echo started"]});
    let out = run(&tools, "shell", args, None).await.unwrap();
    assert_eq!(out.text, "started\n");
    let bg = read_pid(&dir.path().join("ws/bg")).await;
    assert_gone(bg).await;
}

/// Live processes whose command line holds `marker` (searched in /proc).
fn with_marker(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
            && alive(pid)
        {
            found.push(pid);
        }
    }
    found
}

async fn assert_no_marker(marker: &str) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let left = with_marker(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes {left:?} with {marker} survived the step"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `setsid -f`, a background job and a double fork all die with the step, whether it
/// ends by itself, times out or is cancelled.
#[tokio::test]
async fn no_process_of_a_step_survives_it_setsid_included() {
    let (tools, _dir) = shell_tools(&["sh"]);
    // A unique sleep length marks this test's processes.
    let script = |secs: &str| {
        format!(
            "setsid -f sleep {secs}; sleep {secs} & (sh -c 'sleep {secs} &' &); sleep 0.2; echo started"
        )
    };
    // Ends by itself.
    let out = run(
        &tools,
        "shell",
        json!({"argv": ["sh", "-c", script("1000.101")]}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.text, "started\n");
    assert_no_marker("1000.101").await;

    // Times out.
    let args = json!({"argv": ["sh", "-c", format!("{}; sleep 1000.102", script("1000.102"))]});
    let call = ToolCall {
        tool: "shell",
        args: &args,
        input: None,
        timeout: Some(Duration::from_secs(2)),
        cancel: CancellationToken::new(),
    };
    let err = tools.run(call).await.unwrap_err();
    assert!(matches!(err, ToolError::TimedOut(_)), "{err:?}");
    assert_no_marker("1000.102").await;
}

/// The attack: `cp /bin/sh ./date` in the workspace, then `date` with `PATH=.`. PATH is
/// refused, and `date` is the node's `date` whatever the step's cwd holds.
#[tokio::test]
async fn a_program_written_into_the_workspace_never_runs_in_place_of_an_allowed_one() {
    let (tools, dir) = tools_with(|c| {
        c.shell.enabled = true;
        c.shell.allow = vec!["date".into(), "cp".into()];
    });
    run(
        &tools,
        "shell",
        json!({"argv": ["cp", "/bin/sh", "./date"]}),
        None,
    )
    .await
    .unwrap();
    assert!(dir.path().join("ws/date").exists());
    let err = run(
        &tools,
        "shell",
        json!({"argv": ["date", "-c", "echo pwned"], "env": {"PATH": "."}}),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ToolError::Denied(m) if m.contains("\"PATH\"")),
        "{err:?}"
    );
    // Without the env, `date` is /usr/bin/date: `-c` is not a date option.
    let out = run(
        &tools,
        "shell",
        json!({"argv": ["date", "-c", "echo pwned"]}),
        None,
    )
    .await
    .unwrap();
    assert!(!out.text.contains("pwned"), "{out:?}");
    assert_ne!(out.exit_code, Some(0));
    for argv in [json!(["./date"]), json!(["ws/date"])] {
        let err = run(&tools, "shell", json!({"argv": argv}), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::Denied(_)), "{err:?}");
    }
}

#[tokio::test]
async fn loader_variables_and_unlisted_variables_are_refused() {
    let (tools, _dir) = shell_tools(&["true"]);
    for key in ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "PATH", "IFS"] {
        let err = tools
            .validate(
                "shell",
                &json!({"argv": ["true"], "env": {key: "/tmp/x.so"}}),
            )
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Denied(m) if m.contains(key)),
            "{err:?}"
        );
    }
    let err = tools
        .validate("shell", &json!({"argv": ["true"], "env": {"OTHER": "x"}}))
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Denied(m) if m.contains("tools.shell.env_allow")),
        "{err:?}"
    );
}

#[test]
fn programs_that_run_anything_need_an_explicit_opt_in() {
    for program in ["find", "env", "xargs", "sh", "/usr/bin/python3.12", "*"] {
        let mut config = ToolsConfig::default();
        config.shell.enabled = true;
        config.shell.allow = vec!["date".into(), program.into()];
        let err = config.validate().unwrap_err();
        assert!(
            err.starts_with("tools.shell.allow") && err.contains("allow_run_anything"),
            "{program}: {err}"
        );
        config.shell.allow_run_anything = true;
        config.validate().unwrap();
    }
    let mut config = ToolsConfig::default();
    config.shell.env_allow = vec!["LD_PRELOAD".into()];
    assert!(
        config
            .validate()
            .unwrap_err()
            .starts_with("tools.shell.env_allow")
    );
}
