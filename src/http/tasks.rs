//! `/api/v1/tasks`: submit, read, list, cancel (DESIGN §4). Submissions go to the
//! scheduler actor, which answers after the commit; reads come from the task store.

use std::time::Duration;

use actors::scheduler::{SchedulerMsg, SubmitError};
use actors::task::store::{NewTask, StoreError};
use actors::task::{Priority, TaskSpec, TaskStatus};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::auth::{may_change, owner_filter};
use crate::http::error::{ApiError, ask};
use crate::http::owned::{Caller, readable};
use crate::http::task_output::{InlineOutput, cap_outputs};
use crate::state::AppState;
use crate::store::tasks::TaskFilter;

/// How long a submission may wait for the scheduler and the commit.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 1000;

/// Submits a task. The answer comes after the task is durably stored.
#[utoipa::path(
    post,
    path = "/api/v1/tasks",
    operation_id = "submit_task",
    tag = "tasks",
    request_body(content = TaskSpec, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted and stored: a new task", body = crate::http::openapi::Submission),
        (status = 200, description = "An earlier task with the same `idempotency_key`; nothing new stored", body = crate::http::openapi::Submission),
        (status = 400, description = "`malformed_json`: the body is not JSON; `bad_request`: the body could not be read", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`idempotency_conflict`: the `idempotency_key` was used before with another request", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`too_large`: the body is larger than `http.body_limit_bytes`", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type: application/json`", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_task`: unknown fields, wrong types, or a task that does not validate (then `fields` lists every problem)", body = crate::http::openapi::InvalidTaskBody),
        (status = 429, description = "`queue_full`: the task queue is full; retry later", body = crate::http::openapi::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 503, description = "`unavailable`: the node is not ready, or the scheduler or storage did not answer; nothing was stored", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn submit(
    State(node): State<AppState>,
    caller: Caller,
    body: Result<Json<TaskSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body.map_err(|r| json_rejection(r, "invalid_task"))?;
    let services = node
        .ctx
        .services()
        .ok_or_else(|| ApiError::unavailable("the node is not ready to take tasks"))?;
    if let Err(errors) = check_spec(services, &spec) {
        return Ok(invalid("invalid_task", &errors));
    }
    let mut task = NewTask::new(spec);
    task.principal = caller.map(|Extension(p)| p.sub);
    match submit_task(&node, task).await? {
        Ok(submitted) => {
            let status = if submitted.created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            let body = json!({
                "task_id": submitted.task_id,
                "status": submitted.status,
                "created": submitted.created,
            });
            Ok((status, Json(body)).into_response())
        }
        Err(e) => Ok(refused(e)),
    }
}

/// Hands `task` to the scheduler, which answers after the commit.
pub async fn submit_task(
    node: &AppState,
    task: NewTask,
) -> Result<Result<actors::task::store::Submitted, SubmitError>, ApiError> {
    let scheduler = scheduler(node)?;
    ask(
        &scheduler,
        |r| SchedulerMsg::Submit(task, r),
        SUBMIT_TIMEOUT,
        "the task scheduler",
    )
    .await
}

/// The answer to a submission the scheduler refused.
pub fn refused(e: SubmitError) -> Response {
    match e {
        SubmitError::QueueFull(n) => {
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("the task queue is full ({n} waiting); retry later"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        e @ SubmitError::KeyReused(_) => {
            ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", e.to_string())
                .into_response()
        }
        e => ApiError::unavailable(e.to_string()).into_response(),
    }
}

/// Every problem of a task before it is submitted: its fields and plan, each step's tool
/// and arguments as this node would run them, and what needs an LLM provider when none
/// is configured (an LLM judgement, the Planner, an agent loop).
pub fn check_spec(
    services: &actors::context::Services,
    spec: &TaskSpec,
) -> Result<(), Vec<actors::task::FieldError>> {
    let llm_configured = services.llm.is_configured();
    let check = |tool: &str, args: &Value| {
        actors::roles::validate_step_tool(&services.tools, llm_configured, tool, args)
    };
    let mut errors = spec.validate(check).err().unwrap_or_default();
    if !llm_configured {
        // An LLM judgement cannot be honoured without a provider: refuse rather than skip it.
        let judged = spec
            .steps
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, st)| st.expect.as_ref().is_some_and(|e| e.judge.is_some()));
        for (i, _) in judged {
            errors.push(actors::task::FieldError {
                field: format!("steps[{i}].expect.judge"),
                message: format!(
                    "an LLM judgement needs a provider: {}",
                    actors::llm::NOT_CONFIGURED
                ),
            });
        }
        if errors.is_empty() && spec.steps.is_none() {
            let (field, needs) = match spec.agent {
                Some(_) => ("agent", "is an agent loop, which needs an LLM provider"),
                None => ("steps", "has no steps and needs the Planner"),
            };
            errors.push(actors::task::FieldError {
                field: field.into(),
                message: format!(
                    "{field}: this task {needs}: {}; or give explicit `steps`",
                    actors::llm::NOT_CONFIGURED
                ),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A 422 listing every problem, under `code`.
pub fn invalid(code: &str, errors: &[actors::task::FieldError]) -> Response {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let body = json!({"error": {"code": code, "message": message, "fields": errors}});
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

/// A task: its status, every step with its attempts, and its event trace.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    operation_id = "get_task",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task; each output shown up to `tasks.inline_output_bytes` (`output_truncated` on a step whose output was cut: read it whole at `/api/v1/tasks/{id}/steps/{step}/output`)", body = crate::store::tasks::TaskView),
        (status = 404, description = "`not_found`: no such task", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn get(
    State(node): State<AppState>,
    caller: Caller,
    inline: Option<Extension<InlineOutput>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    // An id that cannot be decoded names no task.
    let Path(id) = path.map_err(|_| ApiError::not_found("no such task"))?;
    let view = readable(&node, &id, &caller).await?;
    let mut view = serde_json::to_value(view).unwrap_or_default();
    let Extension(InlineOutput(cap)) = inline.unwrap_or_default();
    cap_outputs(&mut view, cap);
    Ok(Json(view))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this status.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Only tasks of this priority.
    #[param(value_type = Option<Priority>)]
    priority: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 1000, default = 50)]
    limit: Option<i64>,
    /// The `next_cursor` of the previous page (a task id); anything else is a 400.
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    cursor: Option<String>,
}

/// Lists tasks, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of tasks", body = crate::http::openapi::TaskList),
        (status = 400, description = "`bad_request`: an unknown status or priority, a limit out of range, a `cursor` that is not a `next_cursor`, or an unknown or malformed query parameter", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: storage is not open or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn list(
    State(node): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: unknown status `{s}`; allowed: {}",
                TaskStatus::ALLOWED.trim()
            ))
        })?),
    };
    let priority = match q.priority.as_deref() {
        None => None,
        Some(p) => Some(Priority::parse(p).ok_or_else(|| {
            ApiError::bad_request(format!(
                "priority: unknown priority `{p}`; allowed: {}",
                Priority::ALLOWED
            ))
        })?),
    };
    let limit = page_size(q.limit, q.cursor.as_deref())?;
    let tasks = node
        .tasks
        .get()
        .ok_or_else(|| ApiError::unavailable("storage is not open"))?;
    let filter = TaskFilter {
        status,
        priority,
        limit,
        cursor: q.cursor,
        principal: owner_filter(caller.as_deref()).map(str::to_string),
    };
    let page = tasks
        .list(&filter)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|t| t.task_id.clone()))
        .flatten();
    Ok(Json(json!({"tasks": page, "next_cursor": next})))
}

/// The checked page size of a listing, and its cursor checked: an id this API gave as
/// `next_cursor`. Anything else would be ignored silently (a client paging wrongly would
/// not know).
pub fn page_size(limit: Option<i64>, cursor: Option<&str>) -> Result<i64, ApiError> {
    if let Some(cursor) = cursor
        && uuid::Uuid::parse_str(cursor).is_err()
    {
        return Err(ApiError::bad_request(format!(
            "cursor: `{cursor}` is not a cursor; pass the `next_cursor` of the previous page"
        )));
    }
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(limit)
}

/// Cancels a task that has not finished.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/cancel",
    operation_id = "cancel_task",
    tag = "tasks",
    params(("id" = String, Path, description = "The task's id")),
    responses(
        (status = 202, description = "Cancelled, now or earlier (`status` is `cancelled`)", body = actors::scheduler::CancelOutcome),
        (status = 404, description = "`not_found`: no such task", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`not_cancellable`: the task has already succeeded, failed or timed out", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the scheduler is not running or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn cancel(
    State(node): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Path(id) = path.map_err(|_| ApiError::not_found("no such task"))?;
    crate::http::owned::known_task(&id)?;
    if caller.is_some() {
        let tasks = node
            .tasks
            .get()
            .ok_or_else(|| ApiError::unavailable("storage is not open"))?;
        let submitter = tasks
            .principal(&id)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        // Another principal's task is not there for this caller (not even a 403: that
        // would tell it the id exists).
        if !submitter.is_some_and(|s| may_change(caller.as_deref(), s.as_deref())) {
            return Err(ApiError::not_found(format!("no task {id}")));
        }
    }
    let scheduler = scheduler(&node)?;
    let reply = ask(
        &scheduler,
        |r| SchedulerMsg::Cancel(id.clone(), r),
        SUBMIT_TIMEOUT,
        "the task scheduler",
    )
    .await?;
    match reply {
        Ok(outcome) if outcome.status == TaskStatus::Cancelled => {
            Ok((StatusCode::ACCEPTED, Json(json!(outcome))))
        }
        Ok(outcome) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!("task {} is already {}", outcome.task_id, outcome.status),
        )),
        Err(StoreError::NotFound(id)) => Err(ApiError::not_found(format!("no task {id}"))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

/// Maps axum's JSON rejections to our error shape, keeping serde's message (which names
/// the field) and the right status: 400 malformed, 415 not JSON, 413 too large, 422 wrong
/// fields or types.
/// The answer to a body that is not the JSON asked for; `invalid` is the code of a body
/// that is JSON of the wrong shape.
pub fn json_rejection(rejection: JsonRejection, invalid: &'static str) -> ApiError {
    let message = rejection.body_text();
    match rejection {
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
        }
        JsonRejection::JsonDataError(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, invalid, message)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than http.body_limit_bytes allows: {message}"),
        ),
        other => ApiError::new(other.status(), "bad_request", message),
    }
}

fn scheduler(node: &AppState) -> Result<ractor::ActorRef<SchedulerMsg>, ApiError> {
    node.ctx
        .scheduler()
        .ok_or_else(|| ApiError::unavailable("the task scheduler is not running"))
}
