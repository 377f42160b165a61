//! The `cluster` actor: this node's membership in its cluster.
//!
//! Every `heartbeat` it announces itself on `ms.<cluster>.cluster.heartbeat` (its
//! ractor_cluster address, listeners, load); every [`CHECK`] it asks each peer's failure
//! detector whether that peer is down. A node judged down, or one that said it leaves,
//! or one that has tasks in the database but is not heard at all, is *gone*: its
//! unfinished tasks are taken over (ownership moved and lease epoch bumped in one
//! statement, which fences it) in batches, so the survivors share them, and handed to
//! this node's scheduler, whose runs continue from the last recorded step.
//!
//! A node without NATS judges nobody: the silence is its own. "Without NATS" is decided by
//! what the node hears, not by its client's word: a node that has not heard its own
//! heartbeat come back for [`ECHO_LOST`] counts as cut off (a stalled connection looks
//! connected for seconds). A node whose own timer fired late ([`STALL`]: it was paused or
//! starved) starts its judgement of everyone afresh, since the silence it saw was its
//! own. After either it waits the detector's grace before taking anything over, so a NATS
//! restart or a pause does not make a node take over the others' tasks. And whatever a
//! node concludes, the database has the last word: a takeover moves only tasks whose
//! owner's lease there has expired (`store/cluster.rs`).

mod drain;
mod sessions;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::NodeContext;
use actors::directory::{ActorKind, ActorMeta, ActorStats};
use actors::events::Event;
use actors::scheduler::SchedulerMsg;
use futures::StreamExt;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use ractor_cluster::NodeServerMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::detector::{Detector, DetectorSettings};
use super::peers::{self, PeerEvent};
use super::takeover::{self, Round};
use super::view::{ClusterSnapshot, ClusterView, Load, MemberView, Served};
use crate::bridge::{Bridge, BusState};
use crate::store::Store;

/// How often peers are judged (and the admin view refreshed).
pub const CHECK: Duration = Duration::from_millis(100);
/// How often gone nodes are looked for in storage when none is known to be gone.
const SWEEP: Duration = Duration::from_secs(1);
/// How soon a gone node whose lease still held is looked at again (a dead node's lease
/// runs out within `cluster.lease_ms` of its last renewal).
const LEASE_WAIT: Duration = Duration::from_millis(250);
/// A check this late means this node was not running (paused, starved): its silence, not
/// the peers'.
const STALL: Duration = Duration::from_millis(1000);
/// Not hearing its own heartbeat for this long (or three heartbeats, if longer), the node
/// counts itself cut from NATS.
const ECHO_LOST: Duration = Duration::from_millis(1500);
/// Waits between ractor_cluster connection attempts to one peer, doubling up to this.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(30);

pub const HEARTBEAT: &str = "node.heartbeat";
pub const LEAVE: &str = "node.leave";

/// A node's announcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub cluster_addr: String,
    pub http: String,
    pub admin: String,
    pub version: String,
    pub load: Load,
    #[serde(default)]
    pub serves: Vec<Served>,
    /// Taking no new work; it leaves when what it runs is done.
    #[serde(default)]
    pub draining: bool,
}

/// A node's goodbye.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Leave {}

/// Where this node can be reached, and how it judges others.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub cookie: String,
    /// The ractor_cluster link over mutual TLS (`cluster.tls_*`), when configured.
    pub tls: Option<super::peer_tls::PeerTls>,
    pub listen: SocketAddr,
    pub advertise: String,
    pub http: String,
    pub admin: String,
    pub detector: DetectorSettings,
    pub takeover_batch: usize,
    pub serves: Vec<Served>,
    /// How long a drain waits for the runs in flight before the node leaves anyway (the
    /// others take over what is left).
    pub drain_timeout: Duration,
}

pub struct MembershipArgs {
    pub ctx: Arc<NodeContext>,
    pub bridge: Bridge,
    pub store: Store,
    pub config: ClusterConfig,
    pub view: Arc<ClusterView>,
    /// Notified when a drain is done: the node stops (and leaves).
    pub shutdown: Arc<Notify>,
}

/// What a drain request found.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    pub node: String,
    pub draining: bool,
    /// Runs in flight, which finish before the node leaves.
    pub running: usize,
    /// Queued tasks, which the other nodes take over when it has left.
    pub queued: usize,
}

