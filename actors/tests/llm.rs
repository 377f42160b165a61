//! The LLM providers against real HTTP: a local axum server speaks OpenAI's and Anthropic's
//! wire formats (success, errors, rate limits, silence, garbage), so the clients, retries
//! and the circuit breaker are tested over real sockets with real JSON; the same fake over
//! HTTPS with a CA of its own tests `llm.ca_file` and that the key never leaks. Also the
//! scripted and `none` providers. No test asserts a duration: waits are bounded by generous deadlines.

use std::net::SocketAddr;
use std::time::Duration;

use actors::llm::{
    BreakerState, ChatMessage, CompletionRequest, Llm, LlmConfig, LlmError, NOT_CONFIGURED,
    ProviderKind,
};
use serde_json::json;

#[path = "common/fake_llm.rs"]
mod fake_llm;
#[path = "common/https.rs"]
mod https;
#[path = "common/pki.rs"]
mod pki;

use fake_llm::{
    DEADLINE, Fake, Reply, anthropic_err, anthropic_ok, complete, config, config_with_scheme,
    openai_err, openai_ok,
};
use pki::Pki;

fn request() -> CompletionRequest {
    CompletionRequest {
        system: Some("You are terse.".into()),
        messages: vec![
            ChatMessage::user("Hello"),
            ChatMessage::assistant("Hi."),
            ChatMessage::user("Plan a task"),
        ],
        max_tokens: Some(64),
        temperature: Some(0.5),
        ..CompletionRequest::default()
    }
}

#[tokio::test]
async fn openai_success_sends_the_wire_format() {
    let (fake, addr) = Fake::start(vec![], openai_ok("Done.")).await;
    let llm = Llm::new(&config(ProviderKind::Openai, addr)).unwrap();
    assert_eq!(llm.provider(), ProviderKind::Openai);
    assert!(llm.is_configured());
    let c = complete(&llm, request()).await.unwrap();
    assert_eq!(c.text, "Done.");
    assert_eq!(c.model, "gpt-test-0613");
    assert_eq!((c.input_tokens, c.output_tokens), (Some(12), Some(3)));
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].headers["authorization"], "Bearer sk-test");
    assert_eq!(
        seen[0].body,
        json!({"model": "test-model", "max_tokens": 64, "temperature": 0.5, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "Plan a task"}]})
    );
}

#[tokio::test]
async fn openai_without_a_key_sends_no_authorization_and_omits_unset_fields() {
    let (fake, addr) = Fake::start(vec![], openai_ok("ok")).await;
    let mut cfg = config(ProviderKind::Openai, addr);
    cfg.api_key = None;
    let llm = Llm::new(&cfg).unwrap();
    complete(&llm, CompletionRequest::user("hi")).await.unwrap();
    let seen = fake.seen.lock().unwrap();
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(
        seen[0].body,
        json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
    );
}

#[tokio::test]
async fn openai_rate_limit_honours_retry_after_then_succeeds() {
    let limited = Reply::RateLimit("1", json!({"error": {"message": "slow down"}}));
    let (fake, addr) = Fake::start(vec![limited], openai_ok("after the wait")).await;
    let mut cfg = config(ProviderKind::Openai, addr);
    // Own backoff of ten minutes: only the server's Retry-After lets this finish in time.
    cfg.retry_initial_ms = 600_000;
    cfg.retry_max_ms = 600_000;
    let llm = Llm::new(&cfg).unwrap();
    let c = complete(&llm, request()).await.unwrap();
    assert_eq!(c.text, "after the wait");
    assert_eq!(fake.hits(), 2);
}

