//! `/api/v1/sessions`: start a conversation, take turns, read it, list, end.
//!
//! A turn is prepared from what the store holds (`store/sessions.rs`) and handed to the
//! scheduler as an agent task claiming the session's next turn; the turn is taken in the
//! commit that stores the task, or not at all, and the 202 comes after it: a 202 means
//! the turn is durable. A session is its principal's; with
//! the `admin` scope any session may be read and changed.

use actors::scheduler::SubmitError;
use actors::session::{SessionSettings, Window};
use actors::task::FieldError;
use actors::task::store::{NewTask, TurnClaim, now_ms};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::auth::{ADMIN, Principal};
use crate::http::error::ApiError;
use crate::http::owned::Caller;
use crate::http::tasks::{check_spec, invalid, json_rejection, page_size, refused, submit_task};
use crate::state::AppState;
use crate::store::Store;
use crate::store::sessions::{NewSession, Refused, SessionFilter};

/// A session to start: what its turns run with, and its first message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// The first turn's message; without it the session starts with no turn.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100000)]
    pub message: Option<String>,
    #[serde(default)]
    #[schema(max_length = 100000)]
    pub system: Option<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 50)]
    pub max_iterations: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_total_tokens: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 0.001, maximum = 86400)]
    pub timeout_secs: Option<f64>,
    /// The context window in tokens (bytes / 4): older turns past it are summarized.
    #[serde(default)]
    #[schema(minimum = 256, maximum = 10000000)]
    pub context_tokens: Option<u64>,
}

/// A turn's message.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnRequest {
    #[schema(min_length = 1, max_length = 100000)]
    pub message: String,
}

/// Whose sessions a caller may see and change: its own, or any with `admin` (or without
/// auth).
pub(crate) fn owner(caller: &Caller) -> Option<&str> {
    caller
        .as_deref()
        .filter(|p| !p.has(ADMIN))
        .map(|p| p.sub.as_str())
}

/// A session id from a path: one this API gave (a UUID), else no session (404) — and
/// nothing that is not one reaches storage.
pub(crate) fn session_id(id: String) -> Result<String, ApiError> {
    crate::http::owned::known_id(&id, "session").map(|()| id)
}

fn store(node: &AppState) -> Result<&Store, ApiError> {
    node.store
        .get()
        .ok_or_else(|| ApiError::unavailable("storage is not open"))
}

fn unavailable(e: impl ToString) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// A session's refusal as HTTP: 404, or 409 `session_ended` / `turn_running`.
fn refusal(r: Refused) -> ApiError {
    let code = match r {
        Refused::NotFound(_) => return ApiError::not_found(r.to_string()),
        Refused::Ended(_) => "session_ended",
        Refused::Busy { .. } => "turn_running",
    };
    ApiError::new(StatusCode::CONFLICT, code, r.to_string())
}

/// A turn's problems as the caller named them: `agent.tools[0]` is the session's `tools[0]`.
fn as_session_fields(errors: Vec<FieldError>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|e| FieldError {
            field: e
                .field
                .strip_prefix("agent.")
                .unwrap_or(&e.field)
                .to_string(),
            ..e
        })
        .collect()
}

/// Takes the next turn of session `id` with `message`: the accepted turn once its task
/// is stored, or the answer to a refusal.
async fn take_turn(
    node: &AppState,
    caller: &Caller,
    id: &str,
    message: String,
) -> Result<Result<Value, Response>, ApiError> {
    let store = store(node)?;
    let services = node
        .ctx
        .services()
        .ok_or_else(|| ApiError::unavailable("the node is not ready to take turns"))?;
    // A message that cannot be a turn is refused before anything is written.
    if let Err(why) = actors::task::spec::check_agent_text(&message) {
        let error = FieldError::new("message", why);
        return Ok(Err(invalid("invalid_turn", &[error])));
    }
    let prepared = store
        .prepare_turn(id, owner(caller))
        .await
        .map_err(unavailable)?
        .map_err(refusal)?;
    // The turn it will be, if nobody takes one first (then the store refuses the task).
    let turn = prepared.after + 1;
    let summarized_through = prepared.window.summarized_through;
    let spec = prepared
        .settings
        .turn(id, turn, message.clone(), prepared.window);
    if let Err(errors) = check_spec(services, &spec) {
        return Ok(Err(invalid("invalid_turn", &as_session_fields(errors))));
    }
    let task = NewTask {
        principal: caller.as_deref().map(|p: &Principal| p.sub.clone()),
        turn: Some(TurnClaim {
            session_id: id.to_string(),
            after: prepared.after,
            message,
            summarized_through,
        }),
        ..NewTask::new(spec)
    };
    match submit_task(node, task).await? {
        Ok(submitted) => Ok(Ok(json!({
            "session_id": id,
            "turn": submitted.turn.unwrap_or(turn),
            "task_id": submitted.task_id,
            "status": submitted.status,
        }))),
        Err(SubmitError::TurnTaken) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "turn_running",
            format!(
                "turn {turn} of this session was taken by another request; wait for it to finish"
            ),
        )),
        Err(e) => Ok(Err(refused(e))),
    }
}

