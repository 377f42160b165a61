//! What API authentication adds to each request: `Authenticator::verify` of HS256 tokens
//! (decode, HMAC-SHA256, claims, scopes) and of ES256 tokens from a JWKS file, each the
//! first time a token is seen (every token distinct, a fresh authenticator per round) and
//! again (the token held by the verified-token cache), against a raw HMAC-SHA256 of the
//! same bytes, measured in the same run.
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
/// Calls per round for a token already seen, and distinct tokens per round for first sights.
const CALLS: usize = 20_000;
const FIRST_SIGHTS: usize = 2_000;

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

fn claims(n: usize) -> serde_json::Value {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 3600;
    json!({"sub": "bench", "scope": "tasks:write tasks:read", "exp": exp, "jti": n.to_string()})
}

/// An ES256 key: its signing key and the JWKS file that verifies it.
fn es256(dir: &std::path::Path) -> (EncodingKey, std::path::PathBuf) {
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
    (EncodingKey::from_ec_der(pkcs8.as_ref()), path)
}

/// `count` distinct tokens signed with `key` (`kid` set for ES256).
fn tokens(alg: Algorithm, key: &EncodingKey, count: usize) -> Vec<String> {
    let mut header = Header::new(alg);
    if alg == Algorithm::ES256 {
        header.kid = Some("k1".into());
    }
    (0..count)
        .map(|n| encode(&header, &claims(n), key).expect("signing"))
        .collect()
}

/// ns per call of `f`, over `calls` calls.
fn time(calls: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for n in 0..calls {
        f(n);
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (es_key, jwks) = es256(dir.path());
    let fresh = || {
        Authenticator::from_settings(&settings(Some(jwks.clone())))
            .expect("settings")
            .expect("auth on")
    };
    let hs_key = EncodingKey::from_secret(SECRET.as_bytes());
    let hs_tokens = tokens(Algorithm::HS256, &hs_key, FIRST_SIGHTS);
    let es_tokens = tokens(Algorithm::ES256, &es_key, FIRST_SIGHTS);
    let seen = fresh();
    let (hs_token, es_token) = (&hs_tokens[0], &es_tokens[0]);
    assert!(seen.verify(hs_token).is_ok() && seen.verify(es_token).is_ok());
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let signed = hs_token.rsplit_once('.').map_or("", |(s, _)| s).to_string();

    let mut figures: [Vec<f64>; 5] = Default::default();
    for _ in 0..ROUNDS {
        figures[0].push(time(CALLS, |_| {
            black_box(hmac::sign(&key, black_box(signed.as_bytes())));
        }));
        for (i, list) in [(1, &hs_tokens), (2, &es_tokens)] {
            let auth = fresh();
            figures[i].push(time(FIRST_SIGHTS, |n| {
                let _ = black_box(auth.verify(black_box(&list[n])));
            }));
        }
        for (i, token) in [(3, hs_token), (4, es_token)] {
            figures[i].push(time(CALLS, |_| {
                let _ = black_box(seen.verify(black_box(token)));
            }));
        }
    }
    let [raw, hs_first, es_first, hs_again, es_again] = figures.map(median);
    println!("raw HMAC-SHA256 of the token's signed part: {raw:.0} ns");
    for (what, ns) in [
        ("verify HS256, first sight", hs_first),
        ("verify ES256 (JWKS file), first sight", es_first),
        ("verify HS256, seen before", hs_again),
        ("verify ES256 (JWKS file), seen before", es_again),
    ] {
        println!("{what}: {ns:.0} ns ({:.1}× the raw HMAC)", ns / raw);
    }
}
