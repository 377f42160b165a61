//! What becomes of ractor_cluster sessions: which peer each is, links kept across
//! restarts of either side, refusals logged and counted.

use std::collections::HashMap;
use std::time::Duration;

use super::{Link, MembershipState};
use crate::cluster::peers::PeerEvent;

impl MembershipState {
    pub(super) fn peer(&mut self, event: PeerEvent) {
        let (session, peer, addr, authenticated) = match &event {
            PeerEvent::Authenticated {
                session,
                peer,
                addr,
            } => (*session, peer, addr, true),
            PeerEvent::Closed {
                session,
                peer,
                addr,
            } => (*session, peer, addr, false),
        };
        let name = peer.clone().or_else(|| {
            self.members
                .iter()
                .find(|(_, m)| {
                    &m.beat.cluster_addr == addr || resolves_to(&m.beat.cluster_addr, addr)
                })
                .map(|(n, _)| n.clone())
        });
        // A session that authenticated and then closed is a link gone, not a refusal.
        let was_authenticated = if authenticated {
            if let Some(n) = &name {
                self.sessions.insert(session, n.clone());
            }
            false
        } else {
            self.sessions.remove(&session).is_some()
        };
        let linked = |sessions: &HashMap<u64, String>, n: &str| sessions.values().any(|s| s == n);
        let Some(member) = name.as_ref().and_then(|n| self.members.get_mut(n)) else {
            if authenticated {
                // Not heard yet: the link is recorded when its first heartbeat comes.
                tracing::info!(peer = ?name, %addr, "ractor_cluster session authenticated");
            } else if !was_authenticated {
                refused(peer.as_deref().unwrap_or("?"), addr);
            }
            return;
        };
        let name = name.unwrap_or_default();
        if authenticated {
            tracing::info!(peer = %name, %addr, "ractor_cluster session authenticated");
            member.link = Link::Connected;
            member.connect_backoff = Duration::from_secs(1);
        } else if was_authenticated {
            tracing::info!(peer = %name, %addr, "ractor_cluster session closed");
            // Another session to the peer (one that replaced this one) may still be up.
            if member.link == Link::Connected && !linked(&self.sessions, &name) {
                member.link = Link::None;
            }
        } else {
            refused(&name, addr);
            member.link = Link::Refused;
        }
    }
}

fn refused(peer: &str, addr: &str) {
    metrics::counter!("ms_cluster_auth_failures_total").increment(1);
    tracing::warn!(
        peer = %peer,
        %addr,
        "refused a ractor_cluster session: authentication failed (is cluster.cookie the same on both nodes?)"
    );
}

/// Whether `announced` (`host:port`) names the socket address `seen`.
fn resolves_to(announced: &str, seen: &str) -> bool {
    use std::net::ToSocketAddrs;
    announced
        .to_socket_addrs()
        .map(|mut addrs| addrs.any(|a| a.to_string() == seen))
        .unwrap_or(false)
}
