//! A sampled feed of every event (`max_rate`, no filter) that reads only the events it
//! sends, shared by every such feed of the node at the same rate.
//!
//! A console's Events view asks for everything at 50 events a second; a busy cluster
//! writes tens of thousands. Read through the shared reader ([`super::hub`]), NATS would
//! send the node every one of them, and the node would decode each, to show 50: most of
//! what ten open consoles cost the node. A stride instead looks at the stream's last
//! sequence [`LOOKS`] times a second, takes what the rate allows of the events since the
//! last look, evenly spaced, fetches just those by sequence, and hands the [`Look`] to
//! its feeds, which count the rest as skipped: the stream numbers every event, so what
//! was gone past is known without reading it. Ten consoles share one stride, so they
//! cost the node what one does.
//!
//! Like the hub, a stride starts with its first feed and stops at the first look that
//! finds none. A feed that falls behind its stride's looks loses only looks: what they
//! held is counted as skipped with the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    stream::{RawMessageErrorKind, Stream},
};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::sync::broadcast::{self, error::RecvError};

use super::stream::{MAX_ERRORS, stored};
use super::{FeedError, Item, Next};
use crate::bridge::Bridge;

/// Looks at the stream a second.
const LOOKS: u32 = 4;
/// Fetches of one look in flight at once.
const IN_FLIGHT: usize = 16;
/// Looks a feed may fall behind before it loses some (counted as skipped then).
const LOOKS_KEPT: usize = 16;

/// Every seq after the stride's previous look up to `to` was looked at; `items` are those
/// fetched, in seq order.
pub struct Look {
    to: u64,
    items: Vec<Arc<Item>>,
}

/// The node's strides, one per rate.
#[derive(Clone, Default)]
pub struct Strides {
    slots: Arc<Mutex<Slots>>,
}

impl Strides {
    /// The feed of everything at `rate` a second, every seq after `last` accounted for.
    pub async fn follow(
        &self,
        bridge: &Arc<Bridge>,
        rate: u32,
        last: u64,
    ) -> Result<Stride, FeedError> {
        let mut slots = self.slots.lock().await;
        let looks = match slots.get(&rate) {
            Some(tx) => tx.subscribe(),
            None => {
                let looker = Looker::open(bridge, rate, last).await?;
                let (tx, rx) = broadcast::channel(LOOKS_KEPT);
                slots.insert(rate, tx.clone());
                metrics::gauge!("ms_events_feed_strides").increment(1.0);
                tokio::spawn(looker.run(tx, self.clone(), rate));
                rx
            }
        };
        Ok(Stride {
            looks,
            last,
            ready: VecDeque::new(),
        })
    }

    /// Stops the stride of `rate` unless a feed followed it meanwhile; whether it stopped.
    async fn stop(&self, rate: u32, tx: &broadcast::Sender<Arc<Look>>) -> bool {
        let mut slots = self.slots.lock().await;
        if tx.receiver_count() > 0 {
            return false;
        }
        removed(&mut slots, rate);
        true
    }
}

type Slots = HashMap<u32, broadcast::Sender<Arc<Look>>>;

/// Takes the stride of `rate` out of `slots`: no feed follows it from now on.
fn removed(slots: &mut Slots, rate: u32) {
    if slots.remove(&rate).is_some() {
        metrics::gauge!("ms_events_feed_strides").decrement(1.0);
    }
}

/// One feed of a stride.
pub struct Stride {
    looks: broadcast::Receiver<Arc<Look>>,
    /// The last sequence accounted for: sent, or counted as skipped.
    last: u64,
    ready: VecDeque<Next>,
}

impl Stride {
    /// Cancel-safe: a look is taken whole once received.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(next) = self.ready.pop_front() {
                return next;
            }
            match self.looks.recv().await {
                Ok(look) => self.take(&look),
                // The looks lost are counted with the next one (it starts past `last`).
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => {
                    return Next::Ended("the event stream failed".into());
                }
            }
        }
    }

    pub fn ready(&mut self) -> Option<Next> {
        if self.ready.is_empty()
            && let Ok(look) = self.looks.try_recv()
        {
            self.take(&look);
        }
        self.ready.pop_front()
    }

    /// The events of `look` after `last`, and one `Skipped` for the rest up to its end.
    fn take(&mut self, look: &Look) {
        if look.to <= self.last {
            return;
        }
        let mut sent = Vec::new();
        for item in look.items.iter().filter(|i| i.seq > self.last) {
            sent.push(item.seq);
            self.ready.push_back(Next::Sampled(item.clone()));
        }
        let gone_past = look.to - self.last - sent.len() as u64;
        if gone_past > 0 {
            self.ready.push_back(Next::Skipped {
                count: gone_past,
                last_seq: last_unsent(self.last, look.to, &sent),
            });
        }
        self.last = look.to;
    }
}

/// What looks at the stream for a stride.
struct Looker {
    bridge: Arc<Bridge>,
    stream: Stream,
    allowance: Allowance,
    /// The last sequence looked at.
    last: u64,
}

impl Looker {
    async fn open(bridge: &Arc<Bridge>, rate: u32, last: u64) -> Result<Self, FeedError> {
        let js = jetstream::new(bridge.client().clone());
        let stream = js
            .get_stream(bridge.subjects().events_stream())
            .await
            .map_err(|e| FeedError::Unavailable(e.to_string()))?;
        Ok(Looker {
            bridge: bridge.clone(),
            stream,
            allowance: Allowance::new(rate, Instant::now()),
            last,
        })
    }

