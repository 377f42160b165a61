//! One reader of the node's live events, shared by every feed client that follows them
//! broadly (everything, every task's entries, several kinds at once).
//!
//! Without it, ten consoles following everything were ten JetStream consumers: NATS sent
//! each event ten times, and the node checked its seal, decoded it and wrote its JSON ten
//! times. The hub does that once per event and hands every client the same [`Item`]; a
//! client only runs its filter and writes the shared text. Clients that follow one task
//! or one kind keep a consumer of their own, which NATS filters for them.
//!
//! The hub starts with its first client and stops at the first event that finds none
//! left. Its channel is a fixed ring of [`MAX_LAG`] events: a client that falls further
//! behind gets `Lagged` (it is [`super::Next::Behind`]). When the hub's own source lags
//! (the node's channel outran it), every client is sent [`Piece::Gap`] and is closed as
//! behind too: none of them may silently miss an event.

use std::sync::Arc;

use actors::events::Events;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Mutex, broadcast};

use super::{FeedError, Filter, Item, MAX_LAG, Next, local, stream};
use crate::bridge::Bridge;

/// What the hub sends its clients.
#[derive(Clone)]
pub enum Piece {
    Event(Arc<Item>),
    /// Events were lost before the hub read them.
    Gap,
}

pub type Receiver = broadcast::Receiver<Piece>;
type Sender = broadcast::Sender<Piece>;

/// The node's shared reader, started on demand.
#[derive(Clone, Default)]
pub struct Hub {
    /// The running hub's channel; `None` while no client follows. The hub's task clears
    /// it, under this lock, when it stops: a client never subscribes to a stopped hub.
    slot: Arc<Mutex<Option<Sender>>>,
    /// The sampled feeds of everything, which need no reader of every event.
    pub strides: super::stride::Strides,
}

impl Hub {
    /// A receiver of the cluster's events from now on (the hub's consumer of the event
    /// stream is created first when the hub is not running).
    pub async fn subscribe_stream(&self, bridge: &Bridge) -> Result<Receiver, FeedError> {
        let mut slot = self.slot.lock().await;
        if let Some(tx) = slot.as_ref() {
            return Ok(tx.subscribe());
        }
        let all = bridge.subjects().events();
        let (messages, _) = stream::consumer(bridge, all, DeliverPolicy::New).await?;
        let (tx, rx) = started(&mut slot);
        let (hub, bridge) = (self.clone(), Arc::new(bridge.clone()));
        tokio::spawn(async move {
            let mut messages = messages;
            let mut errors = 0;
            let reason = loop {
                let piece = match messages.next().await {
                    None => break "the event stream's consumer ended".to_string(),
                    Some(Err(e)) => {
                        errors += 1;
                        if errors >= stream::MAX_ERRORS {
                            break format!("the event stream failed: {e}");
                        }
                        continue;
                    }
                    Some(Ok(message)) => {
                        errors = 0;
                        let seq = message.info().map(|i| i.stream_sequence);
                        match seq
                            .ok()
                            .and_then(|seq| stream::stored(&bridge, seq, message.message))
                        {
                            Some(item) => Piece::Event(item),
                            None => continue,
                        }
                    }
                };
                if !hub.send(&tx, piece).await {
                    return;
                }
            };
            tracing::warn!(%reason, "event feed: the shared reader stopped");
            stopped(&mut *hub.slot.lock().await);
        });
        Ok(rx)
    }

    /// A receiver of this node's events from now on (a node without NATS).
    pub async fn subscribe_local(&self, events: &Events, node: &str) -> Receiver {
        let mut slot = self.slot.lock().await;
        if let Some(tx) = slot.as_ref() {
            return tx.subscribe();
        }
        let mut raw = events.subscribe();
        let (tx, rx) = started(&mut slot);
        let (hub, node) = (self.clone(), Arc::<str>::from(node));
        tokio::spawn(async move {
            loop {
                let piece = match raw.recv().await {
                    Ok(event) => {
                        let node = node.clone();
                        Piece::Event(local::Held { node, event }.item())
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => Piece::Gap,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if !hub.send(&tx, piece).await {
                    return;
                }
            }
            stopped(&mut *hub.slot.lock().await);
        });
        rx
    }

    /// Sends `piece` to every client; `false` when none is left and the hub has stopped.
    async fn send(&self, tx: &Sender, piece: Piece) -> bool {
        if tx.send(piece).is_ok() {
            return true;
        }
        // No receiver: stop, unless a client subscribed meanwhile (it holds the lock).
        let mut slot = self.slot.lock().await;
        if tx.receiver_count() > 0 {
            return true;
        }
        stopped(&mut slot);
        false
    }
}

/// A hub's channel, put in its slot.
fn started(slot: &mut Option<Sender>) -> (Sender, Receiver) {
    let (tx, rx) = broadcast::channel(MAX_LAG as usize);
    *slot = Some(tx.clone());
    metrics::gauge!("ms_events_feed_shared_readers").increment(1.0);
    (tx, rx)
}

fn stopped(slot: &mut Option<Sender>) {
    if slot.take().is_some() {
        metrics::gauge!("ms_events_feed_shared_readers").decrement(1.0);
    }
}

/// What one piece received from the hub gives a client whose last event taken is `last`
/// (its replay's, skipped again here); `None` to go on to the next.
pub fn take(piece: Result<Piece, RecvError>, last: &mut u64, filter: &Filter) -> Option<Next> {
    match piece {
        Ok(Piece::Event(item)) => {
            if item.seq <= *last {
                return None;
            }
            *last = item.seq;
            filter.accepts(&item.view()).then(|| Next::Event(item))
        }
        Ok(Piece::Gap) | Err(RecvError::Lagged(_)) => Some(Next::Behind),
        Err(RecvError::Closed) => Some(Next::Ended("the shared event reader stopped".into())),
    }
}

/// A piece received without waiting, `None` when none is there.
pub fn try_recv(rx: &mut Receiver) -> Option<Result<Piece, RecvError>> {
    match rx.try_recv() {
        Err(TryRecvError::Empty) => None,
        Ok(piece) => Some(Ok(piece)),
        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
    }
}
