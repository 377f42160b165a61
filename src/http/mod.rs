//! The API listener: health, metrics and `/api/v1`. Handlers only translate HTTP into
//! actor calls and back; logic lives in the actors.

pub mod agents;
pub mod auth;
pub mod error;
pub mod events_ws;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod owned;
pub mod sessions;
pub mod task_events;
pub mod task_output;
pub mod tasks;
pub mod turn_events;
pub mod verified;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::state::AppState;

/// The listener's routes. With `auth`, every `/api/v1` route but the OpenAPI document
/// needs a bearer token with its scope; health and metrics stay open (probes and scrapers
/// carry no tokens; metrics labels hold no task data).
pub fn router(
    state: AppState,
    body_limit: usize,
    auth: Option<std::sync::Arc<auth::Authenticator>>,
) -> Router {
    let mut api = Router::new()
        .route("/api/v1/agents", get(agents::list))
        .route("/api/v1/tasks", post(tasks::submit).get(tasks::list))
        .route("/api/v1/tasks/{id}", get(tasks::get))
        .route("/api/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/v1/tasks/{id}/events", get(task_events::stream))
        .route("/api/v1/events/ws", get(events_ws::serve))
        .route(
            "/api/v1/sessions",
            post(sessions::start).get(sessions::list),
        )
        .route("/api/v1/sessions/{id}", get(sessions::get))
        .route("/api/v1/sessions/{id}/turns", post(sessions::turn))
        .route("/api/v1/sessions/{id}/end", post(sessions::end))
        .route(
            "/api/v1/sessions/{id}/turns/{turn}/{decision}",
            post(sessions::decide),
        )
        .route(
            "/api/v1/sessions/{id}/turns/{turn}/events",
            get(turn_events::stream),
        )
        .route(
            "/api/v1/tasks/{id}/steps/{step}/output",
            get(task_output::get),
        );
    if let Some(auth) = auth {
        let ctx = state.ctx.clone();
        api = api.route_layer(axum::middleware::from_fn(move |req, next| {
            auth::require(auth.clone(), ctx.clone(), req, next)
        }));
    }
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::render))
        .merge(api)
        .route("/api/v1/openapi.json", get(openapi::serve))
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
