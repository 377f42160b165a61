//! The cluster's task work queue on JetStream (DESIGN §5): a node whose queue is deep
//! offers the tasks it accepts next as tickets on `ms.<cluster>.tasks.<priority>` (a
//! work-queue stream, so each ticket is delivered to one consumer at a time); every node
//! pulls tickets while it has room, runs the task (its run claims it, fencing the node
//! that accepted it) and acks the ticket only once the task's result is recorded.
//! A puller that dies leaves its tickets unacked: JetStream delivers them again after
//! [`ACK_WAIT`] to a node that is alive, whose run continues from the recorded steps.
//!
//! The task itself is in the database before its ticket is published (the 202 came after
//! the commit), so a ticket lost with NATS loses nothing: the accepting node, or whoever
//! takes its tasks over, still has it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::NodeContext;
use actors::directory::{ActorKind, ActorMeta, ActorStats};
use actors::remote::WorkQueue;
use actors::scheduler::SchedulerMsg;
use actors::task::Priority;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::{Bridge, BusState, Check, Envelope};
use crate::store::Store;

pub const TICKET: &str = "task.ticket";
/// The durable consumer every node pulls from.
const CONSUMER: &str = "workers";
/// How long a pulled ticket may go without an ack or a progress note before JetStream
/// delivers it again.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// How often held tickets are checked (acked when their task is final, else touched).
const CHECK: Duration = Duration::from_secs(1);
/// Most tickets pulled at once.
const BATCH: usize = 64;

/// What a ticket says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    pub task_id: String,
    pub priority: Priority,
}

/// The scheduler's side: publishes tickets (the [`WorkQueue`] port).
pub struct NatsWorkQueue {
    bridge: Bridge,
}

impl NatsWorkQueue {
    pub fn new(bridge: Bridge) -> Self {
        NatsWorkQueue { bridge }
    }
}

impl WorkQueue for NatsWorkQueue {
    fn offer(&self, task_id: String, priority: Priority) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if !self.bridge.is_connected() {
                return false;
            }
            let subject = self.bridge.subjects().task(priority.as_str());
            let ticket = Ticket { task_id, priority };
            let Ok(bytes) = Envelope::new(TICKET, self.bridge.node(), ticket).encode() else {
                return false;
            };
            let js = jetstream::new(self.bridge.client().clone());
            // Offered only once JetStream has stored it.
            let headers = self.bridge.seal(&subject, &bytes);
            match js.publish_with_headers(subject, headers, bytes).await {
                Ok(ack) => match ack.await {
                    Ok(_) => {
                        metrics::counter!("ms_work_queue_offered_total").increment(1);
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "ticket not stored; running the task here");
                        false
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "ticket not published; running the task here");
                    false
                }
            }
        })
    }
}

