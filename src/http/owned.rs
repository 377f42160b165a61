//! Whose a task is, as the handlers ask it: a task belongs to the principal that submitted
//! it, and a caller that may not see it gets the same 404 as for a task that does not
//! exist (a 403 would tell it that the id exists).

use axum::Extension;

use crate::http::auth::{Principal, may_read};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::tasks::TaskView;

/// The caller, when the API authenticates (see [`crate::http::auth::require`]).
pub type Caller = Option<Extension<Principal>>;

/// Task `id` as `caller` may see it: another principal's task answers 404.
pub async fn readable(node: &AppState, id: &str, caller: &Caller) -> Result<TaskView, ApiError> {
    known_task(id)?;
    let tasks = node
        .tasks
        .get()
        .ok_or_else(|| ApiError::unavailable("storage is not open"))?;
    tasks
        .get(id)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .filter(|view| may_read(caller.as_deref(), view.principal.as_deref()))
        .ok_or_else(|| ApiError::not_found(format!("no task {id}")))
}

/// A task id from a path is one this API gave (a UUID), else there is no such task (404):
/// nothing else reaches storage (PostgreSQL refuses a NUL in text, for one).
pub fn known_task(id: &str) -> Result<(), ApiError> {
    known_id(id, "task")
}

/// An id from a path (of a `what`) is a UUID this API gave, else there is no such thing.
pub fn known_id(id: &str, what: &str) -> Result<(), ApiError> {
    uuid::Uuid::parse_str(id)
        .map(drop)
        .map_err(|_| ApiError::not_found(format!("no {what} {id}")))
}
