//! The `agents` actor: this node's agents as NATS services (DESIGN §6).
//!
//! Each role this node runs agents of is one service, `ms-<cluster>-<domain>-<role>`
//! (every node's instance of it shares the name, so `$SRV.PING|INFO|STATS` and standard
//! NATS tooling list them all), with the node, role and capabilities in its metadata and
//! endpoints under `ms.<cluster>.agents.<domain>.<role>.`:
//! - `status`: this node's agents of the role (their registry records);
//! - `execute` (roles that run steps): one step attempt, routed to a local agent of the
//!   role, answered when the tool is done.
//!
//! Endpoints share the service API's queue group, so a request goes to one node of those
//! serving the role: load balancing by NATS.
//!
//! The node that sent a step does not know which node took it, so a cancel (the sender
//! gave up: the task was cancelled, the attempt timed out) goes to every node on
//! `ms.<cluster>.agents.cancel`, naming the request; the node running it cancels the
//! step, whose tool then stops. A cancel that overtakes its request is remembered
//! briefly, so the step is cancelled as soon as it arrives.
//!
//! Every request and reply is sealed with the cluster's cookie (`super::seal`): one that
//! is not gets no answer and runs nothing. At most `cluster.max_remote_steps` steps of
//! others run here at once; past that a request is answered [`BUSY`] at once (the sender
//! routes the step again), so nobody can make this node spawn without bound. A draining
//! node stops its services: it leaves the roles' queue groups, and new steps go elsewhere.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::NodeContext;
use actors::agent::Work;
use actors::directory::{ActorKind, ActorMeta};
use actors::registry::{AgentFilter, RegistryMsg};
use actors::remote::{RemoteDone, RemoteStep};
use actors::roles::coordinator;
use async_nats::service::{Service, ServiceExt};
use futures::StreamExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Bridge, Envelope};
use crate::cluster::{ClusterView, Served};

pub const STEP: &str = "agent.step";
pub const DONE: &str = "agent.done";
pub const STATUS: &str = "agent.status";
pub const AGENTS: &str = "agent.list";
pub const CANCEL: &str = "agent.cancel";
/// The reply of a node that runs as many steps of others as it may.
pub const BUSY: &str = "agent.busy";

/// Cancels that came before their request, remembered (the newest this many).
const EARLY_CANCELS: usize = 256;

/// Asks the node serving a step to stop it (on `agents.cancel`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelStep {
    /// The envelope id of the `execute` request.
    pub request: Uuid,
}

/// Roles whose agents run steps (`AgentMsg::Execute`).
const STEP_ROLES: [&str; 3] = ["executor", "worker", "memory"];

pub struct AgentService;

pub struct AgentServiceArgs {
    pub ctx: Arc<NodeContext>,
    pub bridge: Bridge,
    pub cluster: String,
    pub serves: Vec<Served>,
    /// Says when this node drains (its services then stop).
    pub view: Arc<ClusterView>,
    /// Most steps of others run here at once.
    pub max_remote_steps: usize,
}

pub struct AgentServiceState {
    ctx: Arc<NodeContext>,
    services: Vec<Service>,
    endpoints: Vec<JoinHandle<()>>,
}

impl AgentService {
    pub async fn spawn_linked(
        args: AgentServiceArgs,
        sup: ActorCell,
    ) -> Result<ActorCell, SpawnErr> {
        Actor::spawn_linked(None, AgentService, args, sup)
            .await
            .map(|(r, _)| r.get_cell())
    }
}

pub enum AgentServiceMsg {
    /// The node drains: leave the queue groups.
    Drain,
}

impl ractor::Message for AgentServiceMsg {}

