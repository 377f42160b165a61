//! The one wire format of the bridge (DESIGN §6): a versioned envelope
//! `{v, id, correlation_id, kind, from, sent_at, payload}` in MessagePack.
//!
//! Fields are encoded by name, so a later version can add fields that older nodes skip.
//! Decoding never panics: bytes from the wire that are not an envelope of the expected
//! version and kind are an [`EnvelopeError`], which the bridge logs and counts.

use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The envelope version this node writes and reads.
pub const VERSION: u8 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u8,
    pub id: Uuid,
    /// The request a reply answers.
    pub correlation_id: Option<Uuid>,
    /// What the payload is, e.g. `node.heartbeat`.
    pub kind: String,
    /// The sending node.
    pub from: String,
    /// Milliseconds since the Unix epoch, by the sender's clock.
    pub sent_at: i64,
    pub payload: T,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a MessagePack envelope: {0}")]
    Malformed(String),
    #[error("envelope version {0} is not supported (this node reads version {VERSION})")]
    Version(u8),
    #[error("expected a `{expected}` envelope, got `{got}`")]
    Kind { expected: String, got: String },
    #[error("cannot encode a `{kind}` envelope: {reason}")]
    Encode { kind: String, reason: String },
}

impl<T: Serialize> Envelope<T> {
    pub fn new(kind: impl Into<String>, from: impl Into<String>, payload: T) -> Self {
        Envelope {
            v: VERSION,
            id: Uuid::now_v7(),
            correlation_id: None,
            kind: kind.into(),
            from: from.into(),
            sent_at: actors::task::store::now_ms(),
            payload,
        }
    }

    /// A reply to `request`, correlated with it.
    pub fn reply_to<R>(
        request: &Envelope<R>,
        kind: impl Into<String>,
        from: impl Into<String>,
        payload: T,
    ) -> Self {
        let mut reply = Envelope::new(kind, from, payload);
        reply.correlation_id = Some(request.id);
        reply
    }

    pub fn encode(&self) -> Result<Bytes, EnvelopeError> {
        rmp_serde::to_vec_named(self)
            .map(Bytes::from)
            .map_err(|e| EnvelopeError::Encode {
                kind: self.kind.clone(),
                reason: e.to_string(),
            })
    }
}

/// Decodes an envelope of `kind` (any kind when `None`).
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    kind: Option<&str>,
) -> Result<Envelope<T>, EnvelopeError> {
    match rmp_serde::from_slice::<Envelope<T>>(bytes) {
        Ok(envelope) if envelope.v != VERSION => Err(EnvelopeError::Version(envelope.v)),
        Ok(envelope) => match kind {
            Some(expected) if envelope.kind != expected => Err(EnvelopeError::Kind {
                expected: expected.into(),
                got: envelope.kind,
            }),
            _ => Ok(envelope),
        },
        // Say what is wrong as precisely as the header allows: a newer version, another
        // kind, or no envelope at all.
        Err(e) => match rmp_serde::from_slice::<Envelope<IgnoredAny>>(bytes) {
            Ok(header) if header.v != VERSION => Err(EnvelopeError::Version(header.v)),
            Ok(header) if kind.is_some_and(|k| k != header.kind) => Err(EnvelopeError::Kind {
                expected: kind.unwrap_or_default().into(),
                got: header.kind,
            }),
            _ => Err(EnvelopeError::Malformed(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }

    #[test]
    fn round_trips_and_correlates() {
        let request = Envelope::new("test.ping", "n1", Ping { n: 7 });
        let bytes = request.encode().unwrap();
        let back: Envelope<Ping> = decode(&bytes, Some("test.ping")).unwrap();
        assert_eq!(back.payload, Ping { n: 7 });
        assert_eq!(back.id, request.id);
        assert_eq!(back.from, "n1");
        let reply = Envelope::reply_to(&back, "test.pong", "n2", Ping { n: 8 });
        assert_eq!(reply.correlation_id, Some(request.id));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff\xff", b"{\"v\":1}", &[0x93, 0x01, 0x02]] {
            assert!(matches!(
                decode::<Ping>(bytes, Some("test.ping")),
                Err(EnvelopeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn another_version_or_kind_is_named() {
        let mut env = Envelope::new("test.ping", "n1", Ping { n: 1 });
        env.v = 9;
        let err = decode::<Ping>(&env.encode().unwrap(), None).unwrap_err();
        assert!(matches!(err, EnvelopeError::Version(9)), "{err}");
        let other = Envelope::new("test.other", "n1", "text").encode().unwrap();
        let err = decode::<Ping>(&other, Some("test.ping")).unwrap_err();
        assert!(err.to_string().contains("test.other"), "{err}");
    }
}
