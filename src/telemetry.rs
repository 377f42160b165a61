//! Logs and metrics, set up in one place.
//!
//! Logs go to stderr as text or JSON (`log.format`), filtered by `RUST_LOG` or `log.level`.
//! Metrics are recorded through the `metrics` facade into a Prometheus recorder whose
//! handle renders `GET /metrics`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global log subscriber. Safe to call more than once (later calls are no-ops).
pub fn init_logs(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the global metrics recorder and returns the handle that renders it.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .set_buckets_for_metric(
            Matcher::Full("ms_store_batch_size".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "ms_supervisor_restarts_total",
        "Children restarted, per supervisor"
    );
    describe_counter!(
        "ms_supervisor_child_failures_total",
        "Children that exited abnormally, per supervisor"
    );
    describe_counter!(
        "ms_supervisor_escalations_total",
        "Supervisors that exceeded their restart intensity"
    );
    describe_gauge!("ms_agents", "Agents per lifecycle state");
    describe_gauge!(
        "ms_events_ws_clients",
        "Event feed WebSocket clients connected"
    );
    describe_gauge!(
        "ms_events_feed_shared_readers",
        "Shared readers of live events running (1 while a broad feed client is connected)"
    );
    describe_counter!(
        "ms_events_feed_handovers_total",
        "Feed clients handed over from their own replay to the shared reader"
    );
    describe_gauge!("ms_uptime_seconds", "Seconds since this node started");
    describe_gauge!("ms_actors", "Live actors in this node's directory");
    describe_histogram!("ms_store_batch_size", "Writes per group-commit transaction");
    describe_histogram!(
        "ms_step_duration_seconds",
        "Time a step's tool ran on an agent of this node, per role"
    );
    describe_histogram!(
        "ms_store_batch_seconds",
        "Time to apply and commit one group-commit transaction"
    );
    describe_histogram!(
        "ms_http_request_duration_seconds",
        "HTTP request latency, per route and status"
    );
}
