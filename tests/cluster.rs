//! The cluster with real processes (DESIGN §5–§6): nodes of one cluster on one NATS
//! server (a `nats-server -js` of each test) and one PostgreSQL database form a cluster
//! and link with ractor_cluster; a node SIGKILLed under load, or cut off from NATS, is
//! judged down and its unfinished tasks finish on the survivors, each step recorded once;
//! a NATS restart degrades the nodes without anyone taking a live node's tasks; a wrong
//! cookie is refused and counted; garbage on the membership subjects is counted and
//! logged, and changes nothing else.
//!
//! The partition is made with a TCP proxy between one node and NATS (no root needed).
//! Timings are printed, never asserted: the machine is small and the tests of this file
//! run side by side.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{CLUSTER_DEADLINE, COOKIE, Member, Node, cluster_name, cluster_view, metric};
use common::nats::{NatsServer, TcpProxy};
use common::tasks::{
    TASK_DEADLINE, attempts, event_kinds, events, eventually_within, get_task, submit_ok, summary,
    wait_final,
};
use common::{PgDatabase, TestNode, http_client, postgres_database};
use futures::future::join_all;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const FINAL: &str = "('succeeded', 'failed', 'cancelled', 'timed_out')";

/// Starts a node of `cluster` called `name` on the NATS at `nats` and the database `db`.
async fn start_node(cluster: &str, db: &PgDatabase, name: &str, nats: &str, cookie: &str) -> Node {
    let process = Member::new(cluster, db, nats.to_string(), name)
        .cookie(cookie)
        .start()
        .await;
    Node {
        name: name.to_string(),
        process,
    }
}

/// Starts the nodes side by side, each on its NATS URL, all with [`COOKIE`].
async fn start_nodes(cluster: &str, db: &PgDatabase, nodes: &[(&str, String)]) -> Vec<Node> {
    join_all(
        nodes
            .iter()
            .map(|(name, nats)| start_node(cluster, db, name, nats, COOKIE)),
    )
    .await
}

/// Every node's name and API URL, for a [`Load`].
fn targets(nodes: &[Node]) -> Vec<(String, String)> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), n.http_url()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Membership as `/admin/cluster` shows it.

fn member<'a>(view: &'a Value, name: &str) -> Option<&'a Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["node"] == name)
}

/// A short account of a view for failure messages.
fn members_summary(view: &Value) -> String {
    let members: Vec<String> = view["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    format!(
                        "{}={}/{}({}ms)",
                        m["node"].as_str().unwrap_or("?"),
                        m["status"].as_str().unwrap_or("?"),
                        m["link"].as_str().unwrap_or("?"),
                        m["last_heartbeat_ms"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "node={} bus={} taken_over={} members=[{}]",
        view["node"],
        view["bus"],
        view["tasks_taken_over"],
        members.join(", ")
    )
}

/// Waits until `node`'s view shows each of `peers` with `status` (and `link`, if given).
async fn wait_peers(node: &Node, peers: &[&str], status: &str, link: Option<&str>) -> Value {
    let what = format!("{} to see {peers:?} {status} (link {link:?})", node.name);
    eventually_within(CLUSTER_DEADLINE, &what, || async {
        let view = cluster_view(node).await;
        let ok = peers.iter().all(|p| {
            member(&view, p)
                .is_some_and(|m| m["status"] == status && link.is_none_or(|l| m["link"] == l))
        });
        if ok {
            Ok(view)
        } else {
            Err(members_summary(&view))
        }
    })
    .await
}

/// Waits until every node of `nodes` sees every other `up` with link `connected`.
async fn wait_formed(nodes: &[Node]) {
    for node in nodes {
        let peers: Vec<&str> = nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| n.name.as_str())
            .collect();
        wait_peers(node, &peers, "up", Some("connected")).await;
    }
}

// ---------------------------------------------------------------------------------------
// Readiness and metrics.

async fn ready(node: &TestNode) -> (StatusCode, Value) {
    node.get_json(&format!("{}/health/ready", node.http_url()))
        .await
}

