//! The event feed: the events of this node, or of every node of the cluster, filtered,
//! from a point (a sequence number or a time) and then live. `GET /api/v1/events/ws`
//! serves it ([`crate::http::events_ws`]).
//!
//! Two sources number events differently, and the feed's first frame says which:
//! - `stream`: with NATS, the cluster's JetStream event stream ([`stream`]): one sequence
//!   for every node's events, kept for the stream's retention (`nats.events_max_*`);
//! - `local`: without NATS, this node's own events ([`local`]): numbered from 1 at each
//!   start, the latest [`actors::events::RETAINED`] kept for replay.
//!
//! A reader holds a bounded number of events whatever its client does: the stream is
//! pulled only as fast as the client reads, and the node's channel is a fixed ring. A
//! client that falls more than [`MAX_LAG`] events behind live is [`Next::Behind`]: its
//! socket is closed, naming the sequence to resume after.

pub mod filter;
pub mod hub;
pub mod local;
pub mod sample;
pub mod stream;
pub mod stride;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;

use filter::View;
pub use filter::{FeedQuery, Filter};

/// How far behind live a client may fall (events) before it is closed as too slow.
pub const MAX_LAG: u64 = 8192;

/// One event read, for one client or for many: what filters look at, read at once, and
/// the text of its frame, written when the first client is sent it (a sampled client sends
/// few of the events it is shown). The frame is `{"seq", "node", "event": {...}}`, `node`
/// being the node the event happened on.
pub struct Item {
    pub seq: u64,
    source: Source,
    text: OnceLock<Option<Utf8Bytes>>,
}

#[allow(clippy::large_enum_variant)] // inside the item's `Arc`: never moved after
enum Source {
    Stream(stream::Stored),
    Local(local::Held),
}

impl Item {
    fn new(seq: u64, source: Source) -> Arc<Item> {
        Arc::new(Item {
            seq,
            source,
            text: OnceLock::new(),
        })
    }

    pub fn view(&self) -> View<'_> {
        match &self.source {
            Source::Stream(stored) => stored.view(),
            Source::Local(held) => held.view(),
        }
    }

    /// The frame's JSON, shared without a copy; `None` when the event turns out not to be
    /// sealed by a node of the cluster (it is refused, and no client gets it).
    pub fn text(&self) -> Option<Utf8Bytes> {
        self.text
            .get_or_init(|| match &self.source {
                Source::Stream(stored) => stored.text(self.seq),
                Source::Local(held) => Some(held.text()),
            })
            .clone()
    }
}

/// What a reader has next.
pub enum Next {
    Event(Arc<Item>),
    /// An event its source already chose for `max_rate` ([`stride`]): sent as it is.
    Sampled(Arc<Item>),
    /// Events its source went past for `max_rate` without reading them ([`stride`]).
    Skipped {
        count: u64,
        last_seq: u64,
    },
    /// The client fell more than [`MAX_LAG`] events behind live.
    Behind,
    /// The source ended (the node's channel closed, the stream's consumer failed).
    Ended(String),
}

/// Where a feed starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    /// With what comes next.
    Live,
    /// After this sequence number (the last one a client received).
    After(u64),
    /// With the first event at or after this time.
    Since(SystemTime),
}

/// The feed's first frame: where its events come from and what can be replayed.
#[derive(Debug, Serialize)]
pub struct Hello {
    pub kind: &'static str,
    /// `stream` (the cluster's events) or `local` (this node's).
    pub source: &'static str,
    /// The node serving the feed.
    pub node: String,
    /// The oldest and newest sequence numbers the source holds (`first > last`: none).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Events asked for (by `after_seq`) that are no longer held.
    pub missed: u64,
}

impl Hello {
    pub fn new(source: &'static str, node: &str, (first, last): (u64, u64), start: Start) -> Self {
        let missed = match start {
            Start::After(after) if after + 1 < first => first - after - 1,
            _ => 0,
        };
        Hello {
            kind: "hello",
            source,
            node: node.to_string(),
            first_seq: first,
            last_seq: last,
            missed,
        }
    }
}

/// Why a feed cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the cluster's event stream is unavailable: {0}")]
    Unavailable(String),
}

/// A client's reader, on whichever source the node has.
pub enum Reader {
    Local(local::LocalReader),
    Stream(Box<stream::StreamReader>),
}

impl Reader {
    /// The next event the filter lets through. Cancel-safe: nothing is lost when the
    /// future is dropped.
    pub async fn next(&mut self) -> Next {
        match self {
            Reader::Local(r) => r.next().await,
            Reader::Stream(r) => r.next().await,
        }
    }

    /// The next event if one is there without waiting (to batch a socket's writes).
    pub fn ready(&mut self) -> Option<Next> {
        match self {
            Reader::Local(r) => r.ready(),
            Reader::Stream(r) => r.ready(),
        }
    }
}

/// The frame's text of `event` (anything that serializes as the event's object).
fn frame_text<E: Serialize>(seq: u64, node: &str, event: &E) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Out<'a, E> {
        seq: u64,
        node: &'a str,
        event: &'a E,
    }
    serde_json::to_string(&Out { seq, node, event })
        .unwrap_or_else(|e| format!(r#"{{"seq":{seq},"error":"unencodable event: {e}"}}"#))
        .into()
}
