//! `GET /api/v1/agents`: the registry's view, filtered by role, capability, domain, state.

use std::time::Duration;

use actors::agent::Lifecycle;
use actors::registry::{AgentFilter, AgentRecord, RegistryMsg};
use actors::roles::Role;
use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::error::{ApiError, ask};
use crate::state::AppState;

const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgentQuery {
    /// Only agents of this role.
    #[param(value_type = Option<Role>)]
    role: Option<String>,
    /// Only agents offering this capability (e.g. `tool.shell`).
    capability: Option<String>,
    /// Only agents of this domain.
    domain: Option<String>,
    /// Only agents in this lifecycle state.
    #[param(value_type = Option<Lifecycle>)]
    state: Option<String>,
}

/// Lists the agents of the registry, optionally filtered.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    params(AgentQuery),
    responses(
        (status = 200, description = "The agents that match", body = crate::http::openapi::AgentList),
        (status = 400, description = "`bad_request`: an unknown role or state, or an unknown or malformed query parameter", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the registry is not running or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn list(
    State(node): State<AppState>,
    query: Result<Query<AgentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    if let Some(role) = &q.role
        && Role::parse(role).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "role: unknown role `{role}`; allowed: {}",
            Role::ALLOWED
        )));
    }
    let state = match &q.state {
        None => None,
        Some(s) => Some(Lifecycle::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: unknown state `{s}`; allowed: {}",
                Lifecycle::ALLOWED
            ))
        })?),
    };
    let filter = AgentFilter {
        role: q.role,
        capability: q.capability,
        domain: q.domain,
        state,
    };
    let registry = node
        .ctx
        .registry()
        .ok_or_else(|| ApiError::unavailable("the agent registry is not running"))?;
    let agents: Vec<AgentRecord> = ask(
        &registry,
        |reply| RegistryMsg::List(filter, reply),
        REGISTRY_TIMEOUT,
        "the agent registry",
    )
    .await?;
    Ok(Json(
        json!({"node": node.ctx.node, "count": agents.len(), "agents": agents}),
    ))
}
