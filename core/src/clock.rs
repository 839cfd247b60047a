//! Time as the core stores it: milliseconds since the Unix epoch, UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type UnixMillis = i64;

pub fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

pub fn to_timestamp(millis: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn from_timestamp(timestamp: &prost_types::Timestamp) -> UnixMillis {
    timestamp.seconds * 1000 + i64::from(timestamp.nanos) / 1_000_000
}

pub fn millis_until(at: UnixMillis) -> Duration {
    Duration::from_millis(at.saturating_sub(now_millis()).max(0) as u64)
}
