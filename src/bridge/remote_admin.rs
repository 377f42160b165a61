//! Admin requests between nodes (`ms.<cluster>.admin.<node>.<verb>`): any node's admin
//! listener answers for every node of its cluster, by asking the owning node over NATS.
//!
//! The owning node answers from its own directory, exactly as its local admin listener
//! would (same status, same JSON body), so a remote answer reads like a local one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::RequestErrorKind;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{Bridge, BridgeError, Envelope};

pub const REQUEST: &str = "admin.request";
pub const REPLY: &str = "admin.reply";

/// What is asked of a node's admin surface.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdminRequest {
    /// `actors` (the tree), `actor` (one actor, `id`), `agents` (its registry, filtered
    /// by `query`).
    pub verb: String,
    pub id: Option<String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

/// The answer: an HTTP status and the JSON body the local listener would have sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminReply {
    pub status: u16,
    pub body: Value,
}

/// Answers admin requests for this node.
pub type Handler = Arc<dyn Fn(AdminRequest) -> BoxFuture<'static, AdminReply> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no node `{0}` answers in this cluster")]
    NoSuchNode(String),
    #[error("node `{0}` did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("the NATS bus is not connected; only this node can be inspected")]
    Disconnected,
    #[error(transparent)]
    Bridge(#[from] BridgeError),
}

/// Serves this node's admin requests until aborted.
pub async fn serve(bridge: Bridge, handler: Handler) -> Result<JoinHandle<()>, BridgeError> {
    let subject = bridge.subjects().admin(bridge.node(), "*");
    let mut requests = bridge.subscribe(subject).await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            // Counted, logged and audited by `open` when not the cookie's.
            let Some(request) = bridge.open::<AdminRequest>(&message, REQUEST) else {
                continue;
            };
            let verb = request.payload.verb.clone();
            let answer = handler(request.payload.clone()).await;
            // Who asked this node what (a drain above all), for the security record; the
            // reads a console repeats every second or two only when they fail.
            let read = matches!(verb.as_str(), "actors" | "actor" | "agents" | "history");
            if read && answer.status < 400 {
                tracing::debug!(verb, from = %request.from, "admin read over NATS");
            } else {
                bridge.audit(
                    &format!("admin.{}", audit_verb(&verb)),
                    &format!("peer:{}", request.from),
                    if answer.status < 400 { "ok" } else { "failed" },
                    format!("over NATS, status {}", answer.status),
                );
            }
            let reply = Envelope::reply_to(&request, REPLY, bridge.node(), answer);
            match reply.encode() {
                Ok(bytes) => {
                    if let Err(e) = bridge.publish_bytes(reply_to.to_string(), bytes).await {
                        tracing::debug!(error = %e, "admin reply not sent");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "admin reply not encodable"),
            }
        }
    }))
}

/// The verb as an audit action: one of the verbs this node answers, or `other` (the
/// verb is the requester's word).
fn audit_verb(verb: &str) -> &str {
    match verb {
        "actors" | "actor" | "agents" | "drain" | "stop" | "operate" | "history" => verb,
        _ => "other",
    }
}

/// Asks `node` over NATS.
pub async fn ask(
    bridge: &Bridge,
    node: &str,
    request: AdminRequest,
    timeout: Duration,
) -> Result<AdminReply, AskError> {
    if !bridge.is_connected() {
        return Err(AskError::Disconnected);
    }
    let subject = bridge.subjects().admin(node, &request.verb);
    let bytes = Envelope::new(REQUEST, bridge.node(), request)
        .encode()
        .map_err(BridgeError::from)?;
    let message = bridge
        .request(subject, bytes, timeout)
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::NoResponders => AskError::NoSuchNode(node.to_string()),
            RequestErrorKind::TimedOut => AskError::Timeout(node.to_string(), timeout),
            _ => AskError::Bridge(BridgeError::Nats(e.to_string())),
        })?;
    // The reply is sealed for this request's inbox: one from a node without the cookie
    // (or anyone answering on the subject) is refused like any other message.
    bridge
        .open::<AdminReply>(&message, REPLY)
        .map(|e| e.payload)
        .ok_or_else(|| {
            AskError::Bridge(BridgeError::Nats(format!(
                "no readable, authenticated reply from {node}"
            )))
        })
}

/// Asks every node of `nodes` the same, side by side; each answer (or why there is none)
/// with its node.
pub async fn ask_all(
    bridge: &Bridge,
    nodes: &[String],
    request: &AdminRequest,
    timeout: Duration,
) -> Vec<(String, Result<AdminReply, AskError>)> {
    let asks = nodes.iter().map(|node| async move {
        (
            node.clone(),
            ask(bridge, node, request.clone(), timeout).await,
        )
    });
    futures::future::join_all(asks).await
}
