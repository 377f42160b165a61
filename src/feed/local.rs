//! The feed of this node's own events (a node without NATS): what the node retains after
//! the client's start, then live from the node's shared reader ([`super::hub`]). The
//! client subscribes to the hub before it reads what is retained, so the two overlap
//! rather than leave a gap; the overlap is skipped by sequence number.

use std::collections::VecDeque;
use std::sync::Arc;

use actors::events::{Events, Shared};
use axum::extract::ws::Utf8Bytes;

use super::filter::View;
use super::hub::{self, Hub};
use super::{Filter, Hello, Item, Next, Source, Start};

pub struct LocalReader {
    node: Arc<str>,
    filter: Filter,
    backlog: VecDeque<Shared>,
    live: hub::Receiver,
    /// The last sequence number taken (delivered or filtered out).
    last_seq: u64,
}

impl LocalReader {
    /// Starts at `start` on `events` of node `node`.
    pub async fn open(
        events: &Events,
        hub: &Hub,
        node: &str,
        filter: Filter,
        start: Start,
    ) -> (Self, Hello) {
        let hello = Hello::new("local", node, events.retained_range(), start);
        let live = hub.subscribe_local(events, node).await;
        let backlog = match start {
            Start::Live => Vec::new(),
            Start::After(after) => events.replay(after).0,
            Start::Since(at) => {
                let mut old = events.replay(0).0;
                old.retain(|e| e.at >= at);
                old
            }
        };
        let reader = LocalReader {
            node: node.into(),
            filter,
            backlog: backlog.into(),
            live,
            last_seq: 0,
        };
        (reader, hello)
    }

    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(next) = self.next_retained() {
                return next;
            }
            let piece = self.live.recv().await;
            if let Some(next) = hub::take(piece, &mut self.last_seq, &self.filter) {
                return next;
            }
        }
    }

    pub fn ready(&mut self) -> Option<Next> {
        loop {
            if let Some(next) = self.next_retained() {
                return Some(next);
            }
            let piece = hub::try_recv(&mut self.live)?;
            if let Some(next) = hub::take(piece, &mut self.last_seq, &self.filter) {
                return Some(next);
            }
        }
    }

    fn next_retained(&mut self) -> Option<Next> {
        while let Some(event) = self.backlog.pop_front() {
            self.last_seq = event.local_seq;
            let held = Held {
                node: self.node.clone(),
                event,
            };
            if self.filter.accepts(&held.view()) {
                return Some(Next::Event(held.item()));
            }
        }
        None
    }
}

/// One of this node's events, as read for a client or for the hub.
pub struct Held {
    pub node: Arc<str>,
    pub event: Shared,
}

impl Held {
    pub fn item(self) -> Arc<Item> {
        Item::new(self.event.local_seq, Source::Local(self))
    }

    pub fn view(&self) -> View<'_> {
        let e = &self.event.event;
        View {
            kind: e.kind(),
            node: &self.node,
            about_node: e.about_node(),
            task: e.task_id(),
            session: e.session(),
            actors: e.actors(),
        }
    }

    pub fn text(&self) -> Utf8Bytes {
        super::frame_text(self.event.local_seq, &self.node, &*self.event)
    }
}
