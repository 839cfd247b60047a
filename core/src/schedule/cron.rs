//! Cron expressions: parsing, and the next wall-clock time one matches.
//!
//! Six fields (`second minute hour day-of-month month day-of-week`), or the
//! classic five with the second taken as 0. Each field takes `*`, a value, a
//! range `a-b`, a step `*/n`, `a/n` or `a-b/n`, and comma lists of these;
//! months and weekdays also take English three-letter names, and day-of-week
//! 7 is Sunday like 0. `?` is `*` in the two day fields. As in Vixie cron,
//! when both day fields are restricted a day matches if either does. The
//! macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight` and `@hourly` stand for their usual expressions.
//!
//! Matching is on civil (wall-clock) time; `fire_times` maps it onto
//! instants in a time zone.

use jiff::civil::{Date, DateTime, Time};

use crate::error::{Error, Result};

/// How far ahead a search for the next match looks before concluding the
/// expression never matches again (Feb 30 never comes; Feb 29 comes within
/// 8 years).
const SEARCH_YEARS: i16 = 9;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day-of-month and day-of-week fields as written were `*`/`?`.
    any_day: bool,
    any_weekday: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Cron {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_owned(),
            "@monthly" => "0 0 0 1 * *".to_owned(),
            "@weekly" => "0 0 0 * * 0".to_owned(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_owned(),
            "@hourly" => "0 0 * * * *".to_owned(),
            _ if text.starts_with('@') => {
                return Err(Error::invalid(format!("unknown cron macro {text}")));
            }
            _ => text.to_owned(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let fields: [&str; 6] = match fields.len() {
            5 => ["0", fields[0], fields[1], fields[2], fields[3], fields[4]],
            6 => [
                fields[0], fields[1], fields[2], fields[3], fields[4], fields[5],
            ],
            _ => {
                return Err(Error::invalid(
                    "a cron expression has 5 fields (minute hour day-of-month month \
                     day-of-week) or 6 (with a second field first)",
                ));
            }
        };
        let weekdays = parse_field(&WEEKDAY, fields[5])?;
        // 7 is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        Ok(Self {
            seconds: parse_field(&SECOND, fields[0])?,
            minutes: parse_field(&MINUTE, fields[1])?,
            hours: parse_field(&HOUR, fields[2])? as u32,
            days: parse_field(&DAY, fields[3])? as u32,
            months: parse_field(&MONTH, fields[4])? as u16,
            weekdays: weekdays as u8,
            any_day: is_any(fields[3]),
            any_weekday: is_any(fields[5]),
        })
    }

    /// Whether every hour matches: such a schedule runs by elapsed time
    /// through daylight-saving changes (see `fire_times`).
    pub fn every_hour(&self) -> bool {
        self.hours == (1 << 24) - 1
    }

    fn day_matches(&self, date: Date) -> bool {
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => day || weekday,
            _ => day && weekday,
        }
    }

    /// Whether `at` (to the second) matches.
    pub fn matches(&self, at: DateTime) -> bool {
        self.months & (1 << at.month()) != 0
            && self.day_matches(at.date())
            && self.hours & (1 << at.hour()) != 0
            && self.minutes & (1 << at.minute()) != 0
            && self.seconds & (1 << at.second()) != 0
    }

    /// The first wall-clock second after `after` that matches, if one comes
    /// within `SEARCH_YEARS`.
    pub fn next_after(&self, after: DateTime) -> Option<DateTime> {
        let mut date = after.date();
        let limit = date.year().saturating_add(SEARCH_YEARS);
        // The first candidate second, as (hour, minute, second) on `date`.
        let mut from = Some((after.hour(), after.minute(), after.second() + 1));
        while date.year() <= limit {
            if self.months & (1 << date.month()) == 0 {
                date = date
                    .first_of_month()
                    .checked_add(jiff::Span::new().months(1))
                    .ok()?;
                from = Some((0, 0, 0));
                continue;
            }
            if self.day_matches(date)
                && let Some(time) = self.first_time_from(from.unwrap_or((0, 0, 0)))
            {
                return Some(date.to_datetime(time));
            }
            date = date.tomorrow().ok()?;
            from = Some((0, 0, 0));
        }
        None
    }

    /// The first matching time of day at or after `(hour, minute, second)`
    /// (the second may be 60: the next minute).
    fn first_time_from(&self, (hour, minute, second): (i8, i8, i8)) -> Option<Time> {
        let (mut hour, mut minute, mut second) = (hour as u32, minute as u32, second as u32);
        loop {
            if second > 59 {
                second = 0;
                minute += 1;
            }
            if minute > 59 {
                minute = 0;
                hour += 1;
            }
            let next_hour = next_bit(u64::from(self.hours), hour, 23)?;
            if next_hour != hour {
                (hour, minute, second) = (next_hour, 0, 0);
            }
            let Some(next_minute) = next_bit(self.minutes, minute, 59) else {
                (hour, minute, second) = (hour + 1, 0, 0);
                if hour > 23 {
                    return None;
                }
                continue;
            };
            if next_minute != minute {
                (minute, second) = (next_minute, 0);
            }
            let Some(next_second) = next_bit(self.seconds, second, 59) else {
                (minute, second) = (minute + 1, 0);
                continue;
            };
            return Time::new(hour as i8, minute as i8, next_second as i8, 0).ok();
        }
    }
}

/// The lowest set bit of `mask` at or above `from`, up to `max`.
fn next_bit(mask: u64, from: u32, max: u32) -> Option<u32> {
    if from > max {
        return None;
    }
    let rest = mask >> from;
    if rest == 0 {
        return None;
    }
    let bit = from + rest.trailing_zeros();
    (bit <= max).then_some(bit)
}

fn is_any(field: &str) -> bool {
    field == "*" || field == "?"
}

