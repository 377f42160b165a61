//! Cluster formation (DESIGN §6): nodes announce themselves on NATS, judge each other by
//! their heartbeats, link with ractor_cluster, and take over the unfinished tasks of a
//! node that is gone.
//!
//! - [`membership`]: the `cluster` actor (heartbeats out and in, the detector's verdicts,
//!   takeover rounds, the view the admin listener reads);
//! - [`detector`]: phi accrual and deadline failure detectors;
//! - [`peers`]: the ractor_cluster node server and its sessions;
//! - [`peer_tls`]: that link over mutual TLS, when configured;
//! - [`takeover`]: one round of taking a gone node's unfinished tasks over;
//! - [`lease`]: the `lease` actor, this node's lease in the database (the arbiter of who
//!   may take whose tasks).

pub mod detector;
pub mod lease;
pub mod membership;
pub mod peer_tls;
pub mod peers;
pub mod takeover;
pub mod view;

pub use membership::{Membership, MembershipArgs};
pub use view::{ClusterView, MemberView, Served};
