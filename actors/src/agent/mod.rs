//! The agent actor every role runs in: identity, lifecycle, counters, status, registration.
//!
//! What a role does lives in `roles/`; this file is what all roles share. An agent enters
//! itself in the directory and registers with the registry when it starts; the registry
//! monitors it, so its death is learned from ractor, not from the agent's word.
//!
//! Executors, workers and memory agents run steps; [`work`] says how many at once, where
//! the others wait, and how each slot is released even when a step panics.

mod work;

pub use work::{AgentLimits, ExecuteReply, Job};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use serde::{Deserialize, Serialize};

use crate::context::{NodeContext, Services};
use crate::directory::{ActorKind, ActorMeta, ActorStats};
use crate::registry::RegistryMsg;
use crate::roles::Role;
use crate::task::StepSpec;
use crate::tools::ToolError;
use tokio_util::sync::CancellationToken;
use work::{Runner, Slots};

/// Who an agent is. `instance_id` is new for every incarnation; `name` is stable across
/// restarts (it is the supervisor's child id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentIdentity {
    pub instance_id: String,
    pub name: String,
    pub domain: String,
    pub role: Role,
    pub node: String,
}

/// Agent lifecycle (seed 001): `Registering → Active → Draining → Suspended → Terminated`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Registering,
    Active,
    Draining,
    Suspended,
    Terminated,
}

impl Lifecycle {
    pub const ALL: [Lifecycle; 5] = [
        Lifecycle::Registering,
        Lifecycle::Active,
        Lifecycle::Draining,
        Lifecycle::Suspended,
        Lifecycle::Terminated,
    ];
    pub const ALLOWED: &'static str = "registering, active, draining, suspended, terminated";

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Registering => "registering",
            Lifecycle::Active => "active",
            Lifecycle::Draining => "draining",
            Lifecycle::Suspended => "suspended",
            Lifecycle::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Lifecycle> {
        Lifecycle::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// What an agent answers to a status request.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    pub identity: AgentIdentity,
    pub capabilities: Vec<String>,
    pub state: Lifecycle,
    pub messages_handled: u64,
    pub errors: u64,
    pub restarts: u32,
    pub current_work: Option<String>,
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub started_at: SystemTime,
}

pub enum AgentMsg {
    Status(RpcReplyPort<AgentStatus>),
    /// Moves the agent to `Draining`, `Suspended` or back to `Active`.
    SetLifecycle(Lifecycle),
    /// Sent by a freshly (re)started registry: register again.
    Reregister,
    /// Fault injection: the agent fails with this reason, as a crashing agent would.
    Crash(String),
    /// Run a step (executors, workers, memory agents). The step runs as its own task; the
    /// mailbox stays free and the reply comes when it is done (see [`work`]).
    Execute(Box<Job>),
    /// Internal: a step's slot was released.
    WorkDone,
    /// Coordinators: a run of a session's turn (task `task_id`, described by `what`)
    /// starts (`on`) or stops being coordinated by this agent — its load and current work.
    Coordinate {
        task_id: String,
        what: String,
        on: bool,
    },
    /// Internal (monitors): time for a heartbeat round.
    Tick,
    /// Internal (monitors): a heartbeat round's answers.
    Beats(Vec<crate::roles::monitor::Beat>),
    /// Fault injection: the agent's mailbox stops moving for this long, as a stuck agent's
    /// would (what the Monitor exists to catch).
    Hang(Duration),
}

// ractor's `cluster` feature (for ractor_cluster) drops the blanket `Message` impl.
impl ractor::Message for AgentMsg {}

/// One step attempt handed to an executor.
pub struct Work {
    pub task_id: String,
    /// The task's session, for `memory` steps scoped to it.
    pub session: Option<String>,
    /// Who submitted the task: `session` and `global` memory are this principal's.
    pub principal: Option<String>,
    pub step: StepSpec,
    pub input: Option<String>,
    pub timeout: Option<Duration>,
    pub cancel: CancellationToken,
    /// For a step with side effects: the node's lease as of the commit that recorded this
    /// attempt ([`crate::lease::NodeLease::until`]); the tool starts only if it still
    /// holds then (else the step is answered [`ToolError::NotStarted`]).
    pub lease_until: Option<u64>,
}

/// How to start one agent.
#[derive(Clone)]
pub struct AgentArgs {
    pub ctx: Arc<NodeContext>,
    pub role: Role,
    pub domain: String,
    pub name: String,
    /// Capabilities beyond the role's own, from configuration.
    pub extra_capabilities: Vec<String>,
    pub incarnation: u32,
}

pub struct AgentState {
    ctx: Arc<NodeContext>,
    identity: AgentIdentity,
    capabilities: Vec<String>,
    state: Lifecycle,
    restarts: u32,
    stats: Arc<ActorStats>,
    started_at: SystemTime,
    /// Steps running and waiting (their count is what the Router balances on).
    slots: Slots,
    /// Monitors only: what they remember between heartbeat rounds.
    watch: Option<crate::roles::monitor::Watch>,
    /// Coordinators only: the runs they coordinate, by task (what each is).
    coordinating: std::collections::BTreeMap<String, String>,
}

pub struct Agent;

impl Agent {
    /// Spawns an agent linked to `supervisor`.
    pub async fn spawn_linked(
        args: AgentArgs,
        supervisor: ActorCell,
    ) -> Result<ActorCell, SpawnErr> {
        Actor::spawn_linked(None, Agent, args, supervisor)
            .await
            .map(|(actor, _)| actor.get_cell())
    }
}

impl AgentState {
    fn register(&self, myself: &ActorRef<AgentMsg>) {
        if let Some(registry) = self.ctx.registry() {
            let _ = registry.cast(RegistryMsg::Register {
                identity: self.identity.clone(),
                capabilities: self.capabilities.clone(),
                state: self.state,
                agent: myself.clone(),
            });
        }
    }

