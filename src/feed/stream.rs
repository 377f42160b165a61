//! The feed of the cluster's events, read from the JetStream event stream
//! (`ms.<cluster>.events.>`, kept by the bridge's forwarder), so every node's events
//! reach the client, numbered by the stream, replayable for its retention.
//!
//! A client following one task or one kind has an ordered consumer of its own on that
//! subject (NATS filters for it), pulled only as fast as the client takes events. A client
//! following broadly replays with a consumer of its own, then hands over to the node's
//! shared reader ([`super::hub`]) without a gap or a duplicate:
//! 1. the replay consumer catches up (an event with nothing pending after it);
//! 2. the client subscribes to the hub, then opens a second consumer after its last
//!    event: whatever the hub sent before the subscription is in the stream by then, so
//!    this consumer has it;
//! 3. when that consumer catches up, the hub's events follow, those already taken skipped.
//!
//! A sampled client of everything, live or resumed after a seq, has neither: it follows
//! the node's stride at its rate, which fetches only the events it sends
//! ([`super::stride`]).
//!
//! Consumers are ephemeral, recreated by the client library after a NATS restart from the
//! last sequence seen. Each event is read like any message from the cluster: sealed by a
//! node of the cluster, or refused.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::DeliverPolicy,
    consumer::pull::{Ordered, OrderedConfig, OrderedError},
};
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::filter::{View, offset_time};
use super::hub::{self, Hub, Piece};
use super::stride::Stride;
use super::{FeedError, Filter, Hello, Item, MAX_LAG, Next, Source, Start, frame_text};
use crate::bridge::{Bridge, envelope};

/// How long opening a feed may take before NATS is judged unavailable.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive consumer errors after which the feed ends (NATS is gone for good).
pub(super) const MAX_ERRORS: u32 = 100;

pub struct StreamReader {
    bridge: Arc<Bridge>,
    hub: Hub,
    filter: Filter,
    phase: Phase,
    /// The last stream sequence taken (sent or filtered out).
    last: u64,
    /// The stream's last sequence when the feed opened: the replay reaches live there.
    head: u64,
    /// The replay has reached live; from now on a client that lags is behind.
    live: bool,
    errors: u32,
}

enum Phase {
    /// A consumer of the client's own for the whole feed (a narrow subject).
    Own(Ordered),
    /// Replaying with a consumer of its own; `hub` once subscribed (step 2), `caught_up`
    /// once the consumer has caught up with the stream, or with the hub.
    Replay {
        messages: Ordered,
        hub: Option<Joined>,
        caught_up: bool,
    },
    /// The node's shared reader.
    Shared(Joined),
    /// A sampled feed of everything, reading only what it sends.
    Stride(Box<Stride>),
}

/// A subscription to the hub, its first piece peeked while the replay goes on.
struct Joined {
    rx: hub::Receiver,
    first: Option<Result<Piece, RecvError>>,
}

impl Joined {
    fn new(rx: hub::Receiver) -> Self {
        Joined { rx, first: None }
    }

    /// The seq of the first event the hub sent since the subscription, if any yet; `Err`
    /// when the hub has lost some for this client (it lagged, or the hub stopped).
    fn first_seq(&mut self) -> Result<Option<u64>, ()> {
        if self.first.is_none() {
            self.first = hub::try_recv(&mut self.rx);
        }
        match &self.first {
            None => Ok(None),
            Some(Ok(Piece::Event(item))) => Ok(Some(item.seq)),
            Some(_) => Err(()),
        }
    }

    async fn recv(&mut self) -> Result<Piece, RecvError> {
        match self.first.take() {
            Some(piece) => piece,
            None => self.rx.recv().await,
        }
    }

    fn try_recv(&mut self) -> Option<Result<Piece, RecvError>> {
        self.first.take().or_else(|| hub::try_recv(&mut self.rx))
    }
}

