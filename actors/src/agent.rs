//! The agent actor every role runs in: identity, lifecycle, counters, status, registration.
//!
//! What a role does lives in `roles/`; this file is what all roles share. An agent enters
//! itself in the directory and registers with the registry when it starts; the registry
//! monitors it, so its death is learned from ractor, not from the agent's word.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use serde::{Deserialize, Serialize};

use crate::context::NodeContext;
use crate::directory::{ActorKind, ActorMeta, ActorStats};
use crate::registry::RegistryMsg;
use crate::roles::Role;
use crate::task::StepSpec;
use crate::tools::{ToolCall, ToolError, ToolOutput};
use tokio_util::sync::CancellationToken;

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
    /// Run a step's tool (executors). The work runs as its own task; the mailbox stays free
    /// and the reply comes when the tool is done.
    Execute(Box<Work>, RpcReplyPort<Result<ToolOutput, ToolError>>),
    /// Internal: a piece of work finished.
    WorkDone,
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
    pub step: StepSpec,
    pub input: Option<String>,
    pub timeout: Option<Duration>,
    pub cancel: CancellationToken,
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
    /// Work in flight (what the Router balances on).
    load: u32,
    /// Monitors only: what they remember between heartbeat rounds.
    watch: Option<crate::roles::monitor::Watch>,
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
    fn execute(
        &mut self,
        myself: &ActorRef<AgentMsg>,
        work: Box<Work>,
        reply: RpcReplyPort<Result<ToolOutput, ToolError>>,
    ) {
        let services = match (self.identity.role, self.ctx.services()) {
            (Role::Executor | Role::Worker | Role::Memory, Some(services)) => services.clone(),
            (Role::Executor | Role::Worker | Role::Memory, None) => {
                let _ = reply.send(Err(ToolError::Failed(
                    "tools are not configured on this node".into(),
                )));
                return;
            }
            (role, _) => {
                let _ = reply.send(Err(ToolError::Failed(format!(
                    "agent {} is a {role}; steps run on executors and workers",
                    self.identity.name
                ))));
                return;
            }
        };
        self.load += 1;
        self.report_load();
        self.stats.set_work(Some(format!(
            "task {} step {} ({})",
            work.task_id, work.step.id, work.step.tool
        )));
        let stats = self.stats.clone();
        let me = myself.clone();
        let role = self.identity.role;
        tokio::spawn(async move {
            let result = if role == Role::Memory {
                let store = services.memory.as_ref();
                let job = crate::roles::memory::run(
                    store,
                    &work.task_id,
                    work.session.as_deref(),
                    &work.step.args,
                    work.input.as_deref(),
                );
                tokio::select! {
                    r = job => r,
                    () = work.cancel.cancelled() => Err(ToolError::Cancelled),
                }
            } else if role == Role::Worker {
                let step = &work.step;
                let job = crate::roles::worker::run(
                    &step.tool,
                    &step.args,
                    work.input.as_deref(),
                    &services.llm,
                );
                let limit = work.timeout.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    r = tokio::time::timeout(limit, job) => r.unwrap_or(Err(ToolError::TimedOut(limit))),
                    () = work.cancel.cancelled() => Err(ToolError::Cancelled),
                }
            } else {
                services
                    .tools
                    .run(ToolCall {
                        tool: &work.step.tool,
                        args: &work.step.args,
                        input: work.input.as_deref(),
                        timeout: work.timeout,
                        cancel: work.cancel.clone(),
                    })
                    .await
            };
            if result.is_err() {
                stats.errored();
            }
            stats.set_work(None);
            let _ = reply.send(result);
            let _ = me.cast(AgentMsg::WorkDone);
        });
    }

    fn report_load(&self) {
        if let Some(registry) = self.ctx.registry() {
            let _ = registry.cast(RegistryMsg::SetLoad {
                instance_id: self.identity.instance_id.clone(),
                load: self.load,
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
            load: 0,
            watch: None,
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
            AgentMsg::Execute(work, reply) => state.execute(&myself, work, reply),
            AgentMsg::WorkDone => {
                state.load = state.load.saturating_sub(1);
                state.report_load();
            }
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
