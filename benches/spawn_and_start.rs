//! Spawn cost and node start-up, each against a raw baseline measured in the same run
//! (DESIGN §11). A plain `main` (`harness = false`); `cargo bench` passes `--bench`, which
//! selects the full sizes; without it (`cargo test --benches`) a quick smoke run.
//!
//! (a) Agents: a node tree (root, registry, one domain supervisor) with 10,000 executor
//!     agents in its one domain, timed from `Supervisor::start` until the registry counts
//!     10,000 active agents; memory per idle agent is the RSS delta divided by 10,000.
//!     Baseline: 10,000 bare ractor actors spawned one after the other. Each scenario runs
//!     in a fresh child process (this binary re-executed) so that RSS deltas are not blurred
//!     by memory the allocator kept from an earlier scenario; the scenarios alternate and
//!     the median of the repetitions is reported.
//! (b) `mister-smith run` on embedded defaults, from spawning the process until
//!     `/health/ready` answers 200 (polled every 1 ms), in a fresh temp dir each time (SQLite
//!     file created and migrated from scratch) and then again in the same dir (warm restart
//!     on an existing DB); SIGTERM after each. Baseline: `mister-smith --version` to exit.
//!     The binary is the one cargo builds for this bench (`CARGO_BIN_EXE_mister-smith`), or
//!     `MS_BIN` if set.
//!
//! Run: `cargo bench --bench spawn_and_start`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actors::NodeContext;
use actors::agent::Lifecycle;
use actors::domain::{AgentSpec, DomainDefaults, DomainSpec};
use actors::registry::RegistryMsg;
use actors::roles::Role;
use actors::root::{RootPolicy, root_args};
use actors::supervisor::{Backoff, Restart, Strategy, Supervisor};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ractor::{Actor, ActorProcessingErr, ActorRef, call_t};

/// Set in a child process to run one spawn scenario: `agents:N` or `bare:N`.
const SCENARIO_ENV: &str = "MS_BENCH_SPAWN_SCENARIO";
const CALL_MS: u64 = 30_000;

// ---------------------------------------------------------------------------------------
// (a) spawn scenarios, run in a child process each.

struct Bare;

impl Actor for Bare {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(())
    }
}

/// Resident set size of this process in bytes (`VmRSS` of /proc/self/status, the same
/// figure as the second field of /proc/self/statm, in kB rather than pages).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Runs one scenario and prints `RESULT <seconds> <rss_before> <rss_after>`.
fn run_scenario(scenario: &str) {
    let (kind, n) = scenario.split_once(':').expect("scenario kind:N");
    let n: usize = n.parse().expect("scenario count");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let kind = kind.to_string();
    let (secs, before, after) = rt.block_on(async move {
        tokio::spawn(async move {
            // Warm up the runtime and ractor's lazy statics.
            let (warm, _) = Actor::spawn(None, Bare, ()).await.expect("warm-up actor");
            warm.stop_and_wait(None, None).await.expect("warm-up stop");
            match kind.as_str() {
                "bare" => spawn_bare(n).await,
                "agents" => spawn_agents(n).await,
                other => panic!("unknown scenario {other}"),
            }
        })
        .await
        .expect("scenario task")
    });
    println!("RESULT {secs} {before} {after}");
}

async fn spawn_bare(n: usize) -> (f64, u64, u64) {
    let mut actors = Vec::with_capacity(n);
    let before = rss_bytes();
    let start = Instant::now();
    for _ in 0..n {
        let (actor, _) = Actor::spawn(None, Bare, ()).await.expect("bare spawns");
        actors.push(actor);
    }
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = rss_bytes();
    std::hint::black_box(&actors);
    (secs, before, after)
}

