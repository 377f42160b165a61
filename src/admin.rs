//! The admin listener: the live supervision tree, the cluster's members and guarded
//! operations on actors (DESIGN §7). Loopback by default; with `admin.token` set (or
//! `auth.mode = "jwt"`), every request needs `Authorization: Bearer <admin.token>` or a
//! JWT with the `admin` scope. Every action and every refused token is audited.

use std::sync::Arc;
use std::time::Duration;

use actors::operations::{self, OperationError, Target};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bridge::remote_admin::{self, AdminReply, AdminRequest, AskError};
use crate::http::auth::{self, Authenticator};
use crate::http::error::{self, ApiError};
use crate::state::{AppState, NodeState};

pub fn router(state: AppState, token: Option<String>, auth: Option<Arc<Authenticator>>) -> Router {
    let token = Arc::new(token);
    let ctx = state.ctx.clone();
    Router::new()
        .route("/admin/cluster", get(cluster))
        .route("/admin/nodes/{node}/drain", post(drain))
        .route("/admin/actors", get(tree))
        .route("/admin/actors/{id}", get(actor))
        .route("/admin/actors/{id}/{op}", post(operate))
        .route("/admin/metrics/history", get(history))
        .route("/admin/events/ws", get(crate::http::events_ws::serve))
        .merge(console_api())
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(move |req, next| {
            authorize(token.clone(), auth.clone(), ctx.clone(), req, next)
        }))
        .merge(crate::console::routes())
        .with_state(state)
}

/// The API routes the console uses, under `/admin/api/v1`: the API's own handlers behind
/// the admin listener's authentication.
fn console_api() -> Router<AppState> {
    use crate::http::{sessions, tasks};
    Router::new()
        .route("/admin/api/v1/tasks", get(tasks::list).post(tasks::submit))
        .route("/admin/api/v1/tasks/{id}", get(tasks::get))
        .route("/admin/api/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/admin/api/v1/sessions", get(sessions::list))
        .route("/admin/api/v1/sessions/{id}", get(sessions::get))
        .route(
            "/admin/api/v1/sessions/{id}/turns/{turn}/{decision}",
            post(sessions::decide),
        )
}

/// The console's charts: a node's metrics over the last minutes (this node's, or the one
/// `?node=` names, over NATS).
async fn history(
    State(node): State<AppState>,
    query: Result<Query<NodeQuery>, QueryRejection>,
) -> Response {
    let request = AdminRequest {
        verb: "history".into(),
        ..Default::default()
    };
    answer(&node, query, request).await
}

/// Who an admin request is from, as audit records name it: the token's `sub`,
/// `admin-token`, or `anonymous` (an open loopback listener).
#[derive(Debug, Clone)]
pub struct AdminCaller {
    pub principal: String,
    pub remote: String,
}

/// `admin.token`, or (with `auth.mode = "jwt"`) a JWT with the `admin` scope. With
/// neither configured the listener is open (it is on loopback: config refuses otherwise).
async fn authorize(
    token: Arc<Option<String>>,
    auth: Option<Arc<Authenticator>>,
    ctx: Arc<actors::NodeContext>,
    mut request: Request,
    next: Next,
) -> Response {
    let remote = auth::remote(&request);
    let what = format!("{} {}", request.method(), request.uri().path());
    let given = auth::bearer(&request).map(std::borrow::Cow::into_owned);
    let given = given.as_deref();
    let principal = match (token.as_deref(), &auth, given) {
        (None, None, _) => "anonymous".to_string(),
        (Some(expected), _, Some(g)) if constant_time_eq(g.as_bytes(), expected.as_bytes()) => {
            "admin-token".to_string()
        }
        (_, Some(auth), Some(g)) => match auth.verify(g) {
            Ok(p) if p.has(auth::ADMIN) => p.sub,
            Ok(p) => {
                let detail = format!("403 {what} from {remote}: scope `admin` missing");
                ctx.events.audit("admin.auth", &p.sub, "refused", detail);
                return auth::forbidden(auth::ADMIN);
            }
            Err(e) => {
                let detail = format!("401 {what} from {remote}: {e}");
                ctx.events
                    .audit("admin.auth", "anonymous", "refused", detail);
                return auth::unauthorized("a valid admin bearer token is required", true);
            }
        },
        (_, _, given) => {
            let detail = format!(
                "401 {what} from {remote}: {}",
                if given.is_some() {
                    "wrong admin token"
                } else {
                    "no bearer token"
                }
            );
            ctx.events
                .audit("admin.auth", "anonymous", "refused", detail);
            return auth::unauthorized("a valid admin bearer token is required", given.is_some());
        }
    };
    // The console's reads and writes of tasks and sessions go through the API's own
    // handlers, as a caller who may see and change everything.
    request.extensions_mut().insert(auth::Principal {
        sub: principal.clone(),
        scopes: vec![auth::ADMIN.into(), auth::TASKS_READ_ALL.into()],
    });
    request
        .extensions_mut()
        .insert(AdminCaller { principal, remote });
    next.run(request).await
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `?node=` names another node of the cluster, asked over NATS.
#[derive(Debug, Deserialize)]
struct NodeQuery {
    node: Option<String>,
}

/// How long a remote node may take to answer an admin request.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

async fn tree(
    State(node): State<AppState>,
    query: Result<Query<NodeQuery>, QueryRejection>,
) -> Response {
    let request = AdminRequest {
        verb: "actors".into(),
        ..Default::default()
    };
    answer(&node, query, request).await
}

/// Answers locally, or asks the node named by `?node=` over NATS.
async fn answer(
    node: &AppState,
    query: Result<Query<NodeQuery>, QueryRejection>,
    request: AdminRequest,
) -> Response {
    let target = match query {
        Ok(Query(q)) => q.node.filter(|n| *n != node.ctx.node),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(target) = target else {
        return reply(local(node, request).await);
    };
    let Some(bridge) = node.bridge.get() else {
        return ApiError::not_found(format!(
            "no node `{target}`: this node is not part of a cluster (nats.url is not set)"
        ))
        .into_response();
    };
    match remote_admin::ask(bridge, &target, request, REMOTE_TIMEOUT).await {
        Ok(answer) => reply(answer),
        Err(e @ AskError::NoSuchNode(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_node", e.to_string()).into_response()
        }
        Err(e @ AskError::Timeout(..)) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "node_timeout", e.to_string())
                .into_response()
        }
        Err(e) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "bus_unavailable", e.to_string()).into_response()
        }
    }
}

