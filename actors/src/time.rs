//! Timestamps as RFC 3339 strings on the wire (serde `serialize_with`).

use std::time::SystemTime;

use serde::Serializer;

pub fn rfc3339<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

/// Now, as an RFC 3339 string with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
