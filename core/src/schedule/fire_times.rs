//! When a schedule fires: the wall-clock times its cron expression matches,
//! read in its IANA time zone and mapped onto instants (whole seconds).
//!
//! The daylight-saving rule, where wall time jumps:
//! - **Skipped times** (spring forward, e.g. 02:00 to 03:00): a schedule
//!   with fixed hours fires once at the instant the clocks jump (02:30 daily
//!   fires at 03:00 that day). A schedule that matches every hour runs by
//!   elapsed time: the skipped hour has no fires.
//! - **Repeated times** (fall back, e.g. 02:00 to 01:00): a schedule with
//!   fixed hours fires once, at the first occurrence (01:30 daily fires at
//!   01:30 before the change). A schedule that matches every hour runs by
//!   elapsed time: it fires in both passes of the repeated hour.

use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use super::cron::Cron;
use crate::clock::UnixMillis;
use crate::error::{Error, Result};

/// A cron expression read in a time zone.
#[derive(Clone, Debug)]
pub struct FireTimes {
    cron: Cron,
    zone: TimeZone,
}

impl FireTimes {
    /// `field` names the time zone in errors.
    pub fn new(cron: &str, zone: &str, field: &str) -> Result<Self> {
        let cron = Cron::parse(cron)?;
        let zone = TimeZone::get(zone).map_err(|_| {
            Error::invalid(format!(
                "{field} must be an IANA time zone name such as UTC or Europe/Paris"
            ))
        })?;
        Ok(Self { cron, zone })
    }

    /// The first fire time after `after`, if the expression matches again
    /// (within about nine years).
    pub fn next_after(&self, after: UnixMillis) -> Option<UnixMillis> {
        let after = Timestamp::from_second(after.div_euclid(1000)).ok()?;
        let every_hour = self.cron.every_hour();
        // Wall times from here on can fire after `after`; for a schedule
        // that fires in both passes of a repeated hour, the second pass of
        // a fall-back within the next day starts an hour (the fold) earlier.
        let mut offset = self.zone.to_offset(after);
        if every_hour {
            let ahead = after
                .checked_add(SignedDuration::from_hours(24))
                .map_or(offset, |ahead| self.zone.to_offset(ahead));
            offset = offset.min(ahead);
        }
        let mut wall = offset.to_datetime(after);
        let mut second_pass: Option<Timestamp> = None;
        loop {
            let Some(next) = self.cron.next_after(wall) else {
                return second_pass.map(Timestamp::as_millisecond);
            };
            wall = next;
            let first = match self.zone.to_ambiguous_timestamp(wall).offset() {
                AmbiguousOffset::Unambiguous { offset } => instant(offset, wall),
                AmbiguousOffset::Gap { before, .. } if !every_hour => {
                    // When the clocks jumped: the last transition before
                    // the instant this wall time would be at the old offset.
                    instant(before, wall).and_then(|late| {
                        self.zone
                            .preceding(late)
                            .next()
                            .map(|transition| transition.timestamp())
                    })
                }
                AmbiguousOffset::Gap { .. } => None,
                AmbiguousOffset::Fold {
                    before,
                    after: later,
                } => {
                    if every_hour
                        && let Some(repeat) = instant(later, wall)
                        && repeat > after
                    {
                        second_pass = Some(second_pass.map_or(repeat, |seen| seen.min(repeat)));
                    }
                    instant(before, wall)
                }
            };
            // First occurrences only grow with the wall time, so the first
            // one past `after` is the earliest; a second pass seen on the
            // way may be earlier still.
            if let Some(first) = first.filter(|first| *first > after) {
                let earliest = second_pass.map_or(first, |repeat| repeat.min(first));
                return Some(earliest.as_millisecond());
            }
        }
    }

    /// The next `count` fire times after `after`.
    pub fn upcoming(&self, after: UnixMillis, count: usize) -> Vec<UnixMillis> {
        let mut times = Vec::with_capacity(count);
        let mut at = after;
        while times.len() < count {
            match self.next_after(at) {
                Some(next) => {
                    times.push(next);
                    at = next;
                }
                None => break,
            }
        }
        times
    }
}

fn instant(offset: Offset, wall: jiff::civil::DateTime) -> Option<Timestamp> {
    offset.to_timestamp(wall).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(text: &str) -> UnixMillis {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn times(cron: &str, zone: &str, after: &str, count: usize) -> Vec<String> {
        FireTimes::new(cron, zone, "timeZone")
            .unwrap()
            .upcoming(millis(after), count)
            .into_iter()
            .map(|at| Timestamp::from_millisecond(at).unwrap().to_string())
            .collect()
    }

    #[test]
    fn fires_at_wall_times_of_the_zone() {
        assert_eq!(
            times("0 9 * * *", "Europe/Paris", "2026-06-01T00:00:00Z", 2),
            ["2026-06-01T07:00:00Z", "2026-06-02T07:00:00Z"]
        );
        assert_eq!(
            times("*/20 * * * * *", "UTC", "2026-06-01T00:00:00.500Z", 3),
            [
                "2026-06-01T00:00:20Z",
                "2026-06-01T00:00:40Z",
                "2026-06-01T00:01:00Z"
            ]
        );
    }

    #[test]
    fn a_skipped_wall_time_fires_when_the_clocks_jump() {
        // New York springs forward at 2026-03-08 02:00 EST (07:00Z).
        assert_eq!(
            times(
                "0 30 2 * * *",
                "America/New_York",
                "2026-03-07T12:00:00Z",
                3
            ),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z"
            ]
        );
        // Matching every hour: the skipped hour has no fires.
        assert_eq!(
            times(
                "0 30 * * * *",
                "America/New_York",
                "2026-03-08T06:00:00Z",
                2
            ),
            ["2026-03-08T06:30:00Z", "2026-03-08T07:30:00Z"]
        );
    }

    #[test]
    fn a_repeated_wall_time_fires_once_unless_every_hour_matches() {
        // New York falls back at 2026-11-01 02:00 EDT (06:00Z) to 01:00 EST.
        assert_eq!(
            times(
                "0 30 1 * * *",
                "America/New_York",
                "2026-10-31T12:00:00Z",
                2
            ),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        assert_eq!(
            times(
                "0 30 * * * *",
                "America/New_York",
                "2026-11-01T04:00:00Z",
                4
            ),
            [
                "2026-11-01T04:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T07:30:00Z"
            ]
        );
        // From inside the second pass, the next fire is the next second-pass
        // instant, not a first-pass one already gone.
        assert_eq!(
            times(
                "0 */20 * * * *",
                "America/New_York",
                "2026-11-01T06:10:00Z",
                3
            ),
            [
                "2026-11-01T06:20:00Z",
                "2026-11-01T06:40:00Z",
                "2026-11-01T07:00:00Z"
            ]
        );
    }

    #[test]
    fn a_schedule_that_never_matches_has_no_fire_times() {
        assert!(times("0 0 31 2 *", "UTC", "2026-01-01T00:00:00Z", 1).is_empty());
    }

    #[test]
    fn an_unknown_zone_is_refused_by_name() {
        let error = FireTimes::new("* * * * *", "Mars/Olympus", "timeZone")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("timeZone must be an IANA time zone"),
            "{error}"
        );
    }
}
