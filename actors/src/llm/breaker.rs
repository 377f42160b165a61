//! A circuit breaker, so a failing LLM provider is given a rest instead of every task
//! waiting out its timeouts and retries.
//!
//! Outcomes of logical calls are kept in a rolling window. The breaker opens only when the
//! window holds at least `min_samples` outcomes *and* the failure share reaches
//! `failure_ratio` (so two unlucky calls after a quiet hour do not open it). While open,
//! calls fail fast. After `open_secs` it is half-open: at most `half_open_probes` calls go
//! through at once; a successful probe closes it with an empty window, a failed one opens it
//! again. Every method takes the current [`Instant`], so tests drive time without sleeping.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::BreakerConfig;

/// The breaker's state, for introspection.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// How a call that went through ended, as far as the breaker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The provider or the path to it failed (5xx, 429, timeout, transport, bad answer).
    Failure,
    /// Not the provider's fault (a 4xx client error, a cancelled call): not counted.
    Ignored,
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `generation` tells probes of this half-open period from late ones of an earlier one.
    HalfOpen {
        in_flight: u32,
        generation: u64,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// `(when, failed)` of each counted outcome while closed, oldest first.
    window: VecDeque<(Instant, bool)>,
    failures: usize,
    generation: u64,
}

/// A thread-safe circuit breaker; see the module docs.
#[derive(Debug)]
pub struct CircuitBreaker {
    window: Duration,
    min_samples: usize,
    failure_ratio: f64,
    open_for: Duration,
    probes: u32,
    inner: Mutex<Inner>,
}

/// Leave to make one call. Report how it ended with [`Permit::record`]; a permit dropped
/// without a record (the call was cancelled) counts as [`Outcome::Ignored`].
#[must_use = "a permit must be recorded"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// `Some(generation)` when this call probes a half-open breaker.
    probe: Option<u64>,
    recorded: bool,
}

