//! The agent registry: identities, capabilities, lifecycle state, health and load of every
//! agent of this node.
//!
//! Agents register themselves when they start; the registry then *monitors* them, so it
//! learns of a death from ractor's supervision events and marks the agent `Terminated`
//! without trusting the agent to say so. A restarted registry asks every live agent in the
//! directory to register again, so a registry crash loses no agents.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use serde::Serialize;

use crate::agent::{AgentIdentity, AgentMsg, Lifecycle};
use crate::context::NodeContext;
use crate::directory::{ActorKind, ActorMeta, ActorStats};
use crate::events::Event;
use crate::llm::{BreakerConfig, BreakerState, CircuitBreaker, Outcome};

/// How many terminated agents are remembered (for listing and post-mortems).
const TERMINATED_KEPT: usize = 1024;

/// What the registry knows of one agent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentRecord {
    #[serde(flatten)]
    pub identity: AgentIdentity,
    pub actor_id: u64,
    pub capabilities: Vec<String>,
    pub state: Lifecycle,
    pub healthy: bool,
    /// Steps the agent runs and holds waiting: what the Router balances on.
    pub load: u32,
    /// The agent's circuit: `open` after too many failed hand-offs; the Router skips it.
    pub circuit: BreakerState,
    #[serde(serialize_with = "crate::time::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub registered_at: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    #[serde(skip)]
    pub agent: Option<ActorRef<AgentMsg>>,
}

/// Filters for listing agents; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    pub role: Option<String>,
    pub capability: Option<String>,
    pub domain: Option<String>,
    pub state: Option<Lifecycle>,
}

impl AgentFilter {
    fn matches(&self, r: &AgentRecord) -> bool {
        self.role
            .as_deref()
            .is_none_or(|v| r.identity.role.as_str() == v)
            && self
                .domain
                .as_deref()
                .is_none_or(|v| r.identity.domain == v)
            && self.state.is_none_or(|v| r.state == v)
            && self
                .capability
                .as_deref()
                .is_none_or(|v| r.capabilities.iter().any(|c| c == v))
    }
}

pub enum RegistryMsg {
    Register {
        identity: AgentIdentity,
        capabilities: Vec<String>,
        state: Lifecycle,
        agent: ActorRef<AgentMsg>,
    },
    SetState {
        instance_id: String,
        state: Lifecycle,
    },
    SetHealth {
        instance_id: String,
        healthy: bool,
    },
    SetLoad {
        instance_id: String,
        load: u32,
    },
    /// Whether handing work to the agent worked (it answered), for its circuit breaker.
    ReportOutcome {
        instance_id: String,
        ok: bool,
    },
    /// An agent by instance id (live or recently terminated).
    Resolve(String, RpcReplyPort<Option<AgentRecord>>),
    /// Live agents offering a capability.
    Discover(String, RpcReplyPort<Vec<AgentRecord>>),
    /// The least loaded healthy active agent offering a capability, circuit not open.
    FindHealthy(String, RpcReplyPort<Option<AgentRecord>>),
    /// What the Router takes: like `FindHealthy`, but when no agent is healthy, the least
    /// loaded active one whose circuit is not open.
    FindAvailable(String, RpcReplyPort<Option<AgentRecord>>),
    List(AgentFilter, RpcReplyPort<Vec<AgentRecord>>),
    /// How many agents are in each lifecycle state.
    Counts(RpcReplyPort<BTreeMap<Lifecycle, usize>>),
}

// ractor's `cluster` feature (for ractor_cluster) drops the blanket `Message` impl.
impl ractor::Message for RegistryMsg {}

pub struct Registry;

#[derive(Default)]
pub struct RegistryState {
    live: HashMap<String, AgentRecord>,
    by_pid: HashMap<u64, String>,
    by_capability: HashMap<String, BTreeSet<String>>,
    terminated: VecDeque<AgentRecord>,
    /// One circuit breaker per live agent.
    breakers: HashMap<String, CircuitBreaker>,
    /// Agents per lifecycle state (live ones; `Terminated` counts those remembered).
    counts: BTreeMap<Lifecycle, usize>,
    ctx: Option<Arc<NodeContext>>,
    stats: Arc<ActorStats>,
}