pub enum MembershipMsg {
    /// Announce this node.
    Beat,
    /// Judge the peers; take over from gone nodes when due.
    Check,
    /// A peer's heartbeat (authenticated: see `crate::bridge::seal`).
    Heard(String, Heartbeat),
    /// This node's own heartbeat came back through NATS.
    Echo,
    /// A peer said it leaves.
    Left(String),
    /// A ractor_cluster session changed.
    Peer(PeerEvent),
    /// A connection attempt to a peer failed before any session.
    ConnectFailed(String),
    /// This node's load, as the scheduler last told it.
    Load(Load),
    /// A takeover round finished: how many tasks were taken, and whether more remain.
    /// `unheard`: nodes holding unfinished tasks that this node never heard from (left
    /// alone until they stay unheard for the detector's grace).
    Swept {
        taken: usize,
        more: bool,
        unheard: Vec<String>,
        leased: bool,
    },
    /// Stop taking work, let the runs in flight finish, then leave (the node stops).
    Drain(RpcReplyPort<Result<DrainReport, String>>),
}

impl ractor::Message for MembershipMsg {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Up,
    Down,
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Link {
    None,
    Connecting,
    Connected,
    Refused,
}

struct Member {
    status: Status,
    detector: Detector,
    beat: Heartbeat,
    link: Link,
    next_connect: Instant,
    connect_backoff: Duration,
}

pub struct MembershipState {
    args: MembershipArgs,
    stats: Arc<ActorStats>,
    server: ActorRef<NodeServerMessage>,
    members: HashMap<String, Member>,
    load: Load,
    /// Since when the bus is up without a break (None while it is down).
    connected_since: Option<Instant>,
    /// When this node last heard its own heartbeat (its NATS path works both ways).
    echoed: Instant,
    /// When the peers were last judged (a late check means this node stalled).
    last_check: Instant,
    next_sweep: Instant,
    sweeping: bool,
    taken_over: u64,
    listeners: Vec<JoinHandle<()>>,
    /// Authenticated ractor_cluster sessions: session id → peer name. Kept apart from
    /// `members` because a session can authenticate before the peer's first heartbeat.
    sessions: HashMap<u64, String>,
    /// Nodes with unfinished tasks in storage that were never heard, since when: one may
    /// have just started (it is in storage before its first heartbeat is here).
    unheard: HashMap<String, Instant>,
    /// While draining: when to leave even if runs are still in flight.
    drain_deadline: Option<Instant>,
    left: bool,
}

pub struct Membership;

impl Membership {
    pub async fn spawn_linked(args: MembershipArgs, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        Actor::spawn_linked(None, Membership, args, sup)
            .await
            .map(|(r, _)| r.get_cell())
    }
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MembershipMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        let stats = args.ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: "cluster".into(),
                kind: ActorKind::Service,
                role: Some("membership".into()),
                domain: None,
            },
        );
        args.view.set_membership(Some(myself.clone()));
        let c = &args.config;
        let server = peers::start_server(&args.ctx.node, c, &myself).await?;
        let listeners = vec![
            listen(&args.bridge, &myself, false).await?,
            listen(&args.bridge, &myself, true).await?,
        ];
        myself.send_interval(c.detector.heartbeat, || MembershipMsg::Beat);
        myself.send_interval(CHECK, || MembershipMsg::Check);
        let _ = myself.cast(MembershipMsg::Beat);
        tracing::info!(
            cluster = %c.name,
            ractor_cluster = %c.listen,
            advertise = %c.advertise,
            "cluster membership started"
        );
        Ok(MembershipState {
            args,
            stats,
            server,
            members: HashMap::new(),
            load: Load::default(),
            connected_since: None,
            echoed: Instant::now(),
            last_check: Instant::now(),
            next_sweep: Instant::now(),
            sweeping: false,
            taken_over: 0,
            listeners,
            sessions: HashMap::new(),
            unheard: HashMap::new(),
            drain_deadline: None,
            left: false,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<MembershipMsg>,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        for listener in &state.listeners {
            listener.abort();
        }
        // Say goodbye so the others take this node's unfinished tasks over at once
        // instead of waiting for the detector.
        let b = &state.args.bridge;
        if b.is_connected()
            && b.publish(b.subjects().leave(), LEAVE, Leave::default())
                .await
                .is_ok()
        {
            let _ = b.client().flush().await;
        }
        state.server.stop(Some("node shutdown".into()));
        state.args.view.set_membership(None);
        state.args.ctx.directory.leave(myself.get_id().pid());
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<MembershipMsg>,
        event: SupervisionEvent,
        _state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        // The only linked child is the ractor_cluster server: without it this actor is
        // not doing its job, so it fails and its supervisor restarts both.
        let reason = match &event {
            SupervisionEvent::ActorFailed(_, e) => Some(e.to_string()),
            SupervisionEvent::ActorTerminated(_, _, reason) => {
                Some(reason.clone().unwrap_or_else(|| "stopped".into()))
            }
            _ => None,
        };
        if let Some(reason) = reason {
            myself.stop(Some(format!("ractor_cluster server ended: {reason}")));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<MembershipMsg>,
        msg: MembershipMsg,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.handled();
        match msg {
            MembershipMsg::Beat => state.beat(&myself).await,
            MembershipMsg::Check => state.check(&myself),
            MembershipMsg::Heard(node, beat) => state.heard(&myself, node, beat),
            MembershipMsg::Echo => state.echoed = Instant::now(),
            MembershipMsg::Left(node) => state.left(node),
            MembershipMsg::Peer(event) => state.peer(event),
            MembershipMsg::ConnectFailed(node) => {
                if let Some(m) = state.members.get_mut(&node)
                    && m.link == Link::Connecting
                {
                    m.link = Link::None;
                }
            }
            MembershipMsg::Load(load) => state.load = load,
            MembershipMsg::Drain(reply) => state.drain(reply).await,
            MembershipMsg::Swept {
                taken,
                more,
                unheard,
                leased,
            } => {
                let now = Instant::now();
                state.unheard.retain(|n, _| unheard.contains(n));
                for n in unheard {
                    state.unheard.entry(n).or_insert(now);
                }
                state.sweeping = false;
                state.taken_over += taken as u64;
                state.next_sweep = Instant::now()
                    + match (more, leased) {
                        (true, _) => CHECK,
                        (false, true) => LEASE_WAIT,
                        (false, false) => SWEEP,
                    };
            }
        }
        Ok(())
    }
}

/// Forwards heartbeats (or leave notices) of other nodes to the actor. Only messages
/// sealed with the cluster's cookie, fresh and not replayed, get through
/// ([`Bridge::open`] counts and audits the others): nobody without the cookie can admit a
/// node, keep a dead one alive, or make a live one look gone.
async fn listen(
    bridge: &Bridge,
    myself: &ActorRef<MembershipMsg>,
    leaves: bool,
) -> anyhow::Result<JoinHandle<()>> {
    let subject = if leaves {
        bridge.subjects().leave()
    } else {
        bridge.subjects().heartbeat()
    };
    let mut sub = bridge.subscribe(subject).await?;
    let (bridge, me) = (bridge.clone(), myself.clone());
    Ok(tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let msg = if leaves {
                bridge
                    .open::<Leave>(&message, LEAVE)
                    .map(|e| MembershipMsg::Left(e.from))
            } else {
                bridge
                    .open::<Heartbeat>(&message, HEARTBEAT)
                    .map(|e| MembershipMsg::Heard(e.from, e.payload))
            };
            let msg = match msg {
                Some(MembershipMsg::Heard(from, _)) if from == bridge.node() => {
                    Some(MembershipMsg::Echo)
                }
                Some(MembershipMsg::Heard(from, ..) | MembershipMsg::Left(from))
                    if from == bridge.node() =>
                {
                    None
                }
                other => other,
            };
            if let Some(msg) = msg
                && me.cast(msg).is_err()
            {
                return;
            }
        }
    }))
}

