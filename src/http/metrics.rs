//! `GET /metrics`: Prometheus text, plus the request-latency middleware.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
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

/// The `method` label: one of the standard methods, else `other`. Never the method as
/// sent: a client could send any token and so grow the metrics without bound.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", Method::as_str)
}

/// Records `ms_http_request_duration_seconds{route, method, status}`: the route is the
/// matched template (`/api/v1/tasks/{id}`, `unmatched` for none), never the raw path.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_a_fixed_set() {
        assert_eq!(method_label(&Method::POST), "POST");
        let odd = Method::from_bytes(b"X-ATTACK-12345").expect("a token");
        assert_eq!(method_label(&odd), "other");
    }
}