fn reply(answer: AdminReply) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, Json(answer.body)).into_response()
}

/// This node's answer to an admin request, as the local listener and NATS both give it.
pub async fn local(node: &NodeState, request: AdminRequest) -> AdminReply {
    let result = match request.verb.as_str() {
        "actors" => local_tree(node),
        "actor" => local_actor(node, request.id.as_deref().unwrap_or_default()),
        "agents" => crate::http::agents::local(node, &request.query).await,
        "drain" => local_drain(node).await,
        "operate" => {
            let op = request.query.get("op").map_or("", String::as_str);
            let id = request.id.as_deref().unwrap_or_default();
            return match operate_on(node, id, op).await {
                Ok(body) => AdminReply { status: 202, body },
                Err(e) => AdminReply {
                    status: e.status.as_u16(),
                    body: json!({"error": {"code": e.code, "message": e.message}}),
                },
            };
        }
        "history" => Ok(json!({"node": node.ctx.node, "points": node.history.points()})),
        other => Err(ApiError::not_found(format!("no admin request `{other}`"))),
    };
    match result {
        Ok(body) => AdminReply { status: 200, body },
        Err(e) => AdminReply {
            status: e.status.as_u16(),
            body: json!({"error": {"code": e.code, "message": e.message}}),
        },
    }
}

fn local_tree(node: &NodeState) -> Result<Value, ApiError> {
    let root = node
        .root()
        .ok_or_else(|| ApiError::unavailable("the supervision tree is not running"))?;
    let tree = node
        .ctx
        .directory
        .tree(root)
        .ok_or_else(|| ApiError::unavailable("the supervision tree is not running"))?;
    Ok(json!({"node": node.ctx.node, "root": tree}))
}

/// Members of the cluster as this node sees them: status, last heartbeat, the failure
/// detector's value, ractor_cluster link, load.
async fn cluster(State(node): State<AppState>) -> Result<Json<Value>, ApiError> {
    let view = node.cluster.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "this node is not part of a cluster (nats.url is not set)",
        )
    })?;
    Ok(Json(json!(view.get())))
}

/// Drains a node (this one, or another of the cluster over NATS): it takes no new tasks
/// and starts no queued ones, lets its runs in flight finish, then leaves and stops; the
/// others take over its queued tasks. 202 once the drain has begun.
async fn drain(
    State(node): State<AppState>,
    caller: Option<Extension<AdminCaller>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let target = match path {
        Ok(Path(target)) => target,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let audit_target = target.clone();
    let request = AdminRequest {
        verb: "drain".into(),
        ..Default::default()
    };
    let query = Ok(Query(NodeQuery { node: Some(target) }));
    let mut response = answer(&node, query, request).await;
    if response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::ACCEPTED;
    }
    audit_action(
        &node,
        caller,
        "admin.drain",
        &format!("node {audit_target}"),
        response.status(),
    );
    response
}