/// Waits until readiness says `status` (`ready`, `degraded`) with 200 and a bus check
/// starting with `bus`.
async fn wait_ready_as(node: &Node, status: &str, bus: &str) -> Value {
    let what = format!("{} readiness {status} with bus {bus}", node.name);
    eventually_within(CLUSTER_DEADLINE, &what, || async {
        let (code, body) = ready(node).await;
        let bus_ok = body["checks"]["bus"]
            .as_str()
            .is_some_and(|b| b.starts_with(bus));
        if code == StatusCode::OK && body["status"] == status && bus_ok {
            Ok(body)
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Tasks.

/// A sleep of `ms`, then an echo that depends on it.
fn sleepy(ms: u64) -> Value {
    json!({"steps": [
        {"id": "a", "tool": "sleep", "args": {"ms": ms}},
        {"id": "b", "tool": "echo", "args": {"text": "x"}, "depends_on": ["a"]},
    ]})
}

/// What every finished task must show whatever happened to the nodes: it succeeded, each
/// step succeeded with exactly one passing attempt (the last; earlier ones failed or were
/// interrupted) and one `step.succeeded` event, and the trace ends with one `succeeded`.
fn assert_recorded_once(task: &Value) {
    assert_eq!(task["status"], "succeeded", "{}\n{task:#}", summary(task));
    for s in task["steps"].as_array().expect("steps") {
        let id = s["id"].as_str().expect("step id");
        assert_eq!(s["status"], "succeeded", "step {id}: {task:#}");
        let tries = attempts(task, id);
        let passed = tries
            .iter()
            .filter(|a| a["verdict"]["passed"] == true)
            .count();
        assert_eq!(passed, 1, "step {id}: one passing attempt: {task:#}");
        assert_eq!(
            tries.last().map(|a| &a["verdict"]["passed"]),
            Some(&Value::Bool(true)),
            "step {id}: the passing attempt is the last: {task:#}"
        );
        assert_eq!(
            s["output"],
            tries[tries.len() - 1]["output"],
            "step {id}: {task:#}"
        );
        let succeeded = events(task)
            .iter()
            .filter(|e| e["kind"] == "step.succeeded" && e["data"]["step"] == id)
            .count();
        assert_eq!(
            succeeded, 1,
            "step {id}: one step.succeeded event: {:#}",
            task["events"]
        );
    }
    let kinds = event_kinds(task);
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("succeeded"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "succeeded").count(),
        1,
        "{kinds:?}"
    );
    let seqs: Vec<u64> = events(task)
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "dense trace: {kinds:?}"
    );
}

/// The nodes named in the task's `started` events, in trace order.
fn started_by(task: &Value) -> Vec<String> {
    events(task)
        .iter()
        .filter(|e| e["kind"] == "started")
        .map(|e| e["data"]["node"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Ids of the unfinished tasks `owner` holds, straight from the database.
async fn unfinished_of(db: &PgDatabase, owner: &str) -> Vec<String> {
    let mut conn = db.connect().await;
    let q = format!("SELECT id FROM tasks WHERE owner = $1 AND status NOT IN {FINAL} ORDER BY id");
    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(owner)
        .fetch_all(&mut conn)
        .await
        .expect("listing unfinished tasks");
    rows.into_iter().map(|(id,)| id).collect()
}

/// `(unfinished, not succeeded)` over every task in the database.
async fn task_counts(db: &PgDatabase) -> (i64, i64) {
    let mut conn = db.connect().await;
    let q = format!(
        "SELECT COUNT(*) FILTER (WHERE status NOT IN {FINAL}), \
         COUNT(*) FILTER (WHERE status <> 'succeeded') FROM tasks"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(q))
        .fetch_one(&mut conn)
        .await
        .expect("counting tasks")
}

/// Waits until no task in the database is unfinished; then every one must have succeeded
/// (this covers tasks whose 202 was lost with a killed node, too).
async fn wait_all_final(db: &PgDatabase) {
    eventually_within(
        TASK_DEADLINE,
        "every task in the database final",
        || async {
            match task_counts(db).await {
                (0, _) => Ok(()),
                (n, _) => Err(format!("{n} unfinished")),
            }
        },
    )
    .await;
    let (_, failed) = task_counts(db).await;
    assert_eq!(failed, 0, "tasks in the database that did not succeed");
}

/// One submission of a [`Load`].
#[derive(Debug, Clone)]
struct Outcome {
    node: String,
    /// The test's phase when the request was sent.
    phase: u8,
    /// The task id (202), or what came back instead.
    result: Result<String, String>,
}

/// Submits tasks round-robin to several nodes at a steady pace from a background task,
/// noting the test's phase of each submission, until stopped (or `limit` is reached).
struct Load {
    phase: Arc<AtomicU8>,
    stop: Arc<tokio::sync::Notify>,
    accepted: Arc<std::sync::Mutex<Vec<Outcome>>>,
    handle: JoinHandle<()>,
}

impl Load {
    fn start(targets: Vec<(String, String)>, task: Value, every: Duration, limit: usize) -> Load {
        let phase = Arc::new(AtomicU8::new(0));
        let stop = Arc::new(tokio::sync::Notify::new());
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, s, out) = (phase.clone(), stop.clone(), accepted.clone());
        let handle = tokio::spawn(async move {
            let client = http_client();
            for i in 0..limit {
                let (name, url) = &targets[i % targets.len()];
                let phase = p.load(Ordering::SeqCst);
                let sent = client
                    .post(format!("{url}/api/v1/tasks"))
                    .json(&task)
                    .send()
                    .await;
                let result = match sent {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        let body: Value = r.json().await.unwrap_or_default();
                        body["task_id"]
                            .as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("202 without a task_id: {body}"))
                    }
                    Ok(r) => Err(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => Err(e.to_string()),
                };
                out.lock().expect("outcomes").push(Outcome {
                    node: name.clone(),
                    phase,
                    result,
                });
                tokio::select! {
                    _ = s.notified() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Load {
            phase,
            stop,
            accepted,
            handle,
        }
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.accepted.lock().expect("outcomes").clone()
    }

    /// How many were accepted in `phase` so far.
    fn accepted_in(&self, phase: u8) -> usize {
        self.outcomes()
            .iter()
            .filter(|o| o.phase == phase && o.result.is_ok())
            .count()
    }

    async fn wait_accepted_in(&self, phase: u8, n: usize) {
        eventually_within(
            CLUSTER_DEADLINE,
            &format!("{n} tasks accepted in phase {phase}"),
            || async {
                let got = self.accepted_in(phase);
                if got >= n {
                    Ok(())
                } else {
                    Err(format!("{got}: {:?}", self.outcomes().last()))
                }
            },
        )
        .await
    }

    /// Stops submitting (or waits for the limit) and returns every outcome.
    async fn finish(self, wait_for_limit: bool) -> Vec<Outcome> {
        if !wait_for_limit {
            self.stop.notify_one();
        }
        tokio::time::timeout(TASK_DEADLINE, self.handle)
            .await
            .expect("the load finished")
            .expect("the load did not panic");
        self.accepted.lock().expect("outcomes").clone()
    }
}

/// The accepted submissions: task id → the node that accepted it.
fn accepted(outcomes: &[Outcome]) -> HashMap<String, String> {
    outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .ok()
                .map(|id| (id.clone(), o.node.clone()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The tests.

/// Three nodes on one NATS and one database find each other from the heartbeats alone,
/// link with ractor_cluster, and each runs what it accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_each_runs_what_it_accepts() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("form");
    let names = ["n1", "n2", "n3"];
    let nodes = start_nodes(&cluster, &db, &names.map(|n| (n, nats.url()))).await;
    wait_formed(&nodes).await;

    for (node, name) in nodes.iter().zip(names) {
        let view = cluster_view(node).await;
        assert_eq!(view["cluster"], cluster.as_str(), "{view:#}");
        assert_eq!(view["node"], name, "{view:#}");
        assert_eq!(view["bus"], "connected", "{view:#}");
        let me = member(&view, name).unwrap_or_else(|| panic!("no self in {view:#}"));
        assert_eq!(me["status"], "self", "{view:#}");
        assert_eq!(me["link"], "self", "{view:#}");
        assert_eq!(
            view["members"].as_array().map(Vec::len),
            Some(3),
            "{view:#}"
        );
        // Each peer announces the listeners it was started with.
        for (peer, peer_name) in nodes.iter().zip(names) {
            if peer_name == name {
                continue;
            }
            let m = member(&view, peer_name).expect("peer");
            assert_eq!(m["http"], peer.http.to_string(), "{view:#}");
            assert_eq!(m["admin"], peer.admin.to_string(), "{view:#}");
            assert_eq!(m["detector_kind"], "phi", "{view:#}");
        }
        let (code, body) = ready(node).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ready", "{body}");
        assert_eq!(body["checks"]["bus"], "up", "{body}");
    }

    for node in &nodes {
        assert_eq!(
            metric(node, "ms_cluster_auth_failures_total").await,
            0.0,
            "{}",
            node.log()
        );
    }
    let stream_before = stream_last_sequence(&nats, &cluster).await;
    let mut ids = Vec::new();
    for (node, name) in nodes.iter().zip(names) {
        for _ in 0..2 {
            ids.push((submit_ok(node, &sleepy(200)).await, name));
        }
    }
    for (id, name) in &ids {
        // Read through another node: the database is shared.
        let other = &nodes[(names.iter().position(|n| n == name).expect("name") + 1) % 3];
        let task = wait_final(other, id).await;
        assert_recorded_once(&task);
        assert_eq!(
            task["owner"], *name,
            "owned by the node that accepted it: {task:#}"
        );
        assert_eq!(task["lease_epoch"], 1, "never taken over: {task:#}");
        assert_eq!(started_by(&task), [*name], "{:#}", task["events"]);
        for s in ["a", "b"] {
            assert_eq!(attempts(&task, s)[0]["node"], *name, "{task:#}");
        }
    }

    // Their events were kept in the cluster's JetStream stream, as envelopes.
    let client = async_nats::connect(nats.url())
        .await
        .expect("connecting to NATS");
    let js = async_nats::jetstream::new(client);
    let stream = format!("MS_{}_EVENTS", cluster.to_uppercase());
    // A task's entries are on its own subject, `…task.trace.<task id>`.
    let (last_id, _) = ids.last().expect("tasks were submitted");
    let subject = format!("ms.{cluster}.events.task.trace.{last_id}");
    let last = eventually_within(
        CLUSTER_DEADLINE,
        "task events in the event stream",
        || async {
            let s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
            let m = s
                .get_last_raw_message_by_subject(&subject)
                .await
                .map_err(|e| e.to_string())?;
            if m.sequence > stream_before {
                Ok(m)
            } else {
                Err(format!("last {subject} at {}", m.sequence))
            }
        },
    )
    .await;
    let envelope: WireEnvelope<Value> =
        rmp_serde::from_slice(&last.payload).expect("an event is an envelope");
    assert_eq!(envelope.v, 1);
    assert_eq!(envelope.kind, "event.task.trace");
    assert!(names.contains(&envelope.from.as_str()), "{}", envelope.from);
    let task_id = envelope.payload["task_id"].as_str().unwrap_or_default();
    assert!(
        ids.iter().any(|(id, _)| id == task_id),
        "an event of one of the tasks: {}",
        envelope.payload
    );
}

/// The cluster's event stream `MS_<CLUSTER>_EVENTS`, once a node has declared it (within
/// moments of connecting).
async fn event_stream(nats: &NatsServer, cluster: &str) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(nats.url())
        .await
        .expect("connecting to NATS");
    let js = async_nats::jetstream::new(client);
    let name = format!("MS_{}_EVENTS", cluster.to_uppercase());
    eventually_within(
        CLUSTER_DEADLINE,
        &format!("the event stream {name}"),
        || async { js.get_stream(&name).await.map_err(|e| e.to_string()) },
    )
    .await
}

/// The subject and payload of the first message of the cluster's event stream (waiting
/// for the stream and the message).
async fn first_event(nats: &NatsServer, cluster: &str) -> (String, bytes::Bytes) {
    let stream = event_stream(nats, cluster).await;
    eventually_within(CLUSTER_DEADLINE, "a first event", || async {
        let m = stream.get_raw_message(1).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((m.subject.to_string(), m.payload))
    })
    .await
}

/// The last sequence number of the cluster's event stream.
async fn stream_last_sequence(nats: &NatsServer, cluster: &str) -> u64 {
    let mut stream = event_stream(nats, cluster).await;
    let info = stream.info().await.expect("the event stream's info");
    info.state.last_sequence
}

/// A node SIGKILLed while tasks run on all three: the survivors judge it down and finish
/// its unfinished tasks; every accepted task succeeds, each step recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_under_load_has_its_tasks_finished_by_the_survivors() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("kill");
    let names = ["n1", "n2", "n3"];
    let mut nodes = start_nodes(&cluster, &db, &names.map(|n| (n, nats.url()))).await;
    wait_formed(&nodes).await;

    let load = Load::start(targets(&nodes), sleepy(1500), Duration::from_millis(50), 60);
    load.wait_accepted_in(0, 24).await;
    // The victim has work in flight (a 1.5 s sleep each) when it dies.
    eventually_within(CLUSTER_DEADLINE, "n2 holding unfinished tasks", || async {
        let held = unfinished_of(&db, "n2").await;
        if held.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{held:?}"))
        }
    })
    .await;
    // From here on a submission to the victim may fail.
    load.set_phase(1);
    let victim = &mut nodes[1];
    victim.signal(Signal::SIGKILL);
    victim.wait_exit().await;
    let killed = Instant::now();
    let orphans = unfinished_of(&db, "n2").await;
    assert!(!orphans.is_empty(), "n2 died with tasks in flight");

    let (n1, n3) = (&nodes[0], &nodes[2]);
    for survivor in [n1, n3] {
        wait_peers(survivor, &["n2"], "down", None).await;
    }
    let detected = killed.elapsed();
    let outcomes = load.finish(true).await;
    wait_all_final(&db).await;
    let completed = killed.elapsed();
    eprintln!(
        "sigkill: {} tasks accepted, {} unfinished on n2 when killed; both survivors saw \
         it down after {detected:?}; everything final after {completed:?}",
        accepted(&outcomes).len(),
        orphans.len()
    );

    // Only the dead node refused submissions, and only after it died.
    for o in &outcomes {
        if let Err(e) = &o.result {
            assert!(
                o.node == "n2" && o.phase == 1,
                "a submission failed: {o:?} ({e})"
            );
        }
    }
    for (id, by) in accepted(&outcomes) {
        let task = get_task(n1, &id).await;
        assert_recorded_once(&task);
        if by != "n2" {
            // A live node keeps its own tasks.
            assert_eq!(task["owner"], by.as_str(), "{task:#}");
            assert_eq!(task["lease_epoch"], 1, "{task:#}");
        }
    }
    for id in &orphans {
        let task = get_task(n3, id).await;
        let owner = task["owner"].as_str().unwrap_or_default();
        assert!(
            owner == "n1" || owner == "n3",
            "n2's task ended with a survivor: {task:#}"
        );
        assert!(task["lease_epoch"].as_i64() > Some(1), "fenced: {task:#}");
        let starts = started_by(&task);
        assert_eq!(
            starts.first().map(String::as_str),
            Some("n2"),
            "{:#}",
            task["events"]
        );
        assert_eq!(
            starts.last().map(String::as_str),
            Some(owner),
            "{:#}",
            task["events"]
        );
    }
    let mut taken = 0;
    for survivor in [n1, n3] {
        let view = wait_peers(survivor, &["n2"], "down", None).await;
        let other = if survivor.http == n1.http { "n3" } else { "n1" };
        assert_eq!(
            member(&view, other).expect("peer")["status"],
            "up",
            "{view:#}"
        );
        taken += view["tasks_taken_over"].as_u64().expect("tasks_taken_over");
    }
    assert!(
        taken >= orphans.len() as u64,
        "{taken} taken over, {} orphans",
        orphans.len()
    );
}

/// NATS stopped and started again while tasks are submitted and run: the nodes degrade
/// (and keep accepting, serving locally), come back, see each other again, and nobody
/// takes a live node's tasks; everything succeeds, each step recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_load_degrades_and_recovers_without_takeovers() {
    let mut nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("restart");
    let names = ["n1", "n2", "n3"];
    let nodes = start_nodes(&cluster, &db, &names.map(|n| (n, nats.url()))).await;
    wait_formed(&nodes).await;

    let load = Load::start(
        targets(&nodes),
        sleepy(1000),
        Duration::from_millis(80),
        usize::MAX,
    );
    load.wait_accepted_in(0, 6).await;
    let kept = first_event(&nats, &cluster).await;

    nats.stop().await;
    let stopped = Instant::now();
    load.set_phase(1);
    for node in &nodes {
        let body = wait_ready_as(node, "degraded", "degraded").await;
        assert_eq!(body["checks"]["storage"], "up", "{body}");
        // The admin view is refreshed every 100 ms.
        eventually_within(
            CLUSTER_DEADLINE,
            "the admin view to say degraded",
            || async {
                let view = cluster_view(node).await;
                if view["bus"] == "degraded" {
                    Ok(())
                } else {
                    Err(members_summary(&view))
                }
            },
        )
        .await;
    }
    load.wait_accepted_in(1, 30).await;

    nats.start().await;
    let restarted = Instant::now();
    load.set_phase(2);
    for node in &nodes {
        wait_ready_as(node, "ready", "up").await;
    }
    wait_formed(&nodes).await;
    eprintln!(
        "nats restart: down for {:?}; cluster whole again {:?} after the restart",
        restarted - stopped,
        restarted.elapsed()
    );
    load.wait_accepted_in(2, 6).await;
    let outcomes = load.finish(false).await;
    wait_all_final(&db).await;

    for o in &outcomes {
        assert!(
            o.result.is_ok(),
            "every submission accepted, during the outage too: {o:?}"
        );
    }
    for (id, by) in accepted(&outcomes) {
        let task = get_task(&nodes[0], &id).await;
        assert_recorded_once(&task);
        assert_eq!(
            task["owner"],
            by.as_str(),
            "nobody took a live node's task: {task:#}"
        );
        assert_eq!(task["lease_epoch"], 1, "{task:#}");
        assert_eq!(started_by(&task), [by.as_str()], "{:#}", task["events"]);
    }
    for node in &nodes {
        let view = cluster_view(node).await;
        assert_eq!(view["tasks_taken_over"], 0, "{view:#}");
        assert_eq!(view["bus"], "connected", "{view:#}");
    }

    // The event stream survived the restart (same storage) and takes events again.
    assert_eq!(
        first_event(&nats, &cluster).await,
        kept,
        "kept across the restart"
    );
    let before = stream_last_sequence(&nats, &cluster).await;
    let id = submit_ok(&nodes[1], &sleepy(10)).await;
    wait_final(&nodes[1], &id).await;
    eventually_within(CLUSTER_DEADLINE, "new events in the stream", || async {
        let seq = stream_last_sequence(&nats, &cluster).await;
        if seq > before {
            Ok(())
        } else {
            Err(format!("last sequence {seq}"))
        }
    })
    .await;
}

/// One node cut off from NATS (through a proxy) but not from the database while it has
/// tasks in flight: the others judge it down, but its lease in the database holds, so
/// nobody takes its tasks (and it, hearing nobody, judges nobody); it finishes them
/// itself; healed, it rejoins; every task succeeds, each step recorded once, no task
/// changed hands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_nats_only_keeps_its_tasks_then_rejoins() {
    let nats = NatsServer::spawn().await;
    let proxy = TcpProxy::start(nats.addr()).await;
    let db = postgres_database().await;
    let cluster = cluster_name("cut");
    let nodes = start_nodes(
        &cluster,
        &db,
        &[
            ("n1", nats.url()),
            ("n2", nats.url()),
            ("n3", proxy.nats_url()),
        ],
    )
    .await;
    wait_formed(&nodes).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    // Long enough that a takeover would come while n3 still runs them.
    let mut cut_off = Vec::new();
    for _ in 0..6 {
        cut_off.push(submit_ok(n3, &sleepy(4000)).await);
    }
    let mut others = Vec::new();
    for node in [n1, n2] {
        for _ in 0..2 {
            others.push((submit_ok(node, &sleepy(4000)).await, node.name.clone()));
        }
    }
    for id in &cut_off {
        common::tasks::wait_task(n3, id, "running on n3", |t| t["status"] == "running").await;
    }

    proxy.cut();
    let cut = Instant::now();
    wait_ready_as(n3, "degraded", "degraded").await;
    for node in [n1, n2] {
        wait_peers(node, &["n3"], "down", None).await;
    }
    let detected = cut.elapsed();
    // n3 goes on with its tasks while cut off: they finish there.
    for id in &cut_off {
        common::tasks::wait_task(n3, id, "finished on n3 while cut off", |t| {
            t["status"] == "succeeded"
        })
        .await;
    }
    let finished = cut.elapsed();

    proxy.heal();
    let healed = Instant::now();
    wait_ready_as(n3, "ready", "up").await;
    for node in [n1, n2] {
        wait_peers(node, &["n3"], "up", None).await;
    }
    wait_peers(n3, &["n1", "n2"], "up", None).await;
    let rejoined = healed.elapsed();
    // The links come back too.
    wait_formed(&nodes).await;
    eprintln!(
        "partition: n3 seen down {detected:?} after the cut, its tasks finished there after \
         {finished:?}; rejoined {rejoined:?} after the heal (links {:?})",
        healed.elapsed()
    );

    for id in &cut_off {
        let task = wait_final(n1, id).await;
        assert_recorded_once(&task);
        assert_eq!(task["status"], "succeeded", "{task:#}");
        assert_eq!(task["owner"], "n3", "{task:#}");
        assert_eq!(task["lease_epoch"], 1, "{task:#}");
        assert_eq!(started_by(&task), ["n3"], "{:#}", task["events"]);
    }
    for (id, by) in &others {
        let task = wait_final(n1, id).await;
        assert_recorded_once(&task);
        assert_eq!(task["owner"], by.as_str(), "{task:#}");
        assert_eq!(task["lease_epoch"], 1, "{task:#}");
    }
    let views = join_all([n1, n2, n3].map(|n| cluster_view(n))).await;
    for view in &views {
        assert_eq!(view["tasks_taken_over"], 0, "{views:#?}");
    }

    // Its links outlived the partition: nobody dialed again into a refusal.
    for node in &nodes {
        assert_eq!(
            metric(node, "ms_cluster_auth_failures_total").await,
            0.0,
            "{}",
            node.log()
        );
        assert!(
            !node.log().contains("refused a ractor_cluster session"),
            "{}",
            node.log()
        );
    }

    // A member again: what it accepts now stays its own.
    let id = submit_ok(n3, &sleepy(1500)).await;
    let task = wait_final(n3, &id).await;
    assert_recorded_once(&task);
    assert_eq!(task["owner"], "n3", "{task:#}");
    assert_eq!(task["lease_epoch"], 1, "{task:#}");
    wait_all_final(&db).await;
}

/// Two nodes with different cookies: each refuses the other's messages (their MACs are
/// another cookie's), logs, audits and counts it, and never admits or links the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_is_refused_logged_and_counted() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("cookie");
    let url = nats.url();
    let (a, b) = tokio::join!(
        start_node(&cluster, &db, "a", &url, "cookie-of-a"),
        start_node(&cluster, &db, "b", &url, "cookie-of-b"),
    );
    let nodes = [a, b];
    let [a, b] = &nodes;

    // Each hears the other's heartbeats, sealed with another cookie: refused, audited
    // naming the peer, counted, and never a member.
    for (node, peer) in [(a, "b"), (b, "a")] {
        eventually_within(CLUSTER_DEADLINE, "the refusal in the log", || async {
            let log = node.log();
            if log.contains("cluster.refused") && log.contains(&format!("peer:{peer}")) {
                Ok(())
            } else {
                Err(log)
            }
        })
        .await;
        let refused = metric(node, "ms_cluster_refused_total").await;
        assert!(refused > 0.0, "ms_cluster_refused_total: {refused}");
        let view = cluster_view(node).await;
        assert!(member(&view, peer).is_none(), "{view:#}");
    }
    // Refused is not dead: neither takes the other's tasks over.
    let id = submit_ok(
        b,
        &json!({"steps": [{"id": "a", "tool": "sleep", "args": {"ms": 3000}}]}),
    )
    .await;
    let task = wait_final(b, &id).await;
    assert_eq!(task["owner"], "b", "{task:#}");
    assert_eq!(task["lease_epoch"], 1, "{task:#}");
    for node in [a, b] {
        assert!(
            !node.log().contains("ractor_cluster session authenticated"),
            "{}",
            node.log()
        );
    }
}

/// The envelope as DESIGN §6 defines it, written by the test (not by the product's type).
#[derive(Serialize, Deserialize)]
struct WireEnvelope<T> {
    v: u8,
    id: uuid::Uuid,
    correlation_id: Option<uuid::Uuid>,
    kind: String,
    from: String,
    sent_at: i64,
    payload: T,
}

/// Bytes that are not a readable envelope, with what they are.
fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    // A fixed xorshift: "random" bytes, the same on every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let heartbeat = json!({
        "cluster_addr": "127.0.0.1:1", "http": "127.0.0.1:2", "admin": "127.0.0.1:3",
        "version": "0.0.0", "load": {"running": 0, "queued": 0, "actors": 0},
    });
    let valid = |v: u8| {
        rmp_serde::to_vec_named(&WireEnvelope {
            v,
            id: uuid::Uuid::now_v7(),
            correlation_id: None,
            kind: "node.heartbeat".into(),
            from: "intruder".into(),
            sent_at: 0,
            payload: heartbeat.clone(),
        })
        .expect("encoding an envelope")
    };
    let whole = valid(1);
    let truncated = whole[..whole.len() / 2].to_vec();
    let wrong_shape =
        rmp_serde::to_vec_named(&json!({"hello": "world", "n": [1, 2, 3]})).expect("encoding");
    vec![
        ("random bytes", random),
        ("empty", Vec::new()),
        ("truncated envelope", truncated),
        ("a map of the wrong shape", wrong_shape),
        ("version 99", valid(99)),
    ]
}

