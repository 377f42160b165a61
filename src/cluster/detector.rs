//! Failure detection on heartbeats: phi accrual (Hayashibara et al., as Akka and
//! Cassandra use it) or a plain deadline.
//!
//! Phi is the suspicion that a peer is gone, on a log scale: phi = 8 means the silence
//! seen would happen with probability 1e-8 if the peer were alive, judged against the
//! mean and spread of the intervals seen so far. `acceptable_pause` widens the mean so a
//! GC pause or a busy core is not a death; `min_std_dev` keeps very regular heartbeats
//! from making any jitter fatal.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{ClusterSettings, DetectorKind};

/// Intervals kept per peer.
const WINDOW: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct DetectorSettings {
    pub kind: DetectorKind,
    pub heartbeat: Duration,
    pub phi_threshold: f64,
    pub acceptable_pause: Duration,
    pub min_std_dev: Duration,
    pub deadline: Duration,
}

impl DetectorSettings {
    pub fn from_settings(c: &ClusterSettings) -> Self {
        DetectorSettings {
            kind: c.detector,
            heartbeat: Duration::from_millis(c.heartbeat_ms),
            phi_threshold: c.phi_threshold,
            acceptable_pause: Duration::from_millis(c.acceptable_pause_ms),
            min_std_dev: Duration::from_millis(c.min_std_dev_ms),
            deadline: Duration::from_millis(c.deadline_ms),
        }
    }

    /// The silence after which a new peer, or one seen for the first time, is down.
    pub fn grace(&self) -> Duration {
        match self.kind {
            DetectorKind::Deadline => self.deadline,
            DetectorKind::Phi => self.heartbeat + self.acceptable_pause + self.min_std_dev * 6,
        }
    }
}

/// One peer's heartbeat history.
#[derive(Debug, Clone)]
pub struct Detector {
    settings: DetectorSettings,
    last: Instant,
    intervals: VecDeque<f64>,
}

impl Detector {
    /// A detector for a peer just heard from at `now`.
    pub fn new(settings: DetectorSettings, now: Instant) -> Self {
        let mut intervals = VecDeque::with_capacity(WINDOW);
        // Seed with the configured interval so the first judgements are sane.
        intervals.push_back(settings.heartbeat.as_secs_f64() * 1000.0);
        Detector {
            settings,
            last: now,
            intervals,
        }
    }

    pub fn heartbeat(&mut self, now: Instant) {
        let interval = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        self.last = now;
        if self.intervals.len() == WINDOW {
            self.intervals.pop_front();
        }
        self.intervals.push_back(interval);
    }

    pub fn last_heard(&self) -> Instant {
        self.last
    }

    /// The detector's value at `now`: phi, or milliseconds of silence for the deadline kind.
    pub fn value(&self, now: Instant) -> f64 {
        let silence = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        match self.settings.kind {
            DetectorKind::Deadline => silence,
            // Clamped at zero (also turning -0.0 into 0.0 for people reading it).
            DetectorKind::Phi => {
                let phi = self.phi(silence);
                if phi > 0.0 { phi } else { 0.0 }
            }
        }
    }

    pub fn is_down(&self, now: Instant) -> bool {
        let value = self.value(now);
        match self.settings.kind {
            DetectorKind::Deadline => value >= self.settings.deadline.as_secs_f64() * 1000.0,
            DetectorKind::Phi => value >= self.settings.phi_threshold,
        }
    }

    fn phi(&self, silence_ms: f64) -> f64 {
        let n = self.intervals.len() as f64;
        let mean = self.intervals.iter().sum::<f64>() / n;
        let variance = self
            .intervals
            .iter()
            .map(|i| (i - mean).powi(2))
            .sum::<f64>()
            / n;
        let min_std = self.settings.min_std_dev.as_secs_f64() * 1000.0;
        let std = variance.sqrt().max(min_std);
        let mean = mean + self.settings.acceptable_pause.as_secs_f64() * 1000.0;
        // Akka's logistic approximation of the normal distribution's tail.
        let y = (silence_ms - mean) / std;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p = if silence_ms > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        // p underflows to 0 for long silences: cap phi rather than return infinity.
        (-p.max(1e-300).log10()).min(300.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kind: DetectorKind) -> DetectorSettings {
        DetectorSettings {
            kind,
            heartbeat: Duration::from_millis(250),
            phi_threshold: 8.0,
            acceptable_pause: Duration::from_millis(1000),
            min_std_dev: Duration::from_millis(100),
            deadline: Duration::from_millis(2000),
        }
    }

    fn regular(kind: DetectorKind) -> (Detector, Instant) {
        let start = Instant::now();
        let mut d = Detector::new(settings(kind), start);
        let mut t = start;
        for _ in 0..40 {
            t += Duration::from_millis(250);
            d.heartbeat(t);
        }
        (d, t)
    }

    #[test]
    fn phi_grows_with_silence_and_crosses_the_threshold_within_three_seconds() {
        let (d, t) = regular(DetectorKind::Phi);
        let at = |ms| d.value(t + Duration::from_millis(ms));
        assert!(at(250) < 1.0, "a normal interval: phi {}", at(250));
        assert!(at(1000) < at(1500) && at(1500) < at(2000));
        assert!(!d.is_down(t + Duration::from_millis(1300)));
        assert!(
            d.is_down(t + Duration::from_millis(2500)),
            "phi {}",
            at(2500)
        );
        assert!(at(60_000).is_finite());
    }

    #[test]
    fn irregular_heartbeats_make_phi_more_patient() {
        let start = Instant::now();
        let mut jittery = Detector::new(settings(DetectorKind::Phi), start);
        let mut t = start;
        for i in 0..40 {
            t += Duration::from_millis(if i % 2 == 0 { 50 } else { 900 });
            jittery.heartbeat(t);
        }
        let (regular, r) = regular(DetectorKind::Phi);
        let silence = Duration::from_millis(1900);
        assert!(jittery.value(t + silence) < regular.value(r + silence));
    }

    #[test]
    fn deadline_is_a_fixed_silence() {
        let (d, t) = regular(DetectorKind::Deadline);
        assert!(!d.is_down(t + Duration::from_millis(1999)));
        assert!(d.is_down(t + Duration::from_millis(2000)));
    }
}
