//! Test harness: runs the real `mister-smith` binary, one process per test, each in a
//! temp dir of its own (so the default SQLite file lands there) with free ports.
//!
//! In the spirit of zero2prod's `spawn_app`: [`TestNode::start`] returns once the node is
//! ready (or fails the test with the node's log), and the process is killed on drop.
//! Nothing here sleeps for a fixed time: everything polls with a generous deadline.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod cluster;
pub mod faults;
pub mod feed;
pub mod nats;
pub mod tasks;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mister-smith");

/// How long a node may take to become ready (or live) before the test fails.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// How long anything else we wait for (a restart, an exit, a CLI command) may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(50);

/// The agents of `config/default.toml`, as `(domain, name, role)`, in registry order.
pub const DEFAULT_AGENTS: [(&str, &str, &str); 13] = [
    ("execution", "executor-1", "executor"),
    ("execution", "executor-2", "executor"),
    ("execution", "executor-3", "executor"),
    ("execution", "executor-4", "executor"),
    ("execution", "worker-1", "worker"),
    ("execution", "worker-2", "worker"),
    ("knowledge", "memory-1", "memory"),
    ("operations", "monitor-1", "monitor"),
    ("orchestration", "coordinator-1", "coordinator"),
    ("orchestration", "coordinator-2", "coordinator"),
    ("orchestration", "critic-1", "critic"),
    ("orchestration", "planner-1", "planner"),
    ("orchestration", "router-1", "router"),
];

/// The default domains, in configuration (start) order.
pub const DEFAULT_DOMAINS: [&str; 4] = ["orchestration", "execution", "knowledge", "operations"];

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

/// An address on which nothing listens (a port just released).
pub fn closed_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A fresh temp dir for one test.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ms-test-")
        .tempdir()
        .expect("creating a temp dir")
}

/// A command for the binary in `dir`, with no `MISTER_SMITH*`, `RUST_LOG` or proxy
/// variables inherited from whoever runs the tests (they would change what is tested: the
/// client commands would send their requests for 127.0.0.1 to a proxy).
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && (k.starts_with("MISTER_SMITH")
                || k == "RUST_LOG"
                || k.to_ascii_lowercase().ends_with("_proxy"))
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A reqwest client that never goes through a proxy (the tests talk to 127.0.0.1).
///
/// Pooled connections are dropped after 5 s idle: the node closes a keep-alive connection
/// that has been idle for its `header_timeout_secs` (10 s; hyper's header-read timer runs
/// while it waits for the next request), and a request sent just as it does so fails
/// (as after a node's pause). Real clients retry; a test would flake.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building the HTTP client")
}

/// Polls `probe` until it gives `Ok`, failing the test after [`DEADLINE`] with `what` and
/// the last thing the probe saw.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() > DEADLINE => {
                panic!("timed out after {DEADLINE:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// One-shot commands (config errors, `migrate`, the client commands).

/// How a command that ran to its end went.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the binary in `dir` to its end (at most [`DEADLINE`]; a process still running then
/// is killed and the test fails). Output goes through files, so nothing can block on a pipe.
pub async fn run_to_exit(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let n = next_id();
    let out_path = dir.join(format!(".cmd-{n}.stdout"));
    let err_path = dir.join(format!(".cmd-{n}.stderr"));
    let mut cmd = command(dir);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out_path).expect("creating a stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("creating a stderr file"));
    let mut child = cmd.spawn().expect("spawning mister-smith");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mister-smith") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`mister-smith {}` (env {env:?}) did not exit within {DEADLINE:?}\n\
                 --- stdout ---\n{}\n--- stderr ---\n{}",
                args.join(" "),
                read(&out_path),
                read(&err_path)
            );
        }
        tokio::time::sleep(POLL).await;
    };
    Finished {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

// ---------------------------------------------------------------------------------------
// A running node.

/// What [`Launch::start`] waits for before handing the node over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `/health/ready` answers 200.
    Ready,
    /// `/health/live` answers 200 (for nodes that are not meant to get ready).
    Live,
}

/// How to start a node; [`TestNode::start`] covers the common case.
pub struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    admin_ip: IpAddr,
    dir: Option<TempDir>,
    wait: Wait,
}