async fn spawn_agents(n: usize) -> (f64, u64, u64) {
    let ctx = NodeContext::new("bench");
    let domain = DomainSpec {
        name: "execution".into(),
        strategy: Strategy::OneForOne,
        max_restarts: 3,
        within_secs: 5.0,
        agents: vec![AgentSpec {
            role: Role::Executor,
            instances: n as u32,
            restart: Restart::Permanent,
            capabilities: Vec::new(),
        }],
    };
    let policy = RootPolicy {
        strategy: Strategy::OneForOne,
        max_restarts: 3,
        within: Duration::from_secs(5),
    };
    let defaults = DomainDefaults {
        backoff: Backoff::default(),
        agent_shutdown: Duration::from_secs(5),
    };
    let (args, _escalation) = root_args(&ctx, policy, Vec::new(), &[domain], defaults);
    let before = rss_bytes();
    let start = Instant::now();
    let (root, _) = Supervisor::start(args).await.expect("tree starts");
    loop {
        if let Some(registry) = ctx.registry() {
            let counts = call_t!(registry, RegistryMsg::Counts, CALL_MS).expect("counts");
            if counts.get(&Lifecycle::Active).copied() == Some(n) {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "agents did not register"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = rss_bytes();
    std::hint::black_box(&root);
    (secs, before, after)
}

struct SpawnResult {
    secs: f64,
    rss_delta: f64,
}

/// Runs a scenario in a fresh child process (this binary).
fn scenario_in_child(kind: &str, n: usize) -> SpawnResult {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .env(SCENARIO_ENV, format!("{kind}:{n}"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scenario child runs");
    assert!(out.status.success(), "scenario {kind}:{n} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("scenario result line");
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    SpawnResult {
        secs: f[0],
        rss_delta: f[2] - f[1],
    }
}

// ---------------------------------------------------------------------------------------
// (b) the binary: start to ready.

fn binary() -> PathBuf {
    std::env::var_os("MS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mister-smith")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The status code of `GET /health/ready`, or `None` if nothing answers yet.
fn ready_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A `Command` for the binary with no configuration from this environment leaking in.
fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("MISTER_SMITH") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

struct StartResult {
    ready: Duration,
    /// SIGTERM to exit.
    stop: Duration,
}

/// Starts `mister-smith run` in `dir` and times it to ready, then stops it with SIGTERM.
fn start_to_ready(bin: &Path, dir: &Path) -> StartResult {
    let http = free_port();
    let mut admin = free_port();
    while admin == http {
        admin = free_port();
    }
    let start = Instant::now();
    let mut child = command(bin)
        .args([
            "run",
            "--http",
            &format!("127.0.0.1:{http}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .current_dir(dir)
        .spawn()
        .expect("mister-smith starts");
    let ready = loop {
        if ready_status(http) == Some(200) {
            break start.elapsed();
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("mister-smith run exited before ready: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not ready in 30 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let stopping = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    let stop = stopping.elapsed();
    assert!(status.success(), "mister-smith run exited with {status}");
    StartResult { ready, stop }
}

fn version_run(bin: &Path) -> Duration {
    let start = Instant::now();
    let status = command(bin)
        .arg("--version")
        .status()
        .expect("--version runs");
    let elapsed = start.elapsed();
    assert!(status.success(), "--version failed");
    elapsed
}

// ---------------------------------------------------------------------------------------

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[rank.min(v.len() - 1)]
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn main() {
    if let Ok(scenario) = std::env::var(SCENARIO_ENV) {
        run_scenario(&scenario);
        return;
    }
    // Cargo passes `--bench` to bench targets; any other argument (a filter) is ignored.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (n, reps, starts) = if bench_mode {
        (10_000, 3, 20)
    } else {
        (200, 1, 1)
    };

    // (a) spawn
    let mut bare = Vec::new();
    let mut agents = Vec::new();
    for rep in 0..reps {
        // Alternate which scenario goes first.
        if rep % 2 == 0 {
            bare.push(scenario_in_child("bare", n));
            agents.push(scenario_in_child("agents", n));
        } else {
            agents.push(scenario_in_child("agents", n));
            bare.push(scenario_in_child("bare", n));
        }
    }
    let per = |v: &[SpawnResult], f: fn(&SpawnResult) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        quantile(&mut x, 0.5) / n as f64
    };
    let bare_us = per(&bare, |r| r.secs * 1e6);
    let agent_us = per(&agents, |r| r.secs * 1e6);
    let bare_kib = per(&bare, |r| r.rss_delta / 1024.0);
    let agent_kib = per(&agents, |r| r.rss_delta / 1024.0);
    println!();
    println!("spawn summary: {n} per scenario, median of {reps} runs, each in a fresh process");
    println!(
        "{:<28} {:>14} {:>14} {:>10}",
        "", "bare actor", "agent", "ratio"
    );
    println!(
        "{:<28} {:>14.2} {:>14.2} {:>9.2}x",
        "time per spawn (µs)",
        bare_us,
        agent_us,
        agent_us / bare_us
    );
    println!(
        "{:<28} {:>14.2} {:>14.2} {:>9.2}x",
        "RSS per idle actor (KiB)",
        bare_kib,
        agent_kib,
        agent_kib / bare_kib
    );
    for (name, v) in [("bare", &bare), ("agents", &agents)] {
        let runs: Vec<String> = v
            .iter()
            .map(|r| format!("{:.3}s/{:.1}KiB", r.secs, r.rss_delta / 1024.0 / n as f64))
            .collect();
        println!("  {name} runs: {}", runs.join(", "));
    }
    println!(
        "target RSS per idle agent <= 16 KiB: {} ({agent_kib:.2} KiB)",
        pass(agent_kib <= 16.0)
    );
    // Scaling: per-agent spawn time should not grow with the domain's size.
    let mut scaling = Vec::new();
    for size in [n / 10, n / 2] {
        let r = scenario_in_child("agents", size);
        scaling.push(format!("{size}: {:.2} µs", r.secs * 1e6 / size as f64));
    }
    scaling.push(format!("{n}: {agent_us:.2} µs"));
    println!(
        "  agent spawn time per agent by domain size: {}",
        scaling.join(", ")
    );

    // (b) start to ready
    let bin = binary();
    assert!(
        bin.exists(),
        "{} not found (build it or set MS_BIN)",
        bin.display()
    );
    let mut version = Vec::new();
    let mut fresh = Vec::new();
    let mut warm = Vec::new();
    let mut stop = Vec::new();
    for _ in 0..starts {
        version.push(version_run(&bin).as_secs_f64() * 1e3);
        let dir = tempfile::tempdir().expect("temp dir");
        let first = start_to_ready(&bin, dir.path());
        assert!(
            dir.path().join("data/mister-smith.db").exists(),
            "the SQLite file was not created where expected"
        );
        let second = start_to_ready(&bin, dir.path());
        fresh.push(first.ready.as_secs_f64() * 1e3);
        warm.push(second.ready.as_secs_f64() * 1e3);
        stop.push(first.stop.as_secs_f64() * 1e3);
        stop.push(second.stop.as_secs_f64() * 1e3);
    }
    let v50 = quantile(&mut version, 0.5);
    println!();
    println!(
        "start summary: {} ({starts} runs each, interleaved; ms)",
        bin.display()
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>14}",
        "", "p50", "p90", "max", "p50 / version"
    );
    for (name, v) in [
        ("--version to exit (baseline)", &mut version),
        ("run to ready, fresh dir", &mut fresh),
        ("run to ready, warm (existing DB)", &mut warm),
        ("SIGTERM to exit", &mut stop),
    ] {
        let p50 = quantile(v, 0.5);
        println!(
            "{:<34} {:>8.1} {:>8.1} {:>8.1} {:>13.1}x",
            name,
            p50,
            quantile(v, 0.9),
            quantile(v, 1.0),
            p50 / v50
        );
    }
    let f50 = quantile(&mut fresh, 0.5);
    println!(
        "target run to ready (fresh) < 300 ms: {} ({f50:.1} ms)",
        pass(f50 < 300.0)
    );
}
