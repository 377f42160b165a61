//! Restart latency: time from `cell.kill()` on a child to the child running again, against
//! a hand-rolled ractor parent that respawns its killed child, measured in the same run
//! (DESIGN §11).
//!
//! Variants, on one 2-worker multi-thread tokio runtime, the bench being a task of it:
//!
//! * `raw_respawn`   a minimal ractor parent: on the child's `ActorTerminated` it
//!   `spawn_linked`s a new bare child and reports it on a channel (the baseline);
//! * `sup_bare`      our [`Supervisor`] (one_for_one) with the same bare child; the restart is
//!   observed as `Event::ChildRestarted` on `ctx.events`;
//! * `sup_agent`     a whole node tree (root, registry, one domain of 4 executors): an executor
//!   agent is killed, its domain supervisor restarts it; observed as `Event::ChildRestarted`;
//! * `sup_agent_10k` the same with 10,000 executors in the domain (how restart latency grows
//!   with the number of a supervisor's children; not a target).
//!
//! Intensity `u32::MAX` restarts within 1 ms and a zero backoff, so every restart is immediate
//! and the measure is pure restart latency. The variants are interleaved restart by restart
//! (rotating order). Between restarts, outside the timed region, the new child answers one
//! call, so each kill hits a running child.
//!
//! Run: `cargo bench --bench restart`. Prints p50/p90/p99 per variant and the ratios.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::NodeContext;
use actors::agent::{AgentMsg, Lifecycle};
use actors::domain::{AgentSpec, DomainDefaults, DomainSpec};
use actors::events::{Event, Shared};
use actors::registry::RegistryMsg;
use actors::roles::Role;
use actors::root::{RootPolicy, root_args};
use actors::supervisor::{
    Backoff, ChildSpec, Restart, Shutdown, Strategy, Supervisor, SupervisorArgs, SupervisorMsg,
    SupervisorSpec,
};
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, call_t,
};
use tokio::sync::{broadcast, mpsc};

const CALL_MS: u64 = 5_000;
/// How long one restart may take before the bench gives up.
const RESTART_TIMEOUT: Duration = Duration::from_secs(5);

/// Zero backoff: every restart is immediate.
const NO_BACKOFF: Backoff = Backoff {
    initial: Duration::ZERO,
    max: Duration::ZERO,
    jitter: 0.0,
};

// ---------------------------------------------------------------------------------------
// The bare child, used by the baseline and by `sup_bare`.

struct Bare;