impl StreamReader {
    pub async fn open(
        bridge: &Bridge,
        hub: &Hub,
        filter: Filter,
        start: Start,
        max_rate: Option<u32>,
    ) -> Result<(Self, Hello), FeedError> {
        let open = Self::open_now(bridge, hub, filter, start, max_rate);
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| FeedError::Unavailable("NATS did not answer in time".into()))?
    }

    async fn open_now(
        bridge: &Bridge,
        hub: &Hub,
        filter: Filter,
        start: Start,
        max_rate: Option<u32>,
    ) -> Result<(Self, Hello), FeedError> {
        if !bridge.is_connected() {
            return Err(unavailable(&"NATS is not connected"));
        }
        let state = stream_state(bridge).await?;
        let subject = filter.subject(bridge.subjects());
        let broad = subject == bridge.subjects().events()
            || subject == bridge.subjects().event("task.trace.>");
        let deliver = match start {
            Start::Live => DeliverPolicy::New,
            Start::After(after) => DeliverPolicy::ByStartSequence {
                start_sequence: after.saturating_add(1),
            },
            Start::Since(at) => DeliverPolicy::ByStartTime {
                start_time: offset_time(at),
            },
        };
        let bridge_arc = Arc::new(bridge.clone());
        let phase = match (broad, start, max_rate) {
            (_, Start::Live | Start::After(_), Some(rate)) if filter.passes_everything() => {
                let after = match start {
                    // Seqs no longer held are not skipped: the hello counts them as missed.
                    Start::After(after) => after.max(state.first_sequence.saturating_sub(1)),
                    _ => state.last_sequence,
                };
                Phase::Stride(Box::new(
                    hub.strides.follow(&bridge_arc, rate, after).await?,
                ))
            }
            (true, Start::Live, _) => {
                Phase::Shared(Joined::new(hub.subscribe_stream(bridge).await?))
            }
            (true, _, _) => Phase::Replay {
                messages: consumer(bridge, subject, deliver).await?.0,
                hub: None,
                caught_up: false,
            },
            (false, _, _) => Phase::Own(consumer(bridge, subject, deliver).await?.0),
        };
        let range = (state.first_sequence, state.last_sequence);
        let hello = Hello::new("stream", bridge.node(), range, start);
        let reader = StreamReader {
            bridge: bridge_arc,
            hub: hub.clone(),
            filter,
            phase,
            last: match start {
                Start::After(after) => after,
                _ => 0,
            },
            head: state.last_sequence,
            live: start == Start::Live,
            errors: 0,
        };
        Ok((reader, hello))
    }

    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(end) = self.hand_over().await {
                return end;
            }
            let next = match &mut self.phase {
                Phase::Own(messages) | Phase::Replay { messages, .. } => {
                    let item = messages.next().await;
                    self.take(item)
                }
                Phase::Shared(joined) => {
                    let piece = joined.recv().await;
                    hub::take(piece, &mut self.last, &self.filter)
                }
                Phase::Stride(stride) => return stride.next().await,
            };
            if let Some(next) = next {
                return next;
            }
        }
    }

    pub fn ready(&mut self) -> Option<Next> {
        loop {
            let next = match &mut self.phase {
                Phase::Replay {
                    caught_up: true, ..
                } => return None, // `next` hands over
                Phase::Own(messages) | Phase::Replay { messages, .. } => {
                    let item = messages.next().now_or_never()?;
                    self.take(item)
                }
                Phase::Shared(joined) => {
                    let piece = joined.try_recv()?;
                    hub::take(piece, &mut self.last, &self.filter)
                }
                Phase::Stride(stride) => return stride.ready(),
            };
            if next.is_some() {
                return next;
            }
        }
    }

    /// Steps 2 and 3 of the hand-over, once the replay has caught up. Cancel-safe: the
    /// phase changes only when a step is done.
    async fn hand_over(&mut self) -> Option<Next> {
        let Phase::Replay {
            hub,
            caught_up: true,
            ..
        } = &mut self.phase
        else {
            return None;
        };
        if let Some(joined) = hub.take() {
            handed_over();
            self.phase = Phase::Shared(joined);
            return None;
        }
        let joined = match self.hub.subscribe_stream(&self.bridge).await {
            Ok(rx) => Joined::new(rx),
            Err(e) => return Some(Next::Ended(e.to_string())),
        };
        let subject = self.filter.subject(self.bridge.subjects());
        let after = DeliverPolicy::ByStartSequence {
            start_sequence: self.last + 1,
        };
        self.phase = match consumer(&self.bridge, subject, after).await {
            Ok((_, 0)) => {
                handed_over();
                Phase::Shared(joined)
            }
            Ok((messages, _)) => Phase::Replay {
                messages,
                hub: Some(joined),
                caught_up: false,
            },
            Err(e) => return Some(Next::Ended(e.to_string())),
        };
        None
    }

    /// What one item of a consumer gives the client; `None` to go on to the next.
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
        self.last = seq;
        let near_live = seq >= self.head || pending == 0;
        match &mut self.phase {
            Phase::Replay { hub, caught_up, .. } => {
                *caught_up = match hub {
                    None => near_live,
                    // Step 3: nothing pending (the hub has only what came after that), or
                    // the hub's first event is the next one or one already had.
                    Some(joined) => match joined.first_seq() {
                        Ok(first) => pending == 0 || first.is_some_and(|h| h <= seq + 1),
                        Err(()) => {
                            *hub = None; // it lost events meanwhile: step 2 again
                            true
                        }
                    },
                }
            }
            _ => self.live |= near_live,
        }
        if self.live && pending > MAX_LAG {
            return Some(Next::Behind);
        }
        let item = stored(&self.bridge, seq, message.message)?;
        self.filter.accepts(&item.view()).then(|| Next::Event(item))
    }
}

