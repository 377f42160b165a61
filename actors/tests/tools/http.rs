//! The `http` tool against a real axum server on 127.0.0.1: statuses, JSON, the host
//! allowlist (also for redirect targets), the redirect limit and the body cap; and the
//! address guard: loopback, private and link-local addresses, names resolving to them,
//! redirects to them and the node's own listeners are refused unless allowlisted.

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};

use super::*;

const BIG: usize = 2 * 1024 * 1024;

/// Tools allowed to call the loopback test server: its host and 127.0.0.1/32.
fn loopback_tools(change: impl FnOnce(&mut ToolsConfig)) -> (Tools, TempDir) {
    tools_with(|c| {
        c.http.allow_hosts = vec!["127.0.0.1".into(), "localhost".into()];
        c.http.allow_cidrs = vec!["127.0.0.1/32".into()];
        change(c);
    })
}

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
        .route(
            "/to-loopback",
            get(|| async { Redirect::temporary("http://127.0.0.1:9/") }),
        )
        .route("/echo", post(|body: String| async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn get_returns_status_body_and_json() {
    let base = server().await;
    let (tools, _dir) = loopback_tools(|_| {});
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
    let (tools, _dir) = loopback_tools(|_| {});
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

    let (only_localhost, _dir) = loopback_tools(|c| c.http.allow_hosts = vec!["localhost".into()]);
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
    let (tools, _dir) = loopback_tools(|c| c.max_output_bytes = 1000);
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
    let (tools, _dir) = loopback_tools(|_| {});
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

async fn denied(tools: &Tools, args: Value) -> String {
    match run(tools, "http", args, None).await {
        Err(ToolError::Denied(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn nothing_is_allowed_until_configured() {
    let base = server().await;
    let (tools, _dir) = tools_with(|_| {});
    let m = denied(&tools, json!({"url": format!("{base}/json")})).await;
    assert!(m.contains("tools.http.allow_hosts is empty"), "{m}");
}

#[tokio::test]
async fn special_addresses_are_refused_by_resolved_ip() {
    let base = server().await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let (any, _dir) = tools_with(|c| c.http.allow_hosts = vec!["*".into()]);
    for url in [
        format!("{base}/json"),
        format!("http://localhost:{port}/json"),
        format!("http://[::1]:{port}/json"),
        format!("http://[::ffff:127.0.0.1]:{port}/json"),
        "http://10.1.2.3/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://192.168.0.1/".to_string(),
    ] {
        let m = denied(&any, json!({"url": url})).await;
        assert!(m.contains("tools.http.allow_cidrs"), "{url}: {m}");
    }
    // A name is judged by what it resolves to.
    let m = denied(
        &any,
        json!({"url": format!("http://localhost:{port}/json")}),
    )
    .await;
    assert!(
        m.contains("localhost resolves only to refused addresses"),
        "{m}"
    );

    // Allowlisted loopback works, but a redirect from there to another refused address
    // (127.0.0.1:9 is allowed by CIDR, so use the own-listener rule below) is checked.
    let (cidr, _dir) = tools_with(|c| {
        c.http.allow_hosts = vec!["*".into()];
        c.http.allow_cidrs = vec!["127.0.0.1/32".into()];
    });
    let out = run(&cidr, "http", json!({"url": format!("{base}/json")}), None)
        .await
        .unwrap();
    assert_eq!(out.status, Some(200));
    let m = denied(&cidr, json!({"url": format!("http://[::1]:{port}/json")})).await;
    assert!(m.contains("loopback"), "{m}");
}

#[tokio::test]
async fn redirects_to_refused_addresses_are_refused() {
    let base = server().await;
    // The server is allowed by CIDR; its redirect goes to 127.0.0.1:9, the node's own
    // listener here, which no CIDR opens.
    let (tools, _dir) = tools_with(|c| {
        c.http.allow_hosts = vec!["*".into()];
        c.http.allow_cidrs = vec!["127.0.0.0/8".into()];
        c.http.node_listeners = vec!["127.0.0.1:9".parse().unwrap()];
    });
    let m = denied(&tools, json!({"url": format!("{base}/to-loopback")})).await;
    assert!(
        m.contains("127.0.0.1:9") && m.contains("own listeners"),
        "{m}"
    );
    // Without the CIDR, the same redirect target is refused as loopback.
    let (strict, _dir) = tools_with(|c| {
        c.http.allow_hosts = vec!["*".into()];
        c.http.allow_cidrs = vec!["127.0.0.1/32".into()];
    });
    let out = run(
        &strict,
        "http",
        json!({"url": format!("{base}/json")}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.status, Some(200));
}

#[tokio::test]
async fn own_listeners_are_refused_even_when_allowlisted() {
    let base = server().await;
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let (tools, _dir) = loopback_tools(|c| c.http.node_listeners = vec![addr]);
    let m = denied(&tools, json!({"url": format!("{base}/json")})).await;
    assert!(m.contains("own listeners"), "{m}");
    let m = denied(
        &tools,
        json!({"url": format!("http://localhost:{}/json", addr.port())}),
    )
    .await;
    assert!(m.contains("own listeners"), "{m}");
}

#[tokio::test]
async fn a_host_header_is_refused() {
    let (tools, _dir) = loopback_tools(|_| {});
    let err = tools
        .validate(
            "http",
            &json!({"url": "http://127.0.0.1/", "headers": {"HOST": "admin.internal"}}),
        )
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArgs(m) if m.contains("Host")),
        "{err:?}"
    );
}

/// HTTPS to a server whose certificate comes from a test CA: trusted through
/// `tools.http.ca_file`, by IP and by name; without it, a clear certificate failure.
#[tokio::test]
async fn https_is_trusted_through_the_ca_file_only() {
    let pki = pki::Pki::new();
    let app = Router::new().route("/json", get(|| async { axum::Json(json!({"tls": true})) }));
    let addr = https::serve(app, &pki).await;
    let (trusting, _dir) = loopback_tools(|c| c.http.ca_file = Some(pki.ca.clone()));
    let (untrusting, _dir2) = loopback_tools(|_| {});
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}/json", addr.port());
        let out = run(&trusting, "http", json!({"url": url}), None)
            .await
            .unwrap();
        assert_eq!(out.status, Some(200), "{url}");
        assert_eq!(out.json, Some(json!({"tls": true})), "{url}");

        let err = run(&untrusting, "http", json!({"url": url}), None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Failed(m) if m.contains("certificate") && m.contains(&url)),
            "{url}: {err:?}"
        );
    }
}