enum BareMsg {
    Ping(RpcReplyPort<u64>),
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
                let _ = reply.send(*handled);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The baseline: a hand-rolled parent that respawns its child when it dies.

struct RawParent;

struct RawParentState {
    child: ActorCell,
    respawned: mpsc::UnboundedSender<ActorRef<BareMsg>>,
}

impl Actor for RawParent {
    type Msg = ();
    type State = RawParentState;
    type Arguments = mpsc::UnboundedSender<ActorRef<BareMsg>>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        respawned: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (child, _) = Actor::spawn_linked(None, Bare, (), myself.get_cell()).await?;
        let _ = respawned.send(child.clone());
        Ok(RawParentState {
            child: child.get_cell(),
            respawned,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let dead = match &event {
            SupervisionEvent::ActorTerminated(cell, ..)
            | SupervisionEvent::ActorFailed(cell, _) => cell.get_id(),
            _ => return Ok(()),
        };
        if dead == state.child.get_id() {
            let (child, _) = Actor::spawn_linked(None, Bare, (), myself.get_cell()).await?;
            state.child = child.get_cell();
            let _ = state.respawned.send(child);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The three set-ups, each able to kill its child and wait for the restart.

struct RawSetup {
    parent: ActorRef<()>,
    child: ActorRef<BareMsg>,
    respawned: mpsc::UnboundedReceiver<ActorRef<BareMsg>>,
}

struct SupBareSetup {
    sup: ActorRef<SupervisorMsg>,
    /// The current incarnation, stored by the child's start function.
    latest: Arc<Mutex<Option<ActorRef<BareMsg>>>>,
    child: ActorRef<BareMsg>,
    events: broadcast::Receiver<Shared>,
}

struct SupAgentSetup {
    ctx: Arc<NodeContext>,
    root: ActorRef<SupervisorMsg>,
    child_id: String,
    child: ActorRef<AgentMsg>,
    events: broadcast::Receiver<Shared>,
}

async fn raw_setup() -> RawSetup {
    let (tx, mut respawned) = mpsc::unbounded_channel();
    let (parent, _) = Actor::spawn(None, RawParent, tx)
        .await
        .expect("raw parent starts");
    let child = respawned.recv().await.expect("first child");
    RawSetup {
        parent,
        child,
        respawned,
    }
}

async fn sup_bare_setup() -> SupBareSetup {
    let ctx = NodeContext::new("bench-bare");
    let latest: Arc<Mutex<Option<ActorRef<BareMsg>>>> = Arc::default();
    let slot = latest.clone();
    let child = ChildSpec::new("bare", move |sup: ActorCell, _incarnation| {
        let slot = slot.clone();
        async move {
            let (child, _) = Actor::spawn_linked(None, Bare, (), sup).await?;
            *slot.lock().expect("slot") = Some(child.clone());
            Ok(child.get_cell())
        }
    })
    .shutdown(Shutdown::Brutal);
    let spec = SupervisorSpec::new("bench", Strategy::OneForOne)
        .intensity(u32::MAX, Duration::from_millis(1))
        .backoff(NO_BACKOFF)
        .child(child);
    let events = ctx.events.subscribe();
    let (sup, _) = Supervisor::start(SupervisorArgs::new(spec, ctx))
        .await
        .expect("supervisor starts");
    let child = latest.lock().expect("slot").clone().expect("child started");
    SupBareSetup {
        sup,
        latest,
        child,
        events,
    }
}

async fn sup_agent_setup(agents: u32) -> SupAgentSetup {
    let ctx = NodeContext::new(format!("bench-agent-{agents}"));
    let domain = DomainSpec {
        name: "execution".into(),
        strategy: Strategy::OneForOne,
        max_restarts: u32::MAX,
        within_secs: 0.001,
        agents: vec![AgentSpec {
            role: Role::Executor,
            instances: agents,
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
        backoff: NO_BACKOFF,
        agent_shutdown: Duration::from_secs(5),
    };
    let events = ctx.events.subscribe();
    let (args, _escalation) = root_args(&ctx, policy, Vec::new(), &[domain], defaults);
    let (root, _) = Supervisor::start(args).await.expect("tree starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(registry) = ctx.registry() {
            let counts = call_t!(registry, RegistryMsg::Counts, CALL_MS).expect("counts");
            if counts.get(&Lifecycle::Active).copied() == Some(agents as usize) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "executors did not register");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let child_id = "executor-1".to_string();
    let child = agent_named(&ctx, &child_id);
    SupAgentSetup {
        ctx,
        root,
        child_id,
        child,
        events,
    }
}

/// The live agent with this supervisor child id (from the directory).
fn agent_named(ctx: &NodeContext, name: &str) -> ActorRef<AgentMsg> {
    let found = ctx
        .directory
        .filter(|e| e.meta.name == name && e.cell.get_status() != ractor::ActorStatus::Stopped);
    ActorRef::from(found.into_iter().next().expect("agent in directory").cell)
}

/// Waits for `ChildRestarted` of `child` on `events`; returns the new pid.
async fn restarted(events: &mut broadcast::Receiver<Shared>, child: &str) -> u64 {
    loop {
        match events.recv().await {
            Ok(stamped) => {
                if let Event::ChildRestarted { child: c, pid, .. } = &stamped.event
                    && c == child
                {
                    return *pid;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
        }
    }
}

impl RawSetup {
    async fn restart_once(&mut self) -> Duration {
        let start = Instant::now();
        self.child.kill();
        let child = tokio::time::timeout(RESTART_TIMEOUT, self.respawned.recv())
            .await
            .expect("raw respawn in time")
            .expect("raw parent alive");
        let elapsed = start.elapsed();
        self.child = child;
        call_t!(self.child, BareMsg::Ping, CALL_MS).expect("new child answers");
        elapsed
    }
}

impl SupBareSetup {
    async fn restart_once(&mut self) -> Duration {
        let start = Instant::now();
        self.child.kill();
        tokio::time::timeout(RESTART_TIMEOUT, restarted(&mut self.events, "bare"))
            .await
            .expect("supervisor restart in time");
        let elapsed = start.elapsed();
        self.child = self.latest.lock().expect("slot").clone().expect("child");
        call_t!(self.child, BareMsg::Ping, CALL_MS).expect("new child answers");
        elapsed
    }
}

impl SupAgentSetup {
    async fn restart_once(&mut self) -> Duration {
        let start = Instant::now();
        self.child.kill();
        let pid =
            tokio::time::timeout(RESTART_TIMEOUT, restarted(&mut self.events, &self.child_id))
                .await
                .expect("agent restart in time");
        let elapsed = start.elapsed();
        let entry = self
            .ctx
            .directory
            .get(pid)
            .expect("restarted agent entered");
        self.child = ActorRef::from(entry.cell);
        call_t!(self.child, AgentMsg::Status, CALL_MS).expect("new agent answers");
        elapsed
    }
}

// ---------------------------------------------------------------------------------------

/// Agents in the domain of `sup_agent_10k`: how restart latency grows with a supervisor's
/// child count.
const BIG_DOMAIN: u32 = 10_000;

const VARIANTS: [&str; 4] = ["raw_respawn", "sup_bare", "sup_agent", "sup_agent_10k"];

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let restarts: usize = if bench_mode { 2_000 } else { 20 };
    let warmup: usize = if bench_mode { 100 } else { 2 };
    let big_domain = if bench_mode { BIG_DOMAIN } else { 100 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let samples: Vec<Vec<f64>> = rt.block_on(async move {
        tokio::spawn(async move {
            let mut raw = raw_setup().await;
            let mut bare = sup_bare_setup().await;
            let mut agent = sup_agent_setup(4).await;
            let mut big = sup_agent_setup(big_domain).await;
            for _ in 0..warmup {
                raw.restart_once().await;
                bare.restart_once().await;
                agent.restart_once().await;
                big.restart_once().await;
            }
            let mut us: Vec<Vec<f64>> = vec![Vec::with_capacity(restarts); VARIANTS.len()];
            for n in 0..restarts {
                for k in 0..VARIANTS.len() {
                    let i = (k + n) % VARIANTS.len();
                    let d = match i {
                        0 => raw.restart_once().await,
                        1 => bare.restart_once().await,
                        2 => agent.restart_once().await,
                        _ => big.restart_once().await,
                    };
                    us[i].push(d.as_nanos() as f64 / 1_000.0);
                }
            }
            // Sanity: every supervisor restart was counted, none escalated.
            let views = call_t!(bare.sup, SupervisorMsg::Which, CALL_MS).expect("which");
            assert_eq!(views[0].restarts as usize, restarts + warmup);
            raw.parent.stop(None);
            let _ = bare
                .sup
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
            for tree in [agent.root, big.root] {
                let _ = tree
                    .stop_and_wait(None, Some(Duration::from_secs(60)))
                    .await;
            }
            us
        })
        .await
        .expect("bench task")
    });

    let stats: Vec<[f64; 4]> = samples
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            [
                quantile(&v, 0.5),
                quantile(&v, 0.9),
                quantile(&v, 0.99),
                v.iter().sum::<f64>() / v.len() as f64,
            ]
        })
        .collect();
    println!();
    println!(
        "restart summary: {restarts} restarts per variant (after {warmup} warm-up), interleaved (rotating order)"
    );
    println!("(sup_agent: 4 agents in the domain; sup_agent_10k: {big_domain})");
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "variant", "p50 µs", "p90 µs", "p99 µs", "mean µs", "p50 / raw", "p99 / raw"
    );
    for (name, s) in VARIANTS.iter().zip(&stats) {
        println!(
            "{:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>11.2}x {:>11.2}x",
            name,
            s[0],
            s[1],
            s[2],
            s[3],
            s[0] / stats[0][0],
            s[2] / stats[0][2],
        );
    }
    for (name, s) in VARIANTS.iter().zip(&stats).skip(1).take(2) {
        println!(
            "target {name} p50 <= 200 µs: {} ({:.1} µs)",
            if s[0] <= 200.0 { "PASS" } else { "FAIL" },
            s[0]
        );
    }
}