fn handed_over() {
    metrics::counter!("ms_events_feed_handovers_total").increment(1);
}

fn unavailable(e: &dyn std::fmt::Display) -> FeedError {
    FeedError::Unavailable(e.to_string())
}

async fn stream_state(bridge: &Bridge) -> Result<jetstream::stream::State, FeedError> {
    let js = jetstream::new(bridge.client().clone());
    let mut stream = js
        .get_stream(bridge.subjects().events_stream())
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(stream
        .info()
        .await
        .map_err(|e| unavailable(&e))?
        .state
        .clone())
}

/// An ordered consumer of the event stream on `subject`, and how many events it has to
/// deliver (when it was created).
pub(super) async fn consumer(
    bridge: &Bridge,
    subject: String,
    deliver_policy: DeliverPolicy,
) -> Result<(Ordered, u64), FeedError> {
    let js = jetstream::new(bridge.client().clone());
    let stream = js
        .get_stream(bridge.subjects().events_stream())
        .await
        .map_err(|e| unavailable(&e))?;
    let config = OrderedConfig {
        filter_subject: subject,
        deliver_policy,
        ..OrderedConfig::default()
    };
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| unavailable(&e))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
    Ok((messages, pending))
}

/// Event `seq` of the stream as an [`Item`], read only as far as filters need: its seal
/// is checked, and its JSON written, when a client is to be sent it ([`Stored::text`]).
/// `None` when the message is not an event envelope at all.
pub(super) fn stored(
    bridge: &Arc<Bridge>,
    seq: u64,
    message: async_nats::Message,
) -> Option<Arc<Item>> {
    let kind = envelope_kind(bridge, message.subject.as_str())?;
    let envelope = bridge.peek::<Brief>(&message, &kind)?;
    let brief = envelope.payload;
    let event_kind = brief.kind.into_string();
    let about_node = if event_kind.as_deref() == Some("tasks_taken_over") {
        brief.from
    } else {
        brief.node
    };
    let stored = Stored {
        bridge: bridge.clone(),
        message,
        envelope_kind: envelope.kind,
        kind: event_kind.unwrap_or_default(),
        node: envelope.from,
        about_node: about_node.into_string(),
        task: brief.task_id.into_string(),
        session: brief.session.into_string(),
        actors: [
            brief.supervisor.into_string().or(brief.agent.into_string()),
            brief.child.into_string(),
        ],
    };
    Some(Item::new(seq, Source::Stream(stored)))
}

/// An event of the stream, read as far as filters need.
pub(super) struct Stored {
    bridge: Arc<Bridge>,
    message: async_nats::Message,
    /// What the forwarder sealed it as (`event.<subject suffix>`).
    envelope_kind: String,
    kind: String,
    node: String,
    about_node: Option<String>,
    task: Option<String>,
    session: Option<String>,
    actors: [Option<String>; 2],
}

impl Stored {
    pub(super) fn view(&self) -> View<'_> {
        View {
            kind: &self.kind,
            node: &self.node,
            about_node: self.about_node.as_deref(),
            task: self.task.as_deref(),
            session: self.session.as_deref(),
            actors: [self.actors[0].as_deref(), self.actors[1].as_deref()],
        }
    }

    /// The frame's text, once the seal checks; `None` (and the message refused) if not.
    pub(super) fn text(&self, seq: u64) -> Option<Utf8Bytes> {
        // Read whole only now; it was read as a `Brief` before, so it is an envelope.
        let kind = Some(self.envelope_kind.as_str());
        let envelope = envelope::decode::<Value>(&self.message.payload, kind).ok()?;
        self.bridge
            .authentic(&self.message, &envelope)
            .then(|| frame_text(seq, &envelope.from, &envelope.payload))
    }
}

/// The fields of an event's payload that filters look at, each kept only when it is a
/// string (a field of another type in some event is not a reason to drop the event).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Brief {
    kind: Loose,
    node: Loose,
    from: Loose,
    task_id: Loose,
    session: Loose,
    supervisor: Loose,
    agent: Loose,
    child: Loose,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Loose {
    Str(String),
    Other(IgnoredAny),
}

impl Default for Loose {
    fn default() -> Self {
        Loose::Other(IgnoredAny)
    }
}

impl Loose {
    fn into_string(self) -> Option<String> {
        match self {
            Loose::Str(s) => Some(s),
            Loose::Other(_) => None,
        }
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
