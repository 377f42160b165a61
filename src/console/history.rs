//! What the console's charts draw: this node's own metrics over the last [`WINDOW`],
//! sampled every [`EVERY`] from the Prometheus registry the node already keeps (so the
//! charts and `/metrics` can never disagree), kept as points: tasks/s by outcome, queue
//! depth, running tasks, step latency percentiles and restarts per supervisor in the
//! interval. Asked for a node of the cluster, the node answers over NATS like any admin
//! request (`history`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

/// How often a sample is taken.
pub const EVERY: Duration = Duration::from_secs(2);
/// How far back the points go.
pub const WINDOW: Duration = Duration::from_secs(600);

/// One interval between two samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub at_ms: i64,
    pub tasks_per_sec: BTreeMap<String, f64>,
    pub queued: f64,
    pub running: f64,
    /// Step latency percentiles of the steps that ended in the interval (0 when none did).
    pub step_p50_ms: f64,
    pub step_p99_ms: f64,
    /// Restarts in the interval, per supervisor.
    pub restarts: BTreeMap<String, f64>,
}

/// The totals of one sample, read from the registry's text.
#[derive(Debug, Default, Clone)]
struct Sample {
    at_ms: i64,
    finished: BTreeMap<String, f64>,
    queued: f64,
    running: f64,
    restarts: BTreeMap<String, f64>,
    /// Cumulative step-duration buckets (upper bound in seconds, count), summed over roles.
    steps: BTreeMap<u64, f64>,
}

#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last: Option<Sample>,
    points: VecDeque<Point>,
}

impl History {
    /// Samples `handle` every [`EVERY`] until the task is dropped (the node's life).
    pub async fn run(self: std::sync::Arc<Self>, handle: PrometheusHandle) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let sample = parse(&handle.render(), actors::task::store::now_ms());
            self.take(sample);
        }
    }

    fn take(&self, sample: Sample) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = &inner.last {
            let point = between(last, &sample);
            inner.points.push_back(point);
            let keep = (WINDOW.as_secs() / EVERY.as_secs()) as usize;
            while inner.points.len() > keep {
                inner.points.pop_front();
            }
        }
        inner.last = Some(sample);
    }

    pub fn points(&self) -> Vec<Point> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.points.iter().cloned().collect()
    }
}

/// The point of the interval from `a` to `b`.
fn between(a: &Sample, b: &Sample) -> Point {
    let secs = ((b.at_ms - a.at_ms) as f64 / 1000.0).max(0.001);
    let delta = |x: &BTreeMap<String, f64>, y: &BTreeMap<String, f64>, per: f64| {
        y.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    ((v - x.get(k).copied().unwrap_or(0.0)) / per).max(0.0),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let buckets: Vec<(f64, f64)> = b
        .steps
        .iter()
        .map(|(le, n)| {
            let before = a.steps.get(le).copied().unwrap_or(0.0);
            (f64::from_bits(*le), (n - before).max(0.0))
        })
        .collect();
    Point {
        at_ms: b.at_ms,
        tasks_per_sec: delta(&a.finished, &b.finished, secs),
        queued: b.queued,
        running: b.running,
        step_p50_ms: percentile(&buckets, 0.50) * 1000.0,
        step_p99_ms: percentile(&buckets, 0.99) * 1000.0,
        restarts: delta(&a.restarts, &b.restarts, 1.0),
    }
}

/// The upper bound of the bucket holding quantile `q` of cumulative `buckets` (sorted by
/// bound; the last one `+Inf`, reported as the largest finite bound).
fn percentile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let finite_max = buckets
        .iter()
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
        .fold(0.0, f64::max);
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(
            finite_max,
            |(le, _)| if le.is_finite() { *le } else { finite_max },
        )
}

/// Reads the series the charts need from the registry's text format.
fn parse(text: &str, at_ms: i64) -> Sample {
    let mut s = Sample {
        at_ms,
        ..Sample::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series
            .split_once('{')
            .map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
        let label = |key: &str| {
            labels.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_string())
            })
        };
        match name {
            "ms_tasks_finished_total" => {
                *s.finished
                    .entry(label("status").unwrap_or_default())
                    .or_default() += value;
            }
            "ms_tasks_queued" => s.queued = value,
            "ms_tasks_running" => s.running = value,
            "ms_supervisor_restarts_total" => {
                *s.restarts
                    .entry(label("supervisor").unwrap_or_default())
                    .or_default() += value;
            }
            "ms_step_duration_seconds_bucket" => {
                let le = label("le").and_then(|le| le.parse::<f64>().ok());
                if let Some(le) = le {
                    *s.steps.entry(le.to_bits()).or_default() += value;
                }
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = r#"# TYPE ms_tasks_finished_total counter
ms_tasks_finished_total{status="succeeded"} 10
ms_tasks_finished_total{status="failed"} 1
ms_tasks_queued 4
ms_tasks_running 2
ms_supervisor_restarts_total{supervisor="orchestration"} 1
ms_step_duration_seconds_bucket{role="executor",le="0.001"} 5
ms_step_duration_seconds_bucket{role="executor",le="0.01"} 9
ms_step_duration_seconds_bucket{role="executor",le="+Inf"} 10
"#;
    const T1: &str = r#"ms_tasks_finished_total{status="succeeded"} 30
ms_tasks_finished_total{status="failed"} 1
ms_tasks_queued 0
ms_tasks_running 1
ms_supervisor_restarts_total{supervisor="orchestration"} 3
ms_step_duration_seconds_bucket{role="executor",le="0.001"} 105
ms_step_duration_seconds_bucket{role="executor",le="0.01"} 109
ms_step_duration_seconds_bucket{role="worker",le="0.01"} 100
ms_step_duration_seconds_bucket{role="executor",le="+Inf"} 110
ms_step_duration_seconds_bucket{role="worker",le="+Inf"} 100
"#;

    #[test]
    fn a_point_is_what_changed_between_two_samples() {
        let history = History::default();
        history.take(parse(T0, 0));
        assert!(history.points().is_empty(), "one sample is no interval");
        history.take(parse(T1, 2_000));
        let p = &history.points()[0];
        assert_eq!(p.tasks_per_sec["succeeded"], 10.0);
        assert_eq!(p.tasks_per_sec["failed"], 0.0);
        assert_eq!((p.queued, p.running), (0.0, 1.0));
        assert_eq!(p.restarts["orchestration"], 2.0);
        // 200 steps in the interval: 100 under 1 ms (executor), 100 under 10 ms (worker).
        assert_eq!(p.step_p50_ms, 1.0);
        assert_eq!(p.step_p99_ms, 10.0);
    }

    #[test]
    fn only_the_window_is_kept() {
        let history = History::default();
        let keep = (WINDOW.as_secs() / EVERY.as_secs()) as usize;
        for i in 0..keep + 5 {
            history.take(parse(T0, i as i64 * 2_000));
        }
        assert_eq!(history.points().len(), keep);
    }
}