impl Registry {
    pub async fn spawn_linked(
        ctx: Arc<NodeContext>,
        supervisor: ActorCell,
    ) -> Result<ActorCell, SpawnErr> {
        Actor::spawn_linked(None, Registry, ctx, supervisor)
            .await
            .map(|(r, _)| r.get_cell())
    }
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let stats = ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: "registry".into(),
                kind: ActorKind::Registry,
                role: Some("registry".into()),
                domain: None,
            },
        );
        ctx.set_registry(Some(myself.clone()));
        // Agents that outlived a previous registry register again.
        for entry in ctx.directory.filter(|e| e.meta.kind == ActorKind::Agent) {
            let _ = ActorRef::<AgentMsg>::from(entry.cell).cast(AgentMsg::Reregister);
        }
        Ok(RegistryState {
            ctx: Some(ctx),
            stats,
            ..Default::default()
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ctx) = &state.ctx {
            ctx.set_registry(None);
            ctx.directory.leave(myself.get_id().pid());
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.handled();
        match msg {
            RegistryMsg::Register {
                identity,
                capabilities,
                state: lifecycle,
                agent,
            } => state.register(&myself, identity, capabilities, lifecycle, agent),
            RegistryMsg::SetState {
                instance_id,
                state: next,
            } => {
                state.update(&instance_id, |r| r.state = next);
            }
            RegistryMsg::SetHealth {
                instance_id,
                healthy,
            } => {
                state.update(&instance_id, |r| r.healthy = healthy);
            }
            RegistryMsg::SetLoad { instance_id, load } => {
                state.update(&instance_id, |r| r.load = load);
            }
            RegistryMsg::Resolve(id, reply) => {
                let found = state
                    .live
                    .get(&id)
                    .or_else(|| {
                        state
                            .terminated
                            .iter()
                            .find(|r| r.identity.instance_id == id)
                    })
                    .map(|r| state.snapshot(r, Instant::now()));
                let _ = reply.send(found);
            }
            RegistryMsg::Discover(capability, reply) => {
                let now = Instant::now();
                let found = state
                    .with_capability(&capability)
                    .map(|r| state.snapshot(r, now))
                    .collect();
                let _ = reply.send(found);
            }
            RegistryMsg::FindHealthy(capability, reply) => {
                let _ = reply.send(state.find(&capability, true));
            }
            RegistryMsg::FindAvailable(capability, reply) => {
                let found = state
                    .find(&capability, true)
                    .or_else(|| state.find(&capability, false));
                let _ = reply.send(found);
            }
            RegistryMsg::ReportOutcome { instance_id, ok } => {
                let now = Instant::now();
                if let Some(breaker) = state.breakers.get(&instance_id)
                    && let Ok(permit) = breaker.try_acquire(now)
                {
                    permit.record(
                        if ok {
                            Outcome::Success
                        } else {
                            Outcome::Failure
                        },
                        now,
                    );
                }
            }
            RegistryMsg::List(filter, reply) => {
                let mut out: Vec<AgentRecord> = state
                    .live
                    .values()
                    .chain(state.terminated.iter())
                    .filter(|r| filter.matches(r))
                    .map(|r| state.snapshot(r, Instant::now()))
                    .collect();
                out.sort_by(|a, b| {
                    (&a.identity.domain, &a.identity.name, a.registered_at).cmp(&(
                        &b.identity.domain,
                        &b.identity.name,
                        b.registered_at,
                    ))
                });
                let _ = reply.send(out);
            }
            RegistryMsg::Counts(reply) => {
                let _ = reply.send(state.counts());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Only monitored agents send us events; the registry supervises no one.
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.unwrap_or_else(|| "stopped".into());
                state.terminate(cell.get_id().pid(), reason);
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state.terminate(cell.get_id().pid(), err.to_string());
            }
            _ => {}
        }
        Ok(())
    }
}

