//! `GET /api/v1/events/ws`: the event feed ([`crate::feed`]) as a WebSocket.
//!
//! The query is checked and the feed opened before the upgrade, so a bad query is a 400
//! and an unreachable event stream a 503, as JSON. Then: a `hello` text frame, one text
//! frame per event (`{"seq", "node", "event"}`), pings every [`PING_EVERY`]; with
//! `max_rate` ([`crate::feed::sample`]), a `skipped` frame once a second counting the
//! events not sent. Frames are written in batches and flushed once per batch. Close codes:
//! - `4008` the client fell behind live by more than [`crate::feed::MAX_LAG`] events;
//!   the reason names the `after_seq` to resume with;
//! - `1011` the feed's source ended;
//! - a client whose socket takes nothing for [`SEND_TIMEOUT`] is too slow as well: 4008,
//!   queued behind what it was sent (a client that never reads is dropped after
//!   [`CLOSE_TIMEOUT`]).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};

use crate::feed::sample::Sampler;
use crate::feed::{self, FeedQuery, Hello, Item, Next, Reader};
use crate::http::error::ApiError;
use crate::state::AppState;

/// Keep-alive pings.
const PING_EVERY: Duration = Duration::from_secs(15);
/// Longest a batch of frames may take to be written.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the close frame may wait behind what a slow client has not read yet.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most frames written before one flush.
const BATCH: usize = 256;
/// A sampled feed's nap once it has sent its share of the second.
const NAP: Duration = Duration::from_millis(25);
/// Close code of a client too slow for live.
pub const CLOSE_SLOW: u16 = 4008;

/// Events of every node of the cluster (or of this node, without NATS), filtered,
/// resumable, as a WebSocket.
#[utoipa::path(
    get,
    path = "/api/v1/events/ws",
    operation_id = "events_ws",
    tag = "events",
    params(FeedQuery),
    responses(
        (status = 101, description = "A WebSocket. The first text frame is `{\"kind\": \"hello\", \"source\": \"stream\"|\"local\", \"node\", \"first_seq\", \"last_seq\", \"missed\"}`; then one text frame per event, `{\"seq\", \"node\", \"event\": {\"kind\", \"at\", ...}}`. `source` `stream` numbers the cluster's events (JetStream), `local` this node's since it started. With `max_rate`, a `{\"kind\": \"skipped\", \"count\", \"last_seq\"}` frame counts, once a second, the events not sent. Close code 4008: the client fell too far behind live (resume with the `after_seq` the reason names); 1011: the source ended"),
        (status = 400, description = "`bad_request`: an unknown kind or parameter, an id that is not a UUID, both `after_seq` and `since`, or not a WebSocket upgrade", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the cluster's event stream cannot be reached", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn serve(
    State(node): State<AppState>,
    query: Result<Query<FeedQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let (filter, start) = query.check().map_err(ApiError::bad_request)?;
    let upgrade = upgrade.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let hub = &node.feed_hub;
    let (reader, hello) = match node.bridge.get() {
        Some(bridge) => {
            let rate = query.max_rate;
            let (r, hello) = feed::stream::StreamReader::open(bridge, hub, filter, start, rate)
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))?;
            (Reader::Stream(Box::new(r)), hello)
        }
        None => {
            let (events, name) = (&node.ctx.events, &node.ctx.node);
            let (r, hello) = feed::local::LocalReader::open(events, hub, name, filter, start).await;
            (Reader::Local(r), hello)
        }
    };
    let sampler = query.max_rate.map(Sampler::new);
    Ok(upgrade.on_upgrade(move |socket| pump(socket, reader, hello, sampler)))
}