/// Records an admin action with its caller and how it ended.
fn audit_action(
    node: &NodeState,
    caller: Option<Extension<AdminCaller>>,
    action: &str,
    target: &str,
    status: StatusCode,
) {
    let (principal, remote) = caller.map_or_else(
        || ("anonymous".to_string(), "unknown".to_string()),
        |Extension(c)| (c.principal, c.remote),
    );
    let outcome = if status.is_success() { "ok" } else { "failed" };
    node.ctx.events.audit(
        action,
        &principal,
        outcome,
        format!("{target} from {remote}: {}", status.as_u16()),
    );
}

async fn local_drain(node: &NodeState) -> Result<Value, ApiError> {
    let membership = node.cluster.get().and_then(|view| view.membership()).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_clustered",
            "only a node of a cluster can be drained (nats.url is not set, or membership is not running): there is no one to hand its work to",
        )
    })?;
    let report = error::ask(
        &membership,
        crate::cluster::membership::MembershipMsg::Drain,
        REMOTE_TIMEOUT,
        "the cluster membership",
    )
    .await?
    .map_err(ApiError::unavailable)?;
    Ok(json!(report))
}

fn parse_target(id: &str) -> Result<Target, ApiError> {
    Target::parse(id).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{id}` is not an actor id (a number, or <supervisor id>:<child> for a stopped \
             child, as in /admin/actors)"
        ))
    })
}

async fn actor(
    State(node): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<NodeQuery>, QueryRejection>,
) -> Response {
    let id = match path {
        Ok(Path(id)) => id,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let request = AdminRequest {
        verb: "actor".into(),
        id: Some(id),
        ..Default::default()
    };
    answer(&node, query, request).await
}

fn local_actor(node: &NodeState, id: &str) -> Result<Value, ApiError> {
    let Target::Actor(pid) = parse_target(id)? else {
        return Err(ApiError::not_found(format!(
            "`{id}` is a child slot with no live actor"
        )));
    };
    let detail = node
        .ctx
        .directory
        .get(pid)
        .and_then(|_| node.ctx.directory.tree(pid))
        .ok_or_else(|| ApiError::not_found(format!("no live actor with id {pid}")))?;
    let parent = node
        .ctx
        .directory
        .parent_of(pid)
        .map(|(p, _)| p.cell.get_id().pid().to_string());
    Ok(json!({"node": node.ctx.node, "parent": parent, "actor": detail}))
}

/// Stops, kills or restarts an actor of this node, or of the node `?node=` names (asked
/// over NATS, which audits it there too).
async fn operate(
    State(node): State<AppState>,
    caller: Option<Extension<AdminCaller>>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    query: Result<Query<NodeQuery>, QueryRejection>,
) -> Response {
    let (id, op) = match path {
        Ok(Path(p)) => p,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let target = match &query {
        Ok(Query(q)) => q.node.clone().unwrap_or_else(|| node.ctx.node.clone()),
        Err(_) => node.ctx.node.clone(),
    };
    let request = AdminRequest {
        verb: "operate".into(),
        id: Some(id.clone()),
        query: [("op".to_string(), op.clone())].into(),
    };
    let response = answer(&node, query, request).await;
    let action = match op.as_str() {
        "stop" | "kill" | "restart" => format!("admin.{op}"),
        _ => "admin.operate".to_string(),
    };
    let what = format!("actor {id} of node {target}");
    audit_action(&node, caller, &action, &what, response.status());
    response
}

async fn operate_on(node: &NodeState, id: &str, op: &str) -> Result<Value, ApiError> {
    let target = parse_target(id)?;
    let ctx = &node.ctx;
    let result = match op {
        "stop" => operations::stop(ctx, &target)
            .await
            .map(|()| json!({"id": id, "stopped": true})),
        "kill" => operations::kill(ctx, &target).map(|()| json!({"id": id, "killed": true})),
        "restart" => operations::restart(ctx, &target)
            .await
            .map(|new| json!({"id": id, "restarted": true, "new_id": new.to_string()})),
        other => {
            return Err(ApiError::not_found(format!(
                "no operation `{other}`; allowed: stop, kill, restart"
            )));
        }
    };
    result.map_err(operation_error)
}

fn operation_error(e: OperationError) -> ApiError {
    use actors::supervisor::SupervisorError as S;
    let message = e.to_string();
    match e {
        OperationError::NotFound(_) | OperationError::Supervisor(S::NoSuchChild(_)) => {
            ApiError::not_found(message)
        }
        OperationError::Root(_) | OperationError::Supervisor(S::NotRunning(_)) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", message)
        }
        OperationError::Supervisor(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "operation_failed",
            message,
        ),
        OperationError::Unavailable { .. } => ApiError::unavailable(message),
    }
}
