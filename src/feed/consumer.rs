//! An ordered consumer of the cluster's event stream for one feed, deleted as soon as the
//! feed lets go of it.
//!
//! NATS keeps an ordered consumer 30 s after its last pull. A feed that lets go of its
//! consumer often (a sampled feed, once a second: [`super::stream`]) would otherwise leave
//! dozens idle on the stream, and the server looks at every consumer for every event it
//! stores.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream::{
    self,
    consumer::DeliverPolicy,
    consumer::pull::{Ordered, OrderedConfig, OrderedError},
};
use futures::Stream;

use super::FeedError;
use crate::bridge::Bridge;

/// An ordered consumer's messages; the consumer is deleted when this is dropped.
pub struct Consumer {
    messages: Ordered,
    /// Events it had to deliver when it was created.
    pub pending: u64,
    /// The stream's last sequence when it was created (it delivers what follows, for
    /// [`DeliverPolicy::New`]).
    pub after: u64,
    /// Deletes the consumer when dropped.
    _lease: Lease,
}

/// The consumer's name on the stream, to delete it.
struct Lease {
    stream: jetstream::stream::Stream,
    name: String,
}

/// How a feed's consumer pulls.
pub struct Pull {
    /// Most events asked for in one pull (0: the client library's default, 500): a feed
    /// that takes few events a second asks for few, so NATS sends no more than it takes.
    pub batch: i64,
}

impl Consumer {
    /// An ordered consumer of the event stream on `subject`, from `deliver_policy`.
    pub async fn open(
        bridge: &Bridge,
        subject: String,
        deliver_policy: DeliverPolicy,
        pull: Pull,
    ) -> Result<Self, FeedError> {
        let js = jetstream::new(bridge.client().clone());
        let stream = js
            .get_stream(bridge.subjects().events_stream())
            .await
            .map_err(|e| unavailable(&e))?;
        let config = OrderedConfig {
            filter_subject: subject,
            deliver_policy,
            max_batch: pull.batch,
            ..OrderedConfig::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable(&e))?;
        let info = consumer.cached_info();
        // Leased before anything else is awaited: a feed that gives up here (its open timed
        // out) deletes it too.
        let lease = Lease {
            stream,
            name: info.name.clone(),
        };
        let (pending, after) = (info.num_pending, info.delivered.stream_sequence);
        let messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
        Ok(Consumer {
            messages,
            pending,
            after,
            _lease: lease,
        })
    }
}

impl Stream for Consumer {
    type Item = Result<jetstream::Message, OrderedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.messages).poll_next(cx)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Outside a runtime (the node shutting down), NATS expires it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (stream, name) = (self.stream.clone(), std::mem::take(&mut self.name));
        runtime.spawn(async move {
            if let Err(e) = stream.delete_consumer(&name).await {
                tracing::debug!(error = %e, consumer = %name, "event feed: consumer not deleted");
            }
        });
    }
}

pub(super) fn unavailable(e: &dyn std::fmt::Display) -> FeedError {
    FeedError::Unavailable(e.to_string())
}
