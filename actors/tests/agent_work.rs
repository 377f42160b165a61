//! An agent's steps against a real tree with real tools: an agent runs at most
//! `max_in_flight` steps, queues the next `max_waiting` and hands the rest back unstarted;
//! a step whose work panics still answers and frees its slot; the Coordinator waits for
//! room rather than failing a step when every agent is full; and the Router never picks an
//! agent whose circuit is open, also when no agent is healthy.
//!
//! Asynchronous outcomes are awaited by polling with a generous deadline; nothing asserts
//! on elapsed time.

use std::sync::Arc;
use std::time::Duration;

use actors::NodeContext;
use actors::agent::{AgentLimits, AgentMsg, ExecuteReply, Job, Lifecycle, Work};
use actors::context::{SchedulerSettings, Services};
use actors::domain::{AgentSpec, DomainDefaults, DomainSpec};
use actors::llm::{Llm, LlmConfig};
use actors::registry::{AgentFilter, AgentRecord, RegistryMsg};
use actors::roles::memory::{MemoryEntry, MemoryStore};
use actors::roles::{Role, coordinator, router};
use actors::root::{RootPolicy, root_args};
use actors::supervisor::{Backoff, Strategy, Supervisor};
use actors::task::store::{
    BoxFuture, Claim, Decision, NewTask, Progress, StoreError, Submitted, TaskStore,
};
use actors::task::{Priority, StepSpec, TaskStatus};
use actors::tools::{ToolError, Tools, ToolsConfig};
use ractor::{ActorRef, call_t};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);
const CALL_MS: u64 = 5_000;

/// A memory store whose writes panic, as a buggy step would; reads find nothing.
struct PanickyMemory;

impl MemoryStore for PanickyMemory {
    fn put(&self, _: MemoryEntry) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { panic!("a memory write panicked (on purpose)") })
    }
    fn get(
        &self,
        _: String,
        _: String,
        _: String,
    ) -> BoxFuture<'_, Result<Option<MemoryEntry>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn search(
        &self,
        _: String,
        _: String,
        _: Vec<String>,
        _: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MemoryEntry>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn delete(&self, _: String, _: String, _: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
}

/// No task storage: these tests hand steps to agents directly.
struct NoTasks;

fn no_storage<T>() -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(async {
        Err(StoreError::Unavailable(
            "no task storage in this test".into(),
        ))
    })
}

impl TaskStore for NoTasks {
    fn submit(&self, _: NewTask) -> BoxFuture<'_, Result<Submitted, StoreError>> {
        no_storage()
    }
    fn claim(
        &self,
        _: String,
        _: String,
        _: Option<String>,
    ) -> BoxFuture<'_, Result<Option<Claim>, StoreError>> {
        no_storage()
    }
    fn record<'a>(&'a self, _: &'a Progress) -> BoxFuture<'a, Result<(), StoreError>> {
        no_storage()
    }
    fn cancel_queued(&self, _: String, _: i64) -> BoxFuture<'_, Result<TaskStatus, StoreError>> {
        no_storage()
    }
    fn unfinished(
        &self,
        _: String,
        _: bool,
    ) -> BoxFuture<'_, Result<Vec<(String, Priority)>, StoreError>> {
        no_storage()
    }
    fn decisions(&self, _: String) -> BoxFuture<'_, Result<Vec<Decision>, StoreError>> {
        no_storage()
    }
}

struct Node {
    ctx: Arc<NodeContext>,
    _workspace: TempDir,
}

/// A tree of `executors` executors and one memory agent; services (real tools) are
/// provided once all are active, so no scheduler runs.
async fn start(limits: AgentLimits, executors: u32) -> Node {
    let ctx = NodeContext::new("work");
    let agent = |role, instances| AgentSpec {
        role,
        instances,
        restart: Default::default(),
        capabilities: Vec::new(),
    };
    let domains = [DomainSpec {
        name: "execution".into(),
        strategy: Strategy::OneForOne,
        max_restarts: 10,
        within_secs: 60.0,
        agents: vec![agent(Role::Executor, executors), agent(Role::Memory, 1)],
    }];
    let policy = RootPolicy {
        strategy: Strategy::OneForOne,
        max_restarts: 10,
        within: Duration::from_secs(60),
    };
    let defaults = DomainDefaults {
        backoff: Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(10),
            jitter: 0.0,
        },
        agent_shutdown: Duration::from_secs(1),
    };
    let (args, _escalation) = root_args(&ctx, policy, Vec::new(), &domains, defaults);
    Supervisor::start(args).await.expect("root starts");
    let want = executors as usize + 1;
    eventually(&format!("{want} active agents"), async || {
        let active = agents(&ctx, None).await;
        (active.len() == want).then_some(())
    })
    .await;
    let workspace = tempfile::tempdir().expect("temp dir");
    let mut tools = ToolsConfig::default();
    tools.file.workspace = workspace.path().join("ws");
    ctx.provide(Services {
        tools: Tools::new(tools).expect("tools"),
        llm: Llm::new(&LlmConfig::default()).expect("llm"),
        memory: Arc::new(PanickyMemory),
        store: Arc::new(NoTasks),
        scheduler: SchedulerSettings {
            max_running: 1,
            max_queued: 1,
            aging_ms: 1000,
            spill_above: None,
            max_task_output_bytes: 16 << 20,
        },
        agents: limits,
        remote: None,
        work_queue: None,
    });
    Node {
        ctx,
        _workspace: workspace,
    }
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The active agents, of `role` if given.
async fn agents(ctx: &NodeContext, role: Option<&str>) -> Vec<AgentRecord> {
    let Some(registry) = ctx.registry() else {
        return Vec::new();
    };
    let filter = AgentFilter {
        role: role.map(str::to_string),
        state: Some(Lifecycle::Active),
        ..Default::default()
    };
    call_t!(registry, RegistryMsg::List, CALL_MS, filter).unwrap_or_default()
}

