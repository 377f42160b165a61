//! Agent call latency: a status call to an agent found through the registry, against a raw
//! ractor `call_t!` to a bare actor, measured in the same run (DESIGN §11).
//!
//! Variants, all on one 2-worker multi-thread tokio runtime, the caller being a task of that
//! runtime (as an HTTP handler is):
//!
//! * `raw_call`            `call_t!` to a bare actor that replies with a small struct (baseline);
//! * `raw_call_x2`         two such calls back to back (the fair baseline for `lookup_and_status`);
//! * `agent_status`        `AgentMsg::Status` to an executor agent found once through the registry;
//! * `lookup_and_status`   `RegistryMsg::FindHealthy("tool.echo")` then `AgentMsg::Status`, per op.
//!
//! Criterion measures each variant; then a paired summary alternates the variants in rounds
//! (so drift on a shared machine hits all of them alike) and prints the ratios that
//! BENCHMARKS.md reports. Run: `cargo bench --bench agent_call`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::NodeContext;
use actors::agent::{AgentMsg, Lifecycle};
use actors::domain::{AgentSpec, DomainDefaults, DomainSpec};
use actors::registry::RegistryMsg;
use actors::roles::Role;
use actors::root::{RootPolicy, root_args};
use actors::supervisor::{Backoff, Restart, Strategy, Supervisor, SupervisorMsg};
use criterion::Criterion;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, call_t};
use tokio::runtime::Runtime;

/// Timeout of every call, as the node's own calls have one.
const CALL_MS: u64 = 5_000;
/// Executors in the bench domain (the default `execution` domain has four).
const EXECUTORS: u32 = 4;

// ---------------------------------------------------------------------------------------
// The raw baseline: a trivial actor replying with a small struct.

struct Bare;

#[derive(Debug, Clone, Copy)]
struct Pong {
    handled: u64,
    ok: bool,
}

enum BareMsg {
    Ping(RpcReplyPort<Pong>),
}
impl ractor::Message for BareMsg {}

impl Actor for Bare {
    type Msg = BareMsg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        handled: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BareMsg::Ping(reply) => {
                *handled += 1;
                let _ = reply.send(Pong {
                    handled: *handled,
                    ok: true,
                });
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The system under test: a node tree with one domain of executors.

struct Fixture {
    bare: ActorRef<BareMsg>,
    ctx: Arc<NodeContext>,
    agent: ActorRef<AgentMsg>,
    root: ActorRef<SupervisorMsg>,
}

async fn fixture() -> Fixture {
    let (bare, _) = Actor::spawn(None, Bare, ())
        .await
        .expect("bare actor starts");

    let ctx = NodeContext::new("bench");
    let domain = DomainSpec {
        name: "execution".into(),
        strategy: Strategy::OneForOne,
        max_restarts: 3,
        within_secs: 5.0,
        agents: vec![AgentSpec {
            role: Role::Executor,
            instances: EXECUTORS,
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
    let (root, _) = Supervisor::start(args).await.expect("tree starts");

    // Wait until every executor is registered and active.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(registry) = ctx.registry() {
            let counts = call_t!(registry, RegistryMsg::Counts, CALL_MS).expect("counts");
            if counts.get(&Lifecycle::Active).copied() == Some(EXECUTORS as usize) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "executors did not register");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let agent = lookup(&ctx).await;
    Fixture {
        bare,
        ctx,
        agent,
        root,
    }
}

async fn lookup(ctx: &NodeContext) -> ActorRef<AgentMsg> {
    let registry = ctx.registry().expect("registry running");
    let record = call_t!(
        registry,
        RegistryMsg::FindHealthy,
        CALL_MS,
        "tool.echo".to_string()
    )
    .expect("registry answers")
    .expect("a healthy executor");
    record.agent.expect("live agent has a ref")
}

// ---------------------------------------------------------------------------------------
// The operations measured.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    RawCall,
    RawCallX2,
    AgentStatus,
    LookupAndStatus,
}

impl Op {
    const ALL: [Op; 4] = [
        Op::RawCall,
        Op::RawCallX2,
        Op::AgentStatus,
        Op::LookupAndStatus,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::RawCall => "raw_call",
            Op::RawCallX2 => "raw_call_x2",
            Op::AgentStatus => "agent_status",
            Op::LookupAndStatus => "lookup_and_status",
        }
    }
}

async fn raw(bare: &ActorRef<BareMsg>) {
    let pong = call_t!(bare, BareMsg::Ping, CALL_MS).expect("bare answers");
    black_box((pong.handled, pong.ok));
}

async fn status(agent: &ActorRef<AgentMsg>) {
    let status = call_t!(agent, AgentMsg::Status, CALL_MS).expect("agent answers");
    black_box(status);
}

/// Runs `iters` operations in a task of the runtime and returns the elapsed time.
fn run(rt: &Runtime, f: &Fixture, op: Op, iters: u64) -> Duration {
    let bare = f.bare.clone();
    let agent = f.agent.clone();
    let ctx = f.ctx.clone();
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                match op {
                    Op::RawCall => raw(&bare).await,
                    Op::RawCallX2 => {
                        raw(&bare).await;
                        raw(&bare).await;
                    }
                    Op::AgentStatus => status(&agent).await,
                    Op::LookupAndStatus => status(&lookup(&ctx).await).await,
                }
            }
            start.elapsed()
        })
        .await
        .expect("bench task")
    })
}