impl MembershipState {
    async fn beat(&mut self, myself: &ActorRef<MembershipMsg>) {
        let c = &self.args.config;
        let beat = Heartbeat {
            cluster_addr: format!("{}:{}", c.advertise, c.listen.port()),
            http: c.http.clone(),
            admin: c.admin.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            load: self.load,
            serves: c.serves.clone(),
            draining: self.drain_deadline.is_some(),
        };
        let b = &self.args.bridge;
        if b.is_connected()
            && let Err(e) = b.publish(b.subjects().heartbeat(), HEARTBEAT, beat).await
        {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
        // The load for the next beat, asked off this mailbox (the scheduler may be busy).
        if let Some(scheduler) = self.args.ctx.scheduler() {
            let (me, actors) = (myself.clone(), self.args.ctx.directory.len());
            tokio::spawn(async move {
                if let Ok(stats) = ractor::call_t!(scheduler, SchedulerMsg::Stats, 1000) {
                    let _ = me.cast(MembershipMsg::Load(Load {
                        running: stats.running,
                        queued: stats.queued,
                        actors,
                    }));
                }
            });
        }
    }

    fn heard(&mut self, myself: &ActorRef<MembershipMsg>, node: String, beat: Heartbeat) {
        let now = Instant::now();
        let settings = self.args.config.detector;
        let linked = self.sessions.values().any(|n| *n == node);
        let member = self.members.entry(node.clone()).or_insert_with(|| Member {
            status: Status::Down,
            detector: Detector::new(settings, now),
            beat: beat.clone(),
            link: if linked { Link::Connected } else { Link::None },
            next_connect: now,
            connect_backoff: Duration::from_secs(1),
        });
        let joined = member.status != Status::Up;
        if member.status != Status::Up {
            member.status = Status::Up;
            member.detector = Detector::new(settings, now);
        } else {
            member.detector.heartbeat(now);
        }
        if joined {
            tracing::info!(peer = %node, addr = %beat.cluster_addr, "node joined");
            metrics::counter!("ms_cluster_joins_total").increment(1);
            self.args
                .ctx
                .events
                .publish(Event::NodeJoined { node: node.clone() });
        }
        if member.beat.cluster_addr != beat.cluster_addr {
            member.link = Link::None;
            member.next_connect = now;
        }
        member.beat = beat;
        // One side dials: the node whose name sorts first, so two nodes do not race to
        // open two sessions to each other.
        if member.link == Link::None && now >= member.next_connect && self.args.ctx.node < node {
            member.link = Link::Connecting;
            member.next_connect = now + member.connect_backoff;
            member.connect_backoff = (member.connect_backoff * 2).min(MAX_CONNECT_BACKOFF);
            let (server, addr, me, tls) = (
                self.server.clone(),
                member.beat.cluster_addr.clone(),
                myself.clone(),
                self.args.config.tls.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = peers::connect(&server, &addr, tls.as_ref()).await {
                    // Backed off per peer, so a peer that cannot be reached (or whose
                    // certificate is not of this cluster's CA) is not a flood of lines.
                    tracing::warn!(peer = %node, error = %e, "ractor_cluster connection failed");
                    metrics::counter!("ms_cluster_link_failures_total").increment(1);
                    let _ = me.cast(MembershipMsg::ConnectFailed(node));
                }
            });
        }
    }

