//! The `lease` actor: this node's lease on its work, kept in the database.
//!
//! Every node on a PostgreSQL database (clustered or not) renews its lease in its `nodes`
//! row every quarter of `cluster.lease_ms`; the database stamps it with its own clock.
//! Another node may take this node's tasks over only once the lease has expired there
//! (`store/cluster.rs`), so a node that still reaches the database keeps its tasks however
//! long its NATS connection is stalled. The node's own view of its lease
//! ([`actors::lease::NodeLease`]) ends before the database's does: it counts from when the
//! renewal was sent. Runs start no step with side effects while that view says the lease
//! is not held. At an orderly stop the lease is given up, so the others need not wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::NodeContext;
use actors::directory::{ActorKind, ActorMeta, ActorStats};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};

use crate::store::Store;

pub struct LeaseArgs {
    pub ctx: Arc<NodeContext>,
    pub store: Store,
    pub ttl: Duration,
}

pub enum LeaseMsg {
    /// Time to renew.
    Renew,
    /// A renewal finished: sent at, and whether it committed.
    Renewed(Instant, Result<(), String>),
}

impl ractor::Message for LeaseMsg {}

pub struct LeaseState {
    args: LeaseArgs,
    stats: Arc<ActorStats>,
    in_flight: bool,
    /// The renewal has been failing since (for one warning per outage).
    failing_since: Option<Instant>,
}

pub struct Lease;

impl Lease {
    pub async fn spawn_linked(args: LeaseArgs, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        Actor::spawn_linked(None, Lease, args, sup)
            .await
            .map(|(r, _)| r.get_cell())
    }
}

impl Actor for Lease {
    type Msg = LeaseMsg;
    type State = LeaseState;
    type Arguments = LeaseArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LeaseMsg>,
        args: LeaseArgs,
    ) -> Result<LeaseState, ActorProcessingErr> {
        let stats = args.ctx.directory.enter(
            &myself.get_cell(),
            ActorMeta {
                name: "lease".into(),
                kind: ActorKind::Service,
                role: Some("lease".into()),
                domain: None,
            },
        );
        args.ctx.lease().keep();
        // The first renewal before anything else starts, so runs resumed at start find
        // the lease held (if storage answers; otherwise they wait for it).
        let sent = Instant::now();
        let first = renew(&args.store, &args.ctx.node, args.ttl).await;
        let mut state = LeaseState {
            args,
            stats,
            in_flight: false,
            failing_since: None,
        };
        state.renewed(sent, first);
        myself.send_interval(state.args.ttl / 4, || LeaseMsg::Renew);
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<LeaseMsg>,
        state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        let args = &state.args;
        args.ctx.lease().release();
        let release = args.store.release_lease(&args.ctx.node);
        match tokio::time::timeout(Duration::from_secs(2), release).await {
            Ok(Ok(())) => tracing::info!("lease given up"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not give the lease up; it expires"),
            Err(_) => tracing::warn!("could not give the lease up in time; it expires"),
        }
        args.ctx.directory.leave(myself.get_id().pid());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<LeaseMsg>,
        msg: LeaseMsg,
        state: &mut LeaseState,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.handled();
        match msg {
            LeaseMsg::Renew if !state.in_flight => {
                state.in_flight = true;
                let (store, node, ttl, me) = (
                    state.args.store.clone(),
                    state.args.ctx.node.clone(),
                    state.args.ttl,
                    myself.clone(),
                );
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let done = renew(&store, &node, ttl).await;
                    let _ = me.cast(LeaseMsg::Renewed(sent, done));
                });
            }
            LeaseMsg::Renew => {} // the last one is still on its way
            LeaseMsg::Renewed(sent, done) => {
                state.in_flight = false;
                state.renewed(sent, done);
            }
        }
        Ok(())
    }
}

impl LeaseState {
    fn renewed(&mut self, sent: Instant, done: Result<(), String>) {
        match done {
            Ok(()) => {
                self.args.ctx.lease().renewed(sent, self.args.ttl);
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        failed_for_ms = since.elapsed().as_millis() as u64,
                        "lease renewed again"
                    );
                }
            }
            Err(e) => {
                self.stats.errored();
                metrics::counter!("ms_lease_renewal_failures_total").increment(1);
                if self.failing_since.is_none() {
                    self.failing_since = Some(sent);
                    tracing::warn!(error = %e, "cannot renew this node's lease; steps with side effects wait once it runs out");
                }
            }
        }
    }
}

/// One renewal, bounded by half the lease (a renewal answered later proves little).
async fn renew(store: &Store, node: &str, ttl: Duration) -> Result<(), String> {
    let ttl_ms = ttl.as_millis() as i64;
    match tokio::time::timeout(ttl / 2, store.renew_lease(node, ttl_ms)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", (ttl / 2).as_millis())),
    }
}
