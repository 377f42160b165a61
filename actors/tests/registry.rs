//! The agent registry and the agents of a whole node tree: a root supervisor with the
//! registry and the default domains, as the node starts it.
//!
//! Asynchronous outcomes are awaited by polling with a generous deadline; nothing asserts
//! on elapsed time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actors::NodeContext;
use actors::agent::{AgentMsg, Lifecycle};
use actors::directory::SlotState;
use actors::domain::{DomainDefaults, DomainSpec, default_domains};
use actors::registry::{AgentFilter, AgentRecord, RegistryMsg};
use actors::roles::Role;
use actors::root::{RootPolicy, root_args};
use actors::supervisor::{Backoff, Escalation, Strategy, Supervisor, SupervisorMsg};
use ractor::{ActorRef, call_t};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);
const CALL_MS: u64 = 5_000;

struct Node {
    ctx: Arc<NodeContext>,
    domains: Vec<DomainSpec>,
    root: ActorRef<SupervisorMsg>,
    handle: JoinHandle<()>,
    _escalation: oneshot::Receiver<Escalation>,
}

impl Node {
    /// Starts the default domains under a root and waits until every agent is Active.
    async fn start() -> Node {
        let ctx = NodeContext::new("test");
        let domains = default_domains();
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
            agent_shutdown: Duration::from_secs(2),
        };
        let (args, escalation) = root_args(&ctx, policy, Vec::new(), &domains, defaults);
        let (root, handle) = Supervisor::start(args).await.expect("root starts");
        let node = Node {
            ctx,
            domains,
            root,
            handle,
            _escalation: escalation,
        };
        let total = node.total();
        assert_eq!(total, 13, "the default domains changed; update the tests");
        node.all_active(total).await;
        node
    }

    /// How many agents the domains configure.
    fn total(&self) -> usize {
        self.domains
            .iter()
            .flat_map(|d| &d.agents)
            .map(|a| a.instances as usize)
            .sum()
    }

    fn registry(&self) -> ActorRef<RegistryMsg> {
        self.ctx.registry().expect("a registry is running")
    }

    /// Waits until `n` agents are Active and none in any other live state.
    async fn all_active(&self, n: usize) -> BTreeMap<Lifecycle, usize> {
        let ctx = self.ctx.clone();
        eventually(&format!("{n} active agents"), async || {
            let registry = ctx.registry()?;
            let counts = call_t!(registry, RegistryMsg::Counts, CALL_MS).ok()?;
            let settled = counts.get(&Lifecycle::Active) == Some(&n)
                && [
                    Lifecycle::Registering,
                    Lifecycle::Draining,
                    Lifecycle::Suspended,
                ]
                .iter()
                .all(|l| counts.get(l) == Some(&0));
            settled.then_some(counts)
        })
        .await
    }

    async fn counts(&self) -> BTreeMap<Lifecycle, usize> {
        call_t!(self.registry(), RegistryMsg::Counts, CALL_MS).expect("Counts answers")
    }

    async fn list(&self, filter: AgentFilter) -> Vec<AgentRecord> {
        call_t!(self.registry(), RegistryMsg::List, CALL_MS, filter).expect("List answers")
    }

    async fn resolve(&self, instance_id: &str) -> Option<AgentRecord> {
        call_t!(
            self.registry(),
            RegistryMsg::Resolve,
            CALL_MS,
            instance_id.to_string()
        )
        .expect("Resolve answers")
    }

    async fn discover(&self, capability: &str) -> Vec<AgentRecord> {
        call_t!(
            self.registry(),
            RegistryMsg::Discover,
            CALL_MS,
            capability.to_string()
        )
        .expect("Discover answers")
    }

    async fn find_healthy(&self, capability: &str) -> Option<AgentRecord> {
        call_t!(
            self.registry(),
            RegistryMsg::FindHealthy,
            CALL_MS,
            capability.to_string()
        )
        .expect("FindHealthy answers")
    }

    /// The live record of the agent named `name` (stable across restarts).
    async fn named(&self, name: &str) -> AgentRecord {
        let mut found: Vec<AgentRecord> = self
            .list(AgentFilter::default())
            .await
            .into_iter()
            .filter(|r| r.identity.name == name && r.state != Lifecycle::Terminated)
            .collect();
        assert_eq!(found.len(), 1, "live agents named {name}: {found:?}");
        found.remove(0)
    }

    /// Stops the whole tree and checks that nothing is left in the directory.
    async fn stop(self) {
        self.root
            .stop_and_wait(None, Some(Duration::from_secs(30)))
            .await
            .expect("root stops");
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("root task ends")
            .expect("root task did not panic");
        assert!(
            self.ctx.directory.is_empty(),
            "left in the directory: {}",
            self.ctx.directory.len()
        );
    }
}

