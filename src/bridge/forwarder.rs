//! The `bridge` actor: publishes this node's events (supervision, agent, task, node) on
//! `ms.<cluster>.events.<kind>…`, keeps the JetStream stream that retains them, and
//! answers the cluster's admin requests for this node ([`super::remote_admin`]).
//!
//! Events come from the node's in-process channel; a forwarder slowed by NATS lags and
//! loses old events (counted) instead of slowing the supervisors down. The stream is
//! (re)declared whenever the bridge has just connected, so it exists after a NATS restart
//! with empty storage too.

use std::sync::Arc;
use std::time::Duration;

use actors::NodeContext;
use actors::directory::{ActorKind, ActorMeta, ActorStats};
use async_nats::jetstream;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::remote_admin::{self, Handler};
use super::{Bridge, BusState};

/// How often the actor checks whether the event stream must be declared: events published
/// between a (re)connect and the declaration are not kept, so this is short.
const STREAM_CHECK: Duration = Duration::from_millis(100);

/// Retention of the event stream.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: i64,
}

pub struct Forwarder;

pub struct ForwarderArgs {
    pub ctx: Arc<NodeContext>,
    pub bridge: Bridge,
    pub retention: Retention,
    pub admin: Handler,
}

pub enum ForwarderMsg {
    /// Declare the event stream if NATS came (back) since it was last declared.
    CheckStream,
}

impl ractor::Message for ForwarderMsg {}

pub struct ForwarderState {
    args: ForwarderArgs,
    stats: Arc<ActorStats>,
    forwarding: JoinHandle<()>,
    admin: JoinHandle<()>,
    /// Whether the stream was declared during the current connection.
    declared: bool,
}

impl Forwarder {
    pub async fn spawn_linked(args: ForwarderArgs, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        Actor::spawn_linked(None, Forwarder, args, sup)
            .await
            .map(|(r, _)| r.get_cell())
    }
}

impl Actor for Forwarder {
    type Msg = ForwarderMsg;
    type State = ForwarderState;
    type Arguments = ForwarderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ForwarderMsg>,
        args: ForwarderArgs,
    ) -> Result<ForwarderState, ActorProcessingErr> {
        let stats = args.ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: "bridge".into(),
                kind: ActorKind::Service,
                role: Some("bridge".into()),
                domain: None,
            },
        );
        let forwarding = tokio::spawn(forward(args.ctx.clone(), args.bridge.clone()));
        let admin = remote_admin::serve(args.bridge.clone(), args.admin.clone()).await?;
        myself.send_interval(STREAM_CHECK, || ForwarderMsg::CheckStream);
        let _ = myself.cast(ForwarderMsg::CheckStream);
        Ok(ForwarderState {
            args,
            stats,
            forwarding,
            admin,
            declared: false,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ForwarderMsg>,
        state: &mut ForwarderState,
    ) -> Result<(), ActorProcessingErr> {
        state.forwarding.abort();
        state.admin.abort();
        state.args.ctx.directory.leave(myself.get_id().pid());
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<ForwarderMsg>,
        msg: ForwarderMsg,
        state: &mut ForwarderState,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.handled();
        match msg {
            ForwarderMsg::CheckStream => {
                let bridge = &state.args.bridge;
                if bridge.state() != BusState::Connected {
                    state.declared = false;
                } else if !state.declared {
                    match declare_stream(bridge, state.args.retention).await {
                        Ok(()) => state.declared = true,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot declare the event stream; retrying")
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Creates (or updates the retention of) the cluster's event stream.
async fn declare_stream(bridge: &Bridge, retention: Retention) -> anyhow::Result<()> {
    let js = jetstream::new(bridge.client().clone());
    let subjects = bridge.subjects();
    let config = jetstream::stream::Config {
        name: subjects.events_stream(),
        subjects: vec![subjects.events()],
        max_age: retention.max_age,
        max_bytes: retention.max_bytes,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    match js.get_stream(&config.name).await {
        Ok(_) => {
            js.update_stream(&config).await?;
        }
        Err(_) => {
            js.create_stream(config).await?;
        }
    }
    tracing::debug!(stream = %subjects.events_stream(), "event stream declared");
    Ok(())
}

/// The subject of `event`: a task's entries under `task.trace.<task id>` (`_` for an id
/// that is not a subject token), so a follower of one task (and the feed's task filter)
/// is served by NATS's own subject filtering.
pub fn event_subject(subjects: &super::Subjects, event: &actors::events::Event) -> String {
    match event.task_id() {
        Some(task) => {
            let token = if is_token(task) { task } else { "_" };
            subjects.event(&format!("{}.{token}", event.subject()))
        }
        None => subjects.event(event.subject()),
    }
}

/// Whether `s` can be one token of a subject (no separator, wildcard or space).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Publishes every event of this node until the actor stops.
async fn forward(ctx: Arc<NodeContext>, bridge: Bridge) {
    let mut events = ctx.events.subscribe();
    loop {
        match events.recv().await {
            Ok(stamped) => {
                let subject = event_subject(bridge.subjects(), &stamped.event);
                let kind = format!("event.{}", stamped.event.subject());
                if let Err(e) = bridge.publish(subject, &kind, &stamped).await {
                    tracing::debug!(error = %e, "event not published");
                }
            }
            Err(RecvError::Lagged(lost)) => {
                metrics::counter!("ms_bridge_events_lost_total").increment(lost);
                tracing::warn!(lost, "the bridge fell behind; events were not published");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use actors::events::{Event, Stamped};

    use crate::bridge::Envelope;
    use crate::bridge::envelope::decode;

    #[test]
    fn events_encode_as_envelopes() {
        let stamped = Stamped {
            at: std::time::SystemTime::now(),
            local_seq: 1,
            event: Event::NodeJoined { node: "n2".into() },
        };
        let bytes = Envelope::new("event.node.joined", "n1", &stamped)
            .encode()
            .expect("an event encodes");
        let back: Envelope<serde_json::Value> = decode(&bytes, Some("event.node.joined")).unwrap();
        assert_eq!(back.payload["kind"], "node_joined", "{:?}", back.payload);
        assert_eq!(back.payload["node"], "n2");
    }
}
