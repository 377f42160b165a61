//! This node's lease, as far as the node itself can prove it (DESIGN §5: "a node that
//! cannot prove it holds the lease starts no effect").
//!
//! In a cluster the database that holds the results is the arbiter of who owns what: each
//! node renews a lease row there, and another node may take its tasks over only once that
//! lease has expired by the database's clock. The node keeps here, by its own monotonic
//! clock, until when its last renewal is good for: counted from when the renewal was *sent*
//! (the database may have stamped it later, never earlier), so the node's view of its
//! lease always ends before the database's does. A run checks it before it starts a step
//! with side effects. A node that keeps no lease (a single node on its own database) always
//! holds one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct NodeLease {
    /// When this lease clock started (the origin of `valid_until`).
    origin: Instant,
    /// Whether a lease is kept at all (a node on a shared database).
    kept: AtomicBool,
    /// Until when the last renewal holds, in µs since `origin` (0: never renewed).
    valid_until: AtomicU64,
}

impl Default for NodeLease {
    fn default() -> Self {
        NodeLease {
            origin: Instant::now(),
            kept: AtomicBool::new(false),
            valid_until: AtomicU64::new(0),
        }
    }
}

impl NodeLease {
    /// From now on this node's work depends on a lease it renews.
    pub fn keep(&self) {
        self.kept.store(true, Ordering::Release);
    }

    /// A renewal sent at `sent` was committed, good for `ttl` from then.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let until = (sent + ttl)
            .saturating_duration_since(self.origin)
            .as_micros() as u64;
        self.valid_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Gives the lease up (the node stops): from now on it proves nothing.
    pub fn release(&self) {
        self.valid_until.store(0, Ordering::Release);
    }

    /// Whether this node can prove it holds its lease right now.
    pub fn holds(&self) -> bool {
        if !self.kept.load(Ordering::Acquire) {
            return true;
        }
        let now = self.origin.elapsed().as_micros() as u64;
        now < self.valid_until.load(Ordering::Acquire)
    }

    /// Until when the lease holds as of now (opaque; for [`NodeLease::still`]). A node
    /// that keeps no lease holds it forever.
    pub fn until(&self) -> u64 {
        if !self.kept.load(Ordering::Acquire) {
            return u64::MAX;
        }
        self.valid_until.load(Ordering::Acquire)
    }

    /// Whether the lease that held until `until` (from [`NodeLease::until`]) still holds:
    /// so it held without a break since `until` was read.
    pub fn still(&self, until: u64) -> bool {
        until == u64::MAX || (self.origin.elapsed().as_micros() as u64) < until
    }

    /// For readiness: `held`, `not kept`, or since when it is not held.
    pub fn describe(&self) -> String {
        if !self.kept.load(Ordering::Acquire) {
            return "not kept (single node)".into();
        }
        let until = self.valid_until.load(Ordering::Acquire);
        let now = self.origin.elapsed().as_micros() as u64;
        match until {
            0 => "not acquired yet".into(),
            u if now < u => "held".into(),
            u => format!("expired {} ms ago; renewing", (now - u) / 1000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_only_while_its_last_renewal_does() {
        let lease = NodeLease::default();
        assert!(lease.holds(), "a node that keeps no lease always holds one");
        lease.keep();
        assert!(!lease.holds(), "kept but never renewed");
        lease.renewed(Instant::now(), Duration::from_secs(60));
        assert!(lease.holds());
        assert_eq!(lease.describe(), "held");
        // An older renewal answered late does not shorten it.
        lease.renewed(
            Instant::now() - Duration::from_secs(120),
            Duration::from_secs(60),
        );
        assert!(lease.holds());
        lease.release();
        assert!(!lease.holds());
        lease.renewed(
            Instant::now() - Duration::from_secs(2),
            Duration::from_secs(1),
        );
        assert!(!lease.holds(), "a renewal sent too long ago proves nothing");
    }
}
