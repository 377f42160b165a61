//! `GET /api/v1/tasks/{id}/events`: a task's trace as a live Server-Sent Events stream.
//!
//! It subscribes to live entries first, then replays what is stored, then follows live
//! entries — so nothing falls between the two — and ends after the task's final entry.
//! Live entries come from this node's event channel and, in a cluster, from the task's
//! subject on NATS (`…events.task.trace.<id>`): a task that runs on another node (spilled,
//! taken over) is heard too. A subscriber that falls behind, or hears nothing for
//! [`POLL`], re-reads the store (shared by the cluster), so the stream always ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use actors::events::{Event, Shared};
use actors::task::TaskStatus;
use actors::task::store::TaskEvent;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use crate::bridge::{Bridge, Check};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::Tasks;

/// How long a follower waits on live entries before it reads the store again.
const POLL: Duration = Duration::from_secs(2);

/// A task's trace being followed: what is stored, then what is committed live.
pub(crate) struct Follow {
    task_id: String,
    tasks: Tasks,
    live: tokio::sync::broadcast::Receiver<Shared>,
    /// The task's entries from every node of the cluster, with the bridge to read them.
    cluster: Option<(Bridge, async_nats::Subscriber)>,
    poll: tokio::time::Interval,
    backlog: VecDeque<TaskEvent>,
    last_seq: i64,
    /// The entry past a gap the store was last re-read for.
    gap_read: i64,
    finished: bool,
}

/// A task entry as the bridge's forwarder publishes it (an `Event::Task`).
#[derive(serde::Deserialize)]
struct Entry {
    task_id: String,
    seq: i64,
    at_ms: i64,
    event: String,
    data: serde_json::Value,
}

/// A task's event trace as Server-Sent Events: what is stored first, then live entries;
/// the stream ends after the task's final entry.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/events",
    operation_id = "task_events",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "An SSE stream. Each event has `event: <kind>`, `id: <seq>` and `data:` one `TaskEvent` as JSON (`{\"seq\", \"at_ms\", \"kind\", \"data\"}`); comments keep the connection alive every 15 s", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`bad_request`: the id cannot be decoded", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`not_found`: no such task", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn stream(
    State(node): State<AppState>,
    caller: crate::http::owned::Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Path(task_id) = path?;
    let follow = Follow::start(&node, task_id, &caller).await?;
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let event = f.next().await?;
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

impl Follow {
    /// Follows task `task_id`'s trace, as `caller` may see it: subscribed to live entries
    /// before the stored ones are read, so nothing falls between the two.
    pub(crate) async fn start(
        node: &AppState,
        task_id: String,
        caller: &crate::http::owned::Caller,
    ) -> Result<Follow, ApiError> {
        let tasks = node
            .tasks
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("storage is not open"))?;
        let live = node.ctx.events.subscribe();
        let mut cluster = None;
        if let Some(bridge) = node.bridge.get()
            && crate::bridge::forwarder::is_token(&task_id)
        {
            let subject = bridge.subjects().event(&format!("task.trace.{task_id}"));
            // Without NATS now, the store's re-reads carry the other nodes' entries.
            if let Ok(subscriber) = bridge.subscribe(subject).await {
                // The server has the subscription before the store is read (no entry
                // published in between is missed).
                let _ = tokio::time::timeout(POLL, bridge.client().flush()).await;
                cluster = Some((bridge.clone(), subscriber));
            }
        }
        let view = crate::http::owned::readable(node, &task_id, caller).await?;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.reset();
        Ok(Follow {
            task_id,
            tasks,
            live,
            cluster,
            poll,
            backlog: view.events.into(),
            last_seq: -1,
            gap_read: -1,
            finished: false,
        })
    }

    /// The next entry as an SSE event; `None` after the task's final entry. Cancel-safe:
    /// dropped while it waits, nothing is lost.
    pub(crate) async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                if event.seq <= self.last_seq {
                    continue;
                }
                // An entry heard live past a gap: the store has every entry before it
                // (entries are published after their commit), so read it once.
                if event.seq > self.last_seq + 1 && self.gap_read != event.seq {
                    self.gap_read = event.seq;
                    self.reread().await;
                    continue;
                }
                self.last_seq = event.seq;
                self.finished = TaskStatus::parse(&event.kind).is_some_and(TaskStatus::is_final);
                let data = serde_json::json!({"seq": event.seq, "at_ms": event.at_ms, "kind": event.kind, "data": event.data});
                return Some(
                    SseEvent::default()
                        .event(event.kind)
                        .id(event.seq.to_string())
                        .data(data.to_string()),
                );
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(stamped) => {
                        if let Event::Task { task_id, seq, at_ms, what, data, .. } = &stamped.event
                            && *task_id == self.task_id
                        {
                            self.hear(*seq, *at_ms, what.clone(), data.clone());
                        }
                    }
                    // Fell behind the channel: the store has everything committed.
                    Err(RecvError::Lagged(_)) => self.reread().await,
                    Err(RecvError::Closed) => return None,
                },
                message = next_message(&mut self.cluster) => match message {
                    Some(message) => self.hear_cluster(&message),
                    None => self.cluster = None,
                },
                _ = self.poll.tick() => self.reread().await,
            }
        }
    }

    fn hear(&mut self, seq: i64, at_ms: i64, kind: String, data: serde_json::Value) {
        self.poll.reset();
        if seq > self.last_seq {
            self.backlog.push_back(TaskEvent {
                seq,
                at_ms,
                kind,
                data,
            });
        }
    }

    fn hear_cluster(&mut self, message: &async_nats::Message) {
        let Some((bridge, _)) = &self.cluster else {
            return;
        };
        let opened = bridge.open_checked::<Entry>(message, "event.task.trace", Check::Stored);
        if let Some(entry) = opened
            && entry.payload.task_id == self.task_id
        {
            let e = entry.payload;
            self.hear(e.seq, e.at_ms, e.event, e.data);
        }
    }

    /// Reads the stored trace again (storage unreachable: the next poll tries again).
    async fn reread(&mut self) {
        if let Ok(Some(view)) = self.tasks.get(&self.task_id).await {
            self.backlog = view.events.into();
        }
    }
}

/// The next message of the cluster's subscription; never, without one.
async fn next_message(
    cluster: &mut Option<(Bridge, async_nats::Subscriber)>,
) -> Option<async_nats::Message> {
    match cluster {
        Some((_, subscriber)) => subscriber.next().await,
        None => std::future::pending().await,
    }
}
