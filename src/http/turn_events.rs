//! `GET /api/v1/sessions/{id}/turns/{turn}/events`: a turn as it happens, as Server-Sent
//! Events: the text of its LLM calls as the provider streams it (`delta`), and its task's
//! trace (`step.succeeded` for each LLM call and tool call with its verdict,
//! `approval.requested`, …, and the final entry, after which the stream ends).
//!
//! Deltas come from this node's LLM calls while the stream is open (DESIGN: not recorded,
//! best effort: `actors::deltas`); the trace is the recorded one, complete.

use std::convert::Infallible;
use std::time::Duration;

use actors::deltas::Delta;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast;

use crate::http::error::ApiError;
use crate::http::owned::Caller;
use crate::http::task_events::Follow;
use crate::state::AppState;

struct Turn {
    trace: Follow,
    deltas: broadcast::Receiver<Delta>,
}

impl Turn {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            tokio::select! {
                biased;
                delta = self.deltas.recv() => match delta {
                    Ok(delta) => {
                        let data = serde_json::to_string(&delta).unwrap_or_default();
                        return Some(SseEvent::default().event("delta").data(data));
                    }
                    // Deltas lost to a slow reader: the recorded answer still comes.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return self.trace.next().await,
                },
                entry = self.trace.next() => return entry,
            }
        }
    }
}

/// A turn as it happens: its LLM calls' text as it streams, and its trace.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}/turns/{turn}/events",
    operation_id = "turn_events",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id"), ("turn" = i64, Path, description = "The turn's number")),
    responses(
        (status = 200, description = "An SSE stream. `event: delta` with `data: {\"step\", \"text\"}`: text of an LLM call as the provider streams it (while the stream is open, from this node's calls); every other event is an entry of the turn's task trace, as `/api/v1/tasks/{id}/events` sends it. The stream ends after the task's final entry.", body = String, content_type = "text/event-stream"),
        (status = 404, description = "`not_found`: no such session or turn", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn stream(
    State(node): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Path((id, turn)) = path.map_err(|_| ApiError::not_found("no such turn"))?;
    let id = crate::http::sessions::session_id(id)?;
    let missing = || ApiError::not_found(format!("no turn {turn} in session {id}"));
    let number: i64 = turn.parse().map_err(|_| missing())?;
    let store = node
        .store
        .get()
        .ok_or_else(|| ApiError::unavailable("storage is not open"))?;
    let owner = crate::http::sessions::owner(&caller);
    let task_id = store
        .turn_task(&id, number, owner)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .ok_or_else(missing)?;
    // Subscribed first: a call that starts from now on streams to this reader.
    let deltas = node.ctx.deltas.subscribe(&task_id);
    let trace = Follow::start(&node, task_id, &caller).await?;
    let stream = futures::stream::unfold(Turn { trace, deltas }, |mut t| async move {
        let event = t.next().await?;
        Some((Ok(event), t))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
