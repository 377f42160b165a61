//! The Monitor role against a real tree: a stuck agent (its mailbox not moving) is marked
//! unhealthy, and killed after `kill_after` missed heartbeats so its supervisor restarts it;
//! an agent that comes back in time is marked healthy again.

use std::time::Duration;

use actors::NodeContext;
use actors::agent::{AgentMsg, Lifecycle};
use actors::domain::{DomainDefaults, default_domains};
use actors::events::Event;
use actors::registry::{AgentFilter, AgentRecord, RegistryMsg};
use actors::roles::monitor::MonitorSettings;
use actors::root::{RootPolicy, root_args};
use actors::supervisor::{Backoff, Strategy, Supervisor};
use ractor::call_t;

const DEADLINE: Duration = Duration::from_secs(20);

async fn start(settings: MonitorSettings) -> std::sync::Arc<NodeContext> {
    let ctx = NodeContext::new("monitored");
    ctx.set_monitor_settings(settings);
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
    let (args, _escalation) = root_args(&ctx, policy, Vec::new(), &default_domains(), defaults);
    // The escalation receiver may drop: these tests never exceed intensity.
    Supervisor::start(args).await.expect("root starts");
    ctx
}

async fn executors(ctx: &NodeContext) -> Vec<AgentRecord> {
    let registry = ctx.registry().expect("registry");
    let filter = AgentFilter {
        role: Some("executor".into()),
        ..Default::default()
    };
    call_t!(registry, RegistryMsg::List, 5_000, filter).expect("list")
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

async fn one_active_executor(ctx: &NodeContext) -> AgentRecord {
    eventually("four active executors", async || {
        let list = executors(ctx).await;
        let active: Vec<_> = list
            .into_iter()
            .filter(|a| a.state == Lifecycle::Active)
            .collect();
        (active.len() == 4).then(|| active[0].clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_agent_is_killed_and_restarted() {
    let ctx = start(MonitorSettings {
        heartbeat: Duration::from_millis(100),
        timeout: Duration::from_millis(50),
        kill_after: 3,
    })
    .await;
    let mut events = ctx.events.subscribe();
    let victim = one_active_executor(&ctx).await;
    let agent = victim.agent.clone().expect("live agent");
    agent
        .cast(AgentMsg::Hang(Duration::from_secs(3600)))
        .expect("cast");

    // Marked unhealthy first, then killed: the old instance is terminated by a kill and a
    // new instance of the same name is active with one restart.
    let mut saw_unhealthy = false;
    let replacement = eventually("the stuck executor replaced", async || {
        while let Ok(stamped) = events.try_recv() {
            if let Event::Health {
                agent,
                healthy: false,
                ..
            } = &stamped.event
                && *agent == victim.identity.name
            {
                saw_unhealthy = true;
            }
        }
        let list = executors(&ctx).await;
        let old = list
            .iter()
            .find(|a| a.identity.instance_id == victim.identity.instance_id)?;
        if old.state != Lifecycle::Terminated {
            return None;
        }
        list.into_iter().find(|a| {
            a.identity.name == victim.identity.name
                && a.state == Lifecycle::Active
                && a.identity.instance_id != victim.identity.instance_id
        })
    })
    .await;
    assert!(
        saw_unhealthy,
        "no health event for {}",
        victim.identity.name
    );
    assert!(replacement.healthy);
    let status = call_t!(
        replacement.agent.clone().expect("agent"),
        AgentMsg::Status,
        5_000
    )
    .expect("status");
    assert_eq!(status.restarts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_answers_again_is_healthy_again() {
    let ctx = start(MonitorSettings {
        heartbeat: Duration::from_millis(100),
        timeout: Duration::from_millis(50),
        kill_after: u32::MAX,
    })
    .await;
    let victim = one_active_executor(&ctx).await;
    let agent = victim.agent.clone().expect("live agent");
    agent
        .cast(AgentMsg::Hang(Duration::from_millis(700)))
        .expect("cast");
    let id = victim.identity.instance_id.clone();
    eventually("the hung executor marked unhealthy", async || {
        let list = executors(&ctx).await;
        list.iter()
            .find(|a| a.identity.instance_id == id && !a.healthy)
            .map(|_| ())
    })
    .await;
    // Not chosen while unhealthy.
    let registry = ctx.registry().expect("registry");
    for _ in 0..8 {
        let pick = call_t!(
            registry,
            RegistryMsg::FindHealthy,
            5_000,
            "tool.echo".to_string()
        )
        .expect("find");
        assert_ne!(pick.map(|p| p.identity.instance_id), Some(id.clone()));
    }
    eventually("the executor healthy again", async || {
        let list = executors(&ctx).await;
        list.iter()
            .find(|a| a.identity.instance_id == id && a.healthy && a.state == Lifecycle::Active)
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_circuit_opens_is_not_routed_to() {
    let ctx = start(MonitorSettings {
        heartbeat: Duration::from_secs(3600),
        timeout: Duration::from_secs(1),
        kill_after: u32::MAX,
    })
    .await;
    let victim = one_active_executor(&ctx).await;
    let id = victim.identity.instance_id.clone();
    let registry = ctx.registry().expect("registry");
    // Five hand-offs that got no answer (the breaker's minimum sample size).
    for _ in 0..5 {
        registry
            .cast(RegistryMsg::ReportOutcome {
                instance_id: id.clone(),
                ok: false,
            })
            .expect("cast");
    }
    let resolved = call_t!(registry, RegistryMsg::Resolve, 5_000, id.clone())
        .expect("resolve")
        .expect("known agent");
    assert_eq!(resolved.circuit, actors::llm::BreakerState::Open);
    for _ in 0..20 {
        let pick = call_t!(
            registry,
            RegistryMsg::FindHealthy,
            5_000,
            "tool.echo".to_string()
        )
        .expect("find")
        .expect("another executor");
        assert_ne!(
            pick.identity.instance_id, id,
            "routed to an agent whose circuit is open"
        );
        // Load the pick so least-loaded selection would otherwise reach the victim.
        registry
            .cast(RegistryMsg::SetLoad {
                instance_id: pick.identity.instance_id.clone(),
                load: 100,
            })
            .expect("cast");
    }
    // Another agent's successes leave its circuit closed.
    let other = executors(&ctx)
        .await
        .into_iter()
        .find(|a| a.identity.instance_id != id)
        .expect("another executor");
    registry
        .cast(RegistryMsg::ReportOutcome {
            instance_id: other.identity.instance_id.clone(),
            ok: true,
        })
        .expect("cast");
    let other = call_t!(
        registry,
        RegistryMsg::Resolve,
        5_000,
        other.identity.instance_id.clone()
    )
    .expect("resolve")
    .expect("known");
    assert_eq!(other.circuit, actors::llm::BreakerState::Closed);
}
