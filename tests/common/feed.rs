//! A client of the event feed (`GET /api/v1/events/ws`) over a real WebSocket
//! (tokio-tungstenite), and what the feed's tests assert about frames and traces.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::http_client;

pub const WS_PATH: &str = "/api/v1/events/ws";

/// How long a test waits for the next frame it expects before it fails.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(30);

/// A task's final trace entries.
pub const FINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];

pub fn echo(text: &str) -> Value {
    json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": text}}]})
}

/// `a` (echo), then `nap` (sleep `ms`), then `b` (echo): a task still running a while
/// after it is submitted, with a trace of several entries.
pub fn echo_nap_echo(ms: u64) -> Value {
    json!({"steps": [
        {"id": "a", "tool": "echo", "args": {"text": "one"}},
        {"id": "nap", "tool": "sleep", "args": {"ms": ms}, "depends_on": ["a"]},
        {"id": "b", "tool": "echo", "args": {"text": "two"}, "depends_on": ["nap"]},
    ]})
}

/// A task of `n` independent echo steps: `n + 2` trace entries from one request.
pub fn wide(n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("s{i}"), "tool": "echo", "args": {"text": "x"}}))
        .collect();
    json!({ "steps": steps })
}

pub fn ws_url(addr: SocketAddr, query: &str) -> String {
    format!("ws://{addr}{WS_PATH}?{query}")
}

pub fn request(
    addr: SocketAddr,
    query: &str,
    token: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut request = ws_url(addr, query)
        .into_client_request()
        .expect("a valid feed URL");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    request
}

/// What a feed gave next.
#[derive(Debug)]
pub enum Got {
    Frame(Value),
    /// A close frame: its code and reason.
    Closed(u16, String),
    /// The connection ended without a close frame, or broke.
    Broken(String),
}

