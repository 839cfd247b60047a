//! Time as the core stores it: milliseconds since the Unix epoch, UTC.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type UnixMillis = i64;

/// Where the core reads the time: every timestamp it stores and every
/// deadline it keeps comes from one of these, handed to the store at start
/// (`Store::clock`). In production it is the system clock. A test can set
/// a core's clock ahead to stand for an outage or a wait, so behaviour that
/// depends on time passing (missed schedule fires, expired windows) is
/// tested without sleeping through it. Only wall time goes through here;
/// tokio's timers still pace the loops.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    ahead_millis: Arc<AtomicI64>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    pub fn now(&self) -> UnixMillis {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as i64);
        system + self.ahead_millis.load(Ordering::Relaxed)
    }

    /// How long until `at` by this clock (zero once past).
    pub fn until(&self, at: UnixMillis) -> Duration {
        Duration::from_millis(at.saturating_sub(self.now()).max(0) as u64)
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ahead_millis.fetch_add(by, Ordering::Relaxed);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_runs_ahead_in_every_clone() {
        let clock = Clock::system();
        let shared = clock.clone();
        let before = Clock::system().now();
        clock.advance(Duration::from_secs(3600));
        assert!(shared.now() >= before + 3_600_000);
        assert_eq!(shared.until(shared.now() - 5), Duration::ZERO);
    }
}
