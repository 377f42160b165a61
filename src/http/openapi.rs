//! `GET /api/v1/openapi.json`: the OpenAPI document of every route of the API listener,
//! generated from the handlers' `#[utoipa::path]` attributes and the types' `ToSchema`
//! derives (which read the serde attributes, so the schemas follow the JSON produced).
//!
//! The bodies a handler builds with `json!` are described here by the types below, which
//! exist only for the document; `tests/openapi.rs` checks real answers against them.

use std::sync::OnceLock;

use actors::agent::{AgentIdentity, Lifecycle};
use actors::registry::AgentRecord;
use actors::roles::Role;
use actors::scheduler::CancelOutcome;
use actors::task::spec::JsonExpectation;
use actors::task::store::TaskEvent;
use actors::task::{
    Attempt, Expectation, FieldError, Priority, StepSpec, StepStatus, TaskSpec, TaskStatus, Verdict,
};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::http::{agents, health, metrics, task_events, tasks};
use crate::store::tasks::{StepView, TaskSummary, TaskView};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Mister Smith",
        description = "A distributed, supervised runtime for multi-agent work. Every error \
                       is `{\"error\": {\"code\": \"…\", \"message\": \"…\"}}` with the \
                       status that fits; a route asked with a method it does not serve \
                       answers 405 `method_not_allowed`, an unknown path 404 `not_found`."
    ),
    paths(
        health::live,
        health::ready,
        metrics::render,
        agents::list,
        tasks::submit,
        tasks::list,
        tasks::get,
        tasks::cancel,
        task_events::stream,
    ),
    components(schemas(
        Live,
        Ready,
        ReadyChecks,
        AgentList,
        AgentRecord,
        AgentIdentity,
        Role,
        Lifecycle,
        TaskSpec,
        StepSpec,
        Expectation,
        JsonExpectation,
        Priority,
        Submission,
        TaskList,
        TaskSummary,
        TaskView,
        StepView,
        TaskStatus,
        StepStatus,
        Attempt,
        Verdict,
        TaskEvent,
        CancelOutcome,
        ErrorBody,
        ErrorDetail,
        InvalidTaskBody,
        InvalidTaskDetail,
        FieldError,
    )),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "agents", description = "The agent registry"),
        (name = "tasks", description = "Submit, read, list, cancel and follow tasks"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi().to_json().unwrap_or_else(|e| {
            serde_json::json!({"error": {"code": "openapi", "message": e.to_string()}}).to_string()
        })
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// The one error shape: `{"error": {"code": "…", "message": "…"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for programs: `bad_request`, `not_found`, `unavailable`,
    /// `malformed_json`, `unsupported_media_type`, `too_large`, `queue_full`,
    /// `not_cancellable`, `method_not_allowed`.
    #[schema(example = "not_found")]
    pub code: String,
    /// What went wrong, for people (names the field or value at fault).
    pub message: String,
}

/// A refused submission (422): the error shape, with every problem listed by field when
/// the task parsed but did not validate. A body of the wrong types (serde's error) has no
/// `fields`; its `message` names the field.
#[derive(Serialize, ToSchema)]
pub struct InvalidTaskBody {
    pub error: InvalidTaskDetail,
}

#[derive(Serialize, ToSchema)]
pub struct InvalidTaskDetail {
    /// Always `invalid_task`.
    #[schema(pattern = "^invalid_task$", example = "invalid_task")]
    pub code: String,
    /// Every problem, joined with `; `.
    pub message: String,
    /// Present when the task parsed: one entry per problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
}

/// `GET /health/live`.
#[derive(Serialize, ToSchema)]
pub struct Live {
    /// Always `live`.
    #[schema(pattern = "^live$", example = "live")]
    pub status: String,
}

/// `GET /health/ready`: `ready` with 200, or `not_ready` with 503 and the checks that fail.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    #[schema(pattern = "^(ready|degraded|not_ready)$", example = "ready")]
    pub status: String,
    /// This node's name.
    pub node: String,
    pub checks: ReadyChecks,
}

#[derive(Serialize, ToSchema)]
pub struct ReadyChecks {
    /// `up`, `starting`, or `down: <why>`.
    #[schema(example = "up")]
    pub storage: String,
    /// `up` or `down`.
    #[schema(example = "up")]
    pub supervision: String,
    /// The message bus (`not configured` on a single node).
    #[schema(example = "not configured")]
    pub bus: String,
}

/// `GET /api/v1/agents`.
#[derive(Serialize, ToSchema)]
pub struct AgentList {
    /// The node that answered.
    pub node: String,
    /// How many agents are listed.
    pub count: u64,
    pub agents: Vec<AgentRecord>,
    /// In a cluster: each node asked and `ok`, or why its agents are missing.
    #[schema(required = false)]
    pub nodes: Option<std::collections::BTreeMap<String, String>>,
}

/// What a submission got: 202 for a new task, 200 for an earlier task with the same
/// `idempotency_key` (with that task's current status).
#[derive(Serialize, ToSchema)]
pub struct Submission {
    pub task_id: String,
    pub status: TaskStatus,
    /// `true` for a new task (202), `false` for an earlier one with the same key (200).
    pub created: bool,
}

/// `GET /api/v1/tasks`: newest first.
#[derive(Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required)]
    pub next_cursor: Option<String>,
}
