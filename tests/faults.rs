//! The fault suite (DESIGN §5, §10; issue 9): real processes (`mister-smith` nodes,
//! `nats-server`, PostgreSQL, SQLite), each scenario under load, each checked against the
//! same invariants.
//!
//! Load: workers submit `file` append → `sleep` (0.2–0.5 s) → `file` append tasks to the
//! live nodes for the whole fault. Every node of a scenario shares one `file` workspace,
//! and each append writes a line naming the task's marker and the step, so the lines count
//! the executions of each step wherever it ran.
//!
//! Invariants, checked by one checker (`common::faults::check`) after the fault is healed:
//! 1. accepted = finished: every task that got 202 ends within 60 s of the heal, and ends
//!    `succeeded` (an infrastructure fault is never a task failure);
//! 2. none stuck: no task left `queued`/`planning`/`running`, no step left `running` in a
//!    final task;
//! 3. one recorded result per step: at most one `step.succeeded` in the trace and at most
//!    one passing attempt;
//! 4. every side effect matched by a recorded attempt: for each (task, step) the lines in
//!    the workspace are at most the attempts recorded. Executions, attempts, double and
//!    unrecorded executions are printed for every scenario.
//!
//! Scenarios (three PostgreSQL-backed nodes on a nats-server of the test unless said):
//! - `sigkill`: one node SIGKILLed; also: both survivors judge it down and its unfinished
//!   tasks are resumed elsewhere (detection and resume times printed).
//! - `pause`: one node SIGSTOPped for 10 s, then SIGCONT; also: the woken node takes over
//!   nothing (`tasks_taken_over` and `ms_cluster_tasks_taken_over_total` stay 0).
//! - `nats_stall`: one node's NATS connection stalls silently for 10 s (a proxy keeps the
//!   sockets open and forwards no byte); also: nobody takes over anything and every task
//!   stays with the node that accepted it (the node was cut from NATS, not the database).
//! - `nats_reset`: the proxy closes that node's NATS connections and refuses new ones for
//!   10 s; also: no takeover, as for the stall.
//! - `nats_restart`: the nats-server stopped for 5 s and started again; also: no takeover.
//! - `pg_connections_killed`: every database connection terminated every 0.7 s for 8 s.
//! - `pg_refused`: the database refuses connections for 5 s (open ones terminated);
//!   submissions meanwhile may get 503 (not accepted, so not counted).
//! - `sqlite_sigkill`: a single SQLite node without NATS, SIGKILLed under 64-way load and
//!   started again on the same directory, three times over.
//! - `no_nats_node`: two clustered nodes with tasks in flight, and a third node started
//!   without `--nats` on their database; also: it takes none of their tasks.
//!
//! No timing is asserted: deadlines are generous waits, durations are printed.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{cluster_name, metric};
use common::faults::load::Load;
use common::faults::{
    Node, Report, WORKSPACE_ENV, check, short, start_cluster, started_by, taken_over, targets,
    unfinished_of,
};
use common::nats::{NatsServer, TcpProxy};
use common::tasks::eventually_within;
use common::{Launch, PgDatabase, TestNode, postgres_database, temp_dir};
use nix::sys::signal::Signal;
use tempfile::TempDir;

/// Tasks accepted before a fault is injected.
const WARMUP: usize = 20;
/// Load workers on a cluster and the pause of each between submissions.
const WORKERS: usize = 3;
const PAUSE: Duration = Duration::from_millis(100);
/// How long the load goes on after the heal.
const AFTER: Duration = Duration::from_secs(3);

const NO_TAKEOVER: &str = "5 no takeover";
const KEPT: &str = "6 a live node keeps its tasks";

/// Three nodes `n1`, `n2`, `n3` of one cluster, `n3` on NATS through a proxy of the test.
struct Scenario {
    name: &'static str,
    nats: NatsServer,
    proxy: TcpProxy,
    db: PgDatabase,
    workspace: TempDir,
    nodes: Vec<Node>,
}

