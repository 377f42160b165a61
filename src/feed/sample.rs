//! A feed for people: at most `max_rate` events a second, the rest counted and reported.
//!
//! A console's Events view cannot show thousands of rows a second, and a browser that
//! tries falls behind and is closed. With `max_rate`, the node sends the first events of
//! each second up to the cap and then, once the second is over, a `skipped` frame:
//! `{"kind": "skipped", "count", "last_seq"}` (how many passed the filter but were not
//! sent, and the seq of the last of them, to replay from if they are wanted after all).
//! A feed of everything from the cluster's stream samples itself instead
//! ([`super::stride`]: its share spread over the second, the rest never read); the
//! sampler only counts what it went past ([`Sampler::skip`]).

use std::time::{Duration, Instant};

/// Highest `max_rate` taken.
pub const MAX_RATE: u32 = 100_000;

const WINDOW: Duration = Duration::from_secs(1);

pub struct Sampler {
    max_rate: u32,
    window: Instant,
    sent: u32,
    skipped: u64,
    last_skipped: u64,
}

impl Sampler {
    pub fn new(max_rate: u32) -> Self {
        Sampler {
            max_rate,
            window: Instant::now(),
            sent: 0,
            skipped: 0,
            last_skipped: 0,
        }
    }

    /// Whether the event numbered `seq` is sent (or counted as skipped).
    pub fn admit(&mut self, seq: u64) -> bool {
        self.roll();
        if self.sent < self.max_rate {
            self.sent += 1;
            return true;
        }
        self.skipped += 1;
        self.last_skipped = seq;
        false
    }

    /// Counts `count` events the source went past, the last of them `last_seq`.
    pub fn skip(&mut self, count: u64, last_seq: u64) {
        self.roll();
        // As a second with events sent: reported once it is over, not after every look.
        self.sent = self.sent.max(1);
        self.skipped += count;
        self.last_skipped = self.last_skipped.max(last_seq);
    }

    /// Whether this second's share is sent: what follows in it is only counted.
    pub fn saturated(&self) -> bool {
        self.sent >= self.max_rate && self.window.elapsed() < WINDOW
    }

    /// The `skipped` frame owed for the seconds that are over, if any event was skipped.
    pub fn report(&mut self) -> Option<String> {
        self.roll();
        if self.skipped == 0 || self.sent > 0 && self.window.elapsed() < WINDOW {
            return None;
        }
        let report = serde_json::json!({
            "kind": "skipped",
            "count": self.skipped,
            "last_seq": self.last_skipped,
        });
        self.skipped = 0;
        Some(report.to_string())
    }

    fn roll(&mut self) {
        if self.window.elapsed() >= WINDOW {
            self.window = Instant::now();
            self.sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_up_to_the_cap_and_counts_the_rest() {
        let mut s = Sampler::new(3);
        let sent: Vec<bool> = (1..=5).map(|seq| s.admit(seq)).collect();
        assert_eq!(sent, [true, true, true, false, false]);
        assert!(s.saturated(), "the second's share is sent");
        assert_eq!(s.report(), None, "the second is not over");
        s.window -= WINDOW;
        let report: serde_json::Value = serde_json::from_str(&s.report().unwrap()).unwrap();
        assert_eq!(report["kind"], "skipped");
        assert_eq!(report["count"], 2);
        assert_eq!(report["last_seq"], 5);
        assert_eq!(s.report(), None, "reported once");
        assert!(!s.saturated(), "a new second");
        assert!(s.admit(6), "a new second sends again");
    }

    #[test]
    fn what_a_source_went_past_is_reported_once_a_second() {
        let mut s = Sampler::new(50);
        s.skip(100, 120);
        s.skip(30, 160);
        assert_eq!(s.report(), None, "the second is not over");
        s.window -= WINDOW;
        let report: serde_json::Value = serde_json::from_str(&s.report().unwrap()).unwrap();
        assert_eq!(
            (report["count"].as_u64(), report["last_seq"].as_u64()),
            (Some(130), Some(160))
        );
        assert_eq!(s.report(), None, "reported once");
    }
}
