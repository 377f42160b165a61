//! `mister-smith load`: the load generator behind BENCHMARKS.md's whole-system figures.
//!
//! It submits trivial tasks over HTTP (one `echo` step by default; `--task` picks three
//! chained `echo` steps, or three chained `file` appends, whose attempts are recorded
//! before their effects) to one node, or spread over several,
//! from `--concurrency` connections for
//! `--duration` seconds (optionally paced to `--rate` per second), then waits until the
//! node reports them finished (`ms_tasks_finished_total` on `/metrics`), and prints
//! submissions/s, completions/s and submit latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::sync::Mutex;

use crate::client::{ClientError, POOL_IDLE, auth_refusal, challenge, refusal};

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The node's HTTP address; several, comma-separated, spread the submitters over the
    /// nodes of a cluster (completions are counted on all of them).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub http: Vec<String>,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to submit for.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Submissions per second across all submitters (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Before the load, measure the raw baseline on this database: plain multi-row
    /// INSERTs of task-sized rows (500 per statement and transaction), time-ordered ids.
    /// Use a scratch database on the same backend and disk as the node's.
    #[arg(long, value_name = "URL")]
    pub baseline: Option<String>,
    /// The task submitted: `echo` (one step), `echo3` (three chained echo steps: pure
    /// tools, the fast path), `file3` (three chained `file` appends to the node's
    /// workspace: each attempt committed before its append) or `agent` (an agent task
    /// with the `echo` tool: the node's LLM provider decides what runs;
    /// `scripts/bench-agent.sh` scripts one echo call and an answer, three steps),
    /// `planned3` (the description `load-plan`, which the Planner agent turns into a
    /// plan; the bench scripts the `echo3` plan) or `judged3` (`echo3` with an LLM
    /// judgement `load-judge` of each step's output, by a Critic agent).
    #[arg(long, default_value = "echo",
          value_parser = ["echo", "echo3", "file3", "agent", "planned3", "judged3"])]
    pub task: String,
    #[command(flatten)]
    pub bearer: crate::cli::BearerToken,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The body of one submitted task of kind `kind` (see [`LoadArgs::task`]).
fn task_body(kind: &str) -> serde_json::Value {
    let chain = |step: &dyn Fn(&str) -> serde_json::Value| {
        let steps: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut s = step(id);
                if i > 0 {
                    let previous = ["a", "b"][i - 1];
                    s["depends_on"] = json!([previous]);
                }
                s
            })
            .collect();
        json!({ "steps": steps })
    };
    match kind {
        "echo3" => chain(&|id| json!({"id": id, "tool": "echo", "args": {"text": "x"}})),
        "file3" => chain(&|id| {
            json!({"id": id, "tool": "file",
                   "args": {"op": "append", "path": "load.log", "content": "x\n"}})
        }),
        "agent" => json!({"agent": {"message": "load", "tools": ["echo"]}}),
        "planned3" => json!({"description": "load-plan"}),
        "judged3" => chain(&|id| {
            json!({"id": id, "tool": "echo", "args": {"text": "x"},
                   "expect": {"judge": "load-judge"}})
        }),
        _ => json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}),
    }
}

#[derive(Debug, serde::Serialize)]
pub struct LoadReport {
    pub submitted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub submit_secs: f64,
    pub completed: u64,
    pub complete_secs: f64,
    pub submitted_per_sec: f64,
    pub completed_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Raw rows/s of plain batched inserts, when `--baseline` was given.
    pub baseline_rows_per_sec: Option<f64>,
    /// completed/s ÷ baseline rows/s.
    pub ratio_to_baseline: Option<f64>,
}

/// Rows/s of plain batched inserts into a scratch table of `url`.
async fn baseline(url: &str) -> anyhow::Result<f64> {
    use crate::store::{Store, StoreOptions};
    const ROWS: usize = 50_000;
    const BATCH: usize = 500;
    let store = Store::connect(&StoreOptions {
        url: url.to_string(),
        max_connections: 1,
        connect_timeout: Duration::from_secs(10),
        // As durable as the node's default, so the two are compared like for like.
        sqlite_fsync: true,
    })
    .await?;
    let payload =
        json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]}).to_string();
    let ids: Vec<String> = (0..ROWS)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    macro_rules! run {
        ($pool:expr, $db:ty) => {{
            sqlx::query("DROP TABLE IF EXISTS ms_load_baseline").execute($pool).await?;
            sqlx::query("CREATE TABLE ms_load_baseline (id TEXT PRIMARY KEY, payload TEXT NOT NULL, created BIGINT NOT NULL)")
                .execute($pool)
                .await?;
            let started = Instant::now();
            for chunk in ids.chunks(BATCH) {
                let mut tx = $pool.begin().await?;
                let mut q = sqlx::QueryBuilder::<$db>::new("INSERT INTO ms_load_baseline (id, payload, created) ");
                q.push_values(chunk, |mut row, id| {
                    row.push_bind(id.clone()).push_bind(payload.clone()).push_bind(0i64);
                });
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
            }
            let secs = started.elapsed().as_secs_f64();
            sqlx::query("DROP TABLE ms_load_baseline").execute($pool).await?;
            secs
        }};
    }
    let secs = match &store {
        Store::Sqlite(pool) => run!(pool, sqlx::Sqlite),
        Store::Postgres(pool) => run!(pool, sqlx::Postgres),
    };
    store.close().await;
    Ok(ROWS as f64 / secs)
}

