//! One node's life: listen, open storage, start the supervision tree, serve until a signal
//! or an escalation past the root, then stop everything in order.
//!
//! The listeners come up first so that `/health/live` answers at once and `/health/ready`
//! says 503 (with the reason) until storage is migrated and the tree is running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::NodeContext;
use actors::context::Services;
use actors::domain::DomainSpec;
use actors::remote::{RemoteAgents, WorkQueue};
use actors::root::root_args;
use actors::supervisor::{ChildSpec, Escalation, Supervisor};
use actors::tools::Tools;
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bridge::Bridge;
use crate::bridge::agent_service::{AgentService, AgentServiceArgs};
use crate::bridge::forwarder::{Forwarder, ForwarderArgs, Retention};
use crate::bridge::remote_admin::Handler;
use crate::bridge::remote_agents::NatsAgents;
use crate::bridge::work_queue::{NatsWorkQueue, Puller, PullerArgs};
use crate::cluster::detector::DetectorSettings;
use crate::cluster::lease::{Lease, LeaseArgs};
use crate::cluster::membership::ClusterConfig;
use crate::cluster::peer_tls::PeerTls;
use crate::cluster::{ClusterView, Membership, MembershipArgs, Served};
use crate::config::{ConfigError, Settings};
use crate::http::auth::Authenticator;
use crate::state::{AppState, NodeState};
use crate::store::{Store, Tasks, redact};
use crate::{admin, http};

/// How long the listeners get to finish in-flight requests at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Why the node stopped.
#[derive(Debug)]
pub enum Outcome {
    /// SIGINT or SIGTERM: an orderly stop.
    Signalled,
    /// A supervisor gave up and the root could not absorb it.
    Escalated(Escalation),
    /// The root supervisor ended without escalating (it was killed).
    RootDied,
    /// A drain finished: the node left its cluster.
    Drained,
}

