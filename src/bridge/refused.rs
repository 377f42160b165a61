//! What happens to a message refused by [`super::seal`]: counted
//! (`ms_cluster_refused_total{kind,reason}`, both labels from fixed sets), logged and
//! audited (`cluster.refused`, principal `peer:<from>`) — the log and the audit at most
//! once per claimed peer per [`QUIET`], so a flood cannot fill the disk or the event bus.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actors::events::Events;

use super::seal::Refusal;

/// Per claimed sender, one log line and audit event in this long.
pub const QUIET: Duration = Duration::from_secs(10);
/// Most senders tracked at once; past it, all others share one slot (a flood of made-up
/// names gets one line per `QUIET`, not one per name).
const MAX_PEERS: usize = 1024;
/// A sender's name as it appears in the log, at most this long (it is the sender's word).
const MAX_NAME: usize = 64;

pub struct Refusals {
    events: Events,
    last: Mutex<HashMap<String, Instant>>,
}

impl Refusals {
    pub fn new(events: Events) -> Self {
        Refusals {
            events,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a refused message of `kind` (one of this node's kind constants) claimed to
    /// be from `from`, and logs and audits it unless that peer was logged lately.
    pub fn refuse(&self, kind: &str, from: &str, subject: &str, reason: Refusal) {
        metrics::counter!(
            "ms_cluster_refused_total",
            "kind" => kind.to_string(),
            "reason" => reason.as_str()
        )
        .increment(1);
        let from: String = from.chars().take(MAX_NAME).collect();
        if !self.due(&from) {
            return;
        }
        self.events.audit(
            "cluster.refused",
            &format!("peer:{from}"),
            "refused",
            format!(
                "a `{kind}` message on {subject}: {} (is cluster.cookie the same on both nodes?)",
                reason.as_str()
            ),
        );
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    fn due(&self, from: &str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() >= MAX_PEERS {
            last.retain(|_, at| now.duration_since(*at) < QUIET);
        }
        let key = if last.len() >= MAX_PEERS && !last.contains_key(from) {
            "*"
        } else {
            from
        };
        match last.get(key) {
            Some(at) if now.duration_since(*at) < QUIET => false,
            _ => {
                last.insert(key.to_string(), now);
                true
            }
        }
    }
}
