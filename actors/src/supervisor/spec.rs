//! Child specifications as data, in the manner of OTP's `supervisor:child_spec()`.
//!
//! A supervisor is described entirely by a [`SupervisorSpec`]: its strategy, restart
//! intensity, backoff and an ordered list of [`ChildSpec`]s. The order is the start order;
//! shutdown runs in reverse.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, SpawnErr};
use serde::{Deserialize, Serialize};

/// Which siblings are restarted when a child must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Strategy {
    /// Only the child that exited is restarted.
    OneForOne,
    /// Every child is stopped (reverse start order) and all are restarted (start order).
    OneForAll,
    /// The child and every child started after it are restarted.
    RestForOne,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ];
    pub const ALLOWED: &'static str = "one_for_one, one_for_all, rest_for_one";

    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a child is restarted (OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Restart {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only when it exits abnormally (failure or kill).
    Transient,
    /// Never restarted; also not when a sibling's restart takes it down.
    Temporary,
}

impl Restart {
    pub const ALL: [Restart; 3] = [Restart::Permanent, Restart::Transient, Restart::Temporary];
    pub const ALLOWED: &'static str = "permanent, transient, temporary";

    pub fn parse(s: &str) -> Option<Restart> {
        Restart::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Permanent => "permanent",
            Restart::Transient => "transient",
            Restart::Temporary => "temporary",
        }
    }
}

/// Parsing from configuration names what is allowed (serde's derived message does not).
macro_rules! parse_from_string {
    ($ty:ident, $what:literal) => {
        impl TryFrom<String> for $ty {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                $ty::parse(&s).ok_or_else(|| {
                    format!(
                        concat!("unknown ", $what, " `{}`; allowed: {}"),
                        s,
                        $ty::ALLOWED
                    )
                })
            }
        }
    };
}
pub(crate) use parse_from_string;

parse_from_string!(Strategy, "strategy");
parse_from_string!(Restart, "restart type");

/// How a child is stopped when its supervisor stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Killed at once, without running its `post_stop`.
    Brutal,
    /// Asked to stop; killed if it has not stopped within the duration.
    Timeout(Duration),
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::Timeout(Duration::from_secs(5))
    }
}

/// Restart intensity: more than `max_restarts` restarts within `within` and the
/// supervisor gives up, stops its children and fails upward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub within: Duration,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity {
            max_restarts: 3,
            within: Duration::from_secs(5),
        }
    }
}

/// Exponential restart backoff with a cap and jitter.
///
/// The first restart of a child within the intensity period is immediate (a crash is most
/// often a one-off); the n-th waits `initial * 2^(n-2)`, capped at `max`, with up to
/// `jitter` (a fraction) added at random so that siblings do not restart in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(2),
            jitter: 0.1,
        }
    }
}

impl Backoff {
    /// The delay before the `attempt`-th recent restart (1-based), without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let exponent = (attempt - 2).min(30);
        self.initial
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay before the `attempt`-th recent restart, with jitter applied (never above `max`).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        if base.is_zero() || self.jitter <= 0.0 {
            return base;
        }
        let extra = base.mul_f64(self.jitter * rand::random::<f64>());
        (base + extra).min(self.max)
    }
}

/// Boxed future returned by a child's start function.
pub type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// Starts one incarnation of a child, linked to `supervisor`. `incarnation` counts the
/// child's restarts (0 for the first start) so the child can report it.
pub type StartFn = Arc<dyn Fn(ActorCell, u32) -> StartFuture + Send + Sync>;

/// What kind of actor a child is; supervisors get an unlimited default shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    Worker,
    Supervisor,
}

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among the supervisor's children; stable across restarts.
    pub id: String,
    pub restart: Restart,
    pub shutdown: Shutdown,
    pub kind: ChildKind,
    pub start: StartFn,
}

impl ChildSpec {
    /// A permanent worker child with the default shutdown timeout.
    pub fn new<F, Fut>(id: impl Into<String>, start: F) -> Self
    where
        F: Fn(ActorCell, u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        ChildSpec {
            id: id.into(),
            restart: Restart::Permanent,
            shutdown: Shutdown::default(),
            kind: ChildKind::Worker,
            start: Arc::new(move |sup, n| Box::pin(start(sup, n))),
        }
    }

    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Marks the child as a supervisor: it is given time to stop its own children.
    pub fn supervisor(mut self) -> Self {
        self.kind = ChildKind::Supervisor;
        if self.shutdown == Shutdown::default() {
            self.shutdown = Shutdown::Timeout(Duration::from_secs(60));
        }
        self
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Everything a supervisor needs to run.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    /// Name shown in the tree, events and metrics (e.g. `root`, `execution`).
    pub name: String,
    pub strategy: Strategy,
    pub intensity: Intensity,
    pub backoff: Backoff,
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    pub fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        SupervisorSpec {
            name: name.into(),
            strategy,
            intensity: Intensity::default(),
            backoff: Backoff::default(),
            children: Vec::new(),
        }
    }

    pub fn intensity(mut self, max_restarts: u32, within: Duration) -> Self {
        self.intensity = Intensity {
            max_restarts,
            within,
        };
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            jitter: 0.0,
        };
        let delays: Vec<u128> = (1..=7).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 100, 100]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(1000),
            jitter: 0.5,
        };
        for _ in 0..100 {
            let d = b.delay(3);
            assert!(d >= Duration::from_millis(20) && d <= Duration::from_millis(30));
        }
        assert_eq!(b.delay(40), Duration::from_millis(1000));
    }
}
