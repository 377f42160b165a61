//! The fault suite's harness (`tests/faults.rs`): the task every scenario runs, a
//! background load that submits it continuously, clustered nodes sharing one `file`
//! workspace, and the one checker of the invariants every scenario must keep.
//!
//! The task is `file` append → `sleep` → `file` append; each append writes a line that
//! names the task's marker (a random id put in the spec) and the step, to a file of that
//! task in the shared workspace. Counting those lines counts the executions of each step,
//! whichever node ran them, which the checker compares with the attempts recorded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub use super::cluster::Node;
use super::cluster::{CLUSTER_DEADLINE, Member, cluster_view, wait_status};
use super::{PgDatabase, TestNode, http_client};

/// Sets a node's `tools.file.workspace` (every node of a scenario shares one).
pub const WORKSPACE_ENV: &str = "MISTER_SMITH__TOOLS__FILE__WORKSPACE";

/// How long after the fault is healed every task may take to reach a final status.
pub const FINISH_DEADLINE: Duration = Duration::from_secs(60);

/// The steps of [`fault_task`] that have a side effect (a line appended).
pub const EFFECT_STEPS: [&str; 2] = ["a", "c"];

const DESCRIPTION: &str = "fault task ";
const FINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "timed_out"];

fn effect_file(marker: &str) -> String {
    format!("{marker}.log")
}

/// `file` append (`<marker> a`) → `sleep` → `file` append (`<marker> c`).
pub fn fault_task(marker: &str, sleep_ms: u64) -> Value {
    let append = |step: &str| json!({"op": "append", "path": effect_file(marker), "content": format!("{marker} {step}\n")});
    json!({
        "description": format!("{DESCRIPTION}{marker}"),
        "steps": [
            {"id": "a", "tool": "file", "args": append("a")},
            {"id": "b", "tool": "sleep", "args": {"ms": sleep_ms}, "depends_on": ["a"]},
            {"id": "c", "tool": "file", "args": append("c"), "depends_on": ["b"]},
        ]
    })
}

pub mod load;
use load::Submission;

// ---------------------------------------------------------------------------------------
// Nodes.

/// Starts clustered nodes side by side (`(name, NATS URL)` each) on `db`, all with the
/// file workspace `workspace`, and waits until each sees every other `up`.
pub async fn start_cluster(
    cluster: &str,
    db: &PgDatabase,
    members: &[(&str, String)],
    workspace: &Path,
) -> Vec<Node> {
    let ws = workspace.to_str().expect("a UTF-8 workspace path");
    let nodes: Vec<Node> = join_all(members.iter().map(|(name, nats)| async move {
        let process = Member::new(cluster, db, nats.clone(), name)
            .env(WORKSPACE_ENV, ws)
            .start()
            .await;
        Node {
            name: name.to_string(),
            process,
        }
    }))
    .await;
    for node in &nodes {
        let peers: Vec<&str> = nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| n.name.as_str())
            .collect();
        wait_status(node, &peers, "up").await;
    }
    nodes
}

/// `(name, API URL)` of each node, for a [`Load`].
pub fn targets<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<(String, String)> {
    nodes
        .into_iter()
        .map(|n| (n.name.clone(), n.http_url()))
        .collect()
}

/// `tasks_taken_over` of the node's `/admin/cluster`.
pub async fn taken_over(node: &Node) -> u64 {
    let view = cluster_view(node).await;
    view["tasks_taken_over"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: no tasks_taken_over in {view}", node.name))
}

/// Ids of the unfinished tasks `owner` holds, straight from the database.
pub async fn unfinished_of(db: &PgDatabase, owner: &str) -> Vec<String> {
    let mut conn = db.connect().await;
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM tasks WHERE owner = $1 \
         AND status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') ORDER BY id",
    )
    .bind(owner)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("listing the unfinished tasks of {owner}: {e}"));
    rows.into_iter().map(|(id,)| id).collect()
}

// ---------------------------------------------------------------------------------------
// The invariants.

/// What the checker saw, and every invariant it found broken.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub submitted: usize,
    pub accepted: usize,
    /// Submissions not accepted, by what came back (`503`, `connection`, `timeout`, …).
    pub refused: BTreeMap<String, usize>,
    /// Tasks in the database (a submission whose answer was lost may be one).
    pub stored: usize,
    pub succeeded: usize,
    /// Final, but not `succeeded`.
    pub not_succeeded: usize,
    pub unfinished: usize,
    /// Executions of the side-effect steps (lines in the workspace).
    pub executions: usize,
    /// Attempts recorded for the side-effect steps.
    pub attempts: usize,
    /// Executions beyond the first of a step.
    pub double_executions: usize,
    /// Executions beyond the attempts recorded for their step.
    pub unrecorded: usize,
    /// Steps with more than one recorded result.
    pub double_recorded: usize,
    /// Every stored task as `GET /api/v1/tasks/{id}` showed it last.
    pub tasks: HashMap<String, Value>,
    /// Accepted task id → the node that accepted it.
    pub accepted_by: HashMap<String, String>,
    violations: BTreeMap<String, Vec<String>>,
}