    fn left(&mut self, node: String) {
        if let Some(member) = self.members.get_mut(&node)
            && member.status != Status::Left
        {
            member.status = Status::Left;
            tracing::info!(peer = %node, "node left");
            self.args.ctx.events.publish(Event::NodeLeft { node });
            self.next_sweep = Instant::now();
        }
    }

    fn check(&mut self, myself: &ActorRef<MembershipMsg>) {
        let now = Instant::now();
        let late = now.duration_since(self.last_check);
        self.last_check = now;
        if late >= STALL {
            // This node was not running: whatever silence it saw was its own. It judges
            // everyone afresh (as after a reconnect) instead of condemning them.
            tracing::warn!(
                stalled_ms = late.as_millis() as u64,
                "this node stalled; judging the peers afresh"
            );
            metrics::counter!("ms_cluster_self_stalls_total").increment(1);
            self.connected_since = None;
            self.echoed = now;
        }
        // Connected means heard: a stalled connection looks connected for seconds.
        let echo_lost = ECHO_LOST.max(self.args.config.detector.heartbeat * 3);
        let connected =
            self.args.bridge.is_connected() && now.duration_since(self.echoed) < echo_lost;
        match (connected, self.connected_since) {
            (true, None) => {
                // Back on the bus: the silence was ours, so every peer starts afresh.
                self.connected_since = Some(now);
                for m in self.members.values_mut() {
                    m.detector = Detector::new(self.args.config.detector, now);
                }
            }
            (false, Some(_)) => {
                tracing::warn!(
                    "this node does not hear the cluster (its own heartbeats do not come back); it judges nobody"
                );
                self.connected_since = None;
            }
            _ => {}
        }
        if connected {
            for (node, m) in &mut self.members {
                if m.status == Status::Up && m.detector.is_down(now) {
                    m.status = Status::Down;
                    // A session still up stays the link (a node cut off from NATS only
                    // keeps it); dialing again would be refused as a duplicate session.
                    if m.link == Link::Connected && !self.sessions.values().any(|n| n == node) {
                        m.link = Link::None;
                    }
                    let detector = m.detector.value(now);
                    tracing::warn!(
                        peer = %node,
                        silent_ms = now.duration_since(m.detector.last_heard()).as_millis() as u64,
                        detector,
                        "node down"
                    );
                    metrics::counter!("ms_cluster_nodes_down_total").increment(1);
                    self.args.ctx.events.publish(Event::NodeDown {
                        node: node.clone(),
                        detector,
                    });
                    self.next_sweep = now;
                }
            }
        }
        let settled = self
            .connected_since
            .is_some_and(|since| now.duration_since(since) >= self.args.config.detector.grace());
        if settled && !self.sweeping && now >= self.next_sweep {
            self.sweep(myself);
        }
        self.maybe_leave(now);
        self.publish_view(now);
    }