/// Runs a node until it stops. `started` is when the process started (for the
/// start-to-ready figure in the log).
pub async fn run(
    settings: Settings,
    metrics: Option<PrometheusHandle>,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let ctx = NodeContext::new(settings.node.name.clone());
    ctx.set_monitor_settings(settings.monitor_settings());
    let state = NodeState::new(ctx.clone(), metrics);
    // The sampler lives as long as the process (a node runs once per process).
    if let Some(handle) = &state.metrics {
        tokio::spawn(state.history.clone().run(handle.clone()));
    }
    let (stop_tx, stop_rx) = watch::channel(false);

    let auth = Authenticator::from_settings(&settings.auth)?;
    if let (Some(auth), Some(url)) = (&auth, &settings.auth.jwks_url) {
        auth.refresh_from(
            url.clone(),
            Duration::from_secs_f64(settings.auth.jwks_refresh_secs),
        );
    }
    let http_listener = bind("http.listen", settings.http.listen).await?;
    let admin_listener = bind("admin.listen", settings.admin.listen).await?;
    let own_listeners: Vec<std::net::SocketAddr> = [&http_listener, &admin_listener]
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let inline = http::task_output::InlineOutput(settings.tasks.inline_output_bytes);
    let servers = [
        serve(
            "http",
            http_listener,
            http::router(state.clone(), settings.http.body_limit_bytes, auth.clone())
                .layer(axum::Extension(inline)),
            settings.http_limits()?,
            stop_rx.clone(),
        ),
        serve(
            "admin",
            admin_listener,
            admin::router(state.clone(), settings.admin.token.clone(), auth),
            settings.admin_limits()?,
            stop_rx,
        ),
    ];
    tracing::info!(node = %ctx.node, http = %settings.http.listen, admin = %settings.admin.listen, "listening");

    let signal = shutdown_signal();
    tokio::pin!(signal);

    let store = tokio::select! {
        store = open_store(&settings, &state) => store?,
        () = &mut signal => {
            finish(&stop_tx, servers, None).await;
            return Ok(Outcome::Signalled);
        }
    };

    // Steps may never call the node itself (the admin API stops actors).
    let mut tools_config = settings.tools.clone();
    tools_config.http.node_listeners = own_listeners;
    let tools = Tools::new(tools_config).map_err(|e| anyhow::anyhow!("tools: {e}"))?;
    let tasks = Tasks::new(
        store.clone(),
        settings.scheduler.store_queue,
        settings.database.max_connections,
    );
    let _ = state.tasks.set(tasks.clone());
    let llm = actors::llm::Llm::new(&settings.llm).map_err(|e| anyhow::anyhow!("llm: {e}"))?;
    // Clustered: the NATS connection (made in the background) and the membership view
    // come first, since the Router reaches other nodes' agents through them.
    let cluster = match &settings.nats.url {
        Some(url) => {
            let c = &settings.cluster;
            let tls = match (&c.tls_ca, &c.tls_cert, &c.tls_key) {
                (Some(ca), Some(cert), Some(key)) => {
                    Some(PeerTls::load(ca, cert, key).map_err(|e| ConfigError(e.to_string()))?)
                }
                _ => None,
            };
            let bridge = Bridge::connect(&settings, url, ctx.events.clone()).await?;
            let view = Arc::new(ClusterView::default());
            let _ = state.bridge.set(bridge.clone());
            let _ = state.cluster.set(view.clone());
            Some((tls, bridge, view))
        }
        None => None,
    };
    let remote = cluster.as_ref().map(|(_, bridge, view)| {
        let agents = NatsAgents::new(bridge.clone(), settings.cluster.name.clone(), view.clone());
        Arc::new(agents) as Arc<dyn RemoteAgents>
    });
    ctx.provide(Services {
        tools,
        llm,
        memory: Arc::new(tasks.clone()),
        store: Arc::new(tasks),
        scheduler: settings.scheduler_settings(),
        agents: settings.agents,
        remote,
        work_queue: cluster.as_ref().map(|(_, bridge, _)| {
            Arc::new(NatsWorkQueue::new(bridge.clone())) as Arc<dyn WorkQueue>
        }),
    });

    let mut services = Vec::new();
    // On a shared database every node keeps a lease there, clustered or not, so no other
    // node takes its tasks while it lives. A SQLite file is one node's alone.
    if let Store::Postgres(_) = store {
        let (ctx, store, ttl) = (
            state.ctx.clone(),
            store.clone(),
            Duration::from_millis(settings.cluster.lease_ms),
        );
        services.push(ChildSpec::new("lease", move |sup, _| {
            let args = LeaseArgs {
                ctx: ctx.clone(),
                store: store.clone(),
                ttl,
            };
            Lease::spawn_linked(args, sup)
        }));
    }
    if let Some((tls, bridge, view)) = cluster {
        services.extend(cluster_services(
            &settings, tls, bridge, view, &state, &store,
        ));
    }
    let (args, escalation) = root_args(
        &ctx,
        settings.root_policy(),
        services,
        &settings.domains,
        settings.domain_defaults(),
    );
    let (root, mut root_done) = Supervisor::start(args)
        .await
        .context("starting the supervision tree")?;
    state.set_tree(Some(root.get_id().pid()));
    tracing::info!(
        node = %ctx.node,
        actors = ctx.directory.len(),
        ready_ms = started.elapsed().as_millis() as u64,
        "node ready"
    );

    // Biased: the root sends its escalation before it dies, so checking the escalation
    // first keeps the reason when both are ready.
    let outcome = tokio::select! {
        biased;
        () = &mut signal => Outcome::Signalled,
        () = state.shutdown.notified() => Outcome::Drained,
        Ok(escalation) = escalation => Outcome::Escalated(escalation),
        _ = &mut root_done => Outcome::RootDied,
    };
    state.set_tree(None);
    tracing::info!(node = %ctx.node, ?outcome, "stopping");

    let timeout = settings.shutdown_timeout();
    if root.get_status() != ractor::ActorStatus::Stopped
        && root
            .stop_and_wait(Some("node shutdown".into()), Some(timeout))
            .await
            .is_err()
    {
        tracing::warn!(
            ?timeout,
            "the supervision tree did not stop in time; killing it"
        );
        root.kill();
    }
    if let Some(tasks) = state.tasks.get() {
        tasks.close().await;
    }
    finish(&stop_tx, servers, Some(store)).await;
    Ok(outcome)
}