impl Scenario {
    async fn start(name: &'static str) -> Scenario {
        let nats = NatsServer::spawn().await;
        let proxy = TcpProxy::start(nats.addr()).await;
        let db = postgres_database().await;
        let workspace = temp_dir();
        let cluster = cluster_name(name);
        let members = [
            ("n1", nats.url()),
            ("n2", nats.url()),
            ("n3", proxy.nats_url()),
        ];
        let nodes = start_cluster(&cluster, &db, &members, workspace.path()).await;
        Scenario {
            name,
            nats,
            proxy,
            db,
            workspace,
            nodes,
        }
    }

    fn load(&self) -> Load {
        Load::start(targets(&self.nodes), WORKERS, PAUSE)
    }

    /// Lets the load run on for [`AFTER`], stops it, and checks the invariants reading
    /// through `readers`.
    async fn finish_load(&self, load: Load, readers: &[&Node], healed: Instant) -> Report {
        tokio::time::sleep(AFTER).await;
        let submissions = load.stop().await;
        let readers: Vec<&TestNode> = readers.iter().map(|n| &n.process).collect();
        check(
            self.name,
            &readers,
            self.workspace.path(),
            &submissions,
            healed,
        )
        .await
    }

    fn all(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }

    /// No node took anything over, and every task is still owned (and was only ever run)
    /// by the node that accepted it.
    async fn require_no_takeover(&self, report: &mut Report) {
        for node in &self.nodes {
            let taken = taken_over(node).await;
            report.require(NO_TAKEOVER, taken == 0, || {
                format!("{} took over {taken} tasks", node.name)
            });
        }
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        require_kept(report, &names);
    }
}

/// Every task accepted by one of `nodes` is owned by it and was started by it alone.
fn require_kept(report: &mut Report, nodes: &[&str]) {
    let mut moved = Vec::new();
    for (id, by) in &report.accepted_by {
        if !nodes.contains(&by.as_str()) {
            continue;
        }
        let Some(task) = report.tasks.get(id) else {
            continue; // lost: invariant 1 says so
        };
        if task["owner"] != by.as_str() || started_by(task).iter().any(|n| n != by) {
            moved.push(format!("task {id} accepted by {by}: {}", short(task)));
        }
    }
    moved.sort();
    for m in moved {
        report.violate(KEPT, m);
    }
}

