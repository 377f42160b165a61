//! How a run writes what it did: results at once, what only marks work as started after
//! up to [`LAUNCH_FLUSH`] (to share a later write), each write one fenced transaction,
//! and what live watchers see published only once committed. While storage is
//! unreachable nothing is lost: the unwritten progress is kept and written when storage
//! is back, and nothing that depends on it starts meanwhile.

use ractor::ActorRef;

use super::{LAUNCH_FLUSH, RunMsg, RunState, STORAGE_BACKOFF, STORAGE_BACKOFF_MAX};
use crate::task::store::{Progress, StoreError, TaskEvent};

impl RunState {
    /// Adds a result to what will be written when this message's handling ends.
    pub(super) fn record(&mut self, progress: Progress) {
        self.flush_now = true;
        self.note(progress);
    }

    /// Adds changes that may wait (up to [`LAUNCH_FLUSH`]) to share a later write.
    pub(super) fn note(&mut self, progress: Progress) {
        match &mut self.pending {
            Some(pending) => pending.merge(progress),
            None => self.pending = Some(progress),
        }
    }

    /// Writes what is pending in one fenced transaction — now if it holds a result, else
    /// after [`LAUNCH_FLUSH`] — then publishes its trace entries (so live watchers only
    /// ever see what is committed).
    pub(super) async fn flush(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), StoreError> {
        let retry_due = std::mem::take(&mut self.retry_due);
        if self.pending.is_none() {
            self.flush_now = false;
            return Ok(());
        }
        if !self.flush_now {
            if !self.flush_armed {
                self.flush_armed = true;
                myself.send_after(LAUNCH_FLUSH, || RunMsg::Flush);
            }
            return Ok(());
        }
        if self.storage_backoff.is_some() && !retry_due {
            return Ok(()); // storage is down: the next try is on its timer
        }
        let Some(progress) = self.pending.take() else {
            return Ok(());
        };
        let store = self.services()?.store.clone();
        // Read before the commit: attempts it records start only while this lease holds,
        // so a late answer cannot vouch for a lease renewed after a takeover.
        let lease = self.ctx.lease().until();
        if let Err(e) = store.record(&progress).await {
            self.pending = Some(progress);
            return Err(e);
        }
        self.lease_at_commit = lease;
        self.flush_now = false;
        if self.storage_backoff.take().is_some() {
            tracing::info!(task_id = %self.task_id, "storage is back; the run goes on");
        }
        for event in progress.events {
            self.publish(event);
        }
        Ok(())
    }

    /// Storage could not be reached: nothing is lost (what was not written is kept) and
    /// nothing that depends on it starts; the write (or the claim) is tried again later.
    pub(super) fn wait_for_storage(&mut self, myself: &ActorRef<RunMsg>, error: &str) {
        let backoff = match self.storage_backoff {
            None => {
                tracing::warn!(task_id = %self.task_id, %error, "storage unavailable; the run waits for it");
                STORAGE_BACKOFF
            }
            Some(b) => (b * 2).min(STORAGE_BACKOFF_MAX),
        };
        self.storage_backoff = Some(backoff);
        if !self.started {
            myself.send_after(backoff, || RunMsg::Start);
        } else if !self.flush_armed {
            self.flush_armed = true;
            myself.send_after(backoff, || RunMsg::Flush);
        }
    }
    pub(super) fn publish(&self, event: TaskEvent) {
        self.ctx.events.publish(crate::events::Event::Task {
            task_id: self.task_id.clone(),
            session: self.spec.session.clone(),
            seq: event.seq,
            at_ms: event.at_ms,
            what: event.kind,
            data: event.data,
        });
    }
}