/// Starts a session; with a `message`, its first turn too.
#[utoipa::path(
    post,
    path = "/api/v1/sessions",
    operation_id = "start_session",
    tag = "sessions",
    request_body(content = StartSession, content_type = "application/json"),
    responses(
        (status = 201, description = "Started (no `message`: no turn yet)", body = crate::http::openapi::SessionStarted),
        (status = 202, description = "Started, and its first turn accepted and stored", body = crate::http::openapi::SessionStarted),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_session`: unknown fields, wrong types, or settings that do not validate (`fields` lists every problem)", body = crate::http::openapi::InvalidTaskBody),
        (status = 429, description = "`queue_full`: the session started but its first turn was refused; send it again as a turn", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the node is not ready or storage did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn start(
    State(node): State<AppState>,
    caller: Caller,
    body: Result<Json<StartSession>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(start) = body.map_err(|r| json_rejection(r, "invalid_session"))?;
    let settings = SessionSettings {
        system: start.system,
        tools: start.tools,
        max_iterations: start.max_iterations,
        max_tokens: start.max_tokens,
        max_total_tokens: start.max_total_tokens,
        timeout_secs: start.timeout_secs,
        context_tokens: start.context_tokens,
    };
    let services = node
        .ctx
        .services()
        .ok_or_else(|| ApiError::unavailable("the node is not ready to take sessions"))?;
    // The settings are checked as a turn would be, with the first message or a stand-in.
    let probe = settings.turn(
        "-",
        1,
        start.message.clone().unwrap_or("-".into()),
        Window::default(),
    );
    let mut errors = check_spec(services, &probe).err().unwrap_or_default();
    errors.extend(settings.check().err());
    if !errors.is_empty() {
        return Ok(invalid("invalid_session", &as_session_fields(errors)));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let session = NewSession {
        id: id.clone(),
        principal: caller.as_deref().map(|p| p.sub.clone()),
        settings,
        node: node.ctx.node.clone(),
        now_ms: now_ms(),
    };
    store(&node)?
        .create_session(&session)
        .await
        .map_err(unavailable)?;
    let Some(message) = start.message else {
        let body = json!({"session_id": id, "status": "open", "turn": null});
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    };
    Ok(match take_turn(&node, &caller, &id, message).await? {
        Ok(turn) => {
            let body = json!({"session_id": id, "status": "open", "turn": turn});
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(refused) => refused,
    })
}

/// Takes a turn: the message goes to the session's agent with the conversation so far.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/turns",
    operation_id = "take_turn",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    request_body(content = TurnRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted and stored: the turn runs as an agent task", body = crate::http::openapi::TurnAccepted),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`not_found`: no such session", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`session_ended`: the session has ended; `turn_running`: its last turn has not finished", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_turn`: no message, an empty or too long one, or unknown fields", body = crate::http::openapi::InvalidTaskBody),
        (status = 429, description = "`queue_full`: the task queue is full; retry later", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the node is not ready or storage did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn turn(
    State(node): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<TurnRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::not_found("no such session"))?;
    let id = session_id(id)?;
    let Json(request) = body.map_err(|r| json_rejection(r, "invalid_turn"))?;
    Ok(
        match take_turn(&node, &caller, &id, request.message).await? {
            Ok(turn) => (StatusCode::ACCEPTED, Json(turn)).into_response(),
            Err(refused) => refused,
        },
    )
}

/// A session: its settings, usage, and every turn with its answer.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    operation_id = "get_session",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session", body = crate::store::sessions::SessionView),
        (status = 404, description = "`not_found`: no such session", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn get(
    State(node): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<crate::store::sessions::SessionView>, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::not_found("no such session"))?;
    let id = session_id(id)?;
    let owner = owner(&caller);
    store(&node)?
        .session(&id)
        .await
        .map_err(unavailable)?
        .filter(|s| owner.is_none() || s.principal.as_deref() == owner)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no session {id}")))
}

/// Ends a session: it takes no more turns. Ending it again changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/end",
    operation_id = "end_session",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "Ended", body = crate::http::openapi::SessionEnded),
        (status = 404, description = "`not_found`: no such session", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`turn_running`: its last turn has not finished (cancel its task, or wait)", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn end(
    State(node): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::not_found("no such session"))?;
    let id = session_id(id)?;
    store(&node)?
        .end_session(&id, owner(&caller), now_ms())
        .await
        .map_err(unavailable)?
        .map_err(refusal)?;
    Ok(Json(json!({"session_id": id, "status": "ended"})))
}

