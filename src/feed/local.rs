//! The feed of this node's own events (a node without NATS): what the node retains after
//! the client's start, then live from the node's shared reader ([`super::hub`]). The
//! client subscribes to the hub before it reads what is retained, so the two overlap
//! rather than leave a gap; the overlap is skipped by sequence number.

use std::collections::VecDeque;

use actors::events::{Events, Shared};

use super::filter::View;
use super::hub::{self, Hub};
use super::{Filter, Frame, Hello, Item, Next, Start};

pub struct LocalReader {
    node: String,
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
            node: node.to_string(),
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
            if self.filter.accepts(&view(&self.node, &event)) {
                return Some(Next::Event(frame(&self.node, &event)));
            }
        }
        None
    }
}

/// A node event as the hub hands it to every client.
pub fn item(node: &str, event: &Shared) -> Item {
    super::item(view(node, event), frame(node, event))
}

fn view<'a>(node: &'a str, event: &'a Shared) -> View<'a> {
    let e = &event.event;
    View {
        kind: e.kind(),
        node,
        about_node: e.about_node(),
        task: e.task_id(),
        session: e.session(),
        actors: e.actors(),
    }
}

fn frame(node: &str, event: &Shared) -> Frame {
    super::frame(event.local_seq, node, &**event)
}