/// The children of a clustered node's root that talk to the cluster (DESIGN §2's
/// `bridge` and `cluster`, and the `agents` services), sharing one NATS connection.
fn cluster_services(
    settings: &Settings,
    tls: Option<PeerTls>,
    bridge: Bridge,
    view: Arc<ClusterView>,
    state: &AppState,
    store: &Store,
) -> Vec<ChildSpec> {
    let c = &settings.cluster;
    let serves = served_roles(&settings.domains);
    let (bridge_for_pull, pull_store) = (bridge.clone(), store.clone());
    let advertised = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            format!("{}:{}", c.advertise, addr.port())
        } else {
            addr.to_string()
        }
    };
    let config = ClusterConfig {
        name: c.name.clone(),
        cookie: c.cookie.clone().unwrap_or_default(),
        tls,
        listen: c.listen,
        advertise: c.advertise.clone(),
        http: advertised(settings.http.listen),
        admin: advertised(settings.admin.listen),
        detector: DetectorSettings::from_settings(c),
        takeover_batch: c.takeover_batch,
        serves: serves.clone(),
        drain_timeout: Duration::from_secs_f64(c.drain_timeout_secs),
    };
    let retention = Retention {
        max_age: Duration::from_secs_f64(settings.nats.events_max_age_secs),
        max_bytes: settings.nats.events_max_bytes,
    };
    let (ctx, forwarder_bridge) = (state.ctx.clone(), bridge.clone());
    let answering = state.clone();
    let admin: Handler = Arc::new(move |request| {
        let node = answering.clone();
        Box::pin(async move { admin::local(&node, request).await })
    });
    let forwarder = ChildSpec::new("bridge", move |sup, _| {
        let args = ForwarderArgs {
            ctx: ctx.clone(),
            bridge: forwarder_bridge.clone(),
            retention,
            admin: admin.clone(),
        };
        Forwarder::spawn_linked(args, sup)
    });
    let (ctx, agents_bridge, cluster) = (state.ctx.clone(), bridge.clone(), c.name.clone());
    let (agents_view, max_remote_steps) = (view.clone(), c.max_remote_steps);
    let agents = ChildSpec::new("agents", move |sup, _| {
        let args = AgentServiceArgs {
            ctx: ctx.clone(),
            bridge: agents_bridge.clone(),
            cluster: cluster.clone(),
            serves: serves.clone(),
            view: agents_view.clone(),
            max_remote_steps,
        };
        AgentService::spawn_linked(args, sup)
    });
    let (ctx, store, shutdown) = (state.ctx.clone(), store.clone(), state.shutdown.clone());
    let membership = ChildSpec::new("cluster", move |sup, _| {
        let args = MembershipArgs {
            ctx: ctx.clone(),
            bridge: bridge.clone(),
            store: store.clone(),
            config: config.clone(),
            view: view.clone(),
            shutdown: shutdown.clone(),
        };
        Membership::spawn_linked(args, sup)
    });
    let (ctx, store, pull_bridge) = (state.ctx.clone(), pull_store, bridge_for_pull);
    let max_running = settings.scheduler.max_running;
    let work_queue = ChildSpec::new("work_queue", move |sup, _| {
        let args = PullerArgs {
            ctx: ctx.clone(),
            bridge: pull_bridge.clone(),
            store: store.clone(),
            max_running,
        };
        Puller::spawn_linked(args, sup)
    });
    vec![forwarder, membership, agents, work_queue]
}

/// The roles this node runs agents of, per domain, with their capabilities.
fn served_roles(domains: &[DomainSpec]) -> Vec<Served> {
    let mut serves: Vec<Served> = Vec::new();
    for domain in domains {
        for agent in domain.agents.iter().filter(|a| a.instances > 0) {
            let role = agent.role.as_str().to_string();
            let mut capabilities: Vec<String> = agent
                .role
                .capabilities()
                .iter()
                .map(|c| c.to_string())
                .collect();
            capabilities.extend(agent.capabilities.iter().cloned());
            match serves
                .iter_mut()
                .find(|s| s.domain == domain.name && s.role == role)
            {
                Some(s) => {
                    s.instances += agent.instances;
                    for c in capabilities {
                        if !s.capabilities.contains(&c) {
                            s.capabilities.push(c);
                        }
                    }
                }
                None => serves.push(Served {
                    domain: domain.name.clone(),
                    role,
                    capabilities,
                    instances: agent.instances,
                }),
            }
        }
    }
    serves
}

async fn bind(key: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {key} {addr}"))
}

fn serve(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: crate::config::ListenerLimits,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(http::listener::serve(name, listener, router, limits, stop))
}

/// Connects (retrying while the database is unreachable), migrates and records this start.
async fn open_store(settings: &Settings, state: &AppState) -> anyhow::Result<Store> {
    let options = settings.database.store_options();
    let mut delay = Duration::from_millis(100);
    let store = loop {
        match Store::connect(&options).await {
            Ok(store) => break store,
            Err(e @ crate::store::StoreError::Connect { .. }) => {
                tracing::warn!(error = %e, retry_in = ?delay, "database unreachable; not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    store
        .migrate()
        .await
        .with_context(|| format!("migrating {}", redact(&options.url)))?;
    let record = store
        .record_node_start(&state.ctx.node, env!("CARGO_PKG_VERSION"))
        .await
        .context("recording this node's start")?;
    tracing::info!(backend = store.backend(), url = %redact(&options.url), starts = record.starts, "storage ready");
    // A SQLite file is this node's alone: it owns every unfinished task in it, whatever
    // names it ran under before (elsewhere a node claims only what it owns).
    if let Store::Sqlite(_) = store {
        let adopted = store
            .adopt_all(&state.ctx.node)
            .await
            .context("adopting the unfinished tasks of this node's database")?;
        if adopted > 0 {
            tracing::info!(
                tasks = adopted,
                "adopted unfinished tasks recorded under another node name"
            );
        }
    }
    let _ = state.store.set(store.clone());
    Ok(store)
}

/// Stops the listeners (letting in-flight requests finish) and closes storage.
async fn finish(stop: &watch::Sender<bool>, servers: [JoinHandle<()>; 2], store: Option<Store>) {
    let _ = stop.send(true);
    for server in servers {
        if tokio::time::timeout(HTTP_DRAIN, server).await.is_err() {
            tracing::warn!("a listener did not drain in time");
        }
    }
    if let Some(store) = store {
        store.close().await;
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