impl Actor for AgentService {
    type Msg = AgentServiceMsg;
    type State = AgentServiceState;
    type Arguments = AgentServiceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AgentServiceMsg>,
        args: AgentServiceArgs,
    ) -> Result<AgentServiceState, ActorProcessingErr> {
        args.ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: "agents".into(),
                kind: ActorKind::Service,
                role: Some("agent_service".into()),
                domain: None,
            },
        );
        let mut services = Vec::new();
        let mut endpoints = Vec::new();
        let in_flight = Arc::new(InFlight::new(args.max_remote_steps));
        // Listening for cancels before taking steps, so none is missed.
        if args
            .serves
            .iter()
            .any(|s| STEP_ROLES.contains(&s.role.as_str()))
        {
            let cancels = args
                .bridge
                .subscribe(args.bridge.subjects().agents_cancel())
                .await?;
            endpoints.push(tokio::spawn(answer_cancels(
                args.bridge.clone(),
                in_flight.clone(),
                cancels,
            )));
        }
        for served in &args.serves {
            let (service, handles) = serve_role(&args, served, &in_flight).await?;
            services.push(service);
            endpoints.extend(handles);
        }
        let (draining, me) = (args.view.draining(), myself.clone());
        endpoints.push(tokio::spawn(async move {
            draining.cancelled().await;
            let _ = me.cast(AgentServiceMsg::Drain);
        }));
        Ok(AgentServiceState {
            ctx: args.ctx,
            services,
            endpoints,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentServiceMsg>,
        msg: AgentServiceMsg,
        state: &mut AgentServiceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AgentServiceMsg::Drain => {
                // Stopping a service unsubscribes its endpoints: NATS sends the roles'
                // requests to the other nodes only. Steps running here finish and reply.
                let stopped = state.services.len();
                for service in state.services.drain(..) {
                    let _ = service.stop().await;
                }
                tracing::info!(services = stopped, "draining: left the agent queue groups");
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<AgentServiceMsg>,
        state: &mut AgentServiceState,
    ) -> Result<(), ActorProcessingErr> {
        for endpoint in &state.endpoints {
            endpoint.abort();
        }
        for service in state.services.drain(..) {
            let _ = service.stop().await;
        }
        state.ctx.directory.leave(myself.get_id().pid());
        Ok(())
    }
}

/// The subject group of a role's endpoints.
pub fn group(cluster: &str, domain: &str, role: &str) -> String {
    format!("ms.{cluster}.agents.{domain}.{role}")
}

async fn serve_role(
    args: &AgentServiceArgs,
    served: &Served,
    in_flight: &Arc<InFlight>,
) -> anyhow::Result<(Service, Vec<JoinHandle<()>>)> {
    let metadata = HashMap::from([
        ("cluster".to_string(), args.cluster.clone()),
        ("node".to_string(), args.ctx.node.clone()),
        ("domain".to_string(), served.domain.clone()),
        ("role".to_string(), served.role.clone()),
        ("capabilities".to_string(), served.capabilities.join(",")),
        ("instances".to_string(), served.instances.to_string()),
    ]);
    let service = args
        .bridge
        .client()
        .service_builder()
        .description(format!(
            "Mister Smith {} agents ({}) of node {}",
            served.role, served.domain, args.ctx.node
        ))
        .metadata(metadata)
        .start(
            format!("ms-{}-{}-{}", args.cluster, served.domain, served.role),
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("NATS service for {}: {e}", served.role))?;
    let group = service.group(group(&args.cluster, &served.domain, &served.role));
    let mut handles = Vec::new();
    let status = group
        .endpoint("status")
        .await
        .map_err(|e| anyhow::anyhow!("status endpoint of {}: {e}", served.role))?;
    handles.push(tokio::spawn(answer_status(
        args.ctx.clone(),
        args.bridge.clone(),
        served.clone(),
        status,
    )));
    if STEP_ROLES.contains(&served.role.as_str()) {
        let execute = group
            .endpoint("execute")
            .await
            .map_err(|e| anyhow::anyhow!("execute endpoint of {}: {e}", served.role))?;
        handles.push(tokio::spawn(answer_steps(
            args.ctx.clone(),
            args.bridge.clone(),
            in_flight.clone(),
            execute,
        )));
    }
    Ok((service, handles))
}

async fn respond<T: Serialize>(
    bridge: &Bridge,
    request: &async_nats::service::Request,
    asked: &Envelope<impl Sized>,
    kind: &str,
    payload: T,
) {
    let reply = Envelope::reply_to(asked, kind, bridge.node(), payload);
    match reply.encode() {
        Ok(bytes) => {
            if let Err(e) = bridge.respond(request, bytes).await {
                tracing::debug!(error = %e, "an agent request's reply was not sent");
            }
        }
        Err(e) => tracing::warn!(error = %e, "an agent reply is not encodable"),
    }
}

/// Answers a request that is not a readable envelope, or not sealed with the cluster's
/// cookie (counted and audited by `open`): an error, at once, so the sender does not wait.
async fn refuse(request: &async_nats::service::Request) {
    let _ = request
        .respond(Err(async_nats::service::error::Error {
            status: "not a readable, authenticated envelope".into(),
            code: 400,
        }))
        .await;
}

/// `status`: this node's agents of the role.
async fn answer_status(
    ctx: Arc<NodeContext>,
    bridge: Bridge,
    served: Served,
    mut endpoint: async_nats::service::endpoint::Endpoint,
) {
    while let Some(request) = endpoint.next().await {
        let Some(asked) = bridge.open::<()>(&request.message, STATUS) else {
            refuse(&request).await;
            continue;
        };
        let filter = AgentFilter {
            role: Some(served.role.clone()),
            domain: Some(served.domain.clone()),
            ..Default::default()
        };
        let agents = match ctx.registry() {
            Some(registry) => {
                ractor::call_t!(registry, RegistryMsg::List, 2000, filter).unwrap_or_default()
            }
            None => Vec::new(),
        };
        respond(&bridge, &request, &asked, AGENTS, agents).await;
    }
}

/// `execute`: one step attempt from another node, each in a task of its own.
async fn answer_steps(
    ctx: Arc<NodeContext>,
    bridge: Bridge,
    in_flight: Arc<InFlight>,
    mut endpoint: async_nats::service::endpoint::Endpoint,
) {
    while let Some(request) = endpoint.next().await {
        let Some(asked) = bridge.open::<RemoteStep>(&request.message, STEP) else {
            refuse(&request).await;
            continue;
        };
        let Ok(permit) = in_flight.limit.clone().try_acquire_owned() else {
            metrics::counter!("ms_remote_steps_busy_total").increment(1);
            respond(&bridge, &request, &asked, BUSY, ()).await;
            continue;
        };
        let (ctx, bridge) = (ctx.clone(), bridge.clone());
        let serving = Serving::begin(&in_flight, asked.id);
        tokio::spawn(async move {
            let _permit = permit;
            let done = run_step(&ctx, asked.payload.clone(), serving.cancel.clone()).await;
            drop(serving);
            respond(&bridge, &request, &asked, DONE, done).await;
        });
    }
}

/// `agents.cancel`: stops the step a request names, if this node serves it.
async fn answer_cancels(
    bridge: Bridge,
    in_flight: Arc<InFlight>,
    mut cancels: async_nats::Subscriber,
) {
    while let Some(message) = cancels.next().await {
        if let Some(asked) = bridge.open::<CancelStep>(&message, CANCEL) {
            in_flight.cancel(asked.payload.request);
        }
    }
}

async fn run_step(ctx: &NodeContext, step: RemoteStep, cancel: CancellationToken) -> RemoteDone {
    // Another node's word is not trusted to be in bounds: no longer than a step may be given.
    let longest = actors::time::secs(actors::tools::MAX_TIMEOUT_SECS);
    let timeout = step
        .timeout_ms
        .map(|ms| Duration::from_millis(ms).min(longest));
    let wait = coordinator::wait_for(timeout);
    let capability = actors::roles::capability_for(&step.step.tool);
    let work = Work {
        task_id: step.task_id,
        session: step.session,
        principal: step.principal,
        step: step.step,
        input: step.input,
        timeout,
        cancel,
        // The owner recorded the attempt under its lease before sending it; this node
        // cannot see that lease (see RELIABILITY.md, "Not covered yet").
        lease_until: None,
    };
    // Served here, so local agents only: a step never bounces from node to node.
    let (agent, result) = coordinator::route_and_run(ctx, &capability, work, wait, None).await;
    let (agent, node) = agent.unwrap_or_else(|| (String::new(), ctx.node.clone()));
    RemoteDone {
        agent,
        node,
        result,
    }
}

/// The steps this node serves for others, by request id, so that a cancel finds them,
/// and the limit on how many run at once.
struct InFlight {
    inner: Mutex<InFlightInner>,
    limit: Arc<Semaphore>,
}

#[derive(Default)]
struct InFlightInner {
    running: HashMap<Uuid, CancellationToken>,
    /// Cancels whose request had not arrived (oldest first).
    early: VecDeque<Uuid>,
}

impl InFlight {
    fn new(limit: usize) -> Self {
        InFlight {
            inner: Mutex::default(),
            limit: Arc::new(Semaphore::new(limit)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlightInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cancel(&self, request: Uuid) {
        let mut inner = self.lock();
        match inner.running.get(&request) {
            Some(token) => token.cancel(),
            None => {
                if inner.early.len() == EARLY_CANCELS {
                    inner.early.pop_front();
                }
                inner.early.push_back(request);
            }
        }
    }
}

/// One step served: its cancel token, registered while it runs (however its task ends).
struct Serving {
    in_flight: Arc<InFlight>,
    request: Uuid,
    cancel: CancellationToken,
}

impl Serving {
    fn begin(in_flight: &Arc<InFlight>, request: Uuid) -> Serving {
        let cancel = CancellationToken::new();
        let mut inner = in_flight.lock();
        if let Some(i) = inner.early.iter().position(|id| *id == request) {
            inner.early.remove(i);
            cancel.cancel();
        }
        inner.running.insert(request, cancel.clone());
        Serving {
            in_flight: in_flight.clone(),
            request,
            cancel,
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.in_flight.lock().running.remove(&self.request);
    }
}
