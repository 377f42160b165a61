//! Events the actors publish about themselves (DESIGN §6 `events.<kind>…`).
//!
//! Published on an in-process broadcast channel; the NATS bridge (when configured), the
//! event feed and tests subscribe. A slow subscriber lags and loses old events rather than
//! slowing the supervisors down.
//!
//! Each event gets the node's next sequence number and the latest [`RETAINED`] are kept,
//! so a feed of this node alone (no NATS) can replay from a sequence number.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

/// Capacity of the in-process event channel.
pub const EVENT_BUFFER: usize = 4096;
/// Events kept for replay by sequence number.
pub const RETAINED: usize = 16_384;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A child exited abnormally (`events.supervision.failure`).
    ChildFailed {
        supervisor: String,
        child: String,
        reason: String,
    },
    /// A restart is scheduled after `delay_ms` (`events.supervision.recovery`).
    RestartScheduled {
        supervisor: String,
        child: String,
        attempt: u32,
        delay_ms: u64,
    },
    /// A child is running again (`events.supervision.recovery`).
    ChildRestarted {
        supervisor: String,
        child: String,
        pid: u64,
        restarts: u32,
    },
    /// Restart intensity exceeded: the supervisor stopped its children and failed upward
    /// (`events.supervision.escalation`).
    Escalated {
        supervisor: String,
        child: String,
        reason: String,
    },
    /// An agent's lifecycle state changed (`events.agent.*`).
    AgentState {
        agent: String,
        role: String,
        state: String,
    },
    /// The Monitor's judgement of an agent changed (`events.supervision.health`).
    Health {
        agent: String,
        healthy: bool,
        missed: u32,
    },
    /// A node was heard for the first time, or again after being down (`events.node.joined`).
    NodeJoined { node: String },
    /// A node fell silent and is judged down (`events.node.down`); `detector` is the
    /// failure detector's value then (phi, or milliseconds of silence).
    NodeDown { node: String, detector: f64 },
    /// A node said it leaves (`events.node.left`).
    NodeLeft { node: String },
    /// This node took over unfinished tasks of a node that is gone (`events.node.takeover`).
    TasksTakenOver { from: String, tasks: usize },
    /// Something a security reviewer wants on record (`events.audit.<action>`): an admin
    /// action, a drain, a refused token, a refused cluster message. `principal` is who
    /// asked (a token's `sub`, `peer:<node>` for a cluster peer, `anonymous`);
    /// `outcome` is `ok`, `refused` or `failed`.
    Audit {
        action: String,
        principal: String,
        outcome: String,
        detail: String,
    },
    /// An entry of a task's trace, published once it is committed (`events.task.*`).
    Task {
        task_id: String,
        /// The session whose turn the task is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
        seq: i64,
        at_ms: i64,
        #[serde(rename = "event")]
        what: String,
        data: serde_json::Value,
    },
}

impl Event {
    /// The subject suffix under `ms.<cluster>.events.` for this event.
    pub fn subject(&self) -> &'static str {
        match self {
            Event::ChildFailed { .. } => "supervision.failure",
            Event::RestartScheduled { .. } | Event::ChildRestarted { .. } => "supervision.recovery",
            Event::Escalated { .. } => "supervision.escalation",
            Event::AgentState { .. } => "agent.state",
            Event::Task { .. } => "task.trace",
            Event::Health { .. } => "supervision.health",
            Event::NodeJoined { .. } => "node.joined",
            Event::NodeDown { .. } => "node.down",
            Event::NodeLeft { .. } => "node.left",
            Event::TasksTakenOver { .. } => "node.takeover",
            Event::Audit { .. } => "audit",
        }
    }
}

/// Every event kind (its `kind` field) and its subject suffix ([`Event::subject`]).
pub const KINDS: [(&str, &str); 12] = [
    ("child_failed", "supervision.failure"),
    ("restart_scheduled", "supervision.recovery"),
    ("child_restarted", "supervision.recovery"),
    ("escalated", "supervision.escalation"),
    ("agent_state", "agent.state"),
    ("health", "supervision.health"),
    ("node_joined", "node.joined"),
    ("node_down", "node.down"),
    ("node_left", "node.left"),
    ("tasks_taken_over", "node.takeover"),
    ("audit", "audit"),
    ("task", "task.trace"),
];

impl Event {
    /// The event's `kind` (one of [`KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ChildFailed { .. } => "child_failed",
            Event::RestartScheduled { .. } => "restart_scheduled",
            Event::ChildRestarted { .. } => "child_restarted",
            Event::Escalated { .. } => "escalated",
            Event::AgentState { .. } => "agent_state",
            Event::Health { .. } => "health",
            Event::NodeJoined { .. } => "node_joined",
            Event::NodeDown { .. } => "node_down",
            Event::NodeLeft { .. } => "node_left",
            Event::TasksTakenOver { .. } => "tasks_taken_over",
            Event::Audit { .. } => "audit",
            Event::Task { .. } => "task",
        }
    }

    /// The actors an event names (a supervisor and its child, an agent).
    pub fn actors(&self) -> [Option<&str>; 2] {
        match self {
            Event::ChildFailed {
                supervisor, child, ..
            }
            | Event::RestartScheduled {
                supervisor, child, ..
            }
            | Event::ChildRestarted {
                supervisor, child, ..
            }
            | Event::Escalated {
                supervisor, child, ..
            } => [Some(supervisor), Some(child)],
            Event::AgentState { agent, .. } | Event::Health { agent, .. } => [Some(agent), None],
            _ => [None, None],
        }
    }

    /// The node an event is about (joined, down, left, or taken over from).
    pub fn about_node(&self) -> Option<&str> {
        match self {
            Event::NodeJoined { node }
            | Event::NodeDown { node, .. }
            | Event::NodeLeft { node } => Some(node),
            Event::TasksTakenOver { from, .. } => Some(from),
            _ => None,
        }
    }

    /// The session an event is about (a session turn's task entries).
    pub fn session(&self) -> Option<&str> {
        match self {
            Event::Task { session, .. } => session.as_deref(),
            _ => None,
        }
    }

    /// The task an event is about.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            Event::Task { task_id, .. } => Some(task_id),
            _ => None,
        }
    }
}

