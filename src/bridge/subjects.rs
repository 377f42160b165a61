//! The bridge's NATS subjects (DESIGN §6), all under `ms.<cluster>.`.
//!
//! Membership traffic (`cluster.heartbeat`, `cluster.leave`) is kept out of `events.>` so
//! the JetStream event stream does not fill with heartbeats.

/// Builds the subjects of one cluster.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(cluster: &str) -> Self {
        Subjects {
            prefix: format!("ms.{cluster}"),
        }
    }

    /// Every subject of this cluster (`ms.<cluster>.>`).
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// Each node's periodic announcement: address, load, state.
    pub fn heartbeat(&self) -> String {
        format!("{}.cluster.heartbeat", self.prefix)
    }

    /// A node saying it leaves (graceful stop, end of a drain).
    pub fn leave(&self) -> String {
        format!("{}.cluster.leave", self.prefix)
    }

    /// `events.<suffix>`, e.g. `events.node.down`.
    pub fn event(&self, suffix: &str) -> String {
        format!("{}.events.{suffix}", self.prefix)
    }

    /// Every event (what the JetStream event stream keeps).
    pub fn events(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// A task ticket on the work queue: `tasks.<priority>`.
    pub fn task(&self, priority: &str) -> String {
        format!("{}.tasks.{priority}", self.prefix)
    }

    /// Every task ticket (what the work queue stream keeps).
    pub fn tasks(&self) -> String {
        format!("{}.tasks.*", self.prefix)
    }

    /// The JetStream work queue stream of this cluster's tasks.
    pub fn tasks_stream(&self) -> String {
        format!("{}_TASKS", self.prefix.replace('.', "_")).to_uppercase()
    }

    /// A cancel of a step another node serves (every node hears it): `agents.cancel`.
    pub fn agents_cancel(&self) -> String {
        format!("{}.agents.cancel", self.prefix)
    }

    /// An admin request to one node: `admin.<node>.<verb>`.
    pub fn admin(&self, node: &str, verb: &str) -> String {
        format!("{}.admin.{node}.{verb}", self.prefix)
    }

    /// The JetStream stream name of this cluster's events (stream names allow no dots).
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.prefix.replace('.', "_")).to_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_prefixed_by_cluster() {
        let s = Subjects::new("prod");
        assert_eq!(s.heartbeat(), "ms.prod.cluster.heartbeat");
        assert_eq!(s.event("node.down"), "ms.prod.events.node.down");
        assert_eq!(s.admin("n2", "actors"), "ms.prod.admin.n2.actors");
        assert_eq!(s.events_stream(), "MS_PROD_EVENTS");
    }
}
