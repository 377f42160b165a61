//! What API authentication adds to each request: `Authenticator::verify` of an HS256
//! token (decode, HMAC-SHA256, claims, scopes) and of an ES256 token from a JWKS file,
//! against a raw HMAC-SHA256 of the same bytes, measured in the same run.
//!
//! The variants alternate in rounds (so a shared machine's drift hits all alike); each
//! figure is the median of the rounds' ns per call. Run: `cargo bench --bench auth`.

use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use mister_smith::config::auth::{AuthMode, AuthSettings, Secret};
use mister_smith::http::auth::Authenticator;
use serde_json::json;

const SECRET: &str = "a-bench-secret-of-at-least-32-bytes!!";
const ROUNDS: usize = 15;
const CALLS: usize = 20_000;

fn settings(jwks_file: Option<std::path::PathBuf>) -> AuthSettings {
    AuthSettings {
        mode: AuthMode::Jwt,
        secret: Some(Secret::new(SECRET)),
        secret_file: None,
        jwks_file,
        jwks_url: None,
        jwks_refresh_secs: 300.0,
        issuer: None,
        audience: None,
        leeway_secs: 30,
    }
}

fn claims() -> serde_json::Value {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 3600;
    json!({"sub": "bench", "scope": "tasks:write tasks:read", "exp": exp})
}

/// An ES256 key pair: the token it signs and the JWKS file that verifies it.
fn es256(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("an ES256 key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .expect("the key parses");
    let public = pair.public_key().as_ref();
    let (x, y) = (&public[1..33], &public[33..65]);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}]});
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("writing the JWKS");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = encode(
        &header,
        &claims(),
        &EncodingKey::from_ec_der(pkcs8.as_ref()),
    )
    .expect("signing");
    (token, path)
}

/// ns per call of `f`, over `CALLS` calls.
fn time(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        f();
    }
    start.elapsed().as_nanos() as f64 / CALLS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (es_token, jwks) = es256(dir.path());
    let auth = Authenticator::from_settings(&settings(Some(jwks)))
        .expect("settings")
        .expect("auth on");
    let hs_token = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signing");
    assert!(auth.verify(&hs_token).is_ok() && auth.verify(&es_token).is_ok());
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let signed = hs_token.rsplit_once('.').map_or("", |(s, _)| s).to_string();

    let (mut raw, mut hs, mut es) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw.push(time(|| {
            black_box(hmac::sign(&key, black_box(signed.as_bytes())));
        }));
        hs.push(time(|| {
            let _ = black_box(auth.verify(black_box(&hs_token)));
        }));
        es.push(time(|| {
            let _ = black_box(auth.verify(black_box(&es_token)));
        }));
    }
    let (raw, hs, es) = (median(raw), median(hs), median(es));
    println!("raw HMAC-SHA256 of the token's signed part: {raw:.0} ns");
    println!("verify HS256: {hs:.0} ns ({:.1}× the raw HMAC)", hs / raw);
    println!(
        "verify ES256 (JWKS file): {es:.0} ns ({:.1}× the raw HMAC)",
        es / raw
    );
}