    /// One takeover round, off the mailbox: every node that has unfinished tasks in
    /// storage and is not up (down, left, or never heard) gives up to a batch.
    fn sweep(&mut self, myself: &ActorRef<MembershipMsg>) {
        self.sweeping = true;
        let alive: HashSet<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.status == Status::Up)
            .map(|(n, _)| n.clone())
            .collect();
        let (store, ctx, me) = (
            self.args.store.clone(),
            self.args.ctx.clone(),
            myself.clone(),
        );
        let batch = self.args.config.takeover_batch;
        // A node never heard is gone only once it stayed unheard for the grace.
        let known: HashSet<String> = self.members.keys().cloned().collect();
        let (now, grace) = (Instant::now(), self.args.config.detector.grace());
        let overdue: HashSet<String> = self
            .unheard
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(n, _)| n.clone())
            .collect();
        let round = Round {
            alive,
            known,
            overdue,
            batch,
        };
        tokio::spawn(async move {
            let done = takeover::round(&store, &ctx, round).await;
            let _ = me.cast(MembershipMsg::Swept {
                taken: done.taken,
                more: done.more,
                unheard: done.unheard,
                leased: done.leased,
            });
        });
    }

    fn publish_view(&self, now: Instant) {
        let c = &self.args.config;
        let kind = format!("{:?}", c.detector.kind).to_lowercase();
        let mut members = vec![MemberView {
            node: self.args.ctx.node.clone(),
            status: if self.drain_deadline.is_some() {
                "draining"
            } else {
                "self"
            }
            .into(),
            cluster_addr: format!("{}:{}", c.advertise, c.listen.port()),
            http: c.http.clone(),
            admin: c.admin.clone(),
            link: "self".into(),
            last_heartbeat_ms: 0,
            detector: 0.0,
            detector_kind: kind.clone(),
            load: self.load,
            version: env!("CARGO_PKG_VERSION").into(),
            serves: c.serves.clone(),
        }];
        for (node, m) in &self.members {
            members.push(MemberView {
                node: node.clone(),
                status: match m.status {
                    Status::Up if m.beat.draining => "draining".into(),
                    other => format!("{other:?}").to_lowercase(),
                },
                cluster_addr: m.beat.cluster_addr.clone(),
                http: m.beat.http.clone(),
                admin: m.beat.admin.clone(),
                link: format!("{:?}", m.link).to_lowercase(),
                last_heartbeat_ms: now.duration_since(m.detector.last_heard()).as_millis() as u64,
                detector: m.detector.value(now),
                detector_kind: kind.clone(),
                load: m.beat.load,
                version: m.beat.version.clone(),
                serves: m.beat.serves.clone(),
            });
        }
        members[1..].sort_by(|a, b| a.node.cmp(&b.node));
        let bus = match self.args.bridge.state() {
            BusState::Connected => "connected",
            BusState::Degraded => "degraded",
            BusState::Connecting => "connecting",
        };
        self.args.view.set(ClusterSnapshot {
            cluster: c.name.clone(),
            node: self.args.ctx.node.clone(),
            bus: bus.into(),
            members,
            tasks_taken_over: self.taken_over,
            decode_errors: self.args.bridge.counts().2,
        });
    }
}
