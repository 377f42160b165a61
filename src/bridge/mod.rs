//! The NATS bridge: one client connection per node, the envelope on every message, and
//! the counting of what goes in and out (and of what could not be read).
//!
//! The connection is made in the background and remade after a NATS restart, so a node
//! starts and keeps serving locally while NATS is away; [`Bridge::state`] says how it is
//! (readiness reports `degraded`). The actors that use it: [`forwarder`] (events to NATS
//! and the JetStream event stream) and the cluster's membership (`crate::cluster`).

pub mod agent_service;
pub mod envelope;
pub mod forwarder;
pub mod remote_admin;
pub mod remote_agents;
pub mod subjects;
pub mod work_queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Message, Subscriber};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use envelope::{Envelope, EnvelopeError};
pub use subjects::Subjects;

use crate::config::Settings;

/// How often the client pings the server: a cut connection is noticed within two of these.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Most time between reconnect attempts, so the bridge is back soon after NATS is.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// Decode errors logged in full before only every 1000th is.
const LOGGED_DECODE_ERRORS: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("NATS: {0}")]
    Nats(String),
}

/// How the bus is, for readiness and the admin view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BusState {
    /// Connected to NATS.
    Connected,
    /// Connected before, not now: the node serves locally and keeps reconnecting.
    Degraded,
    /// Never connected yet.
    Connecting,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    sent: AtomicU64,
    decode_errors: AtomicU64,
    ever_connected: AtomicBool,
}

/// The node's NATS connection; cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    client: Client,
    subjects: Subjects,
    node: String,
    counters: Arc<Counters>,
}

impl Bridge {
    /// Starts connecting to `nats.url` (in the background: this returns at once even when
    /// NATS is down).
    pub async fn connect(settings: &Settings, url: &str) -> anyhow::Result<Bridge> {
        let counters = Arc::new(Counters::default());
        let events = counters.clone();
        let node = settings.node.name.clone();
        let mut options = ConnectOptions::new()
            .name(format!("mister-smith {node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(PING_INTERVAL)
            .reconnect_delay_callback(|attempts| {
                MAX_RECONNECT_DELAY.min(Duration::from_millis(50 * attempts as u64))
            })
            .event_callback(move |event| {
                let counters = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            counters.ever_connected.store(true, Ordering::SeqCst);
                            tracing::info!("NATS connected");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS disconnected; serving locally, reconnecting")
                        }
                        other => tracing::info!(event = %other, "NATS"),
                    }
                }
            });
        if let Some(creds) = &settings.nats.credentials {
            options = options.credentials_file(creds).await.map_err(|e| {
                anyhow::anyhow!("nats.credentials: cannot read {}: {e}", creds.display())
            })?;
        }
        let client = options
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("nats.url {url}: {e}"))?;
        Ok(Bridge {
            client,
            subjects: Subjects::new(&settings.cluster.name),
            node,
            counters,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn state(&self) -> BusState {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => BusState::Connected,
            _ if self.counters.ever_connected.load(Ordering::SeqCst) => BusState::Degraded,
            _ => BusState::Connecting,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state() == BusState::Connected
    }

    /// Messages in, out, and received bytes that were not a readable envelope.
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counters;
        (
            c.received.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed),
            c.decode_errors.load(Ordering::Relaxed),
        )
    }

    /// Publishes `payload` in an envelope of `kind` from this node.
    pub async fn publish<T: Serialize>(
        &self,
        subject: String,
        kind: &str,
        payload: T,
    ) -> Result<(), BridgeError> {
        let bytes = Envelope::new(kind, self.node.clone(), payload).encode()?;
        self.publish_bytes(subject, bytes).await
    }

    /// Publishes an encoded envelope (a reply, or one encoded once for many subjects).
    pub async fn publish_bytes(
        &self,
        subject: String,
        bytes: bytes::Bytes,
    ) -> Result<(), BridgeError> {
        self.client
            .publish(subject, bytes)
            .await
            .map_err(|e| BridgeError::Nats(e.to_string()))?;
        self.sent();
        Ok(())
    }

    pub async fn subscribe(&self, subject: String) -> Result<Subscriber, BridgeError> {
        self.client
            .subscribe(subject)
            .await
            .map_err(|e| BridgeError::Nats(e.to_string()))
    }

    /// Reads a received message as an envelope of `kind`. Bytes that are not one are
    /// counted (`ms_bridge_decode_errors_total`) and logged, and give `None`.
    pub fn open<T: DeserializeOwned>(&self, message: &Message, kind: &str) -> Option<Envelope<T>> {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ms_bridge_messages_total", "direction" => "in").increment(1);
        match envelope::decode(&message.payload, Some(kind)) {
            Ok(envelope) => Some(envelope),
            Err(e) => {
                let n = self.counters.decode_errors.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!("ms_bridge_decode_errors_total", "kind" => kind.to_string())
                    .increment(1);
                if n <= LOGGED_DECODE_ERRORS || n.is_multiple_of(1000) {
                    tracing::warn!(
                        subject = %message.subject,
                        bytes = message.payload.len(),
                        decode_errors = n,
                        error = %e,
                        "dropped a message that is not a readable envelope"
                    );
                }
                None
            }
        }
    }

    fn sent(&self) {
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ms_bridge_messages_total", "direction" => "out").increment(1);
    }
}