/// The `q` quantile (0..=1) by nearest rank.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[rank.min(v.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    quantile(v, 0.5)
}

/// Times single operations, the variants interleaved op by op (rotating order) in one task,
/// so that a noisy neighbour hits every variant alike; prints per-variant latency quantiles
/// and the ratio of medians to `raw_call`.
fn paired_summary(rt: &Runtime, f: &Fixture, cycles: usize) {
    let bare = f.bare.clone();
    let agent = f.agent.clone();
    let ctx = f.ctx.clone();
    let mut ns: Vec<Vec<f64>> = rt.block_on(async move {
        tokio::spawn(async move {
            let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(cycles); Op::ALL.len()];
            for cycle in 0..cycles {
                for k in 0..Op::ALL.len() {
                    let i = (k + cycle) % Op::ALL.len();
                    let start = Instant::now();
                    match Op::ALL[i] {
                        Op::RawCall => raw(&bare).await,
                        Op::RawCallX2 => {
                            raw(&bare).await;
                            raw(&bare).await;
                        }
                        Op::AgentStatus => status(&agent).await,
                        Op::LookupAndStatus => status(&lookup(&ctx).await).await,
                    }
                    ns[i].push(start.elapsed().as_nanos() as f64);
                }
            }
            ns
        })
        .await
        .expect("bench task")
    });
    let medians: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    println!();
    println!("agent_call summary: {cycles} ops per variant, interleaved op by op (rotating order)");
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>18}",
        "variant", "p50 ns", "p90 ns", "p99 ns", "p50 / raw_call p50"
    );
    for (i, op) in Op::ALL.iter().enumerate() {
        println!(
            "{:<20} {:>9.0} {:>9.0} {:>9.0} {:>17.2}x",
            op.name(),
            medians[i],
            quantile(&mut ns[i], 0.90),
            quantile(&mut ns[i], 0.99),
            medians[i] / medians[0],
        );
    }
    println!(
        "lookup_and_status / raw_call_x2 = {:.2}x (same number of round trips)",
        medians[3] / medians[1]
    );
    let b = medians[2] / medians[0];
    println!(
        "target agent_status / raw_call <= 1.50x: {} ({b:.2}x)",
        if b <= 1.5 { "PASS" } else { "FAIL" }
    );
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let fixture = rt.block_on(fixture());

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    {
        let mut group = c.benchmark_group("agent_call");
        for op in Op::ALL {
            group.bench_function(op.name(), |b| {
                b.iter_custom(|iters| run(&rt, &fixture, op, iters))
            });
        }
        group.finish();
    }
    c.final_summary();

    if bench_mode {
        paired_summary(&rt, &fixture, 50_000);
    } else {
        paired_summary(&rt, &fixture, 10);
    }

    rt.block_on(async {
        fixture.bare.stop(None);
        let _ = fixture
            .root
            .stop_and_wait(None, Some(Duration::from_secs(10)))
            .await;
    });
}
