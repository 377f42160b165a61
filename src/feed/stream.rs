//! The feed of the cluster's events: an ordered consumer of the JetStream event stream
//! (`ms.<cluster>.events.>`, kept by the bridge's forwarder), so every node's events
//! reach the client, numbered by the stream, replayable for its retention.
//!
//! The consumer is pulled in batches only as fast as the client takes events, so nothing
//! piles up here; it is ephemeral and recreated by the client library after a NATS
//! restart from the last sequence seen (no gap, no duplicate). Each event is read like any
//! message from the cluster: sealed by a node of the cluster, or refused.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::DeliverPolicy,
    consumer::pull::{Ordered, OrderedConfig, OrderedError},
};
use futures::{FutureExt, StreamExt};
use serde_json::Value;

use super::filter::{View, offset_time};
use super::{FeedError, Filter, Hello, MAX_LAG, Next, Start};
use crate::bridge::{Bridge, Check};

/// How long opening a feed may take before NATS is judged unavailable.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive consumer errors after which the feed ends (NATS is gone for good).
const MAX_ERRORS: u32 = 100;

pub struct StreamReader {
    bridge: Bridge,
    filter: Filter,
    messages: Ordered,
    /// The stream's last sequence when the feed opened: the replay reaches live there.
    head: u64,
    /// The replay has reached live; from now on a client that lags is behind.
    live: bool,
    errors: u32,
}

impl StreamReader {
    pub async fn open(
        bridge: &Bridge,
        filter: Filter,
        start: Start,
    ) -> Result<(Self, Hello), FeedError> {
        tokio::time::timeout(OPEN_TIMEOUT, Self::open_now(bridge, filter, start))
            .await
            .map_err(|_| FeedError::Unavailable("NATS did not answer in time".into()))?
    }

    async fn open_now(
        bridge: &Bridge,
        filter: Filter,
        start: Start,
    ) -> Result<(Self, Hello), FeedError> {
        let unavailable = |e: &dyn std::fmt::Display| FeedError::Unavailable(e.to_string());
        if !bridge.is_connected() {
            return Err(unavailable(&"NATS is not connected"));
        }
        let js = jetstream::new(bridge.client().clone());
        let mut stream = js
            .get_stream(bridge.subjects().events_stream())
            .await
            .map_err(|e| unavailable(&e))?;
        let state = stream
            .info()
            .await
            .map_err(|e| unavailable(&e))?
            .state
            .clone();
        let deliver_policy = match start {
            Start::Live => DeliverPolicy::New,
            Start::After(after) => DeliverPolicy::ByStartSequence {
                start_sequence: after.saturating_add(1),
            },
            Start::Since(at) => DeliverPolicy::ByStartTime {
                start_time: offset_time(at),
            },
        };
        let config = OrderedConfig {
            filter_subject: filter.subject(bridge.subjects()),
            deliver_policy,
            ..OrderedConfig::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable(&e))?;
        let messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
        let range = (state.first_sequence, state.last_sequence);
        let hello = Hello::new("stream", bridge.node(), range, start);
        let reader = StreamReader {
            bridge: bridge.clone(),
            filter,
            messages,
            head: state.last_sequence,
            live: start == Start::Live,
            errors: 0,
        };
        Ok((reader, hello))
    }

    pub async fn next(&mut self) -> Next {
        loop {
            let item = self.messages.next().await;
            if let Some(next) = self.take(item) {
                return next;
            }
        }
    }

    pub fn ready(&mut self) -> Option<Next> {
        loop {
            let item = self.messages.next().now_or_never()?;
            if let Some(next) = self.take(item) {
                return Some(next);
            }
        }
    }

    /// What one item of the consumer gives the client; `None` to go on to the next.
    fn take(&mut self, item: Option<Result<jetstream::Message, OrderedError>>) -> Option<Next> {
        let message = match item {
            None => return Some(Next::Ended("the event stream's consumer ended".into())),
            Some(Err(e)) => {
                self.errors += 1;
                tracing::debug!(error = %e, errors = self.errors, "event feed: consumer error");
                return (self.errors >= MAX_ERRORS)
                    .then(|| Next::Ended(format!("the event stream failed: {e}")));
            }
            Some(Ok(message)) => message,
        };
        self.errors = 0;
        let (seq, pending) = message
            .info()
            .map(|i| (i.stream_sequence, i.pending))
            .ok()?;
        if !self.live && (seq >= self.head || pending == 0) {
            self.live = true;
        }
        if self.live && pending > MAX_LAG {
            return Some(Next::Behind);
        }
        let kind = envelope_kind(&self.bridge, message.message.subject.as_str())?;
        let envelope = self
            .bridge
            .open_checked::<Value>(&message.message, &kind, Check::Stored)?;
        let event = &envelope.payload;
        let s = |key: &str| event.get(key).and_then(Value::as_str);
        let kind = s("kind").unwrap_or_default();
        let view = View {
            kind,
            node: &envelope.from,
            about_node: if kind == "tasks_taken_over" {
                s("from")
            } else {
                s("node")
            },
            task: s("task_id"),
            session: s("session"),
            actors: [s("supervisor").or(s("agent")), s("child")],
        };
        self.filter
            .accepts(&view)
            .then(|| Next::Event(super::frame(seq, &envelope.from, event)))
    }
}

/// The envelope kind of an event on `subject` (what the forwarder sealed it as).
fn envelope_kind(bridge: &Bridge, subject: &str) -> Option<String> {
    let prefix = bridge.subjects().event("");
    let suffix = subject.strip_prefix(&prefix)?;
    Some(if suffix.starts_with("task.trace") {
        "event.task.trace".to_string()
    } else {
        format!("event.{suffix}")
    })
}