async fn load_of(ctx: &NodeContext, instance_id: &str) -> u32 {
    let registry = ctx.registry().expect("registry");
    call_t!(
        registry,
        RegistryMsg::Resolve,
        CALL_MS,
        instance_id.to_string()
    )
    .expect("resolve")
    .expect("known agent")
    .load
}

fn work(tool: &str, args: Value) -> Work {
    let step: StepSpec =
        serde_json::from_value(json!({"id": tool, "tool": tool, "args": args})).expect("a step");
    Work {
        task_id: "t".into(),
        session: None,
        principal: None,
        step,
        input: None,
        timeout: None,
        cancel: CancellationToken::new(),
        lease_until: None,
    }
}

fn sleep_long() -> Work {
    work("sleep", json!({"ms": 3_600_000}))
}

/// Hands `work` to `agent` as the Coordinator does; the receivers of its start and answer.
fn hand(
    agent: &ActorRef<AgentMsg>,
    work: Work,
) -> (
    oneshot::Receiver<std::time::Instant>,
    oneshot::Receiver<ExecuteReply>,
) {
    let (started, started_rx) = oneshot::channel();
    let (reply, reply_rx) = oneshot::channel();
    let job = Job {
        work,
        started,
        reply,
    };
    agent.cast(AgentMsg::Execute(Box::new(job))).expect("cast");
    (started_rx, reply_rx)
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn done(what: &str, reply: oneshot::Receiver<ExecuteReply>) -> Result<String, ToolError> {
    match within(what, reply).await.expect("an answer") {
        ExecuteReply::Done(result) => result.map(|o| o.text),
        ExecuteReply::Busy(_) => panic!("{what}: handed back busy"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_its_limit_queues_the_next_and_hands_back_the_rest() {
    let limits = AgentLimits {
        max_in_flight: 2,
        max_waiting: 1,
    };
    let node = start(limits, 1).await;
    let record = agents(&node.ctx, Some("executor")).await.remove(0);
    let agent = record.agent.clone().expect("live agent");
    let works: Vec<Work> = (0..4).map(|_| sleep_long()).collect();
    let cancels: Vec<CancellationToken> = works.iter().map(|w| w.cancel.clone()).collect();
    let mut handed: Vec<_> = works.into_iter().map(|w| hand(&agent, w)).collect();

    // The fourth finds two running and one waiting: it comes back, never started.
    let (_, fourth) = handed.pop().expect("four");
    match within("the fourth step's answer", fourth)
        .await
        .expect("an answer")
    {
        ExecuteReply::Busy(work) => assert_eq!(work.step.tool, "sleep"),
        ExecuteReply::Done(r) => panic!("the fourth step was not handed back: {r:?}"),
    }
    let [(s1, r1), (s2, r2), (mut s3, r3)] = <[_; 3]>::try_from(handed).ok().expect("three");
    within("the first step's start", s1).await.expect("started");
    within("the second step's start", s2)
        .await
        .expect("started");
    assert!(
        s3.try_recv().is_err(),
        "the third step must wait for a slot"
    );
    let id = record.identity.instance_id.clone();
    eventually("a load of 3 (two running, one waiting)", async || {
        (load_of(&node.ctx, &id).await == 3).then_some(())
    })
    .await;

    // A slot frees: the waiting step takes it.
    cancels[0].cancel();
    assert_eq!(done("the first step", r1).await, Err(ToolError::Cancelled));
    within("the third step's start", s3).await.expect("started");
    cancels[1].cancel();
    cancels[2].cancel();
    assert_eq!(done("the second step", r2).await, Err(ToolError::Cancelled));
    assert_eq!(done("the third step", r3).await, Err(ToolError::Cancelled));
    eventually("a load of 0", async || {
        (load_of(&node.ctx, &id).await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_work_panics_answers_and_frees_its_slot() {
    // One slot and no queue: a slot that leaked would send the next step back busy.
    let limits = AgentLimits {
        max_in_flight: 1,
        max_waiting: 0,
    };
    let node = start(limits, 1).await;
    let record = agents(&node.ctx, Some("memory")).await.remove(0);
    let agent = record.agent.clone().expect("live agent");

    let put = work("memory", json!({"op": "put", "key": "k", "value": "v"}));
    let (_, reply) = hand(&agent, put);
    let err = done("the panicking step", reply).await.unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");

    let get = work("memory", json!({"op": "get", "key": "k"}));
    let (_, reply) = hand(&agent, get);
    let err = done("the next step", reply).await.unwrap_err();
    assert!(err.to_string().contains("no memory entry"), "{err}");
    let id = record.identity.instance_id.clone();
    eventually("a load of 0", async || {
        (load_of(&node.ctx, &id).await == 0).then_some(())
    })
    .await;
    let status = call_t!(agent, AgentMsg::Status, CALL_MS).expect("the agent answers");
    assert_eq!(status.state, Lifecycle::Active);
    assert_eq!(status.current_work, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_waits_for_room_when_every_agent_is_full() {
    let limits = AgentLimits {
        max_in_flight: 1,
        max_waiting: 0,
    };
    let node = start(limits, 1).await;
    let record = agents(&node.ctx, Some("executor")).await.remove(0);
    let stats = node
        .ctx
        .directory
        .get(record.actor_id)
        .expect("the executor in the directory")
        .stats;

    let long = sleep_long();
    let stop_long = long.cancel.clone();
    let ctx = node.ctx.clone();
    let first = tokio::spawn(async move { coordinator::attempt(&ctx, long).await });
    eventually("the long step to run", async || stats.work()).await;
    // The agent handles nothing else while the long step runs, so its next message is the
    // second step's hand-off, which it must send back: it has no room.
    let before = stats.messages();
    let ctx = node.ctx.clone();
    let second = tokio::spawn(async move {
        coordinator::attempt(&ctx, work("echo", json!({"text": "x"}))).await
    });
    eventually("the second step to be handed over", async || {
        (stats.messages() > before).then_some(())
    })
    .await;
    assert!(!second.is_finished(), "a full agent must not fail the step");

    stop_long.cancel();
    let first = within("the long step", first).await.expect("joined");
    assert_eq!(first.result, Err(ToolError::Cancelled));
    let second = within("the second step", second).await.expect("joined");
    assert_eq!(second.result.map(|o| o.text), Ok("x".to_string()));
    assert_eq!(second.agent.map(|a| a.0), Some(record.identity.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_never_picks_an_open_circuit_even_when_none_is_healthy() {
    let node = start(AgentLimits::default(), 3).await;
    let registry = node.ctx.registry().expect("registry");
    let executors = agents(&node.ctx, Some("executor")).await;
    assert_eq!(executors.len(), 3);
    for e in &executors {
        let instance_id = e.identity.instance_id.clone();
        registry
            .cast(RegistryMsg::SetHealth {
                instance_id,
                healthy: false,
            })
            .expect("cast");
    }
    // The victim is the least loaded; its circuit opens after five unanswered hand-offs.
    let open = |id: &str| {
        for _ in 0..5 {
            let instance_id = id.to_string();
            let ok = false;
            registry
                .cast(RegistryMsg::ReportOutcome { instance_id, ok })
                .expect("cast");
        }
    };
    let victim = executors[0].identity.instance_id.clone();
    open(&victim);
    for e in &executors[1..] {
        let instance_id = e.identity.instance_id.clone();
        registry
            .cast(RegistryMsg::SetLoad {
                instance_id,
                load: 100,
            })
            .expect("cast");
    }
    for _ in 0..10 {
        let (picked, _) = router::route(&node.ctx, "tool.echo")
            .await
            .expect("an executor whose circuit is closed");
        assert!(!picked.healthy, "{picked:?}");
        assert_ne!(
            picked.identity.instance_id, victim,
            "routed to an agent whose circuit is open"
        );
    }
    // Discovery shows each circuit as it is now.
    let discovered =
        call_t!(registry, RegistryMsg::Discover, CALL_MS, "tool.echo".into()).expect("discover");
    let shown = discovered
        .iter()
        .find(|r| r.identity.instance_id == victim)
        .expect("the victim");
    assert_eq!(shown.circuit, actors::llm::BreakerState::Open);

    // Every circuit open: no agent, rather than one that does not answer.
    for e in &executors[1..] {
        open(&e.identity.instance_id);
    }
    let refused = router::route(&node.ctx, "tool.echo").await;
    assert!(
        matches!(refused, Err(router::RouteError::NoAgent(_))),
        "{:?}",
        refused.map(|(r, _)| r)
    );
}