impl RegistryState {
    fn register(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        identity: AgentIdentity,
        capabilities: Vec<String>,
        lifecycle: Lifecycle,
        agent: ActorRef<AgentMsg>,
    ) {
        let pid = agent.get_id().pid();
        let id = identity.instance_id.clone();
        if self.live.contains_key(&id) {
            return;
        }
        for capability in &capabilities {
            self.by_capability
                .entry(capability.clone())
                .or_default()
                .insert(id.clone());
        }
        self.by_pid.insert(pid, id.clone());
        self.breakers
            .insert(id.clone(), CircuitBreaker::new(&BreakerConfig::default()));
        let record = AgentRecord {
            identity,
            actor_id: pid,
            capabilities,
            state: lifecycle,
            healthy: true,
            load: 0,
            circuit: BreakerState::Closed,
            registered_at: SystemTime::now(),
            exit_reason: None,
            agent: Some(agent.clone()),
        };
        self.announce(&record);
        self.count(None, Some(lifecycle));
        self.live.insert(id, record);
        myself.monitor(agent.get_cell());
        // It may have died before the monitor was in place; then no event will come.
        if agent.get_status() == ractor::ActorStatus::Stopped {
            self.terminate(pid, "stopped before registration completed".into());
        }
    }

    fn update(&mut self, instance_id: &str, change: impl FnOnce(&mut AgentRecord)) {
        if let Some(record) = self.live.get_mut(instance_id) {
            let before = record.state;
            change(record);
            let after = record.state;
            if after != before {
                let record = record.clone();
                self.announce(&record);
                self.count(Some(before), Some(after));
            }
        }
    }

    fn terminate(&mut self, pid: u64, reason: String) {
        let Some(id) = self.by_pid.remove(&pid) else {
            return;
        };
        let Some(mut record) = self.live.remove(&id) else {
            return;
        };
        self.breakers.remove(&id);
        for capability in &record.capabilities {
            if let Some(ids) = self.by_capability.get_mut(capability) {
                ids.remove(&id);
            }
        }
        self.count(Some(record.state), Some(Lifecycle::Terminated));
        record.state = Lifecycle::Terminated;
        record.healthy = false;
        record.load = 0;
        record.exit_reason = Some(reason);
        record.agent = None;
        self.announce(&record);
        if self.terminated.len() == TERMINATED_KEPT {
            self.terminated.pop_front();
            self.count(Some(Lifecycle::Terminated), None);
        }
        self.terminated.push_back(record);
    }

    /// The least loaded active agent offering `capability` whose circuit is not open;
    /// only healthy ones when `healthy`.
    fn find(&self, capability: &str, healthy: bool) -> Option<AgentRecord> {
        let now = Instant::now();
        self.with_capability(capability)
            .filter(|r| r.state == Lifecycle::Active && (r.healthy || !healthy))
            .filter(|r| self.circuit(&r.identity.instance_id, now) != BreakerState::Open)
            .min_by_key(|r| r.load)
            .map(|r| self.snapshot(r, now))
    }

    fn circuit(&self, instance_id: &str, now: Instant) -> BreakerState {
        self.breakers
            .get(instance_id)
            .map_or(BreakerState::Closed, |b| b.state(now))
    }

    /// A copy of the record with its circuit as of `now`.
    fn snapshot(&self, record: &AgentRecord, now: Instant) -> AgentRecord {
        let mut record = record.clone();
        if record.state != Lifecycle::Terminated {
            record.circuit = self.circuit(&record.identity.instance_id, now);
        }
        record
    }

    fn with_capability<'a>(&'a self, capability: &str) -> impl Iterator<Item = &'a AgentRecord> {
        self.by_capability
            .get(capability)
            .into_iter()
            .flatten()
            .filter_map(|id| self.live.get(id))
    }

    fn counts(&self) -> BTreeMap<Lifecycle, usize> {
        Lifecycle::ALL
            .into_iter()
            .map(|l| (l, self.counts.get(&l).copied().unwrap_or(0)))
            .collect()
    }

    /// Moves one agent between state counts and updates the `ms_agents` gauge.
    fn count(&mut self, from: Option<Lifecycle>, to: Option<Lifecycle>) {
        for (state, delta) in [(from, -1i64), (to, 1)] {
            if let Some(state) = state {
                let n = self.counts.entry(state).or_default();
                *n = n.saturating_add_signed(delta as isize);
                metrics::gauge!("ms_agents", "state" => state.as_str()).set(*n as f64);
            }
        }
    }

    fn announce(&self, record: &AgentRecord) {
        if let Some(ctx) = &self.ctx {
            ctx.events.publish(Event::AgentState {
                agent: record.identity.name.clone(),
                role: record.identity.role.as_str().to_string(),
                state: record.state.as_str().to_string(),
            });
        }
    }
}
