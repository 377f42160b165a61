//! Timestamps as RFC 3339 strings on the wire (serde `serialize_with`).

use std::time::{Duration, SystemTime};

use serde::Serializer;

pub fn rfc3339<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

/// Now, as an RFC 3339 string with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Seconds as a `Duration`, without the panics of `Duration::from_secs_f64`: NaN and
/// negative values give zero, values past what a `Duration` holds give its maximum.
/// Validation bounds every value that comes from input; this is for one that slips through.
pub fn secs(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(if secs > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_float_is_some_duration() {
        assert_eq!(secs(1.5), Duration::from_millis(1500));
        assert_eq!(secs(1e308), Duration::MAX);
        assert_eq!(secs(f64::INFINITY), Duration::MAX);
        assert_eq!(secs(-1.0), Duration::ZERO);
        assert_eq!(secs(f64::NAN), Duration::ZERO);
    }
}