    fn set_state(&mut self, state: Lifecycle) {
        self.state = state;
        if let Some(registry) = self.ctx.registry() {
            let _ = registry.cast(RegistryMsg::SetState {
                instance_id: self.identity.instance_id.clone(),
                state,
            });
        }
    }
}

impl AgentState {
    /// Takes a step: runs it in a free slot, queues it, or hands it back when full.
    fn execute(&mut self, myself: &ActorRef<AgentMsg>, job: Box<Job>) {
        let services = match (self.identity.role, self.ctx.services()) {
            (
                Role::Executor | Role::Worker | Role::Memory | Role::Planner | Role::Critic,
                Some(services),
            ) => services.clone(),
            (Role::Executor | Role::Worker | Role::Memory | Role::Planner | Role::Critic, None) => {
                let _ = job.reply.send(ExecuteReply::Done(Err(ToolError::Failed(
                    "tools are not configured on this node".into(),
                ))));
                return;
            }
            (role, _) => {
                let _ = job
                    .reply
                    .send(ExecuteReply::Done(Err(ToolError::Failed(format!(
                        "agent {} is a {role}; work runs on executors, workers, memory agents, planners and critics",
                        self.identity.name
                    )))));
                return;
            }
        };
        let limits = services.agents;
        let runner = self.runner(myself, services);
        let before = self.slots.load();
        self.slots.offer(job, limits, &runner);
        if self.slots.load() != before {
            self.report_load();
        }
    }

    /// A step's slot was released: the next waiting step takes it.
    fn work_done(&mut self, myself: &ActorRef<AgentMsg>) {
        self.slots.release();
        // Steps started only with services, so without them nothing waits.
        if let Some(services) = self.ctx.services().cloned() {
            let limits = services.agents;
            let runner = self.runner(myself, services);
            self.slots.fill(limits, &runner);
        }
        if self.slots.running() == 0 {
            self.stats.set_work(None);
        }
        self.report_load();
    }

    fn runner(&self, myself: &ActorRef<AgentMsg>, services: Arc<Services>) -> Runner {
        Runner {
            agent: myself.clone(),
            role: self.identity.role,
            services,
            stats: self.stats.clone(),
            ctx: self.ctx.clone(),
        }
    }