/// A decision on a turn's tool calls awaiting approval.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// Why; the model reads a denial's reason as the call's result.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub reason: Option<String>,
    /// Only this call (its step id, from `awaiting_approval`); without it, every call of
    /// the turn that awaits approval.
    #[serde(default)]
    pub step: Option<String>,
}

const MAX_REASON: usize = 2000;

/// Approves (`approve`: they run) or denies (`deny`: the model is told so, with the
/// reason, as the calls' results) the turn's tool calls awaiting approval, or the one named.
#[utoipa::path(
    post,
    path = "/api/v1/sessions/{id}/turns/{turn}/{decision}",
    operation_id = "decide_calls",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "The session's id"),
        ("turn" = i64, Path, description = "The turn's number"),
        ("decision" = String, Path, description = "`approve` or `deny`", pattern = "^(approve|deny)$"),
    ),
    request_body(content = Option<Decide>, content_type = "application/json"),
    responses(
        (status = 200, description = "Decided: the calls named in `steps`", body = crate::http::openapi::Decided),
        (status = 404, description = "`not_found`: no such session, turn or decision", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`nothing_awaits_approval`: no call of the turn awaits approval", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_decision`: unknown fields, or a reason too long", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn decide(
    State(node): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Option<Json<Decide>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((id, turn, decision)) = path.map_err(|_| ApiError::not_found("no such turn"))?;
    let id = session_id(id)?;
    let approved = match decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(ApiError::not_found(format!(
                "no decision `{other}`: approve or deny"
            )));
        }
    };
    let turn: i64 = turn
        .parse()
        .map_err(|_| ApiError::not_found(format!("no turn {turn} in session {id}")))?;
    let decide = body
        .map_err(|r| json_rejection(r, "invalid_decision"))?
        .map(|Json(d)| d)
        .unwrap_or_default();
    if decide
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON || r.contains('\0'))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_decision",
            format!("reason: at most {MAX_REASON} bytes, without NUL characters"),
        ));
    }
    // A step id is a name of the plan's (`t1_0`); anything else names no call.
    if let Some(step) = &decide.step
        && !actors::run::agent::is_tool_call(step)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing_awaits_approval",
            format!("step {step:?} is not a tool call of this turn"),
        ));
    }
    let store = store(&node)?;
    let task_id = store
        .turn_task(&id, turn, owner(&caller))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no turn {turn} in session {id}")))?;
    let by = caller.as_deref().map(|p| p.sub.as_str());
    let decided = store
        .decide(
            &task_id,
            decide.step.as_deref(),
            approved,
            decide.reason.as_deref(),
            by,
            now_ms(),
        )
        .await
        .map_err(unavailable)?;
    if decided.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nothing_awaits_approval",
            format!("no tool call of turn {turn} awaits approval (now)"),
        ));
    }
    Ok(Json(json!({
        "session_id": id,
        "turn": turn,
        "approved": approved,
        "steps": decided,
    })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `open` or `ended`.
    #[param(value_type = Option<String>, pattern = "^(open|ended)$")]
    status: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 1000, default = 50)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page (a session id); anything else is a 400.
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    cursor: Option<String>,
}

/// Lists sessions, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    operation_id = "list_sessions",
    tag = "sessions",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of sessions", body = crate::http::openapi::SessionList),
        (status = 400, description = "`bad_request`: an unknown status, a limit out of range, a `cursor` that is not a `next_cursor`, or an unknown query parameter", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn list(
    State(node): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    if let Some(s) = q.status.as_deref()
        && s != "open"
        && s != "ended"
    {
        return Err(ApiError::bad_request(format!(
            "status: unknown status `{s}`; allowed: open ended"
        )));
    }
    let limit = page_size(q.limit, q.cursor.as_deref())?;
    let filter = SessionFilter {
        status: q.status,
        limit,
        cursor: q.cursor,
        principal: owner(&caller).map(str::to_string),
    };
    let page = store(&node)?.sessions(&filter).await.map_err(unavailable)?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|s| s.session_id.clone()))
        .flatten();
    Ok(Json(json!({"sessions": page, "next_cursor": next})))
}
