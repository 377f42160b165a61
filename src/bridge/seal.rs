//! The cluster's message authentication: every message this node sends on NATS carries a
//! MAC keyed by `cluster.cookie`, and every message it acts on must carry a valid one.
//!
//! The MAC (HMAC-SHA256, hex) travels in the NATS header [`HEADER`] and covers the subject
//! and the envelope's bytes as sent, so the envelope's `id`, `kind`, `from`, `sent_at`
//! and payload are all covered: nothing of a captured message can be changed, and it
//! cannot be moved to another subject (a reply is sealed over the requester's inbox, so
//! the requester verifies it too). The envelope format itself is unchanged (version 1):
//! the MAC is outside it, where NATS tooling and event readers need not know of it.
//!
//! A message is also fresh (`sent_at` within [`WINDOW_MS`] of this node's clock) and not
//! seen before: ids of accepted messages are remembered for two windows (past that, the
//! freshness check refuses a replay anyway), at most [`MAX_SEEN`] of them, so the memory
//! is bounded by the authenticated traffic of one window, never by what anyone floods.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use async_nats::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// The NATS header that carries the MAC.
pub const HEADER: &str = "Ms-Mac";
/// How far a message's send time may be from this node's clock.
pub const WINDOW_MS: i64 = 30_000;
/// Most message ids remembered (authenticated messages of about two windows).
pub const MAX_SEEN: usize = 200_000;

/// Why a message was refused; `as_str` is the metric's bounded `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No MAC at all.
    Unsigned,
    /// A MAC that is not this cookie's over this subject and these bytes.
    BadMac,
    /// Sent too long ago (or too far in the future).
    Stale,
    /// An id already accepted within the window.
    Replayed,
    /// The replay cache is full of fresh ids (more authenticated traffic than it holds).
    Overloaded,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadMac => "bad_mac",
            Refusal::Stale => "stale",
            Refusal::Replayed => "replayed",
            Refusal::Overloaded => "overloaded",
        }
    }
}

/// Whether the message must be fresh and new, or only authentic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Live traffic: fresh within the window, each id once.
    Fresh,
    /// Stored and redelivered by JetStream (work-queue tickets): a redelivery is the same
    /// message, legitimately later, so only the MAC is checked.
    Stored,
}

/// Signs and verifies with one cluster's cookie.
pub struct Sealer {
    key: Vec<u8>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    ids: HashSet<Uuid>,
    /// (forget after, id), oldest first (times are this node's clock, so in order).
    order: VecDeque<(i64, Uuid)>,
}

impl Sealer {
    pub fn new(cookie: &str) -> Self {
        Sealer {
            key: cookie.as_bytes().to_vec(),
            seen: Mutex::new(Seen::default()),
        }
    }

    fn hmac(&self, subject: &str, bytes: &[u8]) -> Option<Hmac<Sha256>> {
        // HMAC takes a key of any length: this never fails.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(subject.as_bytes());
        mac.update(b"\0");
        mac.update(bytes);
        Some(mac)
    }

    /// The MAC of `bytes` sent on `subject` (hex).
    pub fn mac(&self, subject: &str, bytes: &[u8]) -> String {
        self.hmac(subject, bytes)
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// The headers that carry the MAC of `bytes` on `subject`.
    pub fn headers(&self, subject: &str, bytes: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, self.mac(subject, bytes).as_str());
        headers
    }

    /// Whether `mac` (from the header) is this cookie's over `subject` and `bytes`.
    pub fn authentic(&self, subject: &str, bytes: &[u8], mac: Option<&str>) -> Result<(), Refusal> {
        let mac = mac.filter(|m| !m.is_empty()).ok_or(Refusal::Unsigned)?;
        let tag = hex::decode(mac).map_err(|_| Refusal::BadMac)?;
        match self.hmac(subject, bytes).map(|m| m.verify_slice(&tag)) {
            Some(Ok(())) => Ok(()),
            _ => Err(Refusal::BadMac),
        }
    }

    /// Whether an authentic message sent at `sent_at` with `id` is fresh and new (and
    /// remembers it if so).
    pub fn fresh(&self, id: Uuid, sent_at: i64, now: i64) -> Result<(), Refusal> {
        if (now - sent_at).abs() > WINDOW_MS {
            return Err(Refusal::Stale);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while seen.order.front().is_some_and(|(until, _)| *until < now) {
            if let Some((_, old)) = seen.order.pop_front() {
                seen.ids.remove(&old);
            }
        }
        if seen.ids.contains(&id) {
            return Err(Refusal::Replayed);
        }
        if seen.ids.len() >= MAX_SEEN {
            return Err(Refusal::Overloaded);
        }
        seen.ids.insert(id);
        seen.order.push_back((now + 2 * WINDOW_MS, id));
        Ok(())
    }

    /// How many ids are remembered now.
    pub fn remembered(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_cookie_subject_and_bytes_verify() {
        let s = Sealer::new("c1");
        let mac = s.mac("ms.c.cluster.heartbeat", b"envelope");
        assert!(
            s.authentic("ms.c.cluster.heartbeat", b"envelope", Some(&mac))
                .is_ok()
        );
        let other = Sealer::new("c2");
        assert_eq!(
            other.authentic("ms.c.cluster.heartbeat", b"envelope", Some(&mac)),
            Err(Refusal::BadMac)
        );
        assert_eq!(
            s.authentic("ms.c.cluster.leave", b"envelope", Some(&mac)),
            Err(Refusal::BadMac)
        );
        assert_eq!(
            s.authentic("ms.c.cluster.heartbeat", b"envelopf", Some(&mac)),
            Err(Refusal::BadMac)
        );
        assert_eq!(
            s.authentic("ms.c.cluster.heartbeat", b"envelope", None),
            Err(Refusal::Unsigned)
        );
        assert_eq!(
            s.authentic("ms.c.cluster.heartbeat", b"envelope", Some("zz")),
            Err(Refusal::BadMac)
        );
    }

    #[test]
    fn stale_and_replayed_ids_are_refused_and_forgotten_after_two_windows() {
        let s = Sealer::new("c");
        let id = Uuid::now_v7();
        assert_eq!(s.fresh(id, 0, WINDOW_MS + 1), Err(Refusal::Stale));
        assert_eq!(s.fresh(id, 0, -WINDOW_MS - 1), Err(Refusal::Stale));
        assert_eq!(s.fresh(id, 1_000, 1_000), Ok(()));
        assert_eq!(s.fresh(id, 1_000, 2_000), Err(Refusal::Replayed));
        assert_eq!(s.remembered(), 1);
        // Long after, the id is forgotten (and the message itself would be stale).
        assert_eq!(s.fresh(Uuid::now_v7(), 90_000, 90_000), Ok(()));
        assert_eq!(s.remembered(), 1);
    }
}
