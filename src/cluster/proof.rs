//! Membership messages carry a proof of the cluster cookie: HMAC-SHA256 over the kind,
//! the sender and the send time, keyed by `cluster.cookie`. A heartbeat or leave notice
//! without a valid, fresh proof comes from a node with another cookie (or from anyone
//! else on the NATS server): it does not admit the sender and cannot make a live node
//! look gone.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a proof's send time may be from this node's clock.
const MAX_SKEW_MS: i64 = 60_000;

/// `None` only if the key were refused, which HMAC never does (it takes any length).
fn mac(cookie: &str, kind: &str, from: &str, sent_at: i64) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(cookie.as_bytes()).ok()?;
    mac.update(kind.as_bytes());
    mac.update(b"\0");
    mac.update(from.as_bytes());
    mac.update(b"\0");
    mac.update(&sent_at.to_be_bytes());
    Some(mac)
}

/// The proof for a message; empty (which never verifies) if there could be none.
pub fn sign(cookie: &str, kind: &str, from: &str, sent_at: i64) -> String {
    mac(cookie, kind, from, sent_at)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Whether `proof` is this cookie's for the message, and the message is fresh.
pub fn verify(cookie: &str, kind: &str, from: &str, sent_at: i64, proof: &str, now: i64) -> bool {
    let Ok(tag) = hex::decode(proof) else {
        return false;
    };
    (now - sent_at).abs() <= MAX_SKEW_MS
        && mac(cookie, kind, from, sent_at).is_some_and(|m| m.verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_cookie_and_message_verify() {
        let p = sign("c1", "node.heartbeat", "n1", 1_000);
        assert!(verify("c1", "node.heartbeat", "n1", 1_000, &p, 2_000));
        assert!(!verify("c2", "node.heartbeat", "n1", 1_000, &p, 2_000));
        assert!(!verify("c1", "node.leave", "n1", 1_000, &p, 2_000));
        assert!(!verify("c1", "node.heartbeat", "n2", 1_000, &p, 2_000));
        assert!(!verify(
            "c1",
            "node.heartbeat",
            "n1",
            1_000,
            &p,
            1_000 + MAX_SKEW_MS + 1
        ));
        assert!(!verify("c1", "node.heartbeat", "n1", 1_000, "zz", 2_000));
    }
}
