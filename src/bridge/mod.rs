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
pub mod refused;
pub mod remote_admin;
pub mod remote_agents;
pub mod seal;
pub mod subjects;
pub mod work_queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actors::events::Events;
use async_nats::{Client, ConnectOptions, Message, Subscriber};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use envelope::{Envelope, EnvelopeError};
pub use seal::Check;
pub use subjects::Subjects;

use crate::config::Settings;
use refused::Refusals;
use seal::{Refusal, Sealer};

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
    /// Why the last connection attempt failed, until one succeeds (to log each reason once).
    last_failure: std::sync::Mutex<Option<String>>,
}

/// The node's NATS connection; cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    client: Client,
    subjects: Subjects,
    node: String,
    counters: Arc<Counters>,
    sealer: Arc<Sealer>,
    refusals: Arc<Refusals>,
}

impl Bridge {
    /// Starts connecting to `nats.url` (in the background: this returns at once even when
    /// NATS is down). Refused messages are audited on `events`.
    pub async fn connect(settings: &Settings, url: &str, events: Events) -> anyhow::Result<Bridge> {
        let counters = Arc::new(Counters::default());
        let refusals = Arc::new(Refusals::new(events));
        let events = counters.clone();
        let shown_url = url.to_string();
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
                let nats_url = shown_url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            counters.ever_connected.store(true, Ordering::SeqCst);
                            counters
                                .last_failure
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .take();
                            tracing::info!("NATS connected");
                        }
                        async_nats::Event::ClientError(error) => {
                            // Said once per distinct reason (attempts repeat every 500 ms):
                            // a refused TLS handshake or bad credentials keep the node not
                            // ready, and this line is where the operator learns why.
                            let reason = error.to_string();
                            let mut last = counters
                                .last_failure
                                .lock()
                                .unwrap_or_else(|e| e.into_inner());
                            if last.as_deref() != Some(reason.as_str()) {
                                tracing::warn!(
                                    url = %nats_url,
                                    error = %reason,
                                    "NATS connection failed; retrying (check nats.url, nats.tls_ca, nats.tls_cert/tls_key and the credentials; the server's log says why it refused)"
                                );
                                *last = Some(reason);
                            }
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS disconnected; serving locally, reconnecting")
                        }
                        other => tracing::info!(event = %other, "NATS"),
                    }
                }
            });
        // async-nats builds its TLS config from rustls' process default (see the function).
        actors::tls::install_default_provider();
        let n = &settings.nats;
        if let Some(creds) = &n.credentials {
            options = options.credentials_file(creds).await.map_err(|e| {
                anyhow::anyhow!("nats.credentials: cannot read {}: {e}", creds.display())
            })?;
        }
        if let Some(seed) = n.nkey_seed()? {
            options = options.nkey(seed);
        }
        if let Some(ca) = &n.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&n.tls_cert, &n.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if n.tls_required || url.starts_with("tls://") {
            options = options.require_tls(true);
        }
        let client = options
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("nats.url {url}: {e}"))?;
        // Validation requires a cookie with nats.url; an empty one would still seal.
        let cookie = settings.cluster.cookie.clone().unwrap_or_default();
        Ok(Bridge {
            client,
            subjects: Subjects::new(&settings.cluster.name),
            node,
            counters,
            sealer: Arc::new(Sealer::new(&cookie)),
            refusals,
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

    /// Publishes an encoded envelope (a reply, or one encoded once for many subjects),
    /// sealed for `subject`.
    pub async fn publish_bytes(
        &self,
        subject: String,
        bytes: bytes::Bytes,
    ) -> Result<(), BridgeError> {
        let headers = self.seal(&subject, &bytes);
        self.client
            .publish_with_headers(subject, headers, bytes)
            .await
            .map_err(|e| BridgeError::Nats(e.to_string()))?;
        self.sent();
        Ok(())
    }

    /// The headers that carry the MAC of `bytes` on `subject` (for what is sent by other
    /// means than [`Bridge::publish_bytes`]: JetStream, requests, service replies).
    pub fn seal(&self, subject: &str, bytes: &[u8]) -> async_nats::HeaderMap {
        self.sealer.headers(subject, bytes)
    }

    /// A sealed request with `timeout`; the reply is read with [`Bridge::open`].
    pub async fn request(
        &self,
        subject: String,
        bytes: bytes::Bytes,
        timeout: Duration,
    ) -> Result<Message, async_nats::RequestError> {
        let request = async_nats::Request::new()
            .headers(self.seal(&subject, &bytes))
            .payload(bytes)
            .timeout(Some(timeout));
        let reply = self.client.send_request(subject, request).await;
        self.sent();
        reply
    }

    /// Answers a NATS service request with an encoded envelope, sealed for the
    /// requester's inbox.
    pub async fn respond(
        &self,
        request: &async_nats::service::Request,
        bytes: bytes::Bytes,
    ) -> Result<(), BridgeError> {
        let inbox = request
            .message
            .reply
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default();
        let headers = self.seal(&inbox, &bytes);
        request
            .respond_with_headers(Ok(bytes), headers)
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

    /// Reads a received live message as an envelope of `kind`, authentic, fresh and new
    /// ([`Check::Fresh`]). Bytes that are not one are counted
    /// (`ms_bridge_decode_errors_total`) and logged; a message without a valid MAC, stale
    /// or replayed is refused ([`refused`]); both give `None`.
    pub fn open<T: DeserializeOwned>(&self, message: &Message, kind: &str) -> Option<Envelope<T>> {
        self.open_checked(message, kind, Check::Fresh)
    }

    /// [`Bridge::open`] with the check to make.
    pub fn open_checked<T: DeserializeOwned>(
        &self,
        message: &Message,
        kind: &str,
        check: Check,
    ) -> Option<Envelope<T>> {
        let envelope = self.decode(message, kind)?;
        let verdict = self.verdict(message, &envelope, check);
        self.judged(message, kind, &envelope.from, verdict)
            .then_some(envelope)
    }

    /// A message's envelope read before its seal is checked, to decide whether it is
    /// wanted at all (the event feed reads only the fields its filters need this way).
    /// Nothing of it may be used or passed on before [`Bridge::authentic`] says yes.
    pub fn peek<T: DeserializeOwned>(&self, message: &Message, kind: &str) -> Option<Envelope<T>> {
        self.decode(message, kind)
    }

    /// Whether a stored message peeked at is sealed by a node of the cluster; if not, it is
    /// refused (counted, audited) as [`Bridge::open_checked`] would.
    pub fn authentic<T>(&self, message: &Message, envelope: &Envelope<T>) -> bool {
        let verdict = self.verdict(message, envelope, Check::Stored);
        self.judged(message, &envelope.kind, &envelope.from, verdict)
    }

    fn verdict<T>(
        &self,
        message: &Message,
        envelope: &Envelope<T>,
        check: Check,
    ) -> Result<(), Refusal> {
        let mac = message
            .headers
            .as_ref()
            .and_then(|h| h.get(seal::HEADER))
            .map(|v| v.as_str());
        self.sealer
            .authentic(message.subject.as_str(), &message.payload, mac)
            .and_then(|()| match check {
                Check::Fresh => {
                    self.sealer
                        .fresh(envelope.id, envelope.sent_at, actors::task::store::now_ms())
                }
                Check::Stored => Ok(()),
            })
    }

    fn judged(
        &self,
        message: &Message,
        kind: &str,
        from: &str,
        verdict: Result<(), Refusal>,
    ) -> bool {
        match verdict {
            Ok(()) => true,
            Err(reason) => {
                self.refusals
                    .refuse(kind, from, message.subject.as_str(), reason);
                false
            }
        }
    }

    fn decode<T: DeserializeOwned>(&self, message: &Message, kind: &str) -> Option<Envelope<T>> {
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

    /// Records a security event (see `actors::events::Events::audit`).
    pub fn audit(&self, action: &str, principal: &str, outcome: &str, detail: impl Into<String>) {
        self.refusals
            .events()
            .audit(action, principal, outcome, detail);
    }

    fn sent(&self) {
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ms_bridge_messages_total", "direction" => "out").increment(1);
    }
}