    /// Looks until no feed follows, or the stream has failed [`MAX_ERRORS`] times in a
    /// row (its feeds then end).
    async fn run(mut self, tx: broadcast::Sender<Arc<Look>>, strides: Strides, rate: u32) {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / LOOKS);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut errors = 0;
        loop {
            tick.tick().await;
            if tx.receiver_count() == 0 && strides.stop(rate, &tx).await {
                return;
            }
            match self.look().await {
                Ok(None) => errors = 0,
                Ok(Some(look)) => {
                    errors = 0;
                    let _ = tx.send(Arc::new(look));
                }
                Err(e) => {
                    errors += 1;
                    tracing::debug!(error = %e, errors, "event feed: a stride's look failed");
                    if errors >= MAX_ERRORS {
                        tracing::warn!(error = %e, "event feed: a stride stopped");
                        // Its feeds end (the channel closes once no sender is left).
                        removed(&mut *strides.slots.lock().await, rate);
                        return;
                    }
                }
            }
        }
    }

    /// One look: the events since the last, as many as the allowance lets through
    /// fetched; `None` when there are none. A look that fails changes nothing.
    async fn look(&mut self) -> Result<Option<Look>, String> {
        let head = self
            .stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        if head <= self.last {
            return Ok(None);
        }
        let picks = picks(self.last, head, self.allowance.accrue(Instant::now()));
        let stream = &self.stream;
        let fetched: Vec<_> = futures::stream::iter(picks.iter().copied())
            .map(|seq| async move { (seq, stream.get_raw_message(seq).await) })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        let mut items = Vec::with_capacity(picks.len());
        for (seq, got) in fetched {
            let message = match got {
                Ok(m) => async_nats::Message {
                    subject: m.subject,
                    reply: None,
                    length: m.payload.len(),
                    payload: m.payload,
                    headers: Some(m.headers),
                    status: None,
                    description: None,
                },
                // Gone already (the stream's retention): counted as skipped.
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(e.to_string()),
            };
            items.extend(stored(&self.bridge, seq, message));
        }
        self.allowance.spend(picks.len() as u64);
        self.last = head;
        Ok(Some(Look { to: head, items }))
    }
}

/// How many events may be sent: `rate` a second, accrued between looks, at most a
/// second's worth. A look that comes late (the node is busy), or that was given up (the
/// socket's other work interrupted it), leaves its share to the next.
struct Allowance {
    rate: f64,
    credit: f64,
    at: Instant,
}

impl Allowance {
    fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate);
        // The first look sends at once.
        let credit = rate / f64::from(LOOKS);
        Allowance {
            rate,
            credit,
            at: now,
        }
    }

    /// What may be sent now.
    fn accrue(&mut self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.at).as_secs_f64();
        self.credit = (self.credit + self.rate * since).min(self.rate);
        self.at = now;
        self.credit as u64
    }

    fn spend(&mut self, sent: u64) {
        self.credit = (self.credit - sent as f64).max(0.0);
    }
}

/// Up to `share` sequences of `(last, head]`, evenly spaced, the newest always among them.
fn picks(last: u64, head: u64, share: u64) -> Vec<u64> {
    let span = head.saturating_sub(last);
    let k = share.min(span);
    (1..=k).map(|j| last + (j * span).div_ceil(k)).collect()
}

/// The highest sequence of `(last, head]` not in `sent` (ascending), or `last` if none.
fn last_unsent(last: u64, head: u64, sent: &[u64]) -> u64 {
    let mut seq = head;
    for s in sent.iter().rev() {
        if *s != seq {
            break;
        }
        seq -= 1;
    }
    seq.max(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_is_the_rate_however_the_looks_fall() {
        let t0 = Instant::now();
        let mut a = Allowance::new(50, t0);
        let mut sent = 0;
        // Looks every 250 ms, then late ones (600 ms apart), over 10 s in all.
        let mut at = Duration::ZERO;
        while at < Duration::from_secs(10) {
            at += if at < Duration::from_secs(5) {
                Duration::from_millis(250)
            } else {
                Duration::from_millis(600)
            };
            let may = a.accrue(t0 + at);
            a.spend(may);
            sent += may;
        }
        let secs = at.as_secs_f64();
        assert!(
            (sent as f64 - 50.0 * secs).abs() <= 13.0,
            "{sent} in {secs} s"
        );
        // Idle for a minute: at most a second's worth at once.
        assert_eq!(a.accrue(t0 + at + Duration::from_secs(60)), 50);
        // Less sent than allowed (few events): the rest is kept, within the cap.
        a.spend(10);
        assert_eq!(a.accrue(t0 + at + Duration::from_secs(60)), 40);
        let mut one = Allowance::new(1, t0);
        assert_eq!(one.accrue(t0), 0, "a rate of 1 sends once a second");
        assert_eq!(one.accrue(t0 + Duration::from_millis(750)), 1);
    }

    #[test]
    fn picks_spread_over_the_window_and_end_at_its_head() {
        assert_eq!(picks(100, 200, 4), [125, 150, 175, 200]);
        assert_eq!(
            picks(100, 103, 12),
            [101, 102, 103],
            "fewer than the share: all"
        );
        assert_eq!(picks(100, 100, 12), Vec::<u64>::new(), "nothing new");
        assert_eq!(picks(100, 200, 0), Vec::<u64>::new(), "no share this look");
        assert_eq!(picks(0, 7, 3), [3, 5, 7]);
    }

    #[test]
    fn the_last_unsent_is_below_the_sent_run_at_the_head() {
        assert_eq!(last_unsent(100, 200, &[150, 200]), 199);
        assert_eq!(last_unsent(100, 200, &[198, 199, 200]), 197);
        assert_eq!(last_unsent(100, 200, &[150]), 200);
        assert_eq!(last_unsent(100, 103, &[101, 102, 103]), 100, "all sent");
    }
}