/// A client of the feed, past its `hello` frame.
pub struct Feed<S> {
    pub socket: WebSocketStream<S>,
    pub hello: Value,
    pub what: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Feed<S> {
    /// Reads the first frame, which must be the hello.
    pub async fn start(socket: WebSocketStream<S>, what: String) -> Self {
        let mut feed = Feed {
            socket,
            hello: Value::Null,
            what,
        };
        let hello = match feed.next().await {
            Got::Frame(hello) => hello,
            other => panic!("{}: no hello frame, got {other:?}", feed.what),
        };
        assert_eq!(hello["kind"], "hello", "{}: first frame {hello}", feed.what);
        for field in ["first_seq", "last_seq", "missed"] {
            assert!(
                hello[field].is_u64(),
                "{}: hello without a numeric {field}: {hello}",
                feed.what
            );
        }
        feed.hello = hello;
        feed
    }

    /// The next text frame (as JSON), close or end, within [`FRAME_DEADLINE`].
    pub async fn next(&mut self) -> Got {
        let read = async {
            loop {
                match self.socket.next().await {
                    None => return Got::Broken("the connection ended".into()),
                    Some(Err(e)) => return Got::Broken(e.to_string()),
                    Some(Ok(Message::Text(text))) => {
                        let value = serde_json::from_str(&text).unwrap_or_else(|e| {
                            panic!("{}: a frame that is not JSON ({e}): {text}", self.what)
                        });
                        return Got::Frame(value);
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return match frame {
                            Some(f) => Got::Closed(u16::from(f.code), f.reason.to_string()),
                            None => Got::Closed(1005, String::new()),
                        };
                    }
                    Some(Ok(Message::Binary(b))) => {
                        panic!("{}: a binary frame ({} bytes)", self.what, b.len())
                    }
                    Some(Ok(_)) => {} // ping, pong
                }
            }
        };
        match tokio::time::timeout(FRAME_DEADLINE, read).await {
            Ok(got) => got,
            Err(_) => panic!("{}: nothing within {FRAME_DEADLINE:?}", self.what),
        }
    }

    /// The next event frame; the test fails on a close or an end.
    pub async fn frame(&mut self) -> Value {
        match self.next().await {
            Got::Frame(frame) => {
                assert!(
                    frame["seq"].is_u64()
                        && frame["node"].is_string()
                        && frame["event"].is_object(),
                    "{}: not an event frame: {frame}",
                    self.what
                );
                frame
            }
            Got::Closed(code, reason) => {
                panic!("{}: the feed was closed: {code} {reason}", self.what)
            }
            Got::Broken(why) => panic!("{}: the feed broke off: {why}", self.what),
        }
    }

    /// Reads frames until `task`'s final entry, returning every frame read.
    pub async fn until_final(&mut self, task: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.frame().await;
            let done = is_entry_of(&frame, task)
                && FINAL.contains(&frame["event"]["event"].as_str().unwrap_or_default());
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// A feed's client over plain TCP.
pub type Client = Feed<MaybeTlsStream<TcpStream>>;

/// Opens the feed of the node at `addr` with `query`; the handshake must succeed.
pub async fn open(addr: SocketAddr, query: &str) -> Client {
    open_as(addr, query, None).await
}

pub async fn open_as(addr: SocketAddr, query: &str, token: Option<&str>) -> Client {
    let what = format!("feed {}", ws_url(addr, query));
    let (socket, response) = tokio_tungstenite::connect_async(request(addr, query, token))
        .await
        .unwrap_or_else(|e| panic!("{what}: the handshake failed: {e}"));
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS, "{what}");
    Feed::start(socket, what).await
}

/// The status a WebSocket handshake is refused with (the test fails if it succeeds).
pub async fn refused(addr: SocketAddr, query: &str, token: Option<&str>) -> StatusCode {
    match tokio_tungstenite::connect_async(request(addr, query, token)).await {
        Ok(_) => panic!("{}: the handshake succeeded", ws_url(addr, query)),
        Err(tungstenite::Error::Http(response)) => response.status(),
        Err(e) => panic!(
            "{}: the handshake failed without an HTTP answer: {e}",
            ws_url(addr, query)
        ),
    }
}

/// A GET of the feed's route over plain HTTP, with the handshake's headers when
/// `upgrade`: its status and JSON body.
pub async fn get_feed(
    addr: SocketAddr,
    query: &str,
    upgrade: bool,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let url = format!("http://{addr}{WS_PATH}?{query}");
    let mut request = http_client().get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if upgrade {
        request = request
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let text = response.text().await.expect("reading the body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {url} → {status}: not JSON ({e}): {text}"));
    (status, body)
}

pub fn seq(frame: &Value) -> u64 {
    frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("a frame without a seq: {frame}"))
}

/// Whether `frame` is an entry of `task`'s trace.
pub fn is_entry_of(frame: &Value, task: &str) -> bool {
    frame["event"]["kind"] == "task" && frame["event"]["task_id"] == task
}

/// The trace entries of `task` among `frames`.
pub fn entries_of<'a>(frames: &'a [Value], task: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| is_entry_of(f, task)).collect()
}

/// An entry's trace sequence number and what it records (`started`, `step.succeeded`, ...).
pub fn trace(entry: &Value) -> (i64, &str) {
    (
        entry["event"]["seq"]
            .as_i64()
            .unwrap_or_else(|| panic!("an entry without a trace seq: {entry}")),
        entry["event"]["event"].as_str().unwrap_or_default(),
    )
}

/// Asserts that `seqs`, in the order received, go up by one each time: no gap, no
/// duplicate, nothing out of order.
pub fn assert_contiguous(seqs: &[u64], what: &str) {
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{what}: after seq {} came {} (every seq received: {seqs:?})",
            pair[0],
            pair[1]
        );
    }
}

/// Asserts a task's entries (in the order received) are its whole trace after `submitted`:
/// `started` first, trace seqs 1, 2, 3, ... without gap or duplicate, the final entry
/// `succeeded` last.
pub fn assert_whole_trace(entries: &[&Value], what: &str) {
    let traced: Vec<(i64, &str)> = entries.iter().map(|e| trace(e)).collect();
    assert!(!traced.is_empty(), "{what}: no entry");
    assert_eq!(traced[0], (1, "started"), "{what}: {traced:?}");
    for (i, (seq, _)) in traced.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1, "{what}: trace seqs {traced:?}");
    }
    assert_eq!(
        traced.last().map(|t| t.1),
        Some("succeeded"),
        "{what}: {traced:?}"
    );
    assert!(
        traced.iter().any(|t| t.1 == "step.succeeded"),
        "{what}: {traced:?}"
    );
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
