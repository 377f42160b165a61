//! A sampled live feed of every event (`max_rate`, no filter) that reads only the events
//! it sends.
//!
//! A console's Events view asks for everything at 50 events a second; a busy cluster
//! writes tens of thousands. Read through the shared reader ([`super::hub`]), NATS would
//! send the node every one of them, and the node would decode each, to show 50: most of
//! what ten open consoles cost the node. The stride instead looks at the stream's last
//! sequence [`LOOKS`] times a second, takes what the rate allows since the last look,
//! evenly spaced over the events since then, fetches just those by sequence, and counts
//! the rest as skipped: the stream numbers every event, so what it went past is known
//! without reading it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    stream::{RawMessageErrorKind, Stream},
};
use futures::StreamExt;

use super::stream::{MAX_ERRORS, stored};
use super::{FeedError, Next};
use crate::bridge::Bridge;

/// Looks at the stream a second.
const LOOKS: u32 = 4;
/// Fetches of one look in flight at once.
const IN_FLIGHT: usize = 16;

pub struct Stride {
    bridge: Arc<Bridge>,
    stream: Stream,
    allowance: Allowance,
    look: tokio::time::Interval,
    /// The last sequence accounted for: sent, or counted as skipped.
    last: u64,
    ready: VecDeque<Next>,
    errors: u32,
}

impl Stride {
    /// A stride of at most `rate` events a second, from after sequence `last`.
    pub async fn open(bridge: &Arc<Bridge>, rate: u32, last: u64) -> Result<Self, FeedError> {
        let js = jetstream::new(bridge.client().clone());
        let stream = js
            .get_stream(bridge.subjects().events_stream())
            .await
            .map_err(|e| FeedError::Unavailable(e.to_string()))?;
        let mut look = tokio::time::interval(Duration::from_secs(1) / LOOKS);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Stride {
            bridge: bridge.clone(),
            stream,
            allowance: Allowance::new(rate, Instant::now()),
            look,
            last,
            ready: VecDeque::new(),
            errors: 0,
        })
    }

    /// Cancel-safe: a look changes nothing until all it fetched is back.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(next) = self.ready.pop_front() {
                return next;
            }
            self.look.tick().await;
            match self.take_look().await {
                Ok(()) => self.errors = 0,
                Err(e) => {
                    self.errors += 1;
                    tracing::debug!(error = %e, errors = self.errors, "event feed: stride");
                    if self.errors >= MAX_ERRORS {
                        return Next::Ended(format!("the event stream failed: {e}"));
                    }
                }
            }
        }
    }

    pub fn ready(&mut self) -> Option<Next> {
        self.ready.pop_front()
    }

    /// One look: of the events since the last, as many as the allowance lets through
    /// fetched and queued as sampled, the rest as one `Skipped`.
    async fn take_look(&mut self) -> Result<(), String> {
        let head = self
            .stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        let picks = picks(self.last, head, self.allowance.accrue(Instant::now()));
        let stream = &self.stream;
        let fetched: Vec<_> = futures::stream::iter(picks.iter().copied())
            .map(|seq| async move { (seq, stream.get_raw_message(seq).await) })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        let mut sent = Vec::with_capacity(picks.len());
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
            if let Some(item) = stored(&self.bridge, seq, message) {
                sent.push(seq);
                self.ready.push_back(Next::Sampled(item));
            }
        }
        let gone_past = head.saturating_sub(self.last) - sent.len() as u64;
        if gone_past > 0 {
            self.ready.push_back(Next::Skipped {
                count: gone_past,
                last_seq: last_unsent(self.last, head, &sent),
            });
        }
        self.last = self.last.max(head);
        self.allowance.spend(picks.len() as u64);
        Ok(())
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
