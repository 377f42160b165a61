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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actors::NodeContext;
use actors::agent::Work;
use actors::directory::{ActorKind, ActorMeta};
use actors::registry::{AgentFilter, RegistryMsg};
use actors::remote::{RemoteDone, RemoteStep};
use actors::roles::{coordinator, router};
use actors::tools::ToolError;
use async_nats::service::{Service, ServiceExt};
use futures::StreamExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Bridge, Envelope};
use crate::cluster::Served;

pub const STEP: &str = "agent.step";
pub const DONE: &str = "agent.done";
pub const STATUS: &str = "agent.status";
pub const AGENTS: &str = "agent.list";

/// Roles whose agents run steps (`AgentMsg::Execute`).
const STEP_ROLES: [&str; 3] = ["executor", "worker", "memory"];

pub struct AgentService;

pub struct AgentServiceArgs {
    pub ctx: Arc<NodeContext>,
    pub bridge: Bridge,
    pub cluster: String,
    pub serves: Vec<Served>,
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

pub enum AgentServiceMsg {}

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
        for served in &args.serves {
            let (service, handles) = serve_role(&args, served).await?;
            services.push(service);
            endpoints.extend(handles);
        }
        Ok(AgentServiceState {
            ctx: args.ctx,
            services,
            endpoints,
        })
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
    let answer = reply
        .encode()
        .map_err(|e| async_nats::service::error::Error {
            status: e.to_string(),
            code: 500,
        });
    if request.respond(answer).await.is_err() {
        tracing::debug!("an agent request's reply was not sent");
    }
}

async fn refuse(request: &async_nats::service::Request) {
    let _ = request
        .respond(Err(async_nats::service::error::Error {
            status: "not a readable envelope".into(),
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
    mut endpoint: async_nats::service::endpoint::Endpoint,
) {
    while let Some(request) = endpoint.next().await {
        let Some(asked) = bridge.open::<RemoteStep>(&request.message, STEP) else {
            refuse(&request).await;
            continue;
        };
        let (ctx, bridge) = (ctx.clone(), bridge.clone());
        tokio::spawn(async move {
            let done = run_step(&ctx, asked.payload.clone()).await;
            respond(&bridge, &request, &asked, DONE, done).await;
        });
    }
}

async fn run_step(ctx: &NodeContext, step: RemoteStep) -> RemoteDone {
    let timeout = step.timeout_ms.map(Duration::from_millis);
    let wait = timeout.unwrap_or(Duration::from_secs(3600)) + coordinator::AGENT_GRACE;
    let capability = actors::roles::capability_for(&step.step.tool);
    let work = Work {
        task_id: step.task_id,
        session: step.session,
        step: step.step,
        input: step.input,
        timeout,
        cancel: CancellationToken::new(),
    };
    // Served here, so local agents only: a step never bounces from node to node.
    let (agent, result) = match router::route(ctx, &capability).await {
        Ok(found) => coordinator::locally(ctx, found, work, wait).await,
        Err(e) => (None, Err(ToolError::Failed(e.to_string()))),
    };
    let (agent, node) = agent.unwrap_or_else(|| (String::new(), ctx.node.clone()));
    RemoteDone {
        agent,
        node,
        result,
    }
}