fn parse_field(field: &Field, text: &str) -> Result<u64> {
    let invalid = |why: String| Error::invalid(format!("cron {} field: {why}", field.name));
    let mut mask = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|step| *step > 0).ok_or_else(|| {
                        invalid(format!("step {step:?} is not a positive number"))
                    })?;
                (range, step)
            }
            None => (item, 1),
        };
        let day_field = field.name == DAY.name || field.name == WEEKDAY.name;
        let (low, high) = if range == "*" || (range == "?" && day_field) {
            (field.min, field.max)
        } else if let Some((low, high)) = range.split_once('-') {
            (value(field, low)?, value(field, high)?)
        } else {
            let low = value(field, range)?;
            // `a/n` runs from a to the end of the field.
            (low, if item.contains('/') { field.max } else { low })
        };
        if low > high {
            return Err(invalid(format!("range {range} runs backwards")));
        }
        let mut at = low;
        while at <= high {
            mask |= 1 << at;
            at += step;
        }
    }
    Ok(mask)
}

fn value(field: &Field, text: &str) -> Result<u32> {
    let lower = text.to_ascii_lowercase();
    let number = match field.names.iter().position(|name| *name == lower) {
        Some(index) => index as u32 + if field.names.len() == 12 { 1 } else { 0 },
        None => text.parse::<u32>().map_err(|_| {
            Error::invalid(format!(
                "cron {} field: {text:?} is not a value",
                field.name
            ))
        })?,
    };
    if !(field.min..=field.max).contains(&number) {
        return Err(Error::invalid(format!(
            "cron {} field: {number} is out of range {}-{}",
            field.name, field.min, field.max
        )));
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn next(cron: &str, after: DateTime) -> Option<DateTime> {
        Cron::parse(cron).unwrap().next_after(after)
    }

    #[test]
    fn five_fields_fire_on_the_minute_and_six_to_the_second() {
        let at = date(2026, 3, 1).at(10, 15, 30, 0);
        assert_eq!(
            next("*/5 * * * *", at),
            Some(date(2026, 3, 1).at(10, 20, 0, 0))
        );
        assert_eq!(
            next("*/10 * * * * *", at),
            Some(date(2026, 3, 1).at(10, 15, 40, 0))
        );
        assert_eq!(
            next("* * * * * *", at),
            Some(date(2026, 3, 1).at(10, 15, 31, 0))
        );
    }

    #[test]
    fn rolls_over_hours_days_months_and_years() {
        let at = date(2026, 12, 31).at(23, 59, 59, 0);
        assert_eq!(next("0 0 * * *", at), Some(date(2027, 1, 1).at(0, 0, 0, 0)));
        assert_eq!(
            next("30 9 1 mar *", at),
            Some(date(2027, 3, 1).at(9, 30, 0, 0))
        );
        assert_eq!(
            next("0 0 29 2 *", at),
            Some(date(2028, 2, 29).at(0, 0, 0, 0))
        );
        assert_eq!(next("0 0 30 2 *", at), None);
    }

    #[test]
    fn days_of_month_and_week_match_either_when_both_are_set() {
        // 2026-11-30 is a Monday.
        let at = date(2026, 11, 30).at(12, 0, 0, 0);
        assert_eq!(
            next("0 0 * * fri", at),
            Some(date(2026, 12, 4).at(0, 0, 0, 0))
        );
        assert_eq!(
            next("0 0 1 * fri", at),
            Some(date(2026, 12, 1).at(0, 0, 0, 0))
        );
        assert_eq!(
            next("0 0 ? * 7", at),
            Some(date(2026, 12, 6).at(0, 0, 0, 0))
        );
        assert_eq!(
            next("0 0 * * 1-5/2", at),
            Some(date(2026, 12, 2).at(0, 0, 0, 0))
        );
    }

    #[test]
    fn macros_lists_and_ranges() {
        let at = date(2026, 11, 30).at(12, 0, 0, 0);
        assert_eq!(
            next("@hourly", at),
            Some(date(2026, 11, 30).at(13, 0, 0, 0))
        );
        assert_eq!(next("@daily", at), Some(date(2026, 12, 1).at(0, 0, 0, 0)));
        assert_eq!(
            next("0 5,50 8-9 * * *", at),
            Some(date(2026, 12, 1).at(8, 5, 0, 0))
        );
        assert_eq!(
            next("15/20 * * * * *", at),
            Some(date(2026, 11, 30).at(12, 0, 15, 0))
        );
    }

    #[test]
    fn bad_expressions_say_which_field() {
        for (text, message) in [
            ("* * * *", "5 fields"),
            ("61 * * * * *", "second field: 61 is out of range 0-59"),
            ("* 24 * * *", "hour field: 24 is out of range"),
            ("* * 0 * *", "day-of-month field: 0 is out of range"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week field"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "runs backwards"),
            ("x * * * *", "minute field: \"x\" is not a value"),
            ("@often", "unknown cron macro"),
        ] {
            let error = Cron::parse(text).unwrap_err().to_string();
            assert!(error.contains(message), "{text}: {error}");
        }
    }

    #[test]
    fn next_after_agrees_with_matches_second_by_second() {
        for text in ["*/7 */3 * * * *", "0 0-5 1,13 * * *", "10 * * 2 * mon"] {
            let cron = Cron::parse(text).unwrap();
            let mut at = date(2026, 2, 1).at(0, 0, 0, 0);
            let mut expected = at;
            for _ in 0..20 {
                let found = cron.next_after(at).unwrap();
                loop {
                    expected = expected.checked_add(jiff::Span::new().seconds(1)).unwrap();
                    if cron.matches(expected) {
                        break;
                    }
                }
                assert_eq!(found, expected, "{text}");
                at = found;
            }
        }
    }
}