impl CircuitBreaker {
    /// Expects a validated config (positive durations, ratio in (0, 1], counts ≥ 1).
    pub fn new(config: &BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            window: Duration::from_secs_f64(config.window_secs),
            min_samples: config.min_samples.max(1) as usize,
            failure_ratio: config.failure_ratio,
            open_for: Duration::from_secs_f64(config.open_secs),
            probes: config.half_open_probes.max(1),
            inner: Mutex::new(Inner {
                state: State::Closed,
                window: VecDeque::new(),
                failures: 0,
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The lock is never held across a panic point that leaves the state inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        match inner.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call at `now`. `Err(retry_after)` means fail fast: the breaker is open,
    /// or half-open with all probe slots taken.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Duration> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let probe = match &mut inner.state {
            State::Closed => None,
            State::Open { until } => return Err(until.saturating_duration_since(now)),
            State::HalfOpen {
                in_flight,
                generation,
            } => {
                if *in_flight >= self.probes {
                    // The probes' fate is unknown; a full open period is the honest hint.
                    return Err(self.open_for);
                }
                *in_flight += 1;
                Some(*generation)
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    /// Moves an expired open state to half-open and forgets outcomes older than the window.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        if let State::Open { until } = inner.state
            && now >= until
        {
            inner.generation += 1;
            inner.state = State::HalfOpen {
                in_flight: 0,
                generation: inner.generation,
            };
        }
        while let Some(&(at, failed)) = inner.window.front() {
            if now.saturating_duration_since(at) < self.window {
                break;
            }
            inner.window.pop_front();
            inner.failures -= usize::from(failed);
        }
    }

    fn finish(&self, probe: Option<u64>, outcome: Outcome, now: Instant) {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        match (probe, &mut inner.state) {
            (
                Some(mine),
                State::HalfOpen {
                    in_flight,
                    generation,
                },
            ) if *generation == mine => {
                *in_flight -= 1;
                match outcome {
                    Outcome::Success => {
                        inner.state = State::Closed;
                        inner.window.clear();
                        inner.failures = 0;
                    }
                    Outcome::Failure => self.open(&mut inner, now),
                    Outcome::Ignored => {}
                }
            }
            (None, State::Closed) if outcome != Outcome::Ignored => {
                let failed = outcome == Outcome::Failure;
                inner.window.push_back((now, failed));
                inner.failures += usize::from(failed);
                let samples = inner.window.len();
                if failed
                    && samples >= self.min_samples
                    && inner.failures as f64 >= self.failure_ratio * samples as f64
                {
                    self.open(&mut inner, now);
                }
            }
            // Late outcomes of calls admitted under an earlier state change nothing.
            _ => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = State::Open {
            until: now + self.open_for,
        };
        inner.window.clear();
        inner.failures = 0;
    }
}

impl Permit<'_> {
    /// Whether this call probes a half-open breaker.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Reports how the call ended, at `now`.
    pub fn record(mut self, outcome: Outcome, now: Instant) {
        self.recorded = true;
        self.breaker.finish(self.probe, outcome, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker
                .finish(self.probe, Outcome::Ignored, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(min_samples: u32, probes: u32) -> CircuitBreaker {
        CircuitBreaker::new(&BreakerConfig {
            window_secs: 10.0,
            min_samples,
            failure_ratio: 0.5,
            open_secs: 5.0,
            half_open_probes: probes,
        })
    }

    fn call(b: &CircuitBreaker, outcome: Outcome, now: Instant) {
        b.try_acquire(now).expect("admitted").record(outcome, now);
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn stays_closed_below_min_samples_even_when_all_fail() {
        let b = breaker(5, 1);
        let t = Instant::now();
        for _ in 0..4 {
            call(&b, Outcome::Failure, t);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
        call(&b, Outcome::Failure, t);
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn opens_only_when_the_failure_ratio_is_reached() {
        let b = breaker(4, 1);
        let t = Instant::now();
        call(&b, Outcome::Success, t);
        call(&b, Outcome::Success, t);
        call(&b, Outcome::Success, t);
        call(&b, Outcome::Failure, t); // 1 of 4
        call(&b, Outcome::Failure, t); // 2 of 5
        assert_eq!(b.state(t), BreakerState::Closed);
        call(&b, Outcome::Failure, t); // 3 of 6 = 0.5
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let b = breaker(3, 1);
        let t = Instant::now();
        call(&b, Outcome::Failure, t);
        call(&b, Outcome::Failure, t);
        // Ten seconds later both are gone: two more failures make only two samples.
        call(&b, Outcome::Failure, t + secs(10.0));
        call(&b, Outcome::Failure, t + secs(10.5));
        assert_eq!(b.state(t + secs(10.5)), BreakerState::Closed);
        call(&b, Outcome::Failure, t + secs(11.0));
        assert_eq!(b.state(t + secs(11.0)), BreakerState::Open);
    }

    #[test]
    fn ignored_outcomes_do_not_count() {
        let b = breaker(2, 1);
        let t = Instant::now();
        call(&b, Outcome::Failure, t);
        for _ in 0..10 {
            call(&b, Outcome::Ignored, t);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
        call(&b, Outcome::Failure, t);
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn open_fails_fast_then_half_opens_after_open_secs() {
        let b = breaker(1, 1);
        let t = Instant::now();
        call(&b, Outcome::Failure, t);
        assert_eq!(b.try_acquire(t + secs(1.0)).unwrap_err(), secs(4.0));
        assert_eq!(b.state(t + secs(4.9)), BreakerState::Open);
        assert_eq!(b.state(t + secs(5.0)), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_a_bounded_number_of_probes() {
        let b = breaker(1, 2);
        let t = Instant::now();
        call(&b, Outcome::Failure, t);
        let t = t + secs(5.0);
        let p1 = b.try_acquire(t).unwrap();
        let p2 = b.try_acquire(t).unwrap();
        assert!(p1.is_probe() && p2.is_probe());
        assert_eq!(b.try_acquire(t).unwrap_err(), secs(5.0));
        // A probe that ends without a verdict frees its slot.
        p2.record(Outcome::Ignored, t);
        let p3 = b.try_acquire(t).unwrap();
        drop(p3); // cancelled: frees its slot too
        let p4 = b.try_acquire(t).unwrap();
        assert_eq!(b.try_acquire(t).unwrap_err(), secs(5.0));
        p1.record(Outcome::Success, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        // A late probe of the closed period changes nothing.
        p4.record(Outcome::Failure, t);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn probe_success_closes_with_an_empty_window() {
        let b = breaker(2, 1);
        let t = Instant::now();
        call(&b, Outcome::Failure, t);
        call(&b, Outcome::Failure, t);
        let t = t + secs(5.0);
        call(&b, Outcome::Success, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        // Had the window kept the two failures, one more would open it again.
        call(&b, Outcome::Failure, t);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn probe_failure_reopens_for_a_full_period() {
        let b = breaker(1, 1);
        let t = Instant::now();
        call(&b, Outcome::Failure, t);
        let t = t + secs(5.0);
        call(&b, Outcome::Failure, t);
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(b.try_acquire(t + secs(1.0)).unwrap_err(), secs(4.0));
        assert_eq!(b.state(t + secs(5.0)), BreakerState::HalfOpen);
    }

    #[test]
    fn a_probe_of_an_earlier_half_open_period_is_stale() {
        let b = breaker(1, 2);
        let t = Instant::now();
        call(&b, Outcome::Failure, t);
        let t1 = t + secs(5.0);
        let failing = b.try_acquire(t1).unwrap();
        let slow = b.try_acquire(t1).unwrap();
        failing.record(Outcome::Failure, t1);
        let t2 = t1 + secs(5.0);
        assert_eq!(b.state(t2), BreakerState::HalfOpen);
        // The slow probe belongs to the previous half-open period: its success is stale.
        slow.record(Outcome::Success, t2);
        assert_eq!(b.state(t2), BreakerState::HalfOpen);
        let fresh = b.try_acquire(t2).unwrap();
        let fresh2 = b.try_acquire(t2).unwrap();
        assert!(
            b.try_acquire(t2).is_err(),
            "the stale probe must not free a slot"
        );
        fresh.record(Outcome::Success, t2);
        drop(fresh2);
        assert_eq!(b.state(t2), BreakerState::Closed);
    }

    #[test]
    fn calls_admitted_while_closed_do_not_count_once_it_opened() {
        let b = breaker(1, 1);
        let t = Instant::now();
        let late = b.try_acquire(t).unwrap();
        call(&b, Outcome::Failure, t);
        late.record(Outcome::Success, t);
        assert_eq!(b.state(t), BreakerState::Open);
    }
}
