//! A local server speaking OpenAI's and Anthropic's wire formats, for the provider tests:
//! it answers from a queue of replies (then a fallback), over HTTP or HTTPS, and remembers
//! every request it saw. Included by `#[path]` from the test files that need it.

#![allow(dead_code)] // each test file uses a part

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actors::llm::{Completion, CompletionRequest, Llm, LlmConfig, LlmError, ProviderKind};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use super::https;
use super::pki::Pki;

/// Far longer than anything here should take; only a hang reaches it.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub enum Reply {
    Json(u16, Value),
    /// 429 with this `Retry-After` value.
    RateLimit(&'static str, Value),
    Raw(u16, &'static str),
    Hang,
    /// Waits for a permit of the server's gate, then replies.
    Gated(Box<Reply>),
    /// A Server-Sent Events stream of these `data:` payloads; after the first `hold`
    /// of them it waits for a permit of the server's `stream_gate` before the rest.
    Stream {
        events: Vec<String>,
        hold: usize,
    },
}

pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// The fake provider: replies from `queue` first, then `fallback`; remembers each request.
pub struct Fake {
    hits: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
    queue: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Reply>,
    pub gate: tokio::sync::Semaphore,
    /// What a [`Reply::Stream`] waits on midway.
    pub stream_gate: Arc<tokio::sync::Semaphore>,
}

impl Fake {
    pub fn new(replies: Vec<Reply>, fallback: Reply) -> Arc<Fake> {
        Arc::new(Fake {
            hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            queue: Mutex::new(replies.into()),
            fallback: Mutex::new(fallback),
            gate: tokio::sync::Semaphore::new(0),
            stream_gate: Arc::new(tokio::sync::Semaphore::new(0)),
        })
    }

    /// Both providers' routes, answered by `fake`.
    pub fn router(fake: &Arc<Fake>) -> axum::Router {
        let state = fake.clone();
        let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let fake = state.clone();
            async move { fake.answer(uri, headers, body).await }
        };
        axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(handler.clone()))
            .route("/v1/messages", axum::routing::post(handler))
    }

    pub async fn start(replies: Vec<Reply>, fallback: Reply) -> (Arc<Fake>, SocketAddr) {
        let fake = Fake::new(replies, fallback);
        let app = Fake::router(&fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, addr)
    }

    /// The same fake over HTTPS, with the certificate of `pki`.
    pub async fn start_tls(
        replies: Vec<Reply>,
        fallback: Reply,
        pki: &Pki,
    ) -> (Arc<Fake>, SocketAddr) {
        let fake = Fake::new(replies, fallback);
        let addr = https::serve(Fake::router(&fake), pki).await;
        (fake, addr)
    }

    pub async fn answer(&self, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = uri.path().to_string();
        self.seen.lock().unwrap().push(Seen {
            path,
            headers,
            body,
        });
        let next = self.queue.lock().unwrap().pop_front();
        let mut reply = next.unwrap_or_else(|| self.fallback.lock().unwrap().clone());
        if let Reply::Gated(inner) = reply {
            self.gate.acquire().await.unwrap().forget();
            reply = *inner;
        }
        if let Reply::Stream { events, hold } = reply {
            let gate = self.stream_gate.clone();
            let chunks =
                futures::stream::unfold((events.into_iter(), 0), move |(mut rest, sent)| {
                    let gate = gate.clone();
                    async move {
                        let event = rest.next()?;
                        if sent == hold {
                            gate.acquire().await.unwrap().forget();
                        }
                        let chunk = Bytes::from(format!("data: {event}\n\n"));
                        Some((Ok::<_, std::convert::Infallible>(chunk), (rest, sent + 1)))
                    }
                });
            return Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(chunks))
                .unwrap();
        }
        let (status, retry_after, body) = match reply {
            Reply::Json(status, v) => (status, None, v.to_string()),
            Reply::RateLimit(after, v) => (429, Some(after), v.to_string()),
            Reply::Raw(status, text) => (status, None, text.to_string()),
            Reply::Hang => std::future::pending().await,
            Reply::Gated(_) | Reply::Stream { .. } => unreachable!("gates do not nest"),
        };
        let mut response = Response::builder()
            .status(status)
            .header("content-type", "application/json");
        if let Some(after) = retry_after {
            response = response.header("retry-after", after);
        }
        response.body(Body::from(body)).unwrap()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_fallback(&self, reply: Reply) {
        *self.fallback.lock().unwrap() = reply;
    }
}

pub fn openai_ok(text: &str) -> Reply {
    Reply::Json(
        200,
        json!({"id": "c1", "object": "chat.completion", "model": "gpt-test-0613",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text}}],
               "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}),
    )
}

/// OpenAI's streamed answer of `pieces` of text (then the usage and `[DONE]`), holding
/// after the first `hold` events until the server's `stream_gate` lets it go on.
pub fn openai_stream(pieces: &[&str], hold: usize) -> Reply {
    let mut events: Vec<String> = pieces
        .iter()
        .map(|p| {
            json!({"model": "gpt-test", "choices": [{"index": 0, "delta": {"content": p}}]})
                .to_string()
        })
        .collect();
    events.push(
        json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}).to_string(),
    );
    events.push("[DONE]".into());
    Reply::Stream { events, hold }
}

/// Anthropic's streamed answer of `pieces` of text.
pub fn anthropic_stream(pieces: &[&str], hold: usize) -> Reply {
    let mut events = vec![
        json!({"type": "message_start", "message": {"model": "claude-test", "usage": {"input_tokens": 7, "output_tokens": 1}}}).to_string(),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}).to_string(),
    ];
    events.extend(pieces.iter().map(|p| {
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}).to_string()
    }));
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}).to_string());
    events.push(json!({"type": "message_stop"}).to_string());
    Reply::Stream { events, hold }
}

/// An OpenAI answer that asks for `calls` (OpenAI `tool_calls` objects).
pub fn openai_calls(calls: Value) -> Reply {
    Reply::Json(
        200,
        json!({"model": "gpt-test", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": calls}}]}),
    )
}

pub fn openai_err(status: u16, message: &str) -> Reply {
    Reply::Json(
        status,
        json!({"error": {"message": message, "type": "server_error", "code": null}}),
    )
}

pub fn anthropic_ok(parts: &[&str]) -> Reply {
    let content: Vec<Value> = parts
        .iter()
        .map(|t| json!({"type": "text", "text": t}))
        .collect();
    Reply::Json(
        200,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
               "content": content, "stop_reason": "end_turn",
               "usage": {"input_tokens": 20, "output_tokens": 4}}),
    )
}

pub fn anthropic_err(status: u16, kind: &str, message: &str) -> Reply {
    Reply::Json(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

pub fn config(provider: ProviderKind, addr: SocketAddr) -> LlmConfig {
    config_with_scheme(provider, "http", addr)
}

pub fn config_with_scheme(provider: ProviderKind, scheme: &str, addr: SocketAddr) -> LlmConfig {
    let base_url = match provider {
        ProviderKind::Openai => format!("{scheme}://{addr}/v1"),
        _ => format!("{scheme}://{addr}"),
    };
    LlmConfig {
        provider,
        base_url: Some(base_url),
        api_key: Some("sk-test".into()),
        model: Some("test-model".into()),
        timeout_secs: 10.0,
        max_retries: 2,
        retry_initial_ms: 10,
        retry_max_ms: 50,
        ..LlmConfig::default()
    }
}

pub async fn complete(llm: &Llm, request: CompletionRequest) -> Result<Completion, LlmError> {
    tokio::time::timeout(DEADLINE, llm.complete(request))
        .await
        .expect("the call should have ended long before the deadline")
}
