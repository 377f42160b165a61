//! `mister-smith token issue` and the client commands' `--token` / `MISTER_SMITH_TOKEN`
//! against real nodes with `auth.mode = "jwt"`: a minted token is accepted for its scopes
//! and refused outside them, the commands send it, and a refusal is one clear line.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Finished, TestNode, http_client, run_to_exit, temp_dir};
use mister_smith::config::auth::Secret;
use mister_smith::http::auth::{Claims, mint};
use reqwest::StatusCode;
use serde_json::json;

const SECRET: &str = "token-cli-test-secret-of-32-bytes-or-more";

/// The environment of a node (and of `token issue`) with JWT auth on.
const JWT_ENV: [(&str, &str); 2] = [
    ("MISTER_SMITH__AUTH__MODE", "jwt"),
    ("MISTER_SMITH__AUTH__SECRET", SECRET),
];

async fn jwt_node() -> TestNode {
    TestNode::start(&[], &JWT_ENV).await
}

/// Runs `mister-smith <args>` to its end in a scratch dir.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let dir = temp_dir();
    run_to_exit(dir.path(), args, env).await
}

/// `token issue --sub <sub>` with `scopes`, which must succeed; the token it printed.
async fn issue(sub: &str, scopes: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec!["token", "issue", "--sub", sub];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let out = cli(&args, env).await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let token = out.stdout.trim_end_matches('\n');
    assert!(
        !token.contains(char::is_whitespace) && token.split('.').count() == 3,
        "stdout is not just a JWT: {}",
        out.describe()
    );
    token.to_string()
}

async fn status_of(method: &str, url: &str, token: &str) -> StatusCode {
    let client = http_client();
    let request = match method {
        "POST" => client
            .post(url)
            .json(&json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "hi"}}]})),
        _ => client.get(url),
    };
    request
        .bearer_auth(token)
        .send()
        .await
        .expect("the node answers")
        .status()
}

/// A step file for `task submit`, in a dir that lives as long as the returned guard.
fn steps_file() -> (tempfile::TempDir, String) {
    let dir = temp_dir();
    let path = dir.path().join("steps.json");
    std::fs::write(
        &path,
        json!([{"id": "a", "tool": "echo", "args": {"text": "hi"}}]).to_string(),
    )
    .expect("writing the steps");
    let path = path.to_str().expect("a UTF-8 path").to_string();
    (dir, path)
}

fn assert_one_clear_line(out: &Finished, wants: &[&str]) {
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    for want in wants {
        assert!(out.stderr.contains(want), "no {want:?}: {}", out.describe());
    }
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("{\""),
        "a panic or raw JSON: {}",
        out.describe()
    );
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn an_issued_token_is_accepted_for_its_scopes_and_refused_outside_them() {
    let node = jwt_node().await;
    let token = issue("alice", &["tasks:read", "agents:read"], &JWT_ENV).await;
    let base = node.http_url();
    for (method, path, want) in [
        ("GET", "/api/v1/tasks", StatusCode::OK),
        ("GET", "/api/v1/agents", StatusCode::OK),
        ("POST", "/api/v1/tasks", StatusCode::FORBIDDEN),
    ] {
        let got = status_of(method, &format!("{base}{path}"), &token).await;
        assert_eq!(got, want, "{method} {path}");
    }
    let admin = format!("{}/admin/actors", node.admin_url());
    assert_eq!(
        status_of("GET", &admin, &token).await,
        StatusCode::FORBIDDEN
    );
    let ops = issue("ops", &["admin"], &JWT_ENV).await;
    assert_eq!(status_of("GET", &admin, &ops).await, StatusCode::OK);
}

