//! `GET /api/v1/agents`: the registries' view across the cluster (each node answers for
//! its own agents over NATS), filtered by role, capability, domain, state.

use std::collections::BTreeMap;
use std::time::Duration;

use actors::agent::Lifecycle;
use actors::registry::{AgentFilter, AgentRecord, RegistryMsg};
use actors::roles::Role;
use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bridge::remote_admin::{self, AdminRequest};
use crate::http::error::{ApiError, ask};
use crate::state::{AppState, NodeState};

const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long another node may take to list its agents; one that does not answer is named
/// in `nodes` and left out.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Lists the agents of every node of the cluster (or of this node, when not clustered),
/// optionally filtered.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    params(AgentQuery),
    responses(
        (status = 200, description = "The agents that match, of every node that answered", body = crate::http::openapi::AgentList),
        (status = 400, description = "`bad_request`: an unknown role or state, or an unknown or malformed query parameter", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the registry is not running or did not answer", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn list(
    State(node): State<AppState>,
    query: Result<Query<AgentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let asked: BTreeMap<String, String> = [
        ("role", q.role),
        ("capability", q.capability),
        ("domain", q.domain),
        ("state", q.state),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
    .collect();
    let mut body = local(&node, &asked).await?;
    let (Some(bridge), Some(view)) = (node.bridge.get(), node.cluster.get()) else {
        return Ok(Json(body));
    };
    // The other nodes that are up answer for themselves, side by side.
    let peers: Vec<String> = view
        .get()
        .members
        .into_iter()
        .filter(|m| m.status == "up" || m.status == "draining")
        .map(|m| m.node)
        .collect();
    let request = AdminRequest {
        verb: "agents".into(),
        query: asked,
        ..Default::default()
    };
    let mut agents = std::mem::take(&mut body["agents"]);
    let mut nodes = serde_json::Map::new();
    nodes.insert(node.ctx.node.clone(), json!("ok"));
    for (peer, answer) in remote_admin::ask_all(bridge, &peers, &request, PEER_TIMEOUT).await {
        let status = match answer {
            Ok(reply) if reply.status == 200 => {
                if let (Some(all), Some(more)) =
                    (agents.as_array_mut(), reply.body["agents"].as_array())
                {
                    all.extend(more.iter().cloned());
                }
                "ok".to_string()
            }
            Ok(reply) => format!(
                "answered {}: {}",
                reply.status, reply.body["error"]["message"]
            ),
            Err(e) => e.to_string(),
        };
        nodes.insert(peer, json!(status));
    }
    let count = agents.as_array().map_or(0, Vec::len);
    Ok(Json(json!({
        "node": node.ctx.node,
        "count": count,
        "agents": agents,
        "nodes": nodes,
    })))
}

/// This node's agents that match `query` (`role`, `capability`, `domain`, `state`), as
/// the API and the cluster's admin requests list them.
pub async fn local(node: &NodeState, query: &BTreeMap<String, String>) -> Result<Value, ApiError> {
    if let Some(role) = query.get("role")
        && Role::parse(role).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "role: unknown role `{role}`; allowed: {}",
            Role::ALLOWED
        )));
    }
    let state = match query.get("state") {
        None => None,
        Some(s) => Some(Lifecycle::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: unknown state `{s}`; allowed: {}",
                Lifecycle::ALLOWED
            ))
        })?),
    };
    let filter = AgentFilter {
        role: query.get("role").cloned(),
        capability: query.get("capability").cloned(),
        domain: query.get("domain").cloned(),
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
    Ok(json!({"node": node.ctx.node, "count": agents.len(), "agents": agents}))
}