/// Garbage published on the membership subjects is counted and logged by every node, and
/// changes nothing else: the nodes stay ready, the cluster intact, the intruder unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_membership_subjects_is_counted_and_logged() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("garbage");
    let names = ["g1", "g2"];
    let mut nodes = start_nodes(&cluster, &db, &names.map(|n| (n, nats.url()))).await;
    wait_formed(&nodes).await;

    const DECODE: &str = "ms_bridge_decode_errors_total";
    let mut before = Vec::new();
    for node in &nodes {
        let view = cluster_view(node).await;
        before.push((
            metric(node, DECODE).await,
            view["decode_errors"].as_u64().expect("decode_errors"),
        ));
    }

    let client = async_nats::connect(nats.url())
        .await
        .expect("connecting to NATS");
    let subjects = [
        format!("ms.{cluster}.cluster.heartbeat"),
        format!("ms.{cluster}.cluster.leave"),
    ];
    let garbage = garbage();
    for subject in &subjects {
        for (_, bytes) in &garbage {
            client
                .publish(subject.clone(), bytes.clone().into())
                .await
                .expect("publishing garbage");
        }
    }
    client.flush().await.expect("flushing");
    let sent = (subjects.len() * garbage.len()) as u64;

    for (node, (metric_before, view_before)) in nodes.iter().zip(&before) {
        let name = node.name.clone();
        eventually_within(CLUSTER_DEADLINE, &format!("{name} counting {sent} decode errors"), || async {
            let now = metric(node, DECODE).await;
            let view = cluster_view(node).await;
            let counted = view["decode_errors"].as_u64().unwrap_or(0);
            if now == metric_before + sent as f64 && counted == view_before + sent {
                Ok(())
            } else {
                Err(format!("metric {now} (before {metric_before}), view {counted} (before {view_before})"))
            }
        })
        .await;
        let log = node.log();
        assert!(
            log.contains("dropped a message that is not a readable envelope"),
            "{log}"
        );
        assert!(
            log.contains("envelope version 99 is not supported"),
            "{log}"
        );
        for subject in &subjects {
            assert!(
                log.contains(subject.as_str()),
                "the log names {subject}: {log}"
            );
        }
    }

    // Still ready, still a cluster, still hearing each other; the intruder is no member.
    for node in &mut nodes {
        assert!(node.is_running(), "{}", node.log());
    }
    for node in &nodes {
        let (code, body) = ready(node).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ready", "{body}");
    }
    let heard_after = Instant::now();
    for node in &nodes {
        let me = node.name.clone();
        let peer = if me == "g1" { "g2" } else { "g1" };
        let view = eventually_within(
            CLUSTER_DEADLINE,
            "a fresh heartbeat after the garbage",
            || async {
                let view = cluster_view(node).await;
                let m = member(&view, peer).cloned().unwrap_or_default();
                let fresh = m["last_heartbeat_ms"]
                    .as_u64()
                    .is_some_and(|ms| Duration::from_millis(ms) < heard_after.elapsed());
                if m["status"] == "up" && m["link"] == "connected" && fresh {
                    Ok(view)
                } else {
                    Err(members_summary(&view))
                }
            },
        )
        .await;
        assert!(member(&view, "intruder").is_none(), "{view:#}");
        assert_eq!(
            view["members"].as_array().map(Vec::len),
            Some(2),
            "{view:#}"
        );
    }
}