#[tokio::test]
async fn the_secret_and_issuer_come_from_the_config_file() {
    let dir = temp_dir();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("writing the secret");
    let config = dir.path().join("auth.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"jwt\"\nsecret_file = {:?}\nissuer = \"ms-tests\"\n",
            secret_file.to_str().expect("a UTF-8 path")
        ),
    )
    .expect("writing the config");
    let config = config.to_str().expect("a UTF-8 path");
    let node = TestNode::start(&["--config", config], &[]).await;
    let url = format!("{}/api/v1/tasks", node.http_url());
    let out = run_to_exit(
        dir.path(),
        &[
            "token",
            "issue",
            "--sub",
            "bob",
            "--scope",
            "tasks:read",
            "--config",
            config,
        ],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stderr.is_empty(), "{}", out.describe());
    assert_eq!(
        status_of("GET", &url, out.stdout.trim()).await,
        StatusCode::OK
    );
    // The same secret without the issuer the node asks for is refused: `iss` was minted.
    let no_issuer = issue("bob", &["tasks:read"], &JWT_ENV).await;
    assert_eq!(
        status_of("GET", &url, &no_issuer).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn task_submit_sends_the_token_and_says_why_it_was_refused() {
    let node = jwt_node().await;
    let http = node.http.to_string();
    let (_dir, steps) = steps_file();
    let submit = ["task", "submit", "--http", &http, "--steps", &steps];
    let writer = issue("alice", &["tasks:write"], &JWT_ENV).await;

    let with_flag: Vec<&str> = submit.iter().copied().chain(["--token", &writer]).collect();
    let out = cli(&with_flag, &[]).await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let id = out.stdout.trim();
    let url = format!("{}/api/v1/tasks/{id}", node.http_url());
    let reader = issue("alice", &["tasks:read"], &JWT_ENV).await;
    assert_eq!(status_of("GET", &url, &reader).await, StatusCode::OK);

    let out = cli(&submit, &[("MISTER_SMITH_TOKEN", &writer)]).await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());

    let out = cli(&submit, &[]).await;
    assert_one_clear_line(&out, &["needs a bearer token", "MISTER_SMITH_TOKEN"]);

    let out = cli(&submit, &[("MISTER_SMITH_TOKEN", &reader)]).await;
    assert_one_clear_line(&out, &["lacks scope tasks:write"]);

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let expired = mint(
        &Secret::new(SECRET),
        &Claims {
            sub: "alice".into(),
            scope: Some("tasks:write".into()),
            exp: Some(now - 3600),
            ..Claims::default()
        },
    )
    .expect("minting");
    let out = cli(&submit, &[("MISTER_SMITH_TOKEN", &expired)]).await;
    assert_one_clear_line(&out, &["refused the token", "expired"]);
}

#[tokio::test]
async fn the_other_client_commands_send_the_token() {
    let node = jwt_node().await;
    let http = node.http.to_string();
    let admin = node.admin.to_string();
    let reader = issue("alice", &["tasks:read", "agents:read"], &JWT_ENV).await;
    let env = [("MISTER_SMITH_TOKEN", reader.as_str())];
    for args in [
        &["task", "list", "--http", &http][..],
        &["agents", "--http", &http][..],
    ] {
        let out = cli(args, &env).await;
        assert_eq!(out.code(), Some(0), "{args:?}: {}", out.describe());
        let out = cli(args, &[]).await;
        assert_one_clear_line(&out, &["needs a bearer token"]);
    }
    // The admin listener: a JWT with `admin` as --token; without it, the scope is named.
    let ops = issue("ops", &["admin"], &JWT_ENV).await;
    let out = cli(&["actors", "--admin", &admin, "--token", &ops], &[]).await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let out = cli(&["cluster", "--admin", &admin], &env).await;
    assert_one_clear_line(&out, &["lacks scope admin"]);
}

#[tokio::test]
async fn token_issue_refuses_what_it_cannot_mint() {
    let out = cli(
        &["token", "issue", "--sub", "a", "--scope", "tasks:read"],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(out.stderr.contains("auth.secret"), "{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());

    for (args, wants) in [
        (&["--scope", "tasks:read", "--ttl", "0"][..], &["--ttl"][..]),
        (
            &["--scope", "tasks:read", "--ttl", "366d"][..],
            &["--ttl"][..],
        ),
        (
            &["--scope", "tasks:everything"][..],
            &["tasks:write", "agents:read", "admin"][..],
        ),
    ] {
        let all: Vec<&str> = ["token", "issue", "--sub", "a"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let out = cli(&all, &JWT_ENV).await;
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.describe());
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.describe());
        for want in wants {
            assert!(out.stderr.contains(want), "{args:?}: {}", out.describe());
        }
    }

    let dir = temp_dir();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys": []}"#).expect("writing the JWKS");
    let out = cli(
        &["token", "issue", "--sub", "a", "--scope", "admin"],
        &[
            ("MISTER_SMITH__AUTH__MODE", "jwt"),
            (
                "MISTER_SMITH__AUTH__JWKS_FILE",
                jwks.to_str().expect("UTF-8"),
            ),
        ],
    )
    .await;
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("auth.secret") && out.stderr.contains("private key"),
        "{}",
        out.describe()
    );
}