/// Polls `probe` until it holds, for at most `deadline`; how long it took, or `None`.
async fn within<F, Fut>(deadline: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `node` sees every one of `peers` as `status`.
async fn sees(node: &Node, peers: &[&str], status: &str) -> bool {
    let view = common::cluster::cluster_view(node).await;
    let members = view["members"].as_array().cloned().unwrap_or_default();
    peers.iter().all(|p| {
        members
            .iter()
            .any(|m| m["node"] == *p && m["status"] == status)
    })
}

const DETECTION_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill() {
    let mut s = Scenario::start("sigkill").await;
    let load = s.load();
    load.wait_accepted(WARMUP).await;
    eventually_within(
        DETECTION_DEADLINE,
        "n2 holding unfinished tasks",
        || async {
            let held = unfinished_of(&s.db, "n2").await;
            if held.len() >= 3 {
                Ok(())
            } else {
                Err(format!("{held:?}"))
            }
        },
    )
    .await;
    load.set_targets(targets([&s.nodes[0], &s.nodes[2]]));
    s.nodes[1].signal(Signal::SIGKILL);
    s.nodes[1].wait_exit().await;
    let killed = Instant::now();
    let orphans = unfinished_of(&s.db, "n2").await;

    let (n1, n3) = (&s.nodes[0], &s.nodes[2]);
    // Times since the kill.
    let mut detected = Vec::new();
    for survivor in [n1, n3] {
        let seen = within(DETECTION_DEADLINE, || sees(survivor, &["n2"], "down")).await;
        detected.push(seen.map(|_| killed.elapsed()));
    }
    let resumed = within(DETECTION_DEADLINE, || async {
        unfinished_of(&s.db, "n2").await.is_empty()
    })
    .await
    .map(|_| killed.elapsed());
    eprintln!(
        "sigkill: {} unfinished on n2 when killed; seen down by n1, n3 {detected:?} after \
         the kill; none left on n2 {resumed:?} after the kill",
        orphans.len()
    );
    // Ten seconds of load after the kill in all.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed())).await;
    let mut report = s.finish_load(load, &[n1, n3], killed).await;

    report.require("5 detection", detected.iter().all(Option::is_some), || {
        format!("n2 seen down by n1, n3 after {detected:?}")
    });
    report.require("6 resume", resumed.is_some(), || {
        format!(
            "n2 still owns unfinished tasks 30 s after the kill: {:?}",
            orphans
        )
    });
    report.require("6 resume", !orphans.is_empty(), || {
        "n2 held no unfinished task when killed: nothing to resume".into()
    });
    for id in &orphans {
        let owner = report.tasks.get(id).map(|t| t["owner"].clone());
        report.require(
            "6 resume",
            owner.as_ref().is_some_and(|o| o != "n2"),
            || format!("n2's task {id} ended owned by {owner:?}"),
        );
    }
    require_kept(&mut report, &["n1", "n3"]);
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause() {
    let s = Scenario::start("pause").await;
    let load = s.load();
    load.wait_accepted(WARMUP).await;
    let sleeper = &s.nodes[2];
    load.set_targets(targets([&s.nodes[0], &s.nodes[1]]));
    sleeper.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(10)).await;
    sleeper.signal(Signal::SIGCONT);
    let healed = Instant::now();
    load.set_targets(targets(&s.nodes));
    let back = within(DETECTION_DEADLINE, || sees(sleeper, &["n1", "n2"], "up")).await;
    eprintln!("pause: n3 woke and saw n1, n2 up after {back:?}");
    let mut report = s.finish_load(load, &s.all(), healed).await;

    let taken = taken_over(sleeper).await;
    let counted = metric(sleeper, "ms_cluster_tasks_taken_over_total").await;
    report.require(NO_TAKEOVER, taken == 0 && counted == 0.0, || {
        format!("the woken n3 took over {taken} tasks (metric {counted})")
    });
    require_kept(&mut report, &["n1", "n2"]);
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stall() {
    let s = Scenario::start("stall").await;
    let load = s.load();
    load.wait_accepted(WARMUP).await;
    s.proxy.stall();
    tokio::time::sleep(Duration::from_secs(10)).await;
    s.proxy.resume();
    let healed = Instant::now();
    let mut report = s.finish_load(load, &s.all(), healed).await;
    s.require_no_takeover(&mut report).await;
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_reset() {
    let s = Scenario::start("reset").await;
    let load = s.load();
    load.wait_accepted(WARMUP).await;
    s.proxy.cut();
    tokio::time::sleep(Duration::from_secs(10)).await;
    s.proxy.heal();
    let healed = Instant::now();
    let mut report = s.finish_load(load, &s.all(), healed).await;
    s.require_no_takeover(&mut report).await;
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart() {
    let mut s = Scenario::start("restart").await;
    let load = s.load();
    load.wait_accepted(WARMUP).await;
    s.nats.stop().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.nats.start().await;
    let healed = Instant::now();
    let mut report = s.finish_load(load, &s.all(), healed).await;
    s.require_no_takeover(&mut report).await;
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_connections_killed() {
    let s = Scenario::start("pgkill").await;
    let load = s.load();
    load.wait_accepted(WARMUP).await;
    let start = Instant::now();
    let (mut rounds, mut killed) = (0, 0);
    while start.elapsed() < Duration::from_secs(8) {
        killed += s.db.terminate_backends().await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let healed = Instant::now();
    eprintln!("pg_connections_killed: {killed} connections terminated in {rounds} rounds");
    let mut report = s.finish_load(load, &s.all(), healed).await;
    report.require("5 fault injected", killed > 0, || {
        "no connection was terminated".into()
    });
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_refused() {
    let s = Scenario::start("pgrefused").await;
    let load = s.load();
    load.wait_accepted(WARMUP).await;
    s.db.set_reachable(false).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.db.set_reachable(true).await;
    let healed = Instant::now();
    let report = s.finish_load(load, &s.all(), healed).await;
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill() {
    let workspace = temp_dir();
    let ws = workspace.path().to_str().expect("a UTF-8 path").to_string();
    let solo = |dir: Option<TempDir>| {
        let launch = Launch::new()
            .args(&["--node", "solo"])
            .env(WORKSPACE_ENV, &ws);
        match dir {
            Some(dir) => launch.in_dir(dir),
            None => launch,
        }
    };
    let mut node = solo(None).start().await;
    let load = Load::start(Vec::new(), 64, Duration::from_millis(20));
    // Killed three times, each with the writer behind and many steps in flight.
    for _ in 0..3 {
        load.set_targets(vec![("solo".into(), node.http_url())]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        load.set_targets(Vec::new());
        node.signal(Signal::SIGKILL);
        node.wait_exit().await;
        node = solo(Some(node.into_dir())).start().await;
    }
    let healed = Instant::now();
    load.set_targets(vec![("solo".into(), node.http_url())]);
    tokio::time::sleep(AFTER).await;
    let submissions = load.stop().await;
    let report = check(
        "sqlite_sigkill",
        &[&node],
        workspace.path(),
        &submissions,
        healed,
    )
    .await;
    report.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_nats_node() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let workspace = temp_dir();
    let cluster = cluster_name("nonats");
    let members = [("n1", nats.url()), ("n2", nats.url())];
    let nodes = start_cluster(&cluster, &db, &members, workspace.path()).await;
    let load = Load::start(targets(&nodes), WORKERS, PAUSE);
    load.wait_accepted(WARMUP).await;
    let in_flight = eventually_within(DETECTION_DEADLINE, "tasks in flight", || async {
        let held = unfinished_of(&db, "n1").await.len() + unfinished_of(&db, "n2").await.len();
        if held >= 3 {
            Ok(held)
        } else {
            Err(format!("{held} unfinished"))
        }
    })
    .await;
    let ws = workspace.path().to_str().expect("a UTF-8 path");
    let lone = Launch::new()
        .args(&["--node", "lone", "--database", &db.url])
        .envs(&[
            (WORKSPACE_ENV, ws),
            ("MISTER_SMITH__DATABASE__MAX_CONNECTIONS", "4"),
        ])
        .start()
        .await;
    let started = Instant::now();
    eprintln!("no_nats_node: {in_flight} tasks of n1, n2 unfinished as `lone` started");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let readers: Vec<&Node> = nodes.iter().collect();
    let submissions = load.stop().await;
    let readers: Vec<&TestNode> = readers.iter().map(|n| &n.process).collect();
    let mut report = check(
        "no_nats_node",
        &readers,
        workspace.path(),
        &submissions,
        started,
    )
    .await;
    let mut took = Vec::new();
    for (id, task) in &report.tasks {
        let ran = task["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["attempts"].as_array().into_iter().flatten())
            .any(|a| a["node"] == "lone");
        if task["owner"] == "lone" || started_by(task).iter().any(|n| n == "lone") || ran {
            took.push(format!("task {id}: {}", short(task)));
        }
    }
    took.sort();
    for t in took {
        report.violate(NO_TAKEOVER, format!("`lone` (no NATS) took {t}"));
    }
    require_kept(&mut report, &["n1", "n2"]);
    drop(lone);
    report.finish();
}
