//! `GET /api/v1/tasks/{id}/events`: a task's trace as a live Server-Sent Events stream.
//!
//! It subscribes to the node's event channel first, then replays what is stored, then
//! follows live entries — so nothing falls between the two — and ends after the task's
//! final entry. A subscriber that falls behind re-reads the store instead of losing entries.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use actors::events::Event;
use actors::task::TaskStatus;
use actors::task::store::TaskEvent;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::Tasks;

/// A task's trace being followed: what is stored, then what is committed live.
pub(crate) struct Follow {
    task_id: String,
    tasks: Tasks,
    live: tokio::sync::broadcast::Receiver<actors::events::Stamped>,
    backlog: VecDeque<TaskEvent>,
    last_seq: i64,
    finished: bool,
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
        let view = crate::http::owned::readable(node, &task_id, caller).await?;
        Ok(Follow {
            task_id,
            tasks,
            live,
            backlog: view.events.into(),
            last_seq: -1,
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
            match self.live.recv().await {
                Ok(stamped) => {
                    if let Event::Task {
                        task_id,
                        seq,
                        at_ms,
                        what,
                        data,
                    } = stamped.event
                        && task_id == self.task_id
                    {
                        self.backlog.push_back(TaskEvent {
                            seq,
                            at_ms,
                            kind: what,
                            data,
                        });
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the channel: the store has everything committed.
                    let view = self.tasks.get(&self.task_id).await.ok().flatten()?;
                    self.backlog = view.events.into();
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