/// A node that joins a running cluster keeps what it accepts at once: the others do not
/// take its tasks over before they have heard its first heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_keeps_what_it_accepts_at_once() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("join");
    let mut nodes = start_nodes(&cluster, &db, &[("n1", nats.url()), ("n2", nats.url())]).await;
    wait_formed(&nodes).await;
    // Settled: past the grace after which a node takes over from the nodes it has not heard.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ids = Vec::new();
    for round in 0..4 {
        let name = format!("j{round}");
        let joiner = start_node(&cluster, &db, &name, &nats.url(), COOKIE).await;
        for _ in 0..3 {
            ids.push((submit_ok(&joiner, &sleepy(1500)).await, name.clone()));
        }
        nodes.push(joiner);
    }
    for (id, by) in &ids {
        let task = wait_final(&nodes[0], id).await;
        assert_recorded_once(&task);
        assert_eq!(task["owner"], by.as_str(), "{task:#}");
        assert_eq!(task["lease_epoch"], 1, "{task:#}");
    }
}

/// The unfinished tasks of a node that died before any other node of the cluster started
/// are taken over too: the newcomer never hears it, and takes them once it stays silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_node_never_heard_are_taken_over() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("unheard");
    let mut first = start_node(&cluster, &db, "first", &nats.url(), COOKIE).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit_ok(&first, &sleepy(3000)).await);
    }
    for id in &ids {
        common::tasks::wait_task(&first, id, "running", |t| t["status"] == "running").await;
    }
    first.signal(Signal::SIGKILL);
    first.wait_exit().await;
    let later = start_node(&cluster, &db, "later", &nats.url(), COOKIE).await;
    for id in &ids {
        let task = wait_final(&later, id).await;
        assert_recorded_once(&task);
        assert_eq!(task["owner"], "later", "{task:#}");
        assert!(task["lease_epoch"].as_i64() > Some(1), "{task:#}");
        assert_eq!(
            started_by(&task),
            ["first", "later"],
            "{:#}",
            task["events"]
        );
    }
    let view = cluster_view(&later).await;
    assert!(member(&view, "first").is_none(), "never heard: {view:#}");
    assert_eq!(view["tasks_taken_over"], ids.len(), "{view:#}");
}
