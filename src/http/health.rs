//! Liveness and readiness. Ready means: storage migrated and answering, supervision tree
//! up, and (when NATS is configured) the bus reached once; a bus lost later is `degraded`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::bridge::BusState;
use crate::state::AppState;

/// How long readiness waits for the database before calling it down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "health_live",
    tag = "health",
    responses((status = 200, description = "The process is up", body = crate::http::openapi::Live)),
)]
pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "health_ready",
    tag = "health",
    responses(
        (status = 200, description = "Storage answers and the supervision tree is up", body = crate::http::openapi::Ready),
        (status = 503, description = "Not ready; `checks` says what is not up", body = crate::http::openapi::Ready),
    ),
)]
pub async fn ready(State(node): State<AppState>) -> (StatusCode, Json<Value>) {
    let storage = match node.store.get() {
        None => "starting".to_string(),
        Some(store) => match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => "up".to_string(),
            Ok(Err(e)) => format!("down: {e}"),
            Err(_) => "down: no answer within 2s".to_string(),
        },
    };
    // The ping can succeed between two failed batches (a flapping connection): the
    // writer's own last word says whether accepted work is being recorded.
    let writes = match node.tasks.get().and_then(|t| t.write_failing()) {
        None => "ok".to_string(),
        Some(e) => format!("failing, retrying: {e}"),
    };
    let lease = node.ctx.lease().describe();
    let tree = if node.root().is_some() { "up" } else { "down" };
    // A bus lost after it was up degrades the node (it serves what it can locally);
    // one never reached yet keeps it not ready.
    let bus = match node.bridge.get().map(|b| b.state()) {
        None => "not configured",
        Some(BusState::Connected) => "up",
        Some(BusState::Degraded) => "degraded: NATS disconnected, reconnecting",
        Some(BusState::Connecting) => "connecting",
    };
    let ready = storage == "up" && writes == "ok" && tree == "up" && bus != "connecting";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let label = match (ready, bus.starts_with("degraded")) {
        (false, _) => "not_ready",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let body = json!({
        "status": label,
        "node": node.ctx.node,
        "checks": {"storage": storage, "writes": writes, "lease": lease, "supervision": tree, "bus": bus},
    });
    (status, Json(body))
}
