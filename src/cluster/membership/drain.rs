//! Drain: take no new work, let the runs in flight finish, then leave.

use std::time::Instant;

use actors::scheduler::SchedulerMsg;
use ractor::RpcReplyPort;

use super::{DrainReport, MembershipState};

impl MembershipState {
    pub(super) async fn drain(&mut self, reply: RpcReplyPort<Result<DrainReport, String>>) {
        let Some(scheduler) = self.args.ctx.scheduler() else {
            let _ = reply.send(Err("the scheduler is not running".into()));
            return;
        };
        let stats = match ractor::call_t!(scheduler, SchedulerMsg::Drain, 2000) {
            Ok(stats) => stats,
            Err(e) => {
                let _ = reply.send(Err(format!("the scheduler did not answer: {e}")));
                return;
            }
        };
        if self.drain_deadline.is_none() {
            self.drain_deadline = Some(Instant::now() + self.args.config.drain_timeout);
            // No new steps from the others either: the agent services leave the queues.
            self.args.view.start_draining();
            self.args.ctx.events.audit(
                "node.drain",
                &format!("node:{}", self.args.ctx.node),
                "ok",
                format!(
                    "draining: {} running, {} queued",
                    stats.running, stats.queued
                ),
            );
            tracing::info!(
                running = stats.running,
                queued = stats.queued,
                "draining: leaving when the runs in flight are done"
            );
        }
        self.load.running = stats.running;
        self.load.queued = stats.queued;
        let _ = reply.send(Ok(DrainReport {
            node: self.args.ctx.node.clone(),
            draining: true,
            running: stats.running,
            queued: stats.queued,
        }));
    }

    /// While draining: leave once nothing runs here (or the drain timed out).
    pub(super) fn maybe_leave(&mut self, now: Instant) {
        let Some(deadline) = self.drain_deadline else {
            return;
        };
        if self.left || (self.load.running > 0 && now < deadline) {
            return;
        }
        self.left = true;
        if self.load.running > 0 {
            tracing::warn!(
                running = self.load.running,
                "drain timed out; leaving, the others take over what is left"
            );
        } else {
            tracing::info!("drained; leaving the cluster");
        }
        self.args.shutdown.notify_one();
    }
}
