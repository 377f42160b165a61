//! The `http` tool against a real axum server on 127.0.0.1: statuses, JSON, the host
//! allowlist (also for redirect targets), the redirect limit and the body cap.

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};

use super::*;

const BIG: usize = 2 * 1024 * 1024;

/// Starts the server and returns its base URL.
async fn server() -> String {
    let app = Router::new()
        .route("/json", get(|| async { axum::Json(json!({"ok": true})) }))
        .route("/big", get(|| async { "x".repeat(BIG) }))
        .route(
            "/redirect-in",
            get(|| async { Redirect::temporary("/json") }),
        )
        .route(
            "/redirect-out",
            get(|| async { Redirect::temporary("http://example.com/") }),
        )
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route("/echo", post(|body: String| async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn get_returns_status_body_and_json() {
    let base = server().await;
    let (tools, _dir) = tools_with(|_| {});
    let out = run(&tools, "http", json!({"url": format!("{base}/json")}), None)
        .await
        .unwrap();
    assert_eq!(out.status, Some(200));
    assert_eq!(out.text, r#"{"ok":true}"#);
    assert_eq!(out.json, Some(json!({"ok": true})));
    assert!(!out.truncated);

    let out = run(
        &tools,
        "http",
        json!({"url": format!("{base}/nothing-here")}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.status, Some(404));

    let args = json!({"url": format!("{base}/echo"), "method": "post", "body": {"a": [1, 2]}});
    let out = run(&tools, "http", args, None).await.unwrap();
    assert_eq!(out.status, Some(200));
    assert_eq!(out.json, Some(json!({"a": [1, 2]})));
}

#[tokio::test]
async fn hosts_not_allowed_are_denied_also_through_redirects() {
    let base = server().await;
    let (tools, _dir) = tools_with(|_| {});
    let err = run(&tools, "http", json!({"url": "http://example.com/"}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Denied(m) if m.contains("example.com")),
        "{err:?}"
    );

    let out = run(
        &tools,
        "http",
        json!({"url": format!("{base}/redirect-in")}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.status, Some(200));
    assert_eq!(out.json, Some(json!({"ok": true})));

    let err = run(
        &tools,
        "http",
        json!({"url": format!("{base}/redirect-out")}),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ToolError::Denied(m) if m.contains("redirect") && m.contains("example.com")),
        "{err:?}"
    );

    let err = run(&tools, "http", json!({"url": format!("{base}/loop")}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Failed(m) if m.contains("max_redirects")),
        "{err:?}"
    );

    let (only_localhost, _dir) = tools_with(|c| c.http.allow_hosts = vec!["localhost".into()]);
    let err = run(
        &only_localhost,
        "http",
        json!({"url": format!("{base}/json")}),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ToolError::Denied(_)), "{err:?}");
}

#[tokio::test]
async fn oversize_body_is_truncated_at_the_cap() {
    let base = server().await;
    let (tools, _dir) = tools_with(|c| c.max_output_bytes = 1000);
    let out = run(&tools, "http", json!({"url": format!("{base}/big")}), None)
        .await
        .unwrap();
    assert_eq!(out.status, Some(200));
    assert!(out.truncated);
    assert!(out.text.len() <= 1000, "{}", out.text.len());
    assert!(out.text.starts_with("xxx"));
    assert_eq!(out.bytes, BIG as u64);
}

#[tokio::test]
async fn bad_urls_methods_and_headers_are_invalid_args() {
    let (tools, _dir) = tools_with(|_| {});
    for (args, key) in [
        (json!({"url": "not a url"}), "url"),
        (
            json!({"url": "http://127.0.0.1/", "method": "GE T"}),
            "method",
        ),
        (
            json!({"url": "http://127.0.0.1/", "headers": {"bad header": "x"}}),
            "headers",
        ),
        (json!({"url": "http://127.0.0.1/", "timeout": 3}), "timeout"),
    ] {
        let err = tools.validate("http", &args).unwrap_err();
        assert!(
            matches!(&err, ToolError::InvalidArgs(m) if m.contains(key)),
            "{err:?}"
        );
    }
}