/// Declares the work-queue stream (at each connect, so it survives a NATS restart with
/// empty storage too).
pub async fn declare_stream(bridge: &Bridge) -> anyhow::Result<()> {
    let js = jetstream::new(bridge.client().clone());
    let subjects = bridge.subjects();
    js.get_or_create_stream(jetstream::stream::Config {
        name: subjects.tasks_stream(),
        subjects: vec![subjects.tasks()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// The `work_queue` actor: pulls tickets while this node has room.
pub struct Puller;

pub struct PullerArgs {
    pub ctx: Arc<NodeContext>,
    pub bridge: Bridge,
    pub store: Store,
    pub max_running: usize,
}

pub enum PullerMsg {}

impl ractor::Message for PullerMsg {}

pub struct PullerState {
    ctx: Arc<NodeContext>,
    _stats: Arc<ActorStats>,
    pulling: JoinHandle<()>,
}

impl Puller {
    pub async fn spawn_linked(args: PullerArgs, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        Actor::spawn_linked(None, Puller, args, sup)
            .await
            .map(|(r, _)| r.get_cell())
    }
}

impl Actor for Puller {
    type Msg = PullerMsg;
    type State = PullerState;
    type Arguments = PullerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PullerMsg>,
        args: PullerArgs,
    ) -> Result<PullerState, ActorProcessingErr> {
        let stats = args.ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: "work_queue".into(),
                kind: ActorKind::Service,
                role: Some("work_queue".into()),
                domain: None,
            },
        );
        let ctx = args.ctx.clone();
        let pulling = tokio::spawn(pull(args));
        Ok(PullerState {
            ctx,
            _stats: stats,
            pulling,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<PullerMsg>,
        state: &mut PullerState,
    ) -> Result<(), ActorProcessingErr> {
        // Unacked tickets go back to JetStream after ACK_WAIT; the tasks are durable.
        state.pulling.abort();
        state.ctx.directory.leave(myself.get_id().pid());
        Ok(())
    }
}

/// Tickets pulled and not yet acked, by task id.
type Held = HashMap<String, (jetstream::Message, Instant)>;

async fn pull(args: PullerArgs) {
    let mut held: Held = HashMap::new();
    let mut consumer: Option<consumer::PullConsumer> = None;
    let mut checked = Instant::now();
    loop {
        if args.bridge.state() != BusState::Connected {
            consumer = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if consumer.is_none() {
            match open_consumer(&args.bridge).await {
                Ok(c) => consumer = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "work queue not ready; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if checked.elapsed() >= CHECK {
            settle(&args.store, &mut held).await;
            checked = Instant::now();
        }
        let room = room(&args).await;
        let Some(c) = consumer.as_ref().filter(|_| room > 0) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let batch = c
            .fetch()
            .max_messages(room.min(BATCH))
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::debug!(error = %e, "work queue fetch failed");
                consumer = None;
                continue;
            }
        };
        while let Some(Ok(message)) = batch.next().await {
            take(&args, &mut held, message).await;
        }
    }
}

async fn open_consumer(bridge: &Bridge) -> anyhow::Result<consumer::PullConsumer> {
    declare_stream(bridge).await?;
    let js = jetstream::new(bridge.client().clone());
    let stream = js.get_stream(bridge.subjects().tasks_stream()).await?;
    Ok(stream
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                ..Default::default()
            },
        )
        .await?)
}

/// Runs a little below `max_running` so the node's own submissions still fit.
async fn room(args: &PullerArgs) -> usize {
    let Some(scheduler) = args.ctx.scheduler() else {
        return 0;
    };
    match ractor::call_t!(scheduler, SchedulerMsg::Stats, 1000) {
        Ok(s) if !s.draining => args.max_running.saturating_sub(s.running + s.queued),
        _ => 0,
    }
}

async fn take(args: &PullerArgs, held: &mut Held, message: jetstream::Message) {
    // A ticket is stored and may be redelivered later: its MAC is checked, not its age.
    let Some(ticket) = args
        .bridge
        .open_checked::<Ticket>(&message, TICKET, Check::Stored)
    else {
        // Counted and logged by `open`; acked so it is not delivered forever.
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    let Some(scheduler) = args.ctx.scheduler() else {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let Ticket { task_id, priority } = ticket.payload;
    metrics::counter!("ms_work_queue_pulled_total").increment(1);
    let _ = scheduler.cast(SchedulerMsg::Enqueue {
        task_id: task_id.clone(),
        priority,
        enqueued_ms: 0,
        warm: None,
        spill: false,
        // The run may claim it from the node that offered it, while nobody started it.
        origin: Some(ticket.from),
    });
    held.insert(task_id, (message, Instant::now()));
}

/// Acks the tickets whose tasks are final; tells JetStream the others are in progress.
async fn settle(store: &Store, held: &mut Held) {
    let ids: Vec<String> = held.keys().cloned().collect();
    let done = match store.finished_among(&ids).await {
        Ok(done) => done,
        Err(e) => {
            tracing::debug!(error = %e, "cannot check pulled tasks");
            return;
        }
    };
    for id in done {
        if let Some((message, _)) = held.remove(&id) {
            let _ = message.ack().await;
        }
    }
    for (message, touched) in held.values_mut() {
        if touched.elapsed() >= ACK_WAIT / 3 {
            let _ = message.ack_with(AckKind::Progress).await;
            *touched = Instant::now();
        }
    }
}
