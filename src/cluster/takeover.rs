//! Takeover rounds: the unfinished tasks of nodes that are gone move to this node.
//!
//! Every node in storage that is not up here (down, left, or never heard for the
//! detector's grace) gives this node its share of a round: held ÷ survivors, at most a
//! batch, so the survivors spread a gone node's tasks between them. The move is one
//! statement per node (`Store::take_over`: owner and lease epoch), which fences the old
//! owner; the tasks then go to this node's scheduler, whose runs claim them and continue
//! from the last recorded step.

use std::collections::HashSet;

use actors::NodeContext;
use actors::events::Event;
use actors::scheduler::SchedulerMsg;

use crate::store::Store;

/// What a round knows of the cluster.
pub struct Round {
    /// Nodes heard and up (never taken from).
    pub alive: HashSet<String>,
    /// Nodes heard at some point since this node started.
    pub known: HashSet<String>,
    /// Nodes never heard that have stayed so for the detector's grace.
    pub overdue: HashSet<String>,
    pub batch: usize,
}

/// What a round did.
pub struct Done {
    pub taken: usize,
    /// Some gone node still holds unfinished tasks (another round soon).
    pub more: bool,
    /// Nodes with unfinished tasks never heard yet (left alone until overdue).
    pub unheard: Vec<String>,
    /// A gone node still holds tasks under a lease that has not expired yet (it may be
    /// alive and cut from NATS only, or dead a moment ago): look again soon.
    pub leased: bool,
}

pub async fn round(store: &Store, ctx: &NodeContext, round: Round) -> Done {
    let mut done = Done {
        taken: 0,
        more: false,
        unheard: Vec::new(),
        leased: false,
    };
    let survivors = round.alive.len() + 1;
    let nodes = match store.known_nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the cluster's nodes");
            Vec::new()
        }
    };
    for gone in nodes
        .iter()
        .filter(|n| **n != ctx.node && !round.alive.contains(*n))
    {
        let held = match store.count_unfinished(gone).await {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(from = %gone, error = %e, "takeover failed");
                continue;
            }
        };
        if !round.known.contains(gone) && !round.overdue.contains(gone) {
            done.unheard.push(gone.clone());
            continue;
        }
        let share = held.div_ceil(survivors).min(round.batch);
        match store.take_over(gone, &ctx.node, share).await {
            Ok(tasks) => {
                // None taken: its lease still holds (alive, cut from NATS only); the
                // regular sweep looks again.
                done.more |= !tasks.is_empty() && tasks.len() < held;
                done.leased |= tasks.is_empty();
                done.taken += tasks.len();
                if !tasks.is_empty() {
                    adopt(ctx, gone, tasks);
                }
            }
            Err(e) => tracing::warn!(from = %gone, error = %e, "takeover failed"),
        }
    }
    done
}

/// Hands taken-over tasks to this node's scheduler (their runs claim them again, which
/// reads what was recorded and continues from there).
fn adopt(ctx: &NodeContext, from: &str, tasks: Vec<(String, actors::task::Priority)>) {
    tracing::info!(from = %from, tasks = tasks.len(), "took over unfinished tasks");
    metrics::counter!("ms_cluster_tasks_taken_over_total").increment(tasks.len() as u64);
    ctx.events.publish(Event::TasksTakenOver {
        from: from.to_string(),
        tasks: tasks.len(),
    });
    let Some(scheduler) = ctx.scheduler() else {
        // Owned by this node now, so they are resumed when its scheduler is back.
        tracing::warn!("no scheduler to run taken-over tasks; they wait for its restart");
        return;
    };
    for (task_id, priority) in tasks {
        let _ = scheduler.cast(SchedulerMsg::Enqueue {
            task_id,
            priority,
            enqueued_ms: 0,
            warm: None,
            spill: false,
            origin: None,
        });
    }
}
