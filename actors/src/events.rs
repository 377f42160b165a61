//! Events the actors publish about themselves (DESIGN §6 `events.<kind>…`).
//!
//! Published on an in-process broadcast channel; the NATS bridge (when configured) and
//! tests subscribe. A slow subscriber lags and loses old events rather than slowing the
//! supervisors down.

use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

/// Capacity of the in-process event channel.
pub const EVENT_BUFFER: usize = 4096;

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

/// An event with the time it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub at: SystemTime,
    #[serde(flatten)]
    pub event: Event,
}

/// Sending side of the event channel; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Stamped>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl Events {
    pub fn publish(&self, event: Event) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.tx.send(Stamped {
            at: SystemTime::now(),
            event,
        });
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

    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        self.tx.subscribe()
    }
}
