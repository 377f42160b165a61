//! The feed of this node's own events (a node without NATS): what the node retains after
//! the client's start, then its channel live. A client that falls behind the channel's
//! ring ([`actors::events::EVENT_BUFFER`]) is behind: the events it missed are gone from
//! the channel, though they may still be retained for a resume.

use std::collections::VecDeque;

use actors::events::{Events, Shared};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::filter::View;
use super::{Filter, Frame, Hello, Next, Start};

pub struct LocalReader {
    node: String,
    filter: Filter,
    backlog: VecDeque<Shared>,
    live: broadcast::Receiver<Shared>,
    /// The last sequence number taken (delivered or filtered out).
    last_seq: u64,
}

impl LocalReader {
    /// Starts at `start` on `events` of node `node`.
    pub fn open(events: &Events, node: &str, filter: Filter, start: Start) -> (Self, Hello) {
        let hello = Hello::new("local", node, events.retained_range(), start);
        let (backlog, live) = match start {
            Start::Live => (Vec::new(), events.subscribe()),
            Start::After(after) => events.replay(after),
            Start::Since(at) => {
                let (mut old, live) = events.replay(0);
                old.retain(|e| e.at >= at);
                (old, live)
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
            let received = self.live.recv().await;
            if let Some(next) = self.take(received) {
                return next;
            }
        }
    }

    pub fn ready(&mut self) -> Option<Next> {
        loop {
            if let Some(next) = self.next_retained() {
                return Some(next);
            }
            let received = match self.live.try_recv() {
                Ok(event) => Ok(event),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            if let Some(next) = self.take(received) {
                return Some(next);
            }
        }
    }

    fn next_retained(&mut self) -> Option<Next> {
        while let Some(event) = self.backlog.pop_front() {
            if let Some(frame) = self.pass(&event) {
                return Some(Next::Event(frame));
            }
        }
        None
    }

    /// A received event as what comes next, or `None` when the filter drops it.
    fn take(&mut self, received: Result<Shared, RecvError>) -> Option<Next> {
        match received {
            Ok(event) => self.pass(&event).map(Next::Event),
            Err(RecvError::Lagged(_)) => Some(Next::Behind),
            Err(RecvError::Closed) => Some(Next::Ended("the node's event channel closed".into())),
        }
    }

    fn pass(&mut self, event: &Shared) -> Option<Frame> {
        // The replayed events and the channel overlap by what was published between them.
        if event.local_seq <= self.last_seq {
            return None;
        }
        self.last_seq = event.local_seq;
        let e = &event.event;
        let view = View {
            kind: e.kind(),
            node: &self.node,
            about_node: e.about_node(),
            task: e.task_id(),
            session: e.session(),
            actors: e.actors(),
        };
        self.filter
            .accepts(&view)
            .then(|| super::frame(event.local_seq, &self.node, &**event))
    }
}