/// An event with the time it happened and its place among this node's events.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub at: SystemTime,
    /// This node's sequence number (from 1, per node start); not sent to NATS, where the
    /// event stream numbers the cluster's events.
    #[serde(skip)]
    pub local_seq: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// Events as they are shared: one allocation, whoever listens.
pub type Shared = Arc<Stamped>;

/// Sending side of the event channel; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Shared>,
    log: Arc<Mutex<Log>>,
}

/// The latest events, for replay; sequence numbers are given under its lock, so the
/// channel carries them in order.
#[derive(Default)]
struct Log {
    last_seq: u64,
    retained: VecDeque<Shared>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(EVENT_BUFFER).0,
            log: Arc::default(),
        }
    }
}

impl Events {
    pub fn publish(&self, event: Event) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.last_seq += 1;
        let stamped = Arc::new(Stamped {
            at: SystemTime::now(),
            local_seq: log.last_seq,
            event,
        });
        if log.retained.len() == RETAINED {
            log.retained.pop_front();
        }
        log.retained.push_back(stamped.clone());
        // No subscriber is fine: events are for whoever listens.
        let _ = self.tx.send(stamped);
    }

    /// Subscribes to what comes next and reads what is retained after sequence `after`,
    /// together (nothing falls between the two): the retained events, then the receiver.
    pub fn replay(&self, after: u64) -> (Vec<Shared>, broadcast::Receiver<Shared>) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let skip = log.retained.partition_point(|e| e.local_seq <= after);
        (log.retained.range(skip..).cloned().collect(), rx)
    }

    /// The first and last sequence numbers retained (`(last + 1, last)` when none are).
    pub fn retained_range(&self) -> (u64, u64) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let first = log
            .retained
            .front()
            .map_or(log.last_seq + 1, |e| e.local_seq);
        (first, log.last_seq)
    }

    /// Records an audit event: a log line (target `audit`) and an event on the bus.
    pub fn audit(&self, action: &str, principal: &str, outcome: &str, detail: impl Into<String>) {
        let detail = detail.into();
        if outcome == "ok" {
            tracing::info!(target: "audit", action, principal, outcome, detail = %detail);
        } else {
            tracing::warn!(target: "audit", action, principal, outcome, detail = %detail);
        }
        self.publish(Event::Audit {
            action: action.to_string(),
            principal: principal.to_string(),
            outcome: outcome.to_string(),
            detail,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Shared> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(n: usize) -> Event {
        Event::NodeJoined {
            node: format!("n{n}"),
        }
    }

    #[test]
    fn replay_gives_what_is_retained_after_a_sequence_then_what_comes() {
        let events = Events::default();
        for n in 1..=5 {
            events.publish(joined(n));
        }
        let (old, mut rx) = events.replay(3);
        let seqs: Vec<u64> = old.iter().map(|e| e.local_seq).collect();
        assert_eq!(seqs, vec![4, 5]);
        events.publish(joined(6));
        assert_eq!(rx.try_recv().expect("the next event").local_seq, 6);
        assert_eq!(events.retained_range(), (1, 6));
    }

    #[test]
    fn every_kind_is_listed_with_its_subject() {
        let s = String::new;
        let all = [
            Event::ChildFailed {
                supervisor: s(),
                child: s(),
                reason: s(),
            },
            Event::RestartScheduled {
                supervisor: s(),
                child: s(),
                attempt: 1,
                delay_ms: 1,
            },
            Event::ChildRestarted {
                supervisor: s(),
                child: s(),
                pid: 1,
                restarts: 1,
            },
            Event::Escalated {
                supervisor: s(),
                child: s(),
                reason: s(),
            },
            Event::AgentState {
                agent: s(),
                role: s(),
                state: s(),
            },
            Event::Health {
                agent: s(),
                healthy: true,
                missed: 0,
            },
            Event::NodeJoined { node: s() },
            Event::NodeDown {
                node: s(),
                detector: 0.0,
            },
            Event::NodeLeft { node: s() },
            Event::TasksTakenOver {
                from: s(),
                tasks: 0,
            },
            Event::Audit {
                action: s(),
                principal: s(),
                outcome: s(),
                detail: s(),
            },
            Event::Task {
                task_id: s(),
                session: None,
                seq: 0,
                at_ms: 0,
                what: s(),
                data: serde_json::Value::Null,
            },
        ];
        assert_eq!(all.len(), KINDS.len());
        for event in all {
            let json = serde_json::to_value(&event).expect("an event encodes");
            assert_eq!(json["kind"], event.kind());
            assert!(
                KINDS.contains(&(event.kind(), event.subject())),
                "{}",
                event.kind()
            );
        }
    }

    #[test]
    fn only_the_latest_are_retained() {
        let events = Events::default();
        for n in 0..RETAINED + 10 {
            events.publish(joined(n));
        }
        let (first, last) = events.retained_range();
        assert_eq!((first, last), (11, (RETAINED + 10) as u64));
        let (old, _rx) = events.replay(0);
        assert_eq!(old.len(), RETAINED);
        assert_eq!(old[0].local_seq, 11);
    }
}
