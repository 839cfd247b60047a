//! Retention: how long finished jobs are kept, and the sweeper that deletes
//! them (with their events, logs and callbacks) once they are older than
//! that, so the database stays bounded however long the server runs.
//!
//! The server sets an age per finished status; a space may override any of
//! them. An age of 0 keeps jobs forever. The sweeper deletes a few hundred
//! jobs per write, so the writer it shares with dispatch never stalls, and
//! leaves alone a job whose callback is still being delivered. With several
//! cores on one database each sweeps; a job is deleted (and counted off its
//! space) by exactly one of them.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::job::JobStatus;
use crate::store::Store;

/// The statuses retention applies to.
pub const FINISHED: [JobStatus; 3] = [JobStatus::Completed, JobStatus::Dead, JobStatus::Killed];

/// Most jobs one sweeper write deletes; the writer prunes fewer when the
/// batch it rides in is small (see `store::batch`).
pub const PRUNE_BATCH: u32 = 256;

/// Longest age that can be set: 100 years, far past any need, and well
/// inside millisecond arithmetic.
pub const MAX_AGE_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// The server's retention and how often its sweeper looks.
#[derive(Clone, Copy, Debug)]
pub struct RetentionConfig {
    pub policy: RetentionPolicy,
    pub sweep_every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            policy: RetentionPolicy::default(),
            sweep_every: Duration::from_secs(30),
        }
    }
}

/// Seconds a finished job is kept, per status; 0 keeps it forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub completed: u64,
    pub dead: u64,
    pub killed: u64,
}

impl Default for RetentionPolicy {
    /// A week of completed and killed jobs; dead ones, which someone may
    /// still have to look into, for a month.
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            completed: 7 * DAY,
            dead: 30 * DAY,
            killed: 7 * DAY,
        }
    }
}

impl RetentionPolicy {
    /// The age for `status`; None for unfinished statuses.
    pub fn age(&self, status: JobStatus) -> Option<u64> {
        match status {
            JobStatus::Completed => Some(self.completed),
            JobStatus::Dead => Some(self.dead),
            JobStatus::Killed => Some(self.killed),
            _ => None,
        }
    }

    /// This policy with a space's overrides applied.
    pub fn with(self, overrides: &RetentionOverrides) -> Self {
        Self {
            completed: overrides.completed.unwrap_or(self.completed),
            dead: overrides.dead.unwrap_or(self.dead),
            killed: overrides.killed.unwrap_or(self.killed),
        }
    }

    pub fn check(&self) -> Result<()> {
        RetentionOverrides {
            completed: Some(self.completed),
            dead: Some(self.dead),
            killed: Some(self.killed),
        }
        .check()
    }
}

/// A space's own ages, in seconds; None: the server's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<u64>,
}

impl RetentionOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn check(&self) -> Result<()> {
        for (status, age) in [
            ("completed", self.completed),
            ("dead", self.dead),
            ("killed", self.killed),
        ] {
            if age.is_some_and(|age| age > MAX_AGE_SECONDS) {
                return Err(Error::invalid(format!(
                    "retention.{status} must be at most {MAX_AGE_SECONDS} seconds (0 keeps jobs forever)"
                )));
            }
        }
        Ok(())
    }
}

/// A change to a space's overrides, per status: None leaves it, `Some(None)`
/// goes back to the server's age, `Some(Some(seconds))` sets the space's.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetentionChange {
    pub completed: Option<Option<u64>>,
    pub dead: Option<Option<u64>>,
    pub killed: Option<Option<u64>>,
}

impl RetentionChange {
    pub fn applied_to(&self, overrides: RetentionOverrides) -> RetentionOverrides {
        RetentionOverrides {
            completed: self.completed.unwrap_or(overrides.completed),
            dead: self.dead.unwrap_or(overrides.dead),
            killed: self.killed.unwrap_or(overrides.killed),
        }
    }
}

/// Jobs of one space that finished as `status` before `before`.
#[derive(Clone, Debug)]
pub struct Expired {
    pub space_id: String,
    pub status: JobStatus,
    pub before: UnixMillis,
    pub limit: u32,
}

/// Deletes expired jobs every `config.sweep_every` until `shutdown` turns
/// true.
pub async fn sweep(
    store: Arc<Store>,
    config: RetentionConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut more = false;
        match sweep_once(&store, config.policy, store.clock().now()).await {
            Ok(pass) => {
                if pass.deleted > 0 {
                    tracing::info!(deleted = pass.deleted, "retention: deleted finished jobs");
                }
                more = pass.more;
            }
            Err(error) => tracing::warn!(%error, "retention sweep failed; trying again later"),
        }
        // A pass that stopped short goes on at once.
        let pause = if more {
            Duration::ZERO
        } else {
            config.sweep_every
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// What one sweeper pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub deleted: u64,
    /// Some space had more expired jobs than one pass deletes.
    pub more: bool,
}

/// Prune calls one pass makes per space and status, so that one space's
/// backlog does not hold up the others'.
const CALLS_PER_PASS: usize = 64;

/// One pass over every space.
pub async fn sweep_once(store: &Store, policy: RetentionPolicy, now: UnixMillis) -> Result<Pass> {
    let mut pass = Pass::default();
    for space in store.list_spaces().await? {
        let ages = policy.with(&space.retention);
        for status in FINISHED {
            let age = ages.age(status).unwrap_or(0);
            if age == 0 {
                continue;
            }
            let expired = Expired {
                space_id: space.id.clone(),
                status,
                before: now - (age * 1000) as i64,
                limit: PRUNE_BATCH,
            };
            // Batch after batch, as the writer finds room, until none is
            // left or the space has had its share of this pass.
            let mut calls = 0;
            loop {
                let pruned = store.prune(&expired).await?;
                pass.deleted += u64::from(pruned);
                if pruned == 0 {
                    break;
                }
                calls += 1;
                if calls == CALLS_PER_PASS {
                    pass.more = true;
                    break;
                }
            }
        }
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_the_servers_ages_one_status_at_a_time() {
        let server = RetentionPolicy::default();
        let space = RetentionOverrides {
            completed: Some(60),
            dead: Some(0),
            killed: None,
        };
        let ages = server.with(&space);
        assert_eq!(ages.age(JobStatus::Completed), Some(60));
        assert_eq!(ages.age(JobStatus::Dead), Some(0));
        assert_eq!(ages.age(JobStatus::Killed), Some(server.killed));
        assert_eq!(ages.age(JobStatus::Running), None);
        let json = serde_json::to_string(&space).unwrap();
        assert_eq!(json, r#"{"completed":60,"dead":0}"#);
        assert!(
            RetentionOverrides {
                dead: Some(MAX_AGE_SECONDS + 1),
                ..space
            }
            .check()
            .is_err()
        );
    }
}
