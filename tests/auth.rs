//! API authentication: bearer JWTs on /api/v1 (401/403 as JSON), the admin listener's
//! `admin` scope, the start-up rule for non-loopback listeners, and the audit record.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use common::{Launch, TestNode, http_client, run_to_exit, temp_dir};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use mister_smith::http::auth::ROUTE_SCOPES;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn hs256(secret: &str, sub: &str, scope: &str, exp: u64) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "scope": scope, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing a test token")
}

fn token(scope: &str) -> String {
    hs256(SECRET, "alice", scope, now() + 600)
}

async fn jwt_node(extra: &[(&str, &str)]) -> TestNode {
    Launch::new()
        .envs(&[
            ("MISTER_SMITH__AUTH__MODE", "jwt"),
            ("MISTER_SMITH__AUTH__SECRET", SECRET),
        ])
        .envs(extra)
        .start()
        .await
}

async fn call(method: &str, url: &str, token: Option<&str>) -> (StatusCode, Value, String) {
    let client = http_client();
    let mut req = match method {
        "POST" => client
            .post(url)
            .json(&json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "hi"}}]})),
        _ => client.get(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("the node answers");
    let status = resp.status();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, challenge)
}

fn concrete(route: &str) -> String {
    route.replace("{id}", "0190b7a4-0000-7000-8000-000000000000")
}

#[tokio::test]
async fn bad_tokens_get_401_json_with_a_bearer_challenge() {
    let node = jwt_node(&[]).await;
    let url = format!("{}/api/v1/tasks", node.http_url());
    let header_none = {
        // alg "none": no signature at all.
        use base64_none::encode_part;
        format!(
            "{}.{}.",
            encode_part(r#"{"alg":"none","typ":"JWT"}"#),
            encode_part(&format!(
                r#"{{"sub":"alice","scope":"tasks:read","exp":{}}}"#,
                now() + 600
            ))
        )
    };
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "alice", "scope": "tasks:read", "exp": now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases = [
        ("missing", None),
        (
            "expired",
            Some(hs256(SECRET, "alice", "tasks:read", now() - 3600)),
        ),
        (
            "bad signature",
            Some(hs256(
                "another-secret-of-at-least-32-bytes!!",
                "alice",
                "tasks:read",
                now() + 600,
            )),
        ),
        ("alg none", Some(header_none)),
        ("wrong alg", Some(hs384)),
        ("garbage", Some("not.a.jwt".to_string())),
    ];
    for (what, token) in cases {
        let (status, body, challenge) = call("GET", &url, token.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
    }
    let (status, _, _) = call("GET", &url, Some(&token("tasks:read"))).await;
    assert_eq!(status, StatusCode::OK);
    // Health, metrics and the OpenAPI document stay open.
    for open in ["/health/live", "/metrics", "/api/v1/openapi.json"] {
        let resp = http_client()
            .get(format!("{}{open}", node.http_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{open}");
    }
    let log = node.log();
    assert!(
        log.contains("api.auth") && log.contains("refused"),
        "no audit line:\n{log}"
    );
}

#[tokio::test]
async fn every_route_needs_its_scope() {
    let node = jwt_node(&[]).await;
    let all = "tasks:write tasks:read tasks:read:all agents:read";
    for (method, route, scope) in ROUTE_SCOPES {
        let url = format!("{}{}", node.http_url(), concrete(route));
        let others: Vec<&str> = all
            .split(' ')
            .filter(|s| s != scope && !(*scope == "tasks:read" && *s == "tasks:read:all"))
            .collect();
        let (status, body, challenge) = call(method, &url, Some(&token(&others.join(" ")))).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {route} without {scope}: {body}"
        );
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
        let (status, body, _) = call(method, &url, Some(&token(scope))).await;
        assert!(
            status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
            "{method} {route} with {scope}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn es256_tokens_verify_against_a_jwks_file() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref(); // 0x04 || x || y
    let b64 = |b: &[u8]| base64_none::encode_bytes(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    let dir = temp_dir();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let node = Launch::new()
        .envs(&[
            ("MISTER_SMITH__AUTH__MODE", "jwt"),
            ("MISTER_SMITH__AUTH__JWKS_FILE", path.to_str().unwrap()),
        ])
        .start()
        .await;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = json!({"sub": "svc", "scopes": ["tasks:read"], "exp": now() + 600});
    let good = encode(&header, &claims, &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap();
    let url = format!("{}/api/v1/tasks", node.http_url());
    let (status, body, _) = call("GET", &url, Some(&good)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An HS256 token is refused: this node has no secret.
    let (status, _, _) = call("GET", &url, Some(&token("tasks:read"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Another key with the same kid is refused.
    let other = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let forged = encode(&header, &claims, &EncodingKey::from_ec_der(other.as_ref())).unwrap();
    let (status, _, _) = call("GET", &url, Some(&forged)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_admin_listener_takes_an_admin_scoped_jwt_and_audits() {
    let node = jwt_node(&[]).await;
    let url = format!("{}/admin/actors", node.admin_url());
    let (status, _, challenge) = call("GET", &url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.starts_with("Bearer"));
    let (status, body, _) = call("GET", &url, Some(&token("tasks:read"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let admin = hs256(SECRET, "ops", "admin", now() + 600);
    let (status, body, _) = call("GET", &url, Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A drain (refused here: not clustered) is audited with its caller.
    let drain = format!("{}/admin/nodes/x/drain", node.admin_url());
    let (status, _, _) = call("POST", &drain, Some(&admin)).await;
    assert!(!status.is_success());
    let log = node.log();
    assert!(
        log.contains("admin.drain") && log.contains("ops"),
        "no audit of the drain:\n{log}"
    );
    assert!(
        log.contains("admin.auth"),
        "no audit of the refused token:\n{log}"
    );
}

#[tokio::test]
async fn a_non_loopback_api_without_auth_refuses_to_start() {
    let dir = temp_dir();
    let out = run_to_exit(
        dir.path(),
        &["run", "--http", "0.0.0.0:0", "--admin", "127.0.0.1:0"],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(out.stderr.contains("auth.mode"), "{}", out.describe());
}

/// Base64url without padding, as JWTs and JWKs write it.
mod base64_none {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    pub fn encode_bytes(input: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(input)
    }

    pub fn encode_part(text: &str) -> String {
        encode_bytes(text.as_bytes())
    }
}