impl Report {
    /// Notes a broken invariant (or scenario check) with what was seen.
    pub fn violate(&mut self, invariant: &str, seen: String) {
        self.violations
            .entry(invariant.to_string())
            .or_default()
            .push(seen);
    }

    pub fn require(&mut self, invariant: &str, holds: bool, seen: impl FnOnce() -> String) {
        if !holds {
            self.violate(invariant, seen());
        }
    }

    /// The counts, one line each.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "faults[{}]: {} submitted, {} accepted, refused {:?}, {} stored\n  \
             final: {} succeeded, {} not succeeded; {} unfinished\n  \
             side effects: {} executions, {} attempts recorded, {} double executions, \
             {} unrecorded executions; {} steps with two recorded results",
            self.scenario,
            self.submitted,
            self.accepted,
            self.refused,
            self.stored,
            self.succeeded,
            self.not_succeeded,
            self.unfinished,
            self.executions,
            self.attempts,
            self.double_executions,
            self.unrecorded,
            self.double_recorded,
        );
        for (invariant, seen) in &self.violations {
            text.push_str(&format!("\n  BROKEN {invariant}: {} times", seen.len()));
            for s in seen.iter().take(5) {
                text.push_str(&format!("\n    - {s}"));
            }
        }
        text
    }

    /// Prints the summary and fails the test if any invariant was broken.
    pub fn finish(self) {
        let summary = self.summary();
        if self.violations.is_empty() {
            eprintln!("{summary}");
        } else {
            panic!("{summary}");
        }
    }
}

/// Reads the API of whichever of `urls` answers (nodes may be down or still recovering).
struct Reader {
    urls: Vec<String>,
    client: reqwest::Client,
}

impl Reader {
    async fn get(&self, path: &str) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            let mut last = String::new();
            for url in &self.urls {
                match self.client.get(format!("{url}{path}")).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        return r.json().await.map_err(|e| format!("GET {path}: {e}"));
                    }
                    Ok(r) => last = format!("{url}: {}", r.status()),
                    Err(e) => last = format!("{url}: {e}"),
                }
            }
            if start.elapsed() > CLUSTER_DEADLINE {
                return Err(format!("GET {path} answered by no node; last: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every task in the database, as the listing shows it.
    async fn list(&self) -> Result<Vec<Value>, String> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/tasks?limit=1000&cursor={c}"),
                None => "/api/v1/tasks?limit=1000".to_string(),
            };
            let page = self.get(&path).await?;
            all.extend(page["tasks"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(all),
            }
        }
    }
}

fn is_final(status: &Value) -> bool {
    status.as_str().is_some_and(|s| FINAL.contains(&s))
}

/// How many lines `<marker> <step>` the task's file in `workspace` holds.
fn executions(workspace: &Path, marker: &str, step: &str) -> usize {
    let path: PathBuf = workspace.join(effect_file(marker));
    let line = format!("{marker} {step}");
    std::fs::read_to_string(&path)
        .map(|text| text.lines().filter(|l| *l == line).count())
        .unwrap_or(0)
}

pub const ACCEPTED_FINISHED: &str = "1 accepted = finished succeeded";
pub const NONE_STUCK: &str = "2 none stuck";
pub const RECORDED_ONCE: &str = "3 one recorded result per step";
pub const EFFECTS_RECORDED: &str = "4 every side effect matched by a recorded attempt";

