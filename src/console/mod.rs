//! The operator console (DESIGN §7) served by the admin listener at `/console`: a page,
//! its stylesheet and its ES modules, built into the binary (`include_str!`): no build
//! step beyond cargo, nothing fetched from elsewhere, no third-party code. The assets hold
//! no data, so they are served without a token; everything the page shows comes from the
//! admin routes and the event feed, with the admin token the page asks for once (kept in
//! the tab's sessionStorage).
//!
//! Views (one module each under `assets/`): cluster, supervision tree (with stop, kill,
//! restart and drain), tasks (list, submit, a task's step graph and live trace, cancel),
//! sessions (conversation, tool calls, approvals), charts ([`history`]) and events.

pub mod history;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

/// Every asset: path, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/console", HTML, include_str!("assets/index.html")),
    ("/console/", HTML, include_str!("assets/index.html")),
    ("/console/app.css", CSS, include_str!("assets/app.css")),
    ("/console/api.js", JS, include_str!("assets/api.js")),
    ("/console/app.js", JS, include_str!("assets/app.js")),
    ("/console/cluster.js", JS, include_str!("assets/cluster.js")),
    ("/console/tree.js", JS, include_str!("assets/tree.js")),
    ("/console/tasks.js", JS, include_str!("assets/tasks.js")),
    (
        "/console/sessions.js",
        JS,
        include_str!("assets/sessions.js"),
    ),
    ("/console/charts.js", JS, include_str!("assets/charts.js")),
    ("/console/events.js", JS, include_str!("assets/events.js")),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Only this origin's scripts, styles and connections (the feed's WebSocket included);
/// never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// The console's routes (open: see the module's doc).
pub fn routes() -> Router<AppState> {
    ASSETS
        .iter()
        .fold(Router::new(), |router, &(path, kind, body)| {
            router.route(
                path,
                get(move || async move {
                    (
                        [
                            (header::CONTENT_TYPE, kind),
                            (header::CACHE_CONTROL, "no-cache"),
                            (header::CONTENT_SECURITY_POLICY, CSP),
                            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                            (header::X_FRAME_OPTIONS, "DENY"),
                            (header::REFERRER_POLICY, "no-referrer"),
                        ],
                        body,
                    )
                        .into_response()
                }),
            )
        })
}
