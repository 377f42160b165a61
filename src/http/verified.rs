//! Bearer tokens already verified, so a client that sends the same token with every
//! request pays for its signature once: an ES256 check costs about 70 µs, a third of a
//! task's CPU on the submit path; a hit costs well under a microsecond.
//!
//! Only successes are held, keyed by the exact token string. A hit re-checks the token's
//! `exp` (with the configured leeway), and the whole set is emptied whenever the JWKS
//! keys are replaced, so a key rotated out stops admitting its tokens at once. The set is
//! bounded by bytes, and a token too long to be worth holding is verified every time.

use std::time::{SystemTime, UNIX_EPOCH};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::http::auth::Principal;

/// Tokens longer than this are verified on every request instead of held.
const MAX_TOKEN_BYTES: usize = 4096;
/// What the held tokens and principals may weigh together (bytes, roughly).
const CAPACITY_BYTES: u64 = 8 << 20;
/// A guess of how many tokens fit, for the cache's table size.
const ESTIMATED_TOKENS: usize = 8192;
/// What one entry costs besides its strings.
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct Bytes;

impl Weighter<String, (Principal, u64)> for Bytes {
    fn weight(&self, token: &String, (principal, _): &(Principal, u64)) -> u64 {
        let scopes: usize = principal.scopes.iter().map(String::len).sum();
        (token.len() + principal.sub.len() + scopes) as u64 + ENTRY_OVERHEAD
    }
}

/// The tokens verified lately and who they stand for, with their expiry.
pub struct Verified {
    held: Cache<String, (Principal, u64), Bytes>,
    leeway_secs: u64,
}

impl Verified {
    pub fn new(leeway_secs: u64) -> Self {
        Self {
            held: Cache::with_weighter(ESTIMATED_TOKENS, CAPACITY_BYTES, Bytes),
            leeway_secs,
        }
    }

    /// Who `token` stands for, if it was verified before and has not expired since.
    pub fn get(&self, token: &str) -> Option<Principal> {
        let (principal, exp) = self.held.get(token)?;
        if exp.saturating_add(self.leeway_secs) < now_secs() {
            self.held.remove(token);
            return None;
        }
        Some(principal)
    }

    /// Holds a token just verified; one without an expiry is not held.
    pub fn keep(&self, token: &str, principal: &Principal, exp: Option<u64>) {
        if let Some(exp) = exp
            && token.len() <= MAX_TOKEN_BYTES
        {
            self.held
                .insert(token.to_string(), (principal.clone(), exp));
        }
    }

    /// Forgets every token (the keys that verified them changed).
    pub fn forget_all(&self) {
        self.held.clear();
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            sub: "alice".into(),
            scopes: vec!["tasks:read".into()],
        }
    }

    #[test]
    fn a_held_token_is_found_until_it_expires_past_the_leeway() {
        let verified = Verified::new(30);
        let now = now_secs();
        verified.keep("live", &principal(), Some(now + 60));
        verified.keep("in-leeway", &principal(), Some(now - 10));
        verified.keep("expired", &principal(), Some(now - 31));
        verified.keep("no-exp", &principal(), None);
        assert_eq!(verified.get("live"), Some(principal()));
        assert_eq!(verified.get("in-leeway"), Some(principal()));
        assert_eq!(verified.get("expired"), None);
        assert_eq!(verified.get("no-exp"), None);
        assert_eq!(verified.get("never-seen"), None);
        // The expired one was dropped when it was looked up.
        assert_eq!(verified.len(), 2);
    }

    #[test]
    fn an_oversized_token_is_not_held_and_forget_all_empties() {
        let verified = Verified::new(0);
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        verified.keep(&long, &principal(), Some(now_secs() + 60));
        assert!(verified.is_empty());
        verified.keep("t", &principal(), Some(now_secs() + 60));
        assert!(!verified.is_empty());
        verified.forget_all();
        assert_eq!(verified.get("t"), None);
    }

    #[test]
    fn the_held_bytes_are_bounded() {
        let verified = Verified::new(0);
        let exp = Some(now_secs() + 60);
        let pad = "t".repeat(MAX_TOKEN_BYTES - 8);
        let offered = 2 * CAPACITY_BYTES as usize / MAX_TOKEN_BYTES;
        for i in 0..offered {
            verified.keep(&format!("{i:08}{pad}"), &principal(), exp);
        }
        let held = verified.len() as u64;
        assert!(held > 0 && held * MAX_TOKEN_BYTES as u64 <= CAPACITY_BYTES);
    }
}
