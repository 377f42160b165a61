//! Cluster figures (DESIGN §11), each against a raw baseline measured in the same run:
//!
//! * `rpc`: a step sent to another node's executor agents over NATS request-reply
//!   (`ms.<cluster>.agents.execution.executor.execute`, the envelope and subject the
//!   Router's remote path uses; the node routes it to a local executor, which runs an
//!   `echo`) against a raw async-nats request-reply to a bare responder, same payload
//!   size, both through the same `nats-server`. Sequential latency (p50, p99) and the
//!   throughput of 64 concurrent requesters.
//! * `loss`: three nodes; one holding 24 tasks in flight is SIGKILLed. Time until a
//!   survivor's `/admin/cluster` shows it `down`, and until every one of its tasks has been
//!   claimed by a run on a survivor (lease epoch ≥ 3: taken over, then claimed), against
//!   the heartbeat interval.
//!
//! Needs `nats-server` (MS_TEST_NATS_SERVER, PATH or /usr/sbin) and a PostgreSQL superuser
//! URL (MS_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres), as the
//! tests do. Run: `cargo bench --bench cluster`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actors::remote::RemoteStep;
use actors::task::StepSpec;
use bytes::Bytes;
use futures::StreamExt;
use mister_smith::bridge::Envelope;
use mister_smith::bridge::agent_service::STEP;
use sqlx::Connection as _;
use sqlx::Executor as _;

const BIN: &str = env!("CARGO_BIN_EXE_mister-smith");
const CONCURRENCY: usize = 64;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn nats_binary() -> PathBuf {
    if let Ok(p) = std::env::var("MS_TEST_NATS_SERVER") {
        return p.into();
    }
    for p in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
    {
        let candidate = PathBuf::from(p).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "nats-server not found: install it (apt-get install nats-server) or set MS_TEST_NATS_SERVER"
    )
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // Reaped here: kill, then wait.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Bench {
    nats: String,
    _nats: Proc,
    db_server: String,
    db_name: String,
    db_url: String,
    dir: PathBuf,
    cluster: String,
}

