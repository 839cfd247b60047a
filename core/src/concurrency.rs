//! Concurrency keys: a job may carry a key (a customer, a tenant, an
//! account), and at most a limit of jobs with the same key hold a lease at
//! once. The limit comes from the job itself, else its space's limit for
//! its name, else its space's default; without any, keyed jobs are
//! unlimited (and still take turns). This module decides what a limit is;
//! `store::concurrency` counts leases and admits jobs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest concurrency key, in characters.
pub const MAX_KEY_CHARS: usize = 255;
/// Limits a job, a name or a space may set.
pub const LIMIT_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;
/// Job names one space may give limits of their own.
pub const MAX_NAMED_LIMITS: usize = 1000;

/// Why a ready job is not being handed out.
pub const WAITING_CONCURRENCY: &str = "concurrency_limit";
pub const WAITING_PAUSED: &str = "paused";

/// A space's limits for keyed jobs (stored as JSON on the space).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrencyLimits {
    /// For keyed jobs whose name has no limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, u32>,
}

impl ConcurrencyLimits {
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.names.is_empty()
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
        if self.names.len() > MAX_NAMED_LIMITS {
            return Err(Error::invalid(format!(
                "concurrency.names may name at most {MAX_NAMED_LIMITS} job names"
            )));
        }
        for (name, limit) in &self.names {
            if name.is_empty() || name.chars().count() > crate::job::spec::MAX_NAME_CHARS {
                return Err(Error::invalid(format!(
                    "concurrency.names keys must be job names of 1 to {} characters",
                    crate::job::spec::MAX_NAME_CHARS
                )));
            }
            if !LIMIT_RANGE.contains(limit) {
                return Err(out_of_range(format!("concurrency.names.{name}")));
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