impl Default for Launch {
    fn default() -> Self {
        Self::new()
    }
}

impl Launch {
    pub fn new() -> Self {
        Launch {
            args: Vec::new(),
            env: Vec::new(),
            admin_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dir: None,
            wait: Wait::Ready,
        }
    }

    /// Extra arguments after `run --http … --admin …`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        for (k, v) in env {
            self = self.env(k, v);
        }
        self
    }

    /// The IP `--admin` binds (loopback by default); the harness still connects to 127.0.0.1.
    pub fn admin_ip(mut self, ip: IpAddr) -> Self {
        self.admin_ip = ip;
        self
    }

    /// Runs in this dir instead of a fresh one (to start again on the same SQLite file).
    pub fn in_dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    pub fn wait_for(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Starts the node and waits until it is ready (or live); fails the test with the
    /// node's log if it exits first or takes longer than [`READY_DEADLINE`]. A start that
    /// lost a race for its port is retried on fresh ports.
    pub async fn start(self) -> TestNode {
        let mut dir = Some(self.dir.unwrap_or_else(temp_dir));
        let token = self
            .env
            .iter()
            .find(|(k, _)| k == "MISTER_SMITH__ADMIN__TOKEN")
            .map(|(_, v)| v.clone());
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let http_port = free_port();
            let admin_port = free_port();
            let http = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), http_port);
            let admin_listen = SocketAddr::new(self.admin_ip, admin_port);
            let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin_port);
            let temp = dir.take().expect("the node's dir");
            let log_path = temp.path().join(format!("node-{}.log", next_id()));
            let log_file = std::fs::File::create(&log_path).expect("creating the node's log file");
            let stdout = std::fs::File::create(log_path.with_extension("stdout"))
                .expect("creating the node's stdout file");
            let mut cmd = command(temp.path());
            cmd.arg("run")
                .arg("--http")
                .arg(http.to_string())
                .arg("--admin")
                .arg(admin_listen.to_string())
                .args(&self.args)
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(stdout)
                .stderr(log_file);
            let child = cmd.spawn().expect("spawning `mister-smith run`");
            let mut node = TestNode {
                child: Some(child),
                dir: Some(temp),
                http,
                admin,
                admin_listen,
                log_path,
                token: token.clone(),
                client: http_client(),
                exit: None,
            };
            match node.wait_until(self.wait).await {
                Ok(()) => return node,
                Err(PortTaken) if attempt < ATTEMPTS => {
                    dir = node.dir.take();
                }
                Err(PortTaken) => panic!(
                    "the node could not bind its ports in {ATTEMPTS} attempts; last log:\n{}",
                    node.log()
                ),
            }
        }
        unreachable!("every attempt either returns or panics")
    }
}

/// The node exited because another process took one of its ports first.
struct PortTaken;

/// A `mister-smith run` process of this test. Killed on drop.
pub struct TestNode {
    child: Option<Child>,
    dir: Option<TempDir>,
    /// Where the API listens.
    pub http: SocketAddr,
    /// Where to reach the admin listener (127.0.0.1 even when it binds 0.0.0.0).
    pub admin: SocketAddr,
    /// What `--admin` was given.
    pub admin_listen: SocketAddr,
    log_path: PathBuf,
    /// The admin token the node was started with; [`Self::get_json`] and [`Self::post`]
    /// send it.
    pub token: Option<String>,
    pub client: reqwest::Client,
    exit: Option<ExitStatus>,
}

impl TestNode {
    /// Starts `mister-smith run --http <free> --admin <free> <extra_args>` with `env` added
    /// to a clean environment, in a fresh temp dir, and waits until it is ready.
    pub async fn start(extra_args: &[&str], env: &[(&str, &str)]) -> TestNode {
        Launch::new().args(extra_args).envs(env).start().await
    }

