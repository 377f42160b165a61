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
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::content::Content;
use utoipa::openapi::header::Header;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Ref, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::http::{
    agents, auth, events_ws, health, metrics, sessions, task_events, task_output, tasks,
    turn_events,
};
use crate::store::sessions::{SessionSummary, SessionView, TurnView};
use crate::store::tasks::{StepView, TaskSummary, TaskView};
use actors::session::{SessionSettings, Usage};

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
        task_output::get,
        sessions::start,
        sessions::list,
        sessions::get,
        sessions::turn,
        sessions::end,
        sessions::decide,
        turn_events::stream,
        events_ws::serve,
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
        StepOutput,
        sessions::StartSession,
        sessions::TurnRequest,
        SessionSettings,
        SessionView,
        TurnView,
        SessionSummary,
        Usage,
        SessionStarted,
        TurnAccepted,
        SessionEnded,
        SessionList,
        sessions::Decide,
        Decided,
        crate::store::sessions::AwaitingCall,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "agents", description = "The agent registry"),
        (name = "tasks", description = "Submit, read, list, cancel and follow tasks"),
        (name = "sessions", description = "Conversations with an agent, turn by turn"),
        (name = "events", description = "Every node's events, live and replayable, over a WebSocket"),
    )
)]
pub struct ApiDoc;

/// The name of the security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";

/// What `auth.rs` enforces, written into the document: the `bearer` scheme, and on every
/// `/api/v1` operation the scope it needs (read from [`auth::required_scope`], so the
/// handlers' annotations say nothing about it and cannot disagree) with its 401 and 403.
/// With auth off the node answers neither; documenting them is still right, since whether
/// a node asks for tokens is its configuration.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                BEARER_SCHEME,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(
                            "A JWT (HS256 with `auth.secret`, or RS256/ES256 from the JWKS) \
                             with `sub`, `exp` and the scopes the operation lists \
                             (`mister-smith token issue` mints one).",
                        ))
                        .build(),
                ),
            );
        for (path, item) in &mut openapi.paths.paths {
            if !path.starts_with("/api/v1/") {
                continue;
            }
            let operations = [
                (Method::GET, &mut item.get),
                (Method::PUT, &mut item.put),
                (Method::POST, &mut item.post),
                (Method::DELETE, &mut item.delete),
                (Method::OPTIONS, &mut item.options),
                (Method::HEAD, &mut item.head),
                (Method::PATCH, &mut item.patch),
                (Method::TRACE, &mut item.trace),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let scope = auth::required_scope(&method, path);
                operation.security = Some(vec![SecurityRequirement::new(BEARER_SCHEME, [scope])]);
                let refusals = [
                    (
                        "401",
                        "No bearer token, or one that is expired, badly signed or otherwise \
                         invalid (`unauthorized`)",
                    ),
                    (
                        "403",
                        "The token is valid but lacks the scope this operation needs \
                         (`forbidden`)",
                    ),
                ];
                for (status, description) in refusals {
                    operation
                        .responses
                        .responses
                        .insert(status.to_string(), refusal(description).into());
                }
            }
        }
    }
}

/// A 401 or 403: the error shape, with its `WWW-Authenticate` challenge.
fn refusal(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .header(
            "WWW-Authenticate",
            Header::new(ObjectBuilder::new().schema_type(Type::String)),
        )
        .build()
}

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
    /// `not_cancellable`, `method_not_allowed`, `idempotency_conflict`, `unauthorized`,
    /// `forbidden`.
    #[schema(example = "not_found")]
    pub code: String,
    /// What went wrong, for people (names the field or value at fault).
    pub message: String,
}

/// A refused submission (422): the error shape, with every problem listed by field when
/// the task (session, turn) parsed but did not validate. A body of the wrong types (serde's error) has no
/// `fields`; its `message` names the field.
#[derive(Serialize, ToSchema)]
pub struct InvalidTaskBody {
    pub error: InvalidTaskDetail,
}

#[derive(Serialize, ToSchema)]
pub struct InvalidTaskDetail {
    /// `invalid_task` (a task), `invalid_session` (a session's settings) or
    /// `invalid_turn` (a turn's message).
    #[schema(pattern = "^invalid_(task|session|turn)$", example = "invalid_task")]
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
    /// `ok`, or `failing, retrying: <why>` while accepted work cannot be recorded (the
    /// node is then not ready; runs wait for storage and go on when it is back).
    #[schema(example = "ok")]
    pub writes: String,
    /// This node's lease on its work in the database: `held`, `not kept (single node)`,
    /// `not acquired yet`, or `expired … ms ago; renewing` (steps with side effects wait).
    #[schema(example = "held")]
    pub lease: String,
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

/// `GET /api/v1/tasks/{id}/steps/{step}/output`: one step's whole output.
#[derive(Serialize, ToSchema)]
pub struct StepOutput {
    pub task_id: String,
    pub step_id: String,
    pub status: StepStatus,
    /// The tool's output (any JSON value); `null` when the step has none yet.
    #[schema(required)]
    pub output: Option<serde_json::Value>,
}

/// A turn accepted: stored, its agent task queued.
#[derive(Serialize, ToSchema)]
pub struct TurnAccepted {
    pub session_id: String,
    /// The turn's number, from 1.
    pub turn: i64,
    /// The agent task that runs it.
    pub task_id: String,
    pub status: TaskStatus,
}

/// A session started: 201 without a first message, 202 with its first turn accepted.
#[derive(Serialize, ToSchema)]
pub struct SessionStarted {
    pub session_id: String,
    /// `open`.
    pub status: String,
    /// The first turn; `null` when no `message` was given.
    #[schema(required)]
    pub turn: Option<TurnAccepted>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionEnded {
    pub session_id: String,
    /// `ended`.
    pub status: String,
}

/// `GET /api/v1/sessions`: newest first.
#[derive(Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required)]
    pub next_cursor: Option<String>,
}

/// What a decision on tool calls awaiting approval decided.
#[derive(Serialize, ToSchema)]
pub struct Decided {
    pub session_id: String,
    pub turn: i64,
    pub approved: bool,
    /// The calls (step ids) decided.
    pub steps: Vec<String>,
}
