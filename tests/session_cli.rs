//! The `session` commands and the chat shell against a node whose provider is `scripted`:
//! `start`/`send` print the tool calls, their results and the answer; `show`, `list` and
//! `end` read and change what the API holds; refusals are one clear line with an exit
//! code; a call awaiting approval is shown with the command that decides it. The shell
//! runs in a real terminal (tmux): a message, the approval it asks for, its tool call
//! as recorded and the answer, `/show`, Ctrl-C cancelling a running turn, and the line
//! history kept.

/// Agents' `echo` calls wait for a person's approval.
const ECHO_NEEDS_APPROVAL: &str = "[tools]\napproval = { echo = \"required\" }\n";

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::tasks::{TASK_DEADLINE, eventually_within, scripted_node, scripted_node_with};
use common::{BIN, Finished, TestNode, run_to_exit, temp_dir};
use serde_json::{Value, json};

fn script() -> Value {
    json!({"replies": [
        {"match": "please echo", "tool_calls": [{"name": "echo", "arguments": {"text": "hi"}}]},
        {"match": "hi", "reply": "Said hi."},
        {"match": "nap", "tool_calls": [{"name": "sleep", "arguments": {"ms": 120000}}]}
    ], "default": "fine"})
}

async fn cli(node: &TestNode, args: &[&str]) -> Finished {
    let dir = temp_dir();
    let http = node.http.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--http", &http]);
    run_to_exit(dir.path(), &all, &[]).await
}

fn ok(out: &Finished) {
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

#[tokio::test]
async fn session_commands_converse_show_list_and_end() {
    let node = scripted_node(&script()).await;
    let out = cli(
        &node,
        &["session", "start", "-m", "please echo hi", "--tool", "echo"],
    )
    .await;
    ok(&out);
    assert_eq!(
        out.stdout,
        "  → echo {\"text\":\"hi\"}\n  ← echo succeeded: hi\nSaid hi.\n",
        "{}",
        out.describe()
    );
    let id = out
        .stderr
        .trim()
        .strip_prefix("session ")
        .unwrap_or_else(|| panic!("no session id: {}", out.describe()))
        .to_string();

    let out = cli(&node, &["session", "send", &id, "and again"]).await;
    ok(&out);
    assert_eq!(out.stdout, "fine\n", "{}", out.describe());

    let out = cli(&node, &["session", "show", &id]).await;
    ok(&out);
    for line in [
        "[1] you> please echo hi",
        "    agent> Said hi.",
        "[2] you> and again",
        "    agent> fine",
        "3 LLM calls, 1 tool calls",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.describe());
    }
    let out = cli(&node, &["session", "list", "--json"]).await;
    ok(&out);
    let page: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(page["sessions"][0]["session_id"], id.as_str(), "{page}");
    assert_eq!(page["sessions"][0]["turns"], 2, "{page}");

    let out = cli(&node, &["session", "end", &id]).await;
    ok(&out);
    assert_eq!(out.stdout, format!("session {id} ended\n"));
    let out = cli(&node, &["session", "send", &id, "hello?"]).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("has ended"), "{}", out.describe());
    let out = cli(
        &node,
        &["session", "show", "0190a0f0-0000-7000-8000-000000000000"],
    )
    .await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("no session"), "{}", out.describe());
    let out = cli(&node, &["session", "start", "--max-iterations", "0"]).await;
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(out.stderr.contains("max_iterations"), "{}", out.describe());
    let out = cli(
        &node,
        &["session", "start", "--no-wait", "-m", "hi", "--json"],
    )
    .await;
    ok(&out);
    let started: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(started["turn"]["turn"], 1, "{started}");
}