#[tokio::test]
async fn openai_rate_limit_that_persists_is_reported_with_its_retry_after() {
    let limited = Reply::RateLimit("0", json!({"error": {"message": "slow down"}}));
    let (fake, addr) = Fake::start(vec![], limited).await;
    let llm = Llm::new(&config(ProviderKind::Openai, addr)).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    assert_eq!(
        err,
        LlmError::RateLimited {
            retry_after: Some(Duration::ZERO)
        }
    );
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn openai_server_errors_are_retried_until_exhausted() {
    let (fake, addr) = Fake::start(vec![], openai_err(500, "boom")).await;
    let llm = Llm::new(&config(ProviderKind::Openai, addr)).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    assert_eq!(
        err,
        LlmError::Http {
            status: 500,
            message: "boom".into()
        }
    );
    assert_eq!(fake.hits(), 3, "max_retries = 2 means 3 requests");
}

#[tokio::test]
async fn openai_client_error_is_not_retried_and_does_not_trip_the_breaker() {
    let (fake, addr) = Fake::start(vec![], openai_err(400, "bad model")).await;
    let mut cfg = config(ProviderKind::Openai, addr);
    cfg.breaker.min_samples = 2;
    let llm = Llm::new(&cfg).unwrap();
    for n in 1..=4 {
        let err = complete(&llm, request()).await.unwrap_err();
        assert_eq!(
            err,
            LlmError::Http {
                status: 400,
                message: "bad model".into()
            }
        );
        assert_eq!(fake.hits(), n);
    }
    assert_eq!(llm.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn openai_silent_server_times_out() {
    let (fake, addr) = Fake::start(vec![], Reply::Hang).await;
    let mut cfg = config(ProviderKind::Openai, addr);
    cfg.timeout_secs = 0.3;
    cfg.max_retries = 1;
    let llm = Llm::new(&cfg).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    assert_eq!(err, LlmError::Timeout(Duration::from_millis(300)));
    assert_eq!(fake.hits(), 2, "a timeout is retried");
}

#[tokio::test]
async fn openai_malformed_answer_is_a_bad_response() {
    let (fake, addr) = Fake::start(vec![], Reply::Raw(200, "{\"choices\": [")).await;
    let llm = Llm::new(&config(ProviderKind::Openai, addr)).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    assert!(
        matches!(err, LlmError::BadResponse(ref m) if m.contains("choices")),
        "{err:?}"
    );
    assert_eq!(fake.hits(), 1, "garbage is not retried");
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = config(ProviderKind::Openai, addr);
    cfg.max_retries = 1;
    let llm = Llm::new(&cfg).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    assert!(matches!(err, LlmError::Transport(_)), "{err:?}");
}

#[tokio::test]
async fn anthropic_success_sends_the_wire_format() {
    let (fake, addr) = Fake::start(vec![], anthropic_ok(&["Step one. ", "Step two."])).await;
    let llm = Llm::new(&config(ProviderKind::Anthropic, addr)).unwrap();
    let mut req = request();
    req.max_tokens = None;
    req.messages
        .insert(0, ChatMessage::system("Answer in English."));
    let c = complete(&llm, req).await.unwrap();
    assert_eq!(c.text, "Step one. Step two.");
    assert_eq!(c.model, "claude-test");
    assert_eq!((c.input_tokens, c.output_tokens), (Some(20), Some(4)));
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(seen[0].headers["x-api-key"], "sk-test");
    assert_eq!(seen[0].headers["anthropic-version"], "2023-06-01");
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(
        seen[0].body,
        json!({"model": "test-model", "max_tokens": 1024, "temperature": 0.5,
               "system": "You are terse.\n\nAnswer in English.",
               "messages": [{"role": "user", "content": "Hello"},
                            {"role": "assistant", "content": "Hi."},
                            {"role": "user", "content": "Plan a task"}]})
    );
}

#[tokio::test]
async fn anthropic_rate_limit_honours_retry_after_then_succeeds() {
    let limited = Reply::RateLimit(
        "1",
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}),
    );
    let (fake, addr) = Fake::start(vec![limited], anthropic_ok(&["fine"])).await;
    let mut cfg = config(ProviderKind::Anthropic, addr);
    cfg.retry_initial_ms = 600_000;
    cfg.retry_max_ms = 600_000;
    let llm = Llm::new(&cfg).unwrap();
    assert_eq!(complete(&llm, request()).await.unwrap().text, "fine");
    assert_eq!(fake.hits(), 2);
}

#[tokio::test]
async fn anthropic_overload_is_retried_until_exhausted() {
    let (fake, addr) =
        Fake::start(vec![], anthropic_err(529, "overloaded_error", "Overloaded")).await;
    let mut cfg = config(ProviderKind::Anthropic, addr);
    cfg.max_retries = 3;
    let llm = Llm::new(&cfg).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    let message = "overloaded_error: Overloaded".to_string();
    assert_eq!(
        err,
        LlmError::Http {
            status: 529,
            message
        }
    );
    assert_eq!(fake.hits(), 4);
}

#[tokio::test]
async fn anthropic_server_error_then_recovery_succeeds() {
    let fail = anthropic_err(500, "api_error", "internal");
    let (fake, addr) = Fake::start(vec![fail.clone(), fail], anthropic_ok(&["back"])).await;
    let llm = Llm::new(&config(ProviderKind::Anthropic, addr)).unwrap();
    assert_eq!(complete(&llm, request()).await.unwrap().text, "back");
    assert_eq!(fake.hits(), 3);
}

#[tokio::test]
async fn anthropic_invalid_request_is_not_retried() {
    let bad = anthropic_err(
        400,
        "invalid_request_error",
        "messages: at least one message",
    );
    let (fake, addr) = Fake::start(vec![], bad).await;
    let llm = Llm::new(&config(ProviderKind::Anthropic, addr)).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    let message = "invalid_request_error: messages: at least one message".to_string();
    assert_eq!(
        err,
        LlmError::Http {
            status: 400,
            message
        }
    );
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn anthropic_silent_server_times_out() {
    let (fake, addr) = Fake::start(vec![], Reply::Hang).await;
    let mut cfg = config(ProviderKind::Anthropic, addr);
    cfg.timeout_secs = 0.3;
    cfg.max_retries = 0;
    let llm = Llm::new(&cfg).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    assert_eq!(err, LlmError::Timeout(Duration::from_millis(300)));
    assert_eq!(fake.hits(), 1);
}

#[tokio::test]
async fn anthropic_malformed_answer_is_a_bad_response() {
    let wrong_shape = Reply::Json(200, json!({"content": "not a list"}));
    let (fake, addr) = Fake::start(vec![], wrong_shape).await;
    let llm = Llm::new(&config(ProviderKind::Anthropic, addr)).unwrap();
    let err = complete(&llm, request()).await.unwrap_err();
    assert!(matches!(err, LlmError::BadResponse(_)), "{err:?}");
    assert_eq!(fake.hits(), 1);
}

/// An openai provider with a breaker that opens after 3 failed calls, no retries.
fn breaker_config(addr: SocketAddr, open_secs: f64) -> LlmConfig {
    let mut cfg = config(ProviderKind::Openai, addr);
    cfg.max_retries = 0;
    cfg.breaker.min_samples = 3;
    cfg.breaker.failure_ratio = 0.5;
    cfg.breaker.open_secs = open_secs;
    cfg.breaker.half_open_probes = 1;
    cfg
}

/// Fails three calls (the server answers `status`) so the breaker opens.
async fn trip(llm: &Llm, fake: &Fake, status: u16) {
    for n in 1..=3 {
        assert_eq!(
            llm.breaker_state(),
            BreakerState::Closed,
            "open before min_samples"
        );
        let err = complete(llm, request()).await.unwrap_err();
        assert!(
            matches!(err, LlmError::Http { status: s, .. } if s == status),
            "{err:?}"
        );
        assert_eq!(fake.hits(), n);
    }
    assert_eq!(llm.breaker_state(), BreakerState::Open);
}

async fn poll_state(llm: &Llm, want: BreakerState) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while llm.breaker_state() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn breaker_opens_after_min_samples_and_fails_fast() {
    let (fake, addr) = Fake::start(vec![], openai_err(500, "down")).await;
    let llm = Llm::new(&breaker_config(addr, 600.0)).unwrap();
    trip(&llm, &fake, 500).await;
    let clone = llm.clone();
    for _ in 0..5 {
        let err = complete(&clone, request()).await.unwrap_err();
        let LlmError::CircuitOpen { retry_after } = err else {
            panic!("expected CircuitOpen, got {err:?}");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(600));
    }
    assert_eq!(fake.hits(), 3, "an open breaker must not reach the server");
}

#[tokio::test]
async fn breaker_probe_closes_it_once_the_server_recovers() {
    let (fake, addr) = Fake::start(vec![], openai_err(503, "down")).await;
    let llm = Llm::new(&breaker_config(addr, 0.2)).unwrap();
    trip(&llm, &fake, 503).await;
    fake.set_fallback(openai_ok("recovered"));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let completion = loop {
        match complete(&llm, request()).await {
            Ok(c) => break c,
            Err(LlmError::CircuitOpen { .. }) => {}
            Err(other) => panic!("only CircuitOpen before the probe, got {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never let a probe through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(completion.text, "recovered");
    assert_eq!(fake.hits(), 4, "exactly one probe reached the server");
    assert_eq!(llm.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn breaker_probe_failure_opens_it_again() {
    let (fake, addr) = Fake::start(vec![], openai_err(500, "down")).await;
    let llm = Llm::new(&breaker_config(addr, 0.2)).unwrap();
    trip(&llm, &fake, 500).await;
    poll_state(&llm, BreakerState::HalfOpen).await;
    let err = complete(&llm, request()).await.unwrap_err();
    assert!(matches!(err, LlmError::Http { status: 500, .. }), "{err:?}");
    assert_eq!(fake.hits(), 4);
    assert_eq!(llm.breaker_state(), BreakerState::Open);
}

#[tokio::test]
async fn breaker_half_open_lets_only_the_allowed_probes_through() {
    let (fake, addr) = Fake::start(vec![], openai_err(500, "down")).await;
    let llm = Llm::new(&breaker_config(addr, 0.2)).unwrap();
    trip(&llm, &fake, 500).await;
    fake.set_fallback(Reply::Gated(Box::new(openai_ok("slow but fine"))));
    poll_state(&llm, BreakerState::HalfOpen).await;
    let probe = tokio::spawn({
        let llm = llm.clone();
        async move { llm.complete(request()).await }
    });
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while fake.hits() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The one probe slot is taken: a second call fails fast without reaching the server.
    let err = complete(&llm, request()).await.unwrap_err();
    assert!(matches!(err, LlmError::CircuitOpen { .. }), "{err:?}");
    assert_eq!(fake.hits(), 4);
    assert_eq!(llm.breaker_state(), BreakerState::HalfOpen);
    fake.gate.add_permits(1);
    let done = tokio::time::timeout(DEADLINE, probe)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.unwrap().text, "slow but fine");
    assert_eq!(llm.breaker_state(), BreakerState::Closed);
}

fn scripted(script: &str) -> (tempfile::NamedTempFile, Llm) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), script).unwrap();
    let cfg = LlmConfig {
        provider: ProviderKind::Scripted,
        script: Some(file.path().to_path_buf()),
        ..LlmConfig::default()
    };
    let llm = Llm::new(&cfg).unwrap();
    (file, llm)
}

const SCRIPT: &str = r#"{"replies": [
    {"match": "plan", "reply": "{\"steps\": []}"},
    {"match": "You judge", "reply": "pass"},
    {"match": "Hello", "reply": "Hi there"}],
  "default": "I do not know."}"#;

#[tokio::test]
async fn scripted_first_matching_reply_wins() {
    let (_file, llm) = scripted(SCRIPT);
    assert_eq!(llm.provider(), ProviderKind::Scripted);
    assert!(llm.is_configured());
    let c = complete(&llm, request()).await.unwrap();
    // The last user message is "Plan a task": matching is case-sensitive, so "plan" misses;
    // the earlier "Hello" is not the last user message, so the default answers.
    assert_eq!(c.text, "I do not know.");
    assert_eq!(c.model, "scripted");
    let c = complete(&llm, CompletionRequest::user("please plan this, Hello"))
        .await
        .unwrap();
    assert_eq!(c.text, "{\"steps\": []}");
    let mut req = CompletionRequest::user("step output: 42");
    req.system = Some("You judge outputs.".into());
    assert_eq!(complete(&llm, req).await.unwrap().text, "pass");
}

#[tokio::test]
async fn scripted_without_match_or_default_names_the_message() {
    let (_file, llm) = scripted(r#"{"replies": [{"match": "x-ray", "reply": "seen"}]}"#);
    assert_eq!(
        complete(&llm, CompletionRequest::user("an x-ray"))
            .await
            .unwrap()
            .text,
        "seen"
    );
    let err = complete(&llm, CompletionRequest::user("something else"))
        .await
        .unwrap_err();
    let LlmError::NoScriptedReply(message) = &err else {
        panic!("expected NoScriptedReply, got {err:?}");
    };
    assert!(message.contains("something else"), "{message}");
    assert_eq!(llm.breaker_state(), BreakerState::Closed);
}

#[test]
fn scripted_missing_or_invalid_file_fails_at_construction() {
    let cfg = LlmConfig {
        provider: ProviderKind::Scripted,
        script: Some("/nonexistent/replies.json".into()),
        ..LlmConfig::default()
    };
    let err = Llm::new(&cfg).unwrap_err();
    let LlmError::NotConfigured(message) = &err else {
        panic!("expected NotConfigured, got {err:?}");
    };
    assert!(message.starts_with("llm.script:"), "{message}");
    assert!(message.contains("/nonexistent/replies.json"), "{message}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r#"{"replise": []}"#).unwrap();
    let cfg = LlmConfig {
        script: Some(file.path().to_path_buf()),
        ..cfg
    };
    let err = Llm::new(&cfg).unwrap_err();
    assert!(
        matches!(&err, LlmError::NotConfigured(m) if m.contains("not a valid script")),
        "{err:?}"
    );
}

#[tokio::test]
async fn none_provider_says_how_to_configure_one() {
    let llm = Llm::new(&LlmConfig::default()).unwrap();
    assert_eq!(llm.provider(), ProviderKind::None);
    assert!(!llm.is_configured());
    let err = complete(&llm, request()).await.unwrap_err();
    assert_eq!(err, LlmError::NotConfigured(NOT_CONFIGURED.into()));
    let text = err.to_string();
    for key in [
        "llm.provider",
        "llm.base_url",
        "llm.api_key",
        "llm.model",
        "llm.script",
    ] {
        assert!(text.contains(key), "{text} should mention {key}");
    }
}

#[test]
fn invalid_settings_fail_at_construction_naming_the_key() {
    let mut cfg = config(ProviderKind::Anthropic, "127.0.0.1:9".parse().unwrap());
    cfg.model = None;
    let err = Llm::new(&cfg).unwrap_err();
    let want = "llm.model: required for provider anthropic".to_string();
    assert_eq!(err, LlmError::NotConfigured(want));
}

// ---------------------------------------------------------------------------------------
// Over TLS: the fake behind a certificate of a test CA that no system trusts.

const TLS_KEY: &str = "sk-tls-never-shown";

/// What the provider must have sent as its key header for `key`.
fn key_header(provider: ProviderKind, key: &str) -> (&'static str, String) {
    match provider {
        ProviderKind::Openai => ("authorization", format!("Bearer {key}")),
        _ => ("x-api-key", key.to_string()),
    }
}

fn last_header(fake: &Fake, name: &str) -> Option<String> {
    let seen = fake.seen.lock().unwrap();
    let last = seen.last()?;
    Some(last.headers.get(name)?.to_str().ok()?.to_string())
}

/// Both providers over HTTPS: trusted through `llm.ca_file` (the key reaches the server, as
/// `api_key` or from `api_key_file`), refused without it with a certificate error that does
/// not carry the key (and nothing reaches the server), and the key never in a `Debug`.
#[tokio::test]
async fn providers_over_tls_trust_the_ca_file_and_never_show_the_key() {
    let pki = Pki::new();
    for (provider, ok) in [
        (ProviderKind::Openai, openai_ok("Done.")),
        (ProviderKind::Anthropic, anthropic_ok(&["Done."])),
    ] {
        let (fake, addr) = Fake::start_tls(vec![], ok, &pki).await;
        let mut c = config_with_scheme(provider, "https", addr);
        c.api_key = Some(TLS_KEY.into());
        c.ca_file = Some(pki.ca.clone());
        let llm = Llm::new(&c).unwrap();
        let done = complete(&llm, request()).await.unwrap();
        assert_eq!(done.text, "Done.", "{provider}");
        let (name, value) = key_header(provider, TLS_KEY);
        assert_eq!(last_header(&fake, name), Some(value), "{provider}");
        for shown in [format!("{c:?}"), format!("{llm:?}")] {
            assert!(!shown.contains(TLS_KEY), "{provider}: {shown}");
        }

        // The system's roots do not include the test CA: a certificate error, no panic.
        let hits = fake.hits();
        let untrusting = LlmConfig {
            ca_file: None,
            ..c.clone()
        };
        let err = complete(&Llm::new(&untrusting).unwrap(), request())
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Transport(_)), "{provider}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("certificate"), "{provider}: {text}");
        assert!(
            !text.contains(TLS_KEY) && !format!("{err:?}").contains(TLS_KEY),
            "{provider}: {text}"
        );
        assert_eq!(
            fake.hits(),
            hits,
            "{provider}: a request got past the handshake"
        );

        // The key from a file.
        let key_file = pki.dir().join(format!("{provider}-key"));
        std::fs::write(&key_file, "sk-from-a-file\n").unwrap();
        let from_file = LlmConfig {
            api_key: None,
            api_key_file: Some(key_file),
            ..c.clone()
        };
        let llm = Llm::new(&from_file).unwrap();
        complete(&llm, request()).await.unwrap();
        let (name, value) = key_header(provider, "sk-from-a-file");
        assert_eq!(last_header(&fake, name), Some(value), "{provider}");
        assert!(!format!("{llm:?}").contains("sk-from-a-file"), "{provider}");
    }
}

/// A request with a delta sink streams: the text reaches the sink piece by piece while
/// the answer is still coming (the fake holds the rest until let go), and the whole
/// completion is what a plain answer gives. Both wire formats; and a server that answers
/// a streamed request whole is read whole.
#[tokio::test]
async fn streamed_answers_reach_the_sink_as_they_arrive() {
    use fake_llm::{anthropic_stream, openai_stream};
    for (provider, reply) in [
        (
            ProviderKind::Openai,
            openai_stream(&["Hel", "lo ", "world"], 1),
        ),
        (
            ProviderKind::Anthropic,
            anthropic_stream(&["Hel", "lo ", "world"], 3),
        ),
    ] {
        let (fake, addr) = Fake::start(vec![reply], openai_ok("unused")).await;
        let llm = Llm::new(&config(provider, addr)).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let sink = actors::llm::DeltaSink::new(move |t: &str| {
            let _ = tx.send(t.to_string());
        });
        let asked = CompletionRequest {
            stream: Some(sink),
            ..request()
        };
        let call = tokio::spawn({
            let llm = llm.clone();
            async move { complete(&llm, asked).await }
        });
        let first = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
        assert_eq!(first.as_deref(), Some("Hel"), "{provider:?}");
        assert!(
            !call.is_finished(),
            "{provider:?}: the answer is still coming"
        );
        fake.stream_gate.add_permits(1);
        let c = call.await.unwrap().unwrap();
        assert_eq!(c.text, "Hello world", "{provider:?}");
        assert_eq!(c.input_tokens, Some(7), "{provider:?}");
        assert_eq!(c.output_tokens, Some(2), "{provider:?}");
        let mut rest = Vec::new();
        while let Ok(piece) = rx.try_recv() {
            rest.push(piece);
        }
        assert_eq!(rest, ["lo ", "world"], "{provider:?}");
        assert_eq!(
            fake.seen.lock().unwrap()[0].body["stream"],
            true,
            "{provider:?}"
        );
    }
    // A server that ignores `stream` and answers whole is read whole.
    let (_fake, addr) = Fake::start(vec![], openai_ok("Whole.")).await;
    let llm = Llm::new(&config(ProviderKind::Openai, addr)).unwrap();
    let asked = CompletionRequest {
        stream: Some(actors::llm::DeltaSink::new(|_: &str| {})),
        ..request()
    };
    assert_eq!(complete(&llm, asked).await.unwrap().text, "Whole.");
}
