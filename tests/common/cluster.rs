//! Clustered nodes for the multi-process tests: one NATS of the test, one PostgreSQL
//! database, nodes started with a cluster name, a cookie and a ractor_cluster port each.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::nats::stable_port;
use super::tasks::{eventually_within, write_config};
use super::{Launch, PgDatabase, TestNode, Wait, free_port, temp_dir};

/// How long membership changes may take before a test fails (the machine is noisy).
pub const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);

pub const COOKIE: &str = "secret";

/// A node with no executors (only orchestration): its steps must run elsewhere.
pub const NO_EXECUTORS: &str = r#"
[[domains]]
name = "orchestration"
agents = [ { role = "coordinator", instances = 1 }, { role = "router", instances = 1 },
           { role = "critic", instances = 1 }, { role = "planner", instances = 1 } ]
"#;

/// A cluster name of this test alone (subjects and streams are per cluster).
pub fn cluster_name(test: &str) -> String {
    format!("{test}-{}-{}", std::process::id(), free_port())
}

/// How to start one clustered node.
pub struct Member<'a> {
    pub cluster: &'a str,
    pub db: &'a PgDatabase,
    pub nats: String,
    pub name: &'a str,
    pub env: Vec<(&'a str, &'a str)>,
    /// A `--config` file's text.
    pub config: Option<&'a str>,
    pub cookie: &'a str,
    /// What [`Member::start`] waits for (ready by default).
    pub wait: Wait,
}

impl<'a> Member<'a> {
    pub fn new(cluster: &'a str, db: &'a PgDatabase, nats: String, name: &'a str) -> Self {
        Member {
            cluster,
            db,
            nats,
            name,
            env: Vec::new(),
            config: None,
            cookie: COOKIE,
            wait: Wait::Ready,
        }
    }

    pub fn cookie(mut self, cookie: &'a str) -> Self {
        self.cookie = cookie;
        self
    }

    pub fn env(mut self, key: &'a str, value: &'a str) -> Self {
        self.env.push((key, value));
        self
    }

    /// Starts without waiting for readiness (for a node that is not meant to reach NATS).
    pub fn live_only(mut self) -> Self {
        self.wait = Wait::Live;
        self
    }

    pub fn config(mut self, toml: &'a str) -> Self {
        self.config = Some(toml);
        self
    }

    /// Starts the node and waits until it is ready (which needs NATS). A start that lost
    /// a race for its ractor_cluster port is retried on another one (the harness retries
    /// the API and admin ports itself).
    pub async fn start(self) -> TestNode {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let listen = format!("127.0.0.1:{}", stable_port());
            // On a task of its own, so that a failed start is a panic to look at.
            match tokio::spawn(self.launch(&listen).start()).await {
                Ok(process) => return process,
                Err(e) if e.is_panic() => {
                    let panic = e.into_panic();
                    let message = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or_default();
                    let lost_race = message.contains(&format!("cluster.listen {listen}"))
                        && message.contains("in use");
                    if !(lost_race && attempt < ATTEMPTS) {
                        std::panic::resume_unwind(panic);
                    }
                    eprintln!(
                        "{}: cluster.listen {listen} was taken; starting again",
                        self.name
                    );
                }
                Err(e) => panic!("starting {}: {e}", self.name),
            }
        }
        unreachable!("every attempt returns or panics")
    }

    fn launch(&self, listen: &str) -> Launch {
        let dir = temp_dir();
        let mut args = vec![
            "--node".to_string(),
            self.name.to_string(),
            "--nats".into(),
            self.nats.clone(),
            "--cluster".into(),
            self.cluster.to_string(),
            "--database".into(),
            self.db.url.clone(),
        ];
        if let Some(toml) = self.config {
            let path = write_config(dir.path(), "node.toml", toml);
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Launch::new()
            .in_dir(dir)
            .args(&args)
            .envs(&[
                ("MISTER_SMITH__CLUSTER__COOKIE", self.cookie),
                ("MISTER_SMITH__CLUSTER__LISTEN", listen),
                // Up to 24 nodes share the test server (100 connections by default).
                ("MISTER_SMITH__DATABASE__MAX_CONNECTIONS", "4"),
            ])
            .envs(&self.env)
            .wait_for(self.wait)
    }
}

pub async fn cluster_view(node: &TestNode) -> Value {
    let url = format!("{}/admin/cluster", node.admin_url());
    let (status, body) = node.get_json(&url).await;
    assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
    body
}

/// Waits until `node` sees each of `peers` with `status`.
pub async fn wait_status(node: &TestNode, peers: &[&str], status: &str) -> Value {
    wait_members(node, peers, "status", status).await
}

/// Waits until `node` has a ractor_cluster link in `state` to every one of `peers`
/// (a member is `up` from its first heartbeat, a little before its session authenticates).
pub async fn wait_link(node: &TestNode, peers: &[&str], state: &str) -> Value {
    wait_members(node, peers, "link", state).await
}

/// Waits until `node`'s cluster view shows `field` = `value` for each of `peers`.
async fn wait_members(node: &TestNode, peers: &[&str], field: &str, value: &str) -> Value {
    let what = format!("{peers:?} {field} {value}");
    eventually_within(CLUSTER_DEADLINE, &what, || async {
        let view = cluster_view(node).await;
        let members = view["members"].as_array().cloned().unwrap_or_default();
        let ok = peers
            .iter()
            .all(|p| members.iter().any(|m| m["node"] == *p && m[field] == value));
        if ok { Ok(view) } else { Err(view.to_string()) }
    })
    .await
}

/// A metric's value on a node's `/metrics` (0 when absent), summed over its labels.
pub async fn metric(node: &TestNode, name: &str) -> f64 {
    let url = format!("{}/metrics", node.http_url());
    let (status, text) = node.get_text(&url).await;
    assert_eq!(status, StatusCode::OK, "GET {url}: {text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            if metric == name {
                value.trim().parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// A node of a test cluster: the process and the `--node` name it was started with.
pub struct Node {
    pub name: String,
    pub process: TestNode,
}

impl std::ops::Deref for Node {
    type Target = TestNode;
    fn deref(&self) -> &TestNode {
        &self.process
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut TestNode {
        &mut self.process
    }
}