/// A tmux server of the test's own, with one window running `mister-smith` in a real
/// terminal; killed on drop.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run tmux ({e}): install it (apt-get install tmux, or scripts/test.sh)"
                )
            })
    }

    fn start(dir: &Path, args: &[&str]) -> Terminal {
        let socket = format!(
            "ms-test-{}-{}",
            std::process::id(),
            dir.display().to_string().len()
        );
        let terminal = Terminal { socket };
        let history = format!("MISTER_SMITH_HISTORY={}", dir.join("history").display());
        let mut tmux = vec![
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "50",
            "-e",
            &history,
            BIN,
        ];
        tmux.extend(args);
        let out = terminal.tmux(&tmux);
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        terminal
    }

    fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-S", "-200"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend(keys);
        assert!(self.tmux(&args).status.success());
    }

    async fn shows(&self, what: &str) -> String {
        eventually_within(
            TASK_DEADLINE,
            &format!("the terminal to show {what:?}"),
            || async {
                let screen = self.screen();
                if screen.contains(what) {
                    Ok(screen)
                } else {
                    Err(screen)
                }
            },
        )
        .await
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

#[tokio::test]
async fn a_call_awaiting_approval_is_shown_and_decided_from_the_command_line() {
    let node = scripted_node_with(&script(), ECHO_NEEDS_APPROVAL).await;
    let out = cli(
        &node,
        &["session", "start", "-m", "please echo hi", "--tool", "echo"],
    )
    .await;
    assert_eq!(out.code(), Some(6), "{}", out.describe());
    assert!(
        out.stderr
            .contains("? echo {\"text\":\"hi\"} (t1_0) awaits approval"),
        "{}",
        out.describe()
    );
    let id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("session "))
        .unwrap_or_else(|| panic!("no session id: {}", out.describe()))
        .to_string();
    assert!(
        out.stderr.contains(&format!("session approve {id} 1")),
        "{}",
        out.describe()
    );
    let out = cli(&node, &["session", "approve", &id, "1"]).await;
    ok(&out);
    assert_eq!(out.stdout, "approved: [\"t1_0\"]\n", "{}", out.describe());
    let url = format!("{}/api/v1/sessions/{id}", node.http_url());
    eventually_within(TASK_DEADLINE, "the approved turn to answer", || async {
        let (_, s) = node.get_json(&url).await;
        if s["turns"][0]["answer"] == "Said hi." {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let out = cli(&node, &["session", "deny", &id, "1", "--reason", "late"]).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("awaits approval"), "{}", out.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_shell_converses_in_a_real_terminal() {
    let node = scripted_node_with(&script(), ECHO_NEEDS_APPROVAL).await;
    let dir = temp_dir();
    let http = node.http.to_string();
    let term = Terminal::start(
        dir.path(),
        &["--http", &http, "--tool", "echo", "--tool", "sleep"],
    );
    term.shows("a new session starts with your first message")
        .await;
    term.keys(&["please echo hi", "Enter"]);
    term.shows("approve? [y, or a reason to deny]").await;
    let screen = term
        .shows("? echo {\"text\":\"hi\"} awaits your approval")
        .await;
    assert!(
        !screen.contains("agent>"),
        "nothing ran before the approval: {screen}"
    );
    term.keys(&["y", "Enter"]);
    let screen = term.shows("agent> Said hi.").await;
    // Streamed in (the shell watched the turn from its start), and not printed twice.
    assert_eq!(screen.matches("agent> Said hi.").count(), 1, "{screen}");
    assert!(screen.contains("  → echo {\"text\":\"hi\"}"), "{screen}");
    assert!(screen.contains("  ← echo succeeded: hi"), "{screen}");
    assert!(screen.contains("(session "), "{screen}");

    // Ctrl-C while a turn runs cancels it; the shell goes on.
    term.keys(&["take a nap", "Enter"]);
    eventually_within(TASK_DEADLINE, "the nap to run", || async {
        let (_, page) = node
            .get_json(&format!("{}/api/v1/tasks?status=running", node.http_url()))
            .await;
        if page["tasks"].as_array().is_some_and(|t| !t.is_empty()) {
            Ok(())
        } else {
            Err(page.to_string())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    term.keys(&["C-c"]);
    term.shows("(the turn ended cancelled").await;
    term.keys(&["/show", "Enter"]);
    let screen = term.shows("[2] you> take a nap").await;
    assert!(screen.contains("[1] you> please echo hi"), "{screen}");
    term.keys(&["/quit", "Enter"]);
    eventually_within(TASK_DEADLINE, "the history to be saved", || async {
        let saved = std::fs::read_to_string(dir.path().join("history")).unwrap_or_default();
        if saved.contains("please echo hi") && saved.contains("/show") {
            Ok(())
        } else {
            Err(saved)
        }
    })
    .await;
}