/// Waits until every task in the database is final (at most [`FINISH_DEADLINE`] after
/// `healed`), then checks every invariant over the submissions and the stored tasks,
/// reading through whichever of `nodes` answers and counting the lines in `workspace`.
pub async fn check(
    scenario: &str,
    nodes: &[&TestNode],
    workspace: &Path,
    submissions: &[Submission],
    healed: Instant,
) -> Report {
    let reader = Reader {
        urls: nodes.iter().map(|n| n.http_url()).collect(),
        client: http_client(),
    };
    let mut report = Report {
        scenario: scenario.to_string(),
        submitted: submissions.len(),
        ..Report::default()
    };
    for s in submissions {
        match &s.result {
            Ok(id) => {
                report.accepted_by.insert(id.clone(), s.node.clone());
            }
            Err(why) => *report.refused.entry(why.clone()).or_default() += 1,
        }
    }
    report.accepted = report.accepted_by.len();

    // Wait for every task to end (or the deadline).
    let listed = loop {
        let listed = match reader.list().await {
            Ok(listed) => listed,
            Err(e) => panic!("{scenario}: cannot list the tasks: {e}"),
        };
        let open = listed.iter().filter(|t| !is_final(&t["status"])).count();
        if open == 0 || healed.elapsed() > FINISH_DEADLINE {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    report.stored = listed.len();

    let ids: Vec<String> = listed
        .iter()
        .filter_map(|t| t["task_id"].as_str().map(str::to_string))
        .collect();
    let fetched: Vec<(String, Result<Value, String>)> = futures::stream::iter(ids)
        .map(|id| {
            let reader = &reader;
            async move {
                let task = reader.get(&format!("/api/v1/tasks/{id}")).await;
                (id, task)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for (id, task) in fetched {
        let task = task.unwrap_or_else(|e| panic!("{scenario}: reading task {id}: {e}"));
        report.tasks.insert(id, task);
    }

    // 1. Every accepted task is stored, final and succeeded.
    let mut accepted: Vec<(&String, &String)> = report.accepted_by.iter().collect();
    accepted.sort();
    let mut seen = Vec::new();
    for (id, node) in accepted {
        match report.tasks.get(id) {
            None => seen.push(format!("task {id} accepted by {node} is lost")),
            Some(t) if t["status"] == "succeeded" => {}
            Some(t) => seen.push(format!(
                "task {id} accepted by {node} is {} (error {}) {:.0?} after the heal",
                t["status"],
                t["error"],
                healed.elapsed()
            )),
        }
    }
    for s in seen {
        report.violate(ACCEPTED_FINISHED, s);
    }

    let by_marker: HashMap<String, String> = report
        .tasks
        .iter()
        .filter_map(|(id, t)| {
            let marker = t["description"].as_str()?.strip_prefix(DESCRIPTION)?;
            Some((marker.to_string(), id.clone()))
        })
        .collect();
    let mut ids: Vec<String> = report.tasks.keys().cloned().collect();
    ids.sort();
    for id in ids {
        let task = report.tasks[&id].clone();
        check_task(&mut report, &id, &task, workspace);
    }
    // Side effects of submissions whose task is not stored at all.
    for s in submissions {
        if by_marker.contains_key(&s.marker) {
            continue;
        }
        for step in EFFECT_STEPS {
            let ran = executions(workspace, &s.marker, step);
            if ran > 0 {
                report.executions += ran;
                report.unrecorded += ran;
                report.violate(
                    EFFECTS_RECORDED,
                    format!(
                        "marker {} (sent to {}, {:?}): step {step} ran {ran} times, no task stored",
                        s.marker, s.node, s.result
                    ),
                );
            }
        }
    }
    report
}

/// Invariants 2–4 for one stored task.
fn check_task(report: &mut Report, id: &str, task: &Value, workspace: &Path) {
    let status = &task["status"];
    if !is_final(status) {
        report.unfinished += 1;
        report.violate(
            NONE_STUCK,
            format!("task {id} still {status}: {}", short(task)),
        );
    } else if status == "succeeded" {
        report.succeeded += 1;
    } else {
        report.not_succeeded += 1;
    }
    let steps = task["steps"].as_array().cloned().unwrap_or_default();
    for step in &steps {
        let sid = step["id"].as_str().unwrap_or("?");
        if is_final(status) && step["status"] == "running" {
            report.violate(
                NONE_STUCK,
                format!("task {id} is {status} with step {sid} running"),
            );
        }
        let attempts = step["attempts"].as_array().cloned().unwrap_or_default();
        let passed = attempts
            .iter()
            .filter(|a| a["verdict"]["passed"] == true)
            .count();
        let results = task["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["kind"] == "step.succeeded" && e["data"]["step"] == sid)
                    .count()
            })
            .unwrap_or(0);
        if passed > 1 || results > 1 {
            report.double_recorded += 1;
            report.violate(
                RECORDED_ONCE,
                format!(
                    "task {id} step {sid}: {passed} passing attempts, {results} step.succeeded"
                ),
            );
        }
    }
    let Some(marker) = task["description"]
        .as_str()
        .and_then(|d| d.strip_prefix(DESCRIPTION))
    else {
        report.violate(
            EFFECTS_RECORDED,
            format!("task {id} carries no marker: {}", task["description"]),
        );
        return;
    };
    for sid in EFFECT_STEPS {
        let recorded = steps
            .iter()
            .find(|s| s["id"] == sid)
            .and_then(|s| s["attempts"].as_array())
            .map_or(0, Vec::len);
        let ran = executions(workspace, marker, sid);
        report.executions += ran;
        report.attempts += recorded;
        report.double_executions += ran.saturating_sub(1);
        if ran > recorded {
            report.unrecorded += ran - recorded;
            report.violate(
                EFFECTS_RECORDED,
                format!(
                    "task {id} step {sid}: ran {ran} times, {recorded} attempts recorded \
                     (nodes {:?})",
                    attempt_nodes(task, sid)
                ),
            );
        }
    }
}

/// The nodes named by the attempts of a step, in order.
pub fn attempt_nodes(task: &Value, step: &str) -> Vec<String> {
    task["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == step))
        .and_then(|s| s["attempts"].as_array())
        .map(|attempts| {
            attempts
                .iter()
                .map(|a| a["node"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The nodes named in the task's `started` events (each run that took it), in order.
pub fn started_by(task: &Value) -> Vec<String> {
    task["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["kind"] == "started")
                .map(|e| e["data"]["node"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A task in one line: status, owner, epoch, each step's status and attempts.
pub fn short(task: &Value) -> String {
    format!(
        "status={} owner={} epoch={} steps=[{}] started_by={:?}",
        task["status"],
        task["owner"],
        task["lease_epoch"],
        super::tasks::step_states(task).join(" "),
        started_by(task)
    )
}