    /// `http://127.0.0.1:<port>` of the API listener.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `http://127.0.0.1:<port>` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The node's working dir (its default SQLite file is under `data/` here).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the node's dir").path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node's process").id()
    }

    /// Everything the node wrote to stderr so far.
    pub fn log(&self) -> String {
        read(&self.log_path)
    }

    async fn wait_until(&mut self, wait: Wait) -> Result<(), PortTaken> {
        let path = match wait {
            Wait::Ready => "/health/ready",
            Wait::Live => "/health/live",
        };
        let url = format!("{}{path}", self.http_url());
        let start = Instant::now();
        let mut last;
        loop {
            if let Some(status) = self.try_exit() {
                let log = self.log();
                if log.contains("cannot listen on") && log.contains("in use") {
                    return Err(PortTaken);
                }
                panic!("the node exited ({status}) before {path} answered 200; its log:\n{log}");
            }
            match self
                .client
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() > READY_DEADLINE {
                panic!(
                    "the node did not answer 200 on {path} within {READY_DEADLINE:?} \
                     (last: {last}); its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send_json(&self, method: reqwest::Method, url: &str) -> (StatusCode, Value) {
        self.send(method, url, None).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method.clone(), url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}\nnode log:\n{}", self.log()));
        let status = response.status();
        let text = response.text().await.expect("reading the body");
        let body = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {url} → {status}: body is not JSON ({e}): {text}")
        });
        (status, body)
    }

    /// GET a URL (full, e.g. `format!("{}/api/v1/agents", node.http_url())`) and parse JSON.
    pub async fn get_json(&self, url: &str) -> (StatusCode, Value) {
        self.send_json(reqwest::Method::GET, url).await
    }

    /// POST `body` as JSON to a URL and parse the JSON answer.
    pub async fn post_json(&self, url: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, url, Some(body)).await
    }

    /// POST (no body) to a URL and parse the JSON answer.
    pub async fn post(&self, url: &str) -> (StatusCode, Value) {
        self.send_json(reqwest::Method::POST, url).await
    }

    /// GET a URL as text.
    pub async fn get_text(&self, url: &str) -> (StatusCode, String) {
        let response = self
            .request(reqwest::Method::GET, url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}\nnode log:\n{}", self.log()));
        let status = response.status();
        (status, response.text().await.expect("reading the body"))
    }

    /// The supervision tree (`GET /admin/actors`, which must answer 200).
    pub async fn tree(&self) -> Value {
        let (status, body) = self
            .get_json(&format!("{}/admin/actors", self.admin_url()))
            .await;
        assert_eq!(status, StatusCode::OK, "GET /admin/actors: {body}");
        body
    }

    /// The actor at `path` of names below the root (e.g. `["execution", "executor-1"]`),
    /// from a fresh tree.
    pub async fn actor(&self, path: &[&str]) -> Value {
        let tree = self.tree().await;
        actor_at(&tree["root"], path)
            .unwrap_or_else(|| panic!("no actor at {path:?} in the tree: {tree:#}"))
            .clone()
    }

    /// `GET /api/v1/agents?<query>`, which must answer 200; returns the `agents` array.
    pub async fn agents(&self, query: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/agents?{query}", self.http_url());
        let (status, body) = self.get_json(&url).await;
        assert_eq!(status, StatusCode::OK, "GET {url}: {body}");
        let agents = body["agents"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {url}: no `agents` array: {body}"))
            .clone();
        assert_eq!(
            body["count"].as_u64(),
            Some(agents.len() as u64),
            "GET {url}: `count` disagrees with `agents`: {body}"
        );
        agents
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling the node");
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.exit = child.try_wait().expect("waiting for the node");
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits (up to [`DEADLINE`]) for the process to exit; fails the test with the log if
    /// it does not.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "the node did not exit within {DEADLINE:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The node's dir, to start another node on the same files. Kills the process if it
    /// still runs.
    pub fn into_dir(mut self) -> TempDir {
        self.kill();
        self.dir.take().expect("the node's dir")
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut()
            && self.exit.is_none()
        {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && self.dir.is_some() {
            eprintln!(
                "--- log of the node on {} ({}) ---\n{}\n--- end of log ---",
                self.http,
                self.log_path.display(),
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The supervision tree as JSON.

/// The direct child of a tree node with this name.
pub fn child<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    node["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

/// The actor reached from `root` by following child names.
pub fn actor_at<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(root, |node, name| child(node, name))
}

/// An actor's id as a number (panics if it has none: a vacant slot).
pub fn id_of(actor: &Value) -> u64 {
    actor["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("actor without a numeric id: {actor}"))
}

/// Asserts the one error shape of every HTTP surface and returns `(code, message)`.
pub fn assert_error_shape(body: &Value, context: &str) -> (String, String) {
    let error = body
        .get("error")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{context}: no `error` object in {body}"));
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{context}: no string `error.code` in {body}"));
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{context}: no string `error.message` in {body}"));
    assert!(!code.is_empty(), "{context}: empty error.code in {body}");
    assert!(
        !message.is_empty(),
        "{context}: empty error.message in {body}"
    );
    (code.to_string(), message.to_string())
}

// ---------------------------------------------------------------------------------------
// PostgreSQL.

/// The server the PostgreSQL tests use unless `MS_TEST_POSTGRES_URL` says otherwise.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh database on the test server, dropped (forcefully) on drop.
pub struct PgDatabase {
    /// URL of this database (for `--database`).
    pub url: String,
    pub name: String,
    server: String,
}

impl PgDatabase {
    /// A real outage of this database and its end: while `reachable` is false it accepts
    /// no connections and every open one is terminated (the server itself stays up).
    pub async fn set_reachable(&self, reachable: bool) {
        use sqlx::{Connection as _, Executor as _};
        let mut conn = sqlx::PgConnection::connect(&self.server)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
        let alter = format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS {reachable}",
            self.name
        );
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(alter)))
            .await
            .unwrap_or_else(|e| panic!("switching connections to {}: {e}", self.name));
        if !reachable {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&self.name)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("terminating connections to {}: {e}", self.name));
        }
        let _ = conn.close().await;
    }

    /// Kills every connection to this database (`pg_terminate_backend`, from a connection
    /// to the server's own database) and returns how many there were. New connections are
    /// still allowed.
    pub async fn terminate_backends(&self) -> usize {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.server)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("terminating connections to {}: {e}", self.name));
        let _ = conn.close().await;
        killed.iter().filter(|(done,)| *done).count()
    }

    /// A connection to this database.
    pub async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test database {}: {e}", self.name))
    }
}