impl Bench {
    async fn new(tag: &str) -> Bench {
        let dir = std::env::temp_dir().join(format!("ms-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        let port = free_port();
        let nats = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let url = format!("nats://127.0.0.1:{port}");
        for _ in 0..100 {
            if async_nats::connect(&url).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let db_server = std::env::var("MS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let db_name = format!("ms_bench_{tag}_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&db_server)
            .await
            .expect("PostgreSQL (set MS_TEST_POSTGRES_URL)");
        for sql in [
            format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"),
            format!("CREATE DATABASE {db_name}"),
        ] {
            conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
                .await
                .expect("creating the bench database");
        }
        let base = db_server
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&db_server);
        Bench {
            nats: url,
            _nats: Proc(nats),
            db_url: format!("{base}/{db_name}"),
            db_server,
            db_name,
            dir,
            cluster: format!("bench{}", std::process::id()),
        }
    }

    /// Starts a node and waits until it is ready; returns it with its HTTP and admin URLs.
    async fn node(&self, name: &str) -> (Proc, String, String) {
        let (http, admin) = (free_port(), free_port());
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let child = Proc(
            Command::new(BIN)
                .current_dir(&self.dir)
                .args([
                    "run",
                    "--node",
                    name,
                    "--nats",
                    &self.nats,
                    "--cluster",
                    &self.cluster,
                ])
                .args(["--database", &self.db_url])
                .args([
                    "--http",
                    &format!("127.0.0.1:{http}"),
                    "--admin",
                    &format!("127.0.0.1:{admin}"),
                ])
                .env("MISTER_SMITH__CLUSTER__COOKIE", "bench")
                .env(
                    "MISTER_SMITH__CLUSTER__LISTEN",
                    format!("127.0.0.1:{}", free_port()),
                )
                .env("MISTER_SMITH__DATABASE__MAX_CONNECTIONS", "4")
                .env("MISTER_SMITH__LOG__LEVEL", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting mister-smith"),
        );
        let (http, admin) = (
            format!("http://127.0.0.1:{http}"),
            format!("http://127.0.0.1:{admin}"),
        );
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        for _ in 0..600 {
            if let Ok(r) = client.get(format!("{http}/health/ready")).send().await
                && r.status().is_success()
            {
                return (child, http, admin);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {name} did not get ready; see {}", self.dir.display());
    }

    async fn close(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.db_server).await {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name);
            let _ = conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(drop))).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn count(db: &mut sqlx::PgConnection, q: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(q)
        .fetch_one(db)
        .await
        .expect("count")
}

fn pct(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

/// Sequential latencies (µs) of `n` requests, then requests/s of 64 concurrent requesters.
async fn measure(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
    n: usize,
    secs: f64,
) -> (f64, f64, f64) {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client
            .request(subject.to_string(), payload.clone())
            .await
            .expect("request");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, subject, payload) = (client.clone(), subject.to_string(), payload.clone());
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if client
                        .request(subject.clone(), payload.clone())
                        .await
                        .is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (pct(&mut lat, 0.5), pct(&mut lat, 0.99), rate)
}

async fn rpc(n: usize, secs: f64) {
    let bench = Bench::new("rpc").await;
    let (_node, _, _) = bench.node("b").await;
    let step = RemoteStep {
        task_id: "bench".into(),
        session: None,
        principal: None,
        step: serde_json::from_value::<StepSpec>(
            serde_json::json!({"id": "a", "tool": "echo", "args": {"text": "x"}}),
        )
        .expect("step"),
        input: None,
        timeout_ms: Some(10_000),
    };
    let payload = Envelope::new(STEP, "a", step).encode().expect("envelope");
    // The raw responder answers with as many bytes as it was sent, on a connection of its own.
    let responder = async_nats::connect(&bench.nats).await.expect("NATS");
    let mut sub = responder
        .queue_subscribe("bench.raw", "raw".into())
        .await
        .expect("subscribe");
    let answering = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = answering.publish(reply, m.payload).await;
            }
        }
    });
    let client = async_nats::connect(&bench.nats).await.expect("NATS");
    let agent = format!("ms.{}.agents.execution.executor.execute", bench.cluster);
    // The node needs a moment to have its agents registered; warm both paths.
    for _ in 0..200 {
        if client.request(agent.clone(), payload.clone()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    measure(&client, "bench.raw", payload.clone(), n / 10, 0.5).await;
    measure(&client, &agent, payload.clone(), n / 10, 0.5).await;
    let raw = measure(&client, "bench.raw", payload.clone(), n, secs).await;
    let ms = measure(&client, &agent, payload.clone(), n, secs).await;
    println!(
        "rpc ({} sequential requests, then {CONCURRENCY} requesters for {secs} s; payload {} B)",
        n,
        payload.len()
    );
    println!(
        "  raw async-nats request-reply   p50 {:>7.1} µs  p99 {:>7.1} µs  {:>8.0} req/s",
        raw.0, raw.1, raw.2
    );
    println!(
        "  agent request-reply (execute)  p50 {:>7.1} µs  p99 {:>7.1} µs  {:>8.0} req/s",
        ms.0, ms.1, ms.2
    );
    println!(
        "  ratio: p50 {:.2}× raw (target ≤ 1.5×), throughput {:.0} % of raw (target ≥ 60 %)",
        ms.0 / raw.0,
        100.0 * ms.2 / raw.2
    );
    drop(_node);
    bench.close().await;
}

async fn loss(rounds: usize) {
    const HEARTBEAT_MS: f64 = 250.0;
    let (mut detect, mut resume) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let bench = Bench::new(&format!("loss{round}")).await;
        let (n1, n2, n3) = tokio::join!(bench.node("n1"), bench.node("n2"), bench.node("n3"));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let task =
            serde_json::json!({"steps": [{"id": "a", "tool": "sleep", "args": {"ms": 60_000}}]});
        // Wait until the three see each other, then give n3 work in flight.
        loop {
            let view: serde_json::Value = client
                .get(format!("{}/admin/cluster", n1.2))
                .send()
                .await
                .expect("cluster")
                .json()
                .await
                .expect("json");
            let up = view["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["status"] == "up").count());
            if up == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..24 {
            let r = client
                .post(format!("{}/api/v1/tasks", n3.1))
                .json(&task)
                .send()
                .await
                .expect("submit");
            assert_eq!(r.status().as_u16(), 202);
        }
        let mut db = sqlx::PgConnection::connect(&bench.db_url)
            .await
            .expect("db");
        while count(
            &mut db,
            "SELECT COUNT(*) FROM tasks WHERE status = 'running'",
        )
        .await
            < 24
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut n3, _, _) = n3;
        let killed = Instant::now();
        n3.0.kill().expect("SIGKILL n3");
        let mut detected = None;
        loop {
            if detected.is_none() {
                let view: serde_json::Value = client
                    .get(format!("{}/admin/cluster", n1.2))
                    .send()
                    .await
                    .expect("cluster")
                    .json()
                    .await
                    .expect("json");
                if view["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["node"] == "n3" && m["status"] == "down")
                {
                    detected = Some(killed.elapsed());
                }
            }
            let moved = count(
                &mut db,
                "SELECT COUNT(*) FROM tasks WHERE owner <> 'n3' AND lease_epoch >= 3",
            )
            .await;
            if moved == 24 && detected.is_some() {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "tasks not taken over within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        detect.push(detected.expect("detected").as_secs_f64() * 1000.0);
        resume.push(killed.elapsed().as_secs_f64() * 1000.0);
        drop((n1, n2));
        bench.close().await;
    }
    let (d, r) = (pct(&mut detect, 0.5), pct(&mut resume, 0.5));
    println!("loss ({rounds} rounds; heartbeat every {HEARTBEAT_MS} ms, phi accrual, threshold 8)");
    println!(
        "  detected down      p50 {d:>6.0} ms  ({:.1} heartbeats; target < 3000 ms)  all: {detect:.0?}",
        d / HEARTBEAT_MS
    );
    println!(
        "  tasks running again p50 {r:>6.0} ms  ({:.1} heartbeats; target < 5000 ms)  all: {resume:.0?}",
        r / HEARTBEAT_MS
    );
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (n, secs, rounds) = if bench_mode {
        (3000, 5.0, 3)
    } else {
        (50, 0.2, 1)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        rpc(n, secs).await;
        loss(rounds).await;
    });
}