/// Polls `check` until it yields a value, failing the test after [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn names(records: &[AgentRecord]) -> Vec<&str> {
    records.iter().map(|r| r.identity.name.as_str()).collect()
}

fn sorted_names(records: &[AgentRecord]) -> Vec<&str> {
    let mut out = names(records);
    out.sort();
    out
}

fn filter() -> AgentFilter {
    AgentFilter::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_role_capability_domain_and_state() {
    let node = Node::start().await;

    let all = node.list(filter()).await;
    assert_eq!(all.len(), 13);
    assert!(
        all.iter()
            .all(|r| r.state == Lifecycle::Active && r.healthy)
    );
    assert!(all.iter().all(|r| r.identity.node == "test"));
    let ids: BTreeSet<&str> = all
        .iter()
        .map(|r| r.identity.instance_id.as_str())
        .collect();
    assert_eq!(ids.len(), 13, "instance ids are unique");

    let executors = node
        .list(AgentFilter {
            role: Some("executor".into()),
            ..filter()
        })
        .await;
    assert_eq!(
        names(&executors),
        ["executor-1", "executor-2", "executor-3", "executor-4"]
    );
    assert!(
        executors
            .iter()
            .all(|r| r.identity.role == Role::Executor && r.identity.domain == "execution")
    );

    let echo = node
        .list(AgentFilter {
            capability: Some("tool.echo".into()),
            ..filter()
        })
        .await;
    assert_eq!(
        names(&echo),
        ["executor-1", "executor-2", "executor-3", "executor-4"]
    );
    let kv = node
        .list(AgentFilter {
            capability: Some("memory.kv".into()),
            ..filter()
        })
        .await;
    assert_eq!(names(&kv), ["memory-1"]);
    assert!(
        node.list(AgentFilter {
            capability: Some("no.such.capability".into()),
            ..filter()
        })
        .await
        .is_empty()
    );

    let orchestration = node
        .list(AgentFilter {
            domain: Some("orchestration".into()),
            ..filter()
        })
        .await;
    assert_eq!(
        names(&orchestration),
        [
            "coordinator-1",
            "coordinator-2",
            "critic-1",
            "planner-1",
            "router-1"
        ]
    );

    let workers = node
        .list(AgentFilter {
            role: Some("worker".into()),
            domain: Some("execution".into()),
            ..filter()
        })
        .await;
    assert_eq!(names(&workers), ["worker-1", "worker-2"]);
    assert!(
        node.list(AgentFilter {
            role: Some("worker".into()),
            domain: Some("knowledge".into()),
            ..filter()
        })
        .await
        .is_empty()
    );

    let active = AgentFilter {
        state: Some(Lifecycle::Active),
        ..filter()
    };
    let draining = AgentFilter {
        state: Some(Lifecycle::Draining),
        ..filter()
    };
    assert_eq!(node.list(active.clone()).await.len(), 13);
    assert!(node.list(draining.clone()).await.is_empty());

    // An agent that drains shows under the Draining filter and no longer under Active.
    let worker = node.named("worker-1").await;
    worker
        .agent
        .as_ref()
        .expect("live record has its actor")
        .cast(AgentMsg::SetLifecycle(Lifecycle::Draining))
        .expect("agent reachable");
    let drained = eventually("worker-1 draining", async || {
        let list = node.list(draining.clone()).await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(names(&drained), ["worker-1"]);
    assert_eq!(drained[0].identity.instance_id, worker.identity.instance_id);
    let active_now = node.list(active).await;
    assert_eq!(active_now.len(), 12);
    assert!(!names(&active_now).contains(&"worker-1"));
    let counts = node.counts().await;
    assert_eq!(counts[&Lifecycle::Active], 12);
    assert_eq!(counts[&Lifecycle::Draining], 1);

    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_by_instance_id() {
    let node = Node::start().await;
    for record in node.list(filter()).await {
        let found = node
            .resolve(&record.identity.instance_id)
            .await
            .unwrap_or_else(|| panic!("{} resolves", record.identity.name));
        assert_eq!(found.identity, record.identity);
        assert_eq!(found.actor_id, record.actor_id);
        assert_eq!(found.capabilities, record.capabilities);
    }
    assert!(node.resolve("no-such-instance").await.is_none());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_by_capability() {
    let node = Node::start().await;
    let route = node.discover("route").await;
    assert_eq!(names(&route), ["router-1"]);
    assert_eq!(route[0].identity.role, Role::Router);

    let shell = node.discover("tool.shell").await;
    assert_eq!(
        sorted_names(&shell),
        ["executor-1", "executor-2", "executor-3", "executor-4"]
    );
    assert!(
        shell
            .iter()
            .all(|r| r.capabilities.iter().any(|c| c == "tool.shell"))
    );

    let heartbeat = node.discover("health.heartbeat").await;
    assert_eq!(names(&heartbeat), ["monitor-1"]);
    assert!(node.discover("no.such.capability").await.is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_healthy_picks_least_loaded_healthy_active_agent() {
    let node = Node::start().await;
    let registry = node.registry();
    let mut ids = BTreeMap::new();
    for (name, load) in [
        ("executor-1", 5),
        ("executor-2", 1),
        ("executor-3", 3),
        ("executor-4", 2),
    ] {
        let id = node.named(name).await.identity.instance_id;
        registry
            .cast(RegistryMsg::SetLoad {
                instance_id: id.clone(),
                load,
            })
            .unwrap();
        ids.insert(name, id);
    }
    let best = |r: Option<AgentRecord>| r.map(|r| r.identity.name);

    assert_eq!(
        best(node.find_healthy("tool.echo").await).as_deref(),
        Some("executor-2")
    );
    let picked = node.find_healthy("tool.echo").await.unwrap();
    assert_eq!(picked.load, 1);

    // An unhealthy agent is skipped.
    registry
        .cast(RegistryMsg::SetHealth {
            instance_id: ids["executor-2"].clone(),
            healthy: false,
        })
        .unwrap();
    assert_eq!(
        best(node.find_healthy("tool.echo").await).as_deref(),
        Some("executor-4")
    );

    // A draining agent is skipped (the agent tells the registry itself).
    let e4 = node.named("executor-4").await;
    e4.agent
        .as_ref()
        .unwrap()
        .cast(AgentMsg::SetLifecycle(Lifecycle::Draining))
        .unwrap();
    eventually("executor-4 draining", async || {
        let r = node.resolve(&e4.identity.instance_id).await?;
        (r.state == Lifecycle::Draining).then_some(())
    })
    .await;
    assert_eq!(
        best(node.find_healthy("tool.echo").await).as_deref(),
        Some("executor-3")
    );

    // Healthy again: the least loaded wins again.
    registry
        .cast(RegistryMsg::SetHealth {
            instance_id: ids["executor-2"].clone(),
            healthy: true,
        })
        .unwrap();
    assert_eq!(
        best(node.find_healthy("tool.echo").await).as_deref(),
        Some("executor-2")
    );

    // No healthy active agent: none.
    for id in ids.values() {
        registry
            .cast(RegistryMsg::SetHealth {
                instance_id: id.clone(),
                healthy: false,
            })
            .unwrap();
    }
    assert!(node.find_healthy("tool.echo").await.is_none());
    assert!(node.find_healthy("no.such.capability").await.is_none());
    // The only router, least loaded by default.
    assert_eq!(
        best(node.find_healthy("route").await).as_deref(),
        Some("router-1")
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_is_terminated_and_its_restart_registers_anew() {
    let node = Node::start().await;
    let old = node.named("executor-1").await;
    let entry = node
        .ctx
        .directory
        .get(old.actor_id)
        .expect("agent in the directory");
    entry.cell.kill();

    // The registry learns of the death through its monitor.
    let dead = eventually("old instance terminated", async || {
        let r = node.resolve(&old.identity.instance_id).await?;
        (r.state == Lifecycle::Terminated).then_some(r)
    })
    .await;
    assert_eq!(dead.exit_reason.as_deref(), Some("killed"));
    assert!(dead.agent.is_none());
    assert!(!dead.healthy);

    // The domain supervisor restarts it: a new instance under the same name.
    let new = eventually("executor-1 restarted and active", async || {
        let list = node
            .list(AgentFilter {
                role: Some("executor".into()),
                state: Some(Lifecycle::Active),
                ..filter()
            })
            .await;
        list.into_iter().find(|r| {
            r.identity.name == "executor-1" && r.identity.instance_id != old.identity.instance_id
        })
    })
    .await;
    assert_ne!(new.actor_id, old.actor_id);
    assert_eq!(new.identity.domain, "execution");
    let status = call_t!(
        new.agent.as_ref().expect("live record has its actor"),
        AgentMsg::Status,
        CALL_MS
    )
    .expect("Status answers");
    assert_eq!(status.restarts, 1);
    assert_eq!(status.identity, new.identity);
    assert_eq!(status.state, Lifecycle::Active);

    let counts = node.all_active(13).await;
    assert_eq!(counts[&Lifecycle::Terminated], 1);
    // Discovery only offers the live instance.
    let echo = node.discover("tool.echo").await;
    assert_eq!(echo.len(), 4);
    assert!(
        echo.iter()
            .all(|r| r.identity.instance_id != old.identity.instance_id)
    );
    // The supervisor's slot shows the restart.
    let (_, slot) = node
        .ctx
        .directory
        .parent_of(new.actor_id)
        .expect("the new agent has a supervisor");
    assert_eq!(slot, "executor-1");
    let tree = node
        .ctx
        .directory
        .tree(node.root.get_id().pid())
        .expect("root in the directory");
    let execution = tree
        .children
        .iter()
        .find(|c| c.name == "execution")
        .expect("execution domain");
    let e1 = execution
        .children
        .iter()
        .find(|c| c.name == "executor-1")
        .expect("executor-1 slot");
    assert_eq!(e1.id, new.actor_id.to_string());
    assert_eq!(e1.restarts, 1);
    assert_eq!(e1.last_error.as_deref(), Some("killed"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_registry_is_restarted_and_agents_reregister() {
    let node = Node::start().await;
    let before: BTreeSet<String> = node
        .list(filter())
        .await
        .into_iter()
        .map(|r| r.identity.instance_id)
        .collect();
    assert_eq!(before.len(), 13);
    let old = node.registry();
    old.get_cell().kill();

    let ctx = node.ctx.clone();
    let old_pid = old.get_id().pid();
    eventually("a new registry", async || {
        ctx.registry()
            .filter(|r| r.get_id().pid() != old_pid)
            .map(|_| ())
    })
    .await;
    let counts = node.all_active(13).await;
    assert_eq!(counts[&Lifecycle::Terminated], 0);

    // The same agents, re-registered rather than restarted.
    let after: BTreeSet<String> = node
        .list(filter())
        .await
        .into_iter()
        .map(|r| r.identity.instance_id)
        .collect();
    assert_eq!(after, before);
    let root_children = call_t!(node.root, SupervisorMsg::Which, CALL_MS).expect("Which");
    for child in &root_children {
        assert_eq!(child.state, SlotState::Running, "{child:?}");
        let expected = u32::from(child.id == "registry");
        assert_eq!(child.restarts, expected, "{child:?}");
    }

    // The new registry monitors the re-registered agents: a death is still noticed.
    let victim = node.named("memory-1").await;
    node.ctx
        .directory
        .get(victim.actor_id)
        .expect("agent in the directory")
        .cell
        .kill();
    eventually("memory-1 terminated in the new registry", async || {
        let r = node.resolve(&victim.identity.instance_id).await?;
        (r.state == Lifecycle::Terminated).then_some(())
    })
    .await;
    node.all_active(13).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_runs_in_the_default_domains_and_answers_status() {
    let node = Node::start().await;
    for role in Role::ALL {
        let configured: u32 = node
            .domains
            .iter()
            .flat_map(|d| &d.agents)
            .filter(|a| a.role == role)
            .map(|a| a.instances)
            .sum();
        assert!(configured >= 1, "{role} is not in the default domains");
        let records = node
            .list(AgentFilter {
                role: Some(role.as_str().into()),
                ..filter()
            })
            .await;
        assert_eq!(records.len(), configured as usize, "{role}");
        for record in records {
            let agent = record.agent.as_ref().expect("live record has its actor");
            let status = call_t!(agent, AgentMsg::Status, CALL_MS).expect("agent answers Status");
            assert_eq!(status.identity, record.identity);
            assert_eq!(status.identity.role, role);
            assert_eq!(status.state, Lifecycle::Active);
            assert_eq!(status.restarts, 0);
            for capability in role.capabilities() {
                assert!(
                    status.capabilities.iter().any(|c| c == capability),
                    "{role} lacks {capability}: {:?}",
                    status.capabilities
                );
            }
            assert_eq!(status.capabilities, record.capabilities);
        }
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_agent_is_terminated_with_its_reason_and_restarted() {
    let node = Node::start().await;
    let old = node.named("planner-1").await;
    old.agent
        .as_ref()
        .expect("live record has its actor")
        .cast(AgentMsg::Crash("injected".into()))
        .expect("agent reachable");
    let dead = eventually("planner-1 terminated", async || {
        let r = node.resolve(&old.identity.instance_id).await?;
        (r.state == Lifecycle::Terminated).then_some(r)
    })
    .await;
    assert!(
        dead.exit_reason
            .as_deref()
            .is_some_and(|r| r.contains("crash requested: injected")),
        "{dead:?}"
    );
    node.all_active(13).await;
    let new = node.named("planner-1").await;
    assert_ne!(new.identity.instance_id, old.identity.instance_id);
    let status = call_t!(new.agent.as_ref().unwrap(), AgentMsg::Status, CALL_MS).unwrap();
    assert_eq!(status.restarts, 1);
    node.stop().await;
}