pub async fn run(args: &LoadArgs) -> anyhow::Result<String> {
    let bases: Vec<String> = args
        .http
        .iter()
        .map(|h| {
            if h.starts_with("http") {
                h.clone()
            } else {
                format!("http://{h}")
            }
        })
        .collect();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency)
        .pool_idle_timeout(POOL_IDLE)
        .build()?;
    let baseline_rows_per_sec = match &args.baseline {
        Some(url) => Some(baseline(url).await?),
        None => None,
    };
    let finished_before = finished(&client, &bases).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let counts = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    // The first refusal of the token stops the run: every later submission would fail too.
    let refused = Arc::new(Mutex::new(None::<ClientError>));
    let per_worker_gap =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate));
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..args.concurrency {
        let base = bases[i % bases.len()].clone();
        let (client, stop) = (client.clone(), stop.clone());
        let (latencies, counts, refused) = (latencies.clone(), counts.clone(), refused.clone());
        let kind = args.task.clone();
        let token = args.bearer.token.clone();
        workers.push(tokio::spawn(async move {
            let body = task_body(&kind);
            let (mut mine, mut ok, mut rejected, mut errors) = (Vec::new(), 0, 0, 0);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(gap) = per_worker_gap {
                    tokio::time::sleep_until(next.into()).await;
                    next += gap;
                }
                let t = Instant::now();
                let url = format!("{base}/api/v1/tasks");
                let mut request = client.post(&url).json(&body);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                match request.send().await {
                    Ok(r) if r.status().as_u16() == 202 => {
                        ok += 1;
                        mine.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(r) if r.status().as_u16() == 429 => rejected += 1,
                    Ok(r) if auth_refusal(r.status()) => {
                        let (status, challenge) = (r.status(), challenge(r.headers()));
                        let answer = r.json().await.unwrap_or_default();
                        let e =
                            refusal(url, status, challenge.as_deref(), &answer, token.is_some());
                        refused.lock().await.get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                        errors += 1;
                    }
                    _ => errors += 1,
                }
            }
            latencies.lock().await.extend(mine);
            let mut c = counts.lock().await;
            c.0 += ok;
            c.1 += rejected;
            c.2 += errors;
        }));
    }
    let submit_until = started + Duration::from_secs_f64(args.duration);
    while Instant::now() < submit_until && !stop.load(Ordering::Relaxed) {
        let left = submit_until.saturating_duration_since(Instant::now());
        tokio::time::sleep(Duration::from_millis(50).min(left)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    if let Some(e) = refused.lock().await.take() {
        return Err(e.into());
    }
    let submit_secs = started.elapsed().as_secs_f64();
    let (submitted, rejected, errors) = *counts.lock().await;
    // Wait for the node to finish what it accepted (bounded).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut done = finished(&client, &bases).await? - finished_before;
    while done < submitted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        done = finished(&client, &bases).await? - finished_before;
    }
    let complete_secs = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let report = LoadReport {
        submitted,
        rejected,
        errors,
        submit_secs,
        completed: done,
        complete_secs,
        submitted_per_sec: submitted as f64 / submit_secs,
        completed_per_sec: done as f64 / complete_secs,
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
        baseline_rows_per_sec,
        ratio_to_baseline: baseline_rows_per_sec.map(|b| done as f64 / complete_secs / b),
    };
    Ok(if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        format!(
            "submitted {} in {:.1}s ({:.0}/s), rejected {}, errors {}\ncompleted {} in {:.1}s ({:.0}/s)\nsubmit latency p50 {:.2} ms, p99 {:.2} ms\n",
            report.submitted,
            report.submit_secs,
            report.submitted_per_sec,
            report.rejected,
            report.errors,
            report.completed,
            report.complete_secs,
            report.completed_per_sec,
            report.latency_p50_ms,
            report.latency_p99_ms
        ) + &match (report.baseline_rows_per_sec, report.ratio_to_baseline) {
            (Some(b), Some(r)) => format!(
                "raw baseline: {b:.0} rows/s in 500-row INSERTs; completed/s is {r:.3}× that\n"
            ),
            _ => String::new(),
        }
    })
}

/// Tasks the nodes have finished, from their metrics.
async fn finished(client: &reqwest::Client, bases: &[String]) -> anyhow::Result<u64> {
    let mut total = 0.0;
    for base in bases {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        total += text
            .lines()
            .filter(|l| l.starts_with("ms_tasks_finished_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total as u64)
}
