//! Flow limits of a space's dispatch.
//!
//! - Concurrency keys: a job may carry a key (a customer, a tenant, an
//!   account), and at most a limit of jobs with the same key hold a lease
//!   at once. The limit comes from the job itself, else its space's limit
//!   for its name, else its space's default; without any, keyed jobs are
//!   unlimited (and still take turns).
//! - Rate limits: at most `limit` dispatches of a job name in any window of
//!   `period_seconds`, counted per name or per name and key.
//!
//! This module decides what a limit is; `store::concurrency` counts and
//! admits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest concurrency key, in characters.
pub const MAX_KEY_CHARS: usize = 255;
/// Limits a job, a name or a space may set.
pub const LIMIT_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;
/// Job names one space may give limits of their own.
pub const MAX_NAMED_LIMITS: usize = 1000;

/// Dispatches a rate limit may allow per period.
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000_000;
/// Periods a rate limit may count over, in seconds.
pub const RATE_PERIOD_RANGE: std::ops::RangeInclusive<u32> = 1..=86_400;

/// Why a ready job is not being handed out.
pub const WAITING_CONCURRENCY: &str = "concurrency_limit";
pub const WAITING_PAUSED: &str = "paused";
pub const WAITING_RATE: &str = "rate_limit";

/// At most `limit` dispatches in any window of `period_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub limit: u32,
    pub period_seconds: u32,
    /// Counted for each concurrency key apart (jobs without a key share
    /// one count).
    #[serde(default)]
    pub per_key: bool,
}

impl RateLimit {
    pub fn period_millis(&self) -> i64 {
        i64::from(self.period_seconds) * 1000
    }
}

/// A space's limits for keyed jobs (stored as JSON on the space).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrencyLimits {
    /// For keyed jobs whose name has no limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, u32>,
    /// Rate limits, by job name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rates: BTreeMap<String, RateLimit>,
}

impl ConcurrencyLimits {
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.names.is_empty() && self.rates.is_empty()
    }

    /// The limit that applies to a job named `name` with its own `limit`.
    pub fn for_job(&self, name: &str, own: Option<u32>) -> Option<u32> {
        own.or_else(|| self.names.get(name).copied())
            .or(self.default)
    }

    /// Refuses limits out of range, naming the field as REST spells it.
    pub fn check(&self) -> Result<()> {
        let out_of_range = |field: String| {
            Error::invalid(format!(
                "{field} must be between {} and {}",
                LIMIT_RANGE.start(),
                LIMIT_RANGE.end()
            ))
        };
        if let Some(limit) = self.default
            && !LIMIT_RANGE.contains(&limit)
        {
            return Err(out_of_range("concurrency.default".into()));
        }
        for (field, names) in [
            ("names", self.names.keys().collect::<Vec<_>>()),
            ("rates", self.rates.keys().collect()),
        ] {
            if names.len() > MAX_NAMED_LIMITS {
                return Err(Error::invalid(format!(
                    "concurrency.{field} may name at most {MAX_NAMED_LIMITS} job names"
                )));
            }
            if names.iter().any(|name| {
                name.is_empty() || name.chars().count() > crate::job::spec::MAX_NAME_CHARS
            }) {
                return Err(Error::invalid(format!(
                    "concurrency.{field} keys must be job names of 1 to {} characters",
                    crate::job::spec::MAX_NAME_CHARS
                )));
            }
        }
        for (name, limit) in &self.names {
            if !LIMIT_RANGE.contains(limit) {
                return Err(out_of_range(format!("concurrency.names.{name}")));
            }
        }
        for (name, rate) in &self.rates {
            if !RATE_RANGE.contains(&rate.limit) {
                return Err(Error::invalid(format!(
                    "concurrency.rates.{name}.limit must be between {} and {}",
                    RATE_RANGE.start(),
                    RATE_RANGE.end()
                )));
            }
            if !RATE_PERIOD_RANGE.contains(&rate.period_seconds) {
                return Err(Error::invalid(format!(
                    "concurrency.rates.{name}.periodSeconds must be between {} and {}",
                    RATE_PERIOD_RANGE.start(),
                    RATE_PERIOD_RANGE.end()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_then_its_name_then_the_space_decide() {
        let limits = ConcurrencyLimits {
            default: Some(5),
            names: [("report".to_owned(), 2)].into(),
            ..Default::default()
        };
        assert_eq!(limits.for_job("report", Some(1)), Some(1));
        assert_eq!(limits.for_job("report", None), Some(2));
        assert_eq!(limits.for_job("email", None), Some(5));
        assert_eq!(ConcurrencyLimits::default().for_job("email", None), None);
    }

    #[test]
    fn limits_out_of_range_are_named() {
        let zero = ConcurrencyLimits {
            default: Some(0),
            ..Default::default()
        };
        assert!(
            zero.check()
                .unwrap_err()
                .to_string()
                .contains("concurrency.default")
        );
        let named = ConcurrencyLimits {
            names: [("report".to_owned(), 20_000)].into(),
            ..Default::default()
        };
        assert!(
            named
                .check()
                .unwrap_err()
                .to_string()
                .contains("concurrency.names.report")
        );
    }
}