/// Writes the feed to the socket until either side ends it.
async fn pump(socket: WebSocket, mut reader: Reader, hello: Hello, mut sampler: Option<Sampler>) {
    metrics::gauge!("ms_events_ws_clients").increment(1.0);
    let (mut tx, rx) = socket.split();
    // The client's side is read by a task of its own, woken only when the client sends
    // something: polled beside every batch of events, the socket's reader would prepare a
    // read buffer each time for nothing.
    let mut gone = tokio::spawn(until_closed(rx));
    let hello = serde_json::to_string(&hello).unwrap_or_default();
    let mut last_seq = 0;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    // A sampled feed reports what it skipped within a second, even when nothing follows.
    let mut report = tokio::time::interval(Duration::from_secs(1));
    // A sampled feed that has sent its share of the second takes a nap between batches
    // (it only counts what it skips): one wakeup per NAP rather than one per event.
    let nap = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(nap);
    let mut napping = false;
    let end = match send(&mut tx, Message::Text(hello.into())).await {
        Err(()) => None,
        Ok(()) => loop {
            tokio::select! {
                next = reader.next(), if !napping => {
                    let batch = write_batch(&mut tx, &mut reader, next, &mut last_seq, &mut sampler);
                    match batch.await {
                        Ok(None) => {}
                        Ok(Some(close)) => break Some(close),
                        // The socket took nothing for SEND_TIMEOUT: a client too slow for
                        // live (what it was sent is queued before the close frame).
                        Err(()) => break Some(slow(last_seq)),
                    }
                    if sampler.as_ref().is_some_and(Sampler::saturated) {
                        nap.as_mut().reset(tokio::time::Instant::now() + NAP);
                        napping = true;
                    }
                }
                () = &mut nap, if napping => napping = false,
                _ = &mut gone => break None,
                _ = ping.tick() => {
                    if send(&mut tx, Message::Ping(Default::default())).await.is_err() {
                        break None;
                    }
                }
                _ = report.tick(), if sampler.is_some() => {
                    let skipped = sampler.as_mut().and_then(Sampler::report);
                    if let Some(text) = skipped
                        && send(&mut tx, Message::Text(text.into())).await.is_err()
                    {
                        break None;
                    }
                }
            }
        },
    };
    gone.abort();
    metrics::gauge!("ms_events_ws_clients").decrement(1.0);
    if let Some((code, reason)) = end {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // Behind what is already queued for a slow reader: it reads its way to the close.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, tx.send(Message::Close(Some(frame)))).await;
    }
}

/// Reads what the client sends (pongs, pings) until it closes or the socket breaks.
async fn until_closed(mut rx: futures::stream::SplitStream<WebSocket>) {
    while let Some(Ok(message)) = rx.next().await {
        if let Message::Close(_) = message {
            return;
        }
    }
}

/// The close of a client too slow for live, naming where to resume.
fn slow(last_seq: u64) -> (u16, String) {
    metrics::counter!("ms_events_ws_slow_closed_total").increment(1);
    (
        CLOSE_SLOW,
        format!("slow consumer: resume with after_seq={last_seq}"),
    )
}

type Tx = futures::stream::SplitSink<WebSocket, Message>;

/// Writes `first` and whatever else is ready (up to [`BATCH`]), then flushes. `Ok(Some)`
/// is the close to send; `Err` a socket that is gone or stuck.
async fn write_batch(
    tx: &mut Tx,
    reader: &mut Reader,
    first: Next,
    last_seq: &mut u64,
    sampler: &mut Option<Sampler>,
) -> Result<Option<(u16, String)>, ()> {
    if let Some(text) = sampler.as_mut().and_then(Sampler::report) {
        feed_frame(tx, Message::Text(text.into())).await?;
    }
    let mut next = Some(first);
    let mut written = 0;
    let mut close = None;
    while let Some(n) = next.take() {
        match n {
            Next::Event(frame) => {
                // The sampler first: the frame's text is written only for an event sent.
                if sampler.as_mut().is_none_or(|s| s.admit(frame.seq)) {
                    written += write_event(tx, &frame, last_seq).await?;
                }
            }
            Next::Sampled(frame) => written += write_event(tx, &frame, last_seq).await?,
            Next::Skipped {
                count,
                last_seq: last,
            } => {
                if let Some(s) = sampler.as_mut() {
                    s.skip(count, last);
                }
            }
            Next::Behind => {
                close = Some(slow(*last_seq));
                break;
            }
            Next::Ended(reason) => {
                close = Some((1011, truncate(reason)));
                break;
            }
        }
        if written < BATCH {
            next = reader.ready();
        }
    }
    metrics::counter!("ms_events_ws_frames_total").increment(written as u64);
    match tokio::time::timeout(SEND_TIMEOUT, tx.flush()).await {
        Ok(Ok(())) => Ok(close),
        _ => Err(()),
    }
}

/// Writes one event's frame (none when its seal fails); how many were written.
async fn write_event(tx: &mut Tx, frame: &Item, last_seq: &mut u64) -> Result<usize, ()> {
    let Some(text) = frame.text() else {
        return Ok(0);
    };
    *last_seq = frame.seq;
    feed_frame(tx, Message::Text(text)).await?;
    Ok(1)
}

async fn feed_frame(tx: &mut Tx, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, tx.feed(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn send(tx: &mut Tx, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, tx.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// A close reason fits in 123 bytes.
fn truncate(mut reason: String) -> String {
    if reason.len() > 123 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    reason
}