/// Creates a uniquely named database through `MS_TEST_POSTGRES_URL` (default
/// [`DEFAULT_POSTGRES_URL`]). Fails the test, naming what to install or set, when the
/// server cannot be reached: these tests never skip.
pub async fn postgres_database() -> PgDatabase {
    use sqlx::{Connection as _, Executor as _};
    let server =
        std::env::var("MS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
    let shown = mister_smith::store::redact(&server);
    let connect = tokio::time::timeout(
        Duration::from_secs(15),
        sqlx::PgConnection::connect(&server),
    )
    .await;
    let mut conn = match connect {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("{}", postgres_missing(&shown, &e.to_string())),
        Err(_) => panic!("{}", postgres_missing(&shown, "no answer within 15 s")),
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!("ms_test_{}_{}_{nanos}", std::process::id(), next_id());
    let create = format!("CREATE DATABASE \"{name}\"");
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(create)))
        .await
        .unwrap_or_else(|e| {
            panic!("creating database {name} on {shown}: {e} (is it a superuser URL?)")
        });
    let _ = conn.close().await;
    PgDatabase {
        url: with_database(&server, &name),
        name,
        server,
    }
}

fn postgres_missing(server: &str, error: &str) -> String {
    format!(
        "cannot reach PostgreSQL at {server}: {error}\n\
         These tests need a real PostgreSQL server and never skip. Install and start \
         PostgreSQL (on Debian: `apt-get install postgresql && pg_ctlcluster <version> main \
         start`, or run `scripts/test.sh`, which does both), or set MS_TEST_POSTGRES_URL to \
         the URL of a superuser on a running server."
    )
}

/// `server` with its database replaced by `name` (keeping any `?query`).
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    let mut url = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on async work: use a
        // thread with a runtime of its own.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                use sqlx::{Connection as _, Executor as _};
                let mut conn = sqlx::PgConnection::connect(&server).await?;
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(drop)))
                    .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}