    /// A Coordinator takes on (or lets go of) a run; its load and current work say so.
    fn coordinate(&mut self, task_id: String, what: String, on: bool) {
        if self.identity.role != Role::Coordinator {
            return;
        }
        if on {
            self.coordinating.insert(task_id, what);
        } else {
            self.coordinating.remove(&task_id);
        }
        let work = match self.coordinating.len() {
            0 => None,
            1 => self.coordinating.values().next().cloned(),
            n => Some(format!(
                "{n} runs: {}",
                self.coordinating
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        };
        self.stats.set_work(work);
        self.report_load();
    }

    fn report_load(&self) {
        if let Some(registry) = self.ctx.registry() {
            let load = self.slots.load() + self.coordinating.len() as u32;
            let _ = registry.cast(RegistryMsg::SetLoad {
                instance_id: self.identity.instance_id.clone(),
                load,
            });
        }
    }
}

impl Actor for Agent {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: AgentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let identity = AgentIdentity {
            instance_id: uuid::Uuid::now_v7().to_string(),
            name: args.name.clone(),
            domain: args.domain.clone(),
            role: args.role,
            node: args.ctx.node.clone(),
        };
        let mut capabilities: Vec<String> = args
            .role
            .capabilities()
            .iter()
            .map(|c| c.to_string())
            .collect();
        capabilities.extend(args.extra_capabilities);
        capabilities.sort();
        capabilities.dedup();
        let stats = args.ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: args.name,
                kind: ActorKind::Agent,
                role: Some(args.role.as_str().to_string()),
                domain: Some(args.domain),
            },
        );
        let state = AgentState {
            ctx: args.ctx,
            identity,
            capabilities,
            state: Lifecycle::Registering,
            restarts: args.incarnation,
            stats,
            started_at: SystemTime::now(),
            slots: Slots::default(),
            watch: None,
            coordinating: Default::default(),
        };
        state.register(&myself);
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.set_state(Lifecycle::Active);
        if state.identity.role == Role::Monitor {
            state.watch = Some(Default::default());
            let every = state.ctx.monitor_settings().heartbeat;
            myself.send_interval(every, || AgentMsg::Tick);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.directory.leave(myself.get_id().pid());
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
            AgentMsg::Status(reply) => {
                let _ = reply.send(AgentStatus {
                    identity: state.identity.clone(),
                    capabilities: state.capabilities.clone(),
                    state: state.state,
                    messages_handled: state.stats.messages(),
                    errors: state.stats.errors(),
                    restarts: state.restarts,
                    current_work: state.stats.work(),
                    started_at: state.started_at,
                });
            }
            AgentMsg::SetLifecycle(next) => {
                if matches!(
                    next,
                    Lifecycle::Active | Lifecycle::Draining | Lifecycle::Suspended
                ) {
                    state.set_state(next);
                }
            }
            AgentMsg::Reregister => state.register(&myself),
            AgentMsg::Crash(reason) => {
                state.stats.errored();
                return Err(format!("crash requested: {reason}").into());
            }
            AgentMsg::Execute(job) => state.execute(&myself, job),
            AgentMsg::WorkDone => state.work_done(&myself),
            AgentMsg::Coordinate { task_id, what, on } => state.coordinate(task_id, what, on),
            AgentMsg::Tick => {
                if let Some(watch) = state.watch.as_mut().filter(|w| !w.in_flight) {
                    watch.in_flight = true;
                    let (ctx, me) = (state.ctx.clone(), myself.clone());
                    let timeout = ctx.monitor_settings().timeout;
                    tokio::spawn(async move {
                        let pid = me.get_id().pid();
                        let beats = crate::roles::monitor::round(&ctx, pid, timeout).await;
                        let _ = me.cast(AgentMsg::Beats(beats));
                    });
                }
            }
            AgentMsg::Beats(beats) => {
                let settings = state.ctx.monitor_settings();
                if let Some(watch) = state.watch.as_mut() {
                    watch.in_flight = false;
                    watch.judge(&state.ctx, &settings, beats);
                }
            }
            AgentMsg::Hang(how_long) => tokio::time::sleep(how_long).await,
        }
        Ok(())
    }
}
