//! `GET /metrics`: Prometheus text, plus the request-latency middleware.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition format (0.0.4)", body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are not enabled in this process (a plain-text line, not the JSON error shape)", body = String, content_type = "text/plain"),
    ),
)]
pub async fn render(State(node): State<AppState>) -> Response {
    let Some(handle) = &node.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n",
        )
            .into_response();
    };
    metrics::gauge!("ms_uptime_seconds").set(node.started.elapsed().as_secs_f64());
    metrics::gauge!("ms_actors").set(node.ctx.directory.len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Records `ms_http_request_duration_seconds{route, method, status}`.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "ms_http_request_duration_seconds",
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .record(start.elapsed().as_secs_f64());
    response
}
