//! Vacuuming the `jobs` table as fast as it churns.
//!
//! Every status change writes a new version of a job's row, and none is
//! HOT (each moves indexed columns), so the old version keeps its entries
//! in every index until VACUUM removes them. A delivery's pick reads the
//! partial index of ready jobs from its oldest end, and every job that has
//! left `pending` since the last VACUUM is still an entry there, which the
//! pick steps over (a killed entry costs no heap visit, but its leaf page is
//! still read). Measured on 2026-12-05 in one `workloads stream` run on
//! PostgreSQL: the pick took 0.12 ms early on and 0.9 ms once some 40,000
//! jobs had passed through, reading all 684 pages of an index that held no
//! ready job, and it runs in every batch that delivers, so in the path of
//! each dispatch and of each completion's refill. Autovacuum visits a
//! database at most once a minute (`autovacuum_naptime`) and by default
//! waits for a fifth of the table to be dead, so for that long the picks
//! only slow down.
//!
//! So each core checks the table's dead row versions every `check_every`,
//! and once there are `dead_rows` of them runs `VACUUM jobs`: one replica
//! at a time (a session advisory lock the others skip on), and resting at
//! least `rest_factor` times as long as the last VACUUM took, so that on a
//! table too big to vacuum quickly it takes a bounded share of the
//! database's time.

use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::oneshot;

use crate::error::Result;

/// When the core vacuums `jobs`.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Dead row versions that start a VACUUM. About three a job (one per
    /// status change after its creation), so the default lets the pick step
    /// over at most some 3,300 entries: tens of microseconds.
    pub dead_rows: i64,
    /// How often the dead row versions are read (`pg_stat_user_tables`,
    /// which the writers' backends update about once a second).
    pub check_every: Duration,
    /// After a VACUUM that took `t`, none starts for `rest_factor * t`.
    pub rest_factor: u32,
}

impl Policy {
    pub const DEFAULT: Policy = Policy {
        dead_rows: 10_000,
        check_every: Duration::from_secs(1),
        rest_factor: 4,
    };

    /// Whether to vacuum now, with `dead_rows` dead, the last VACUUM having
    /// ended `since_last` ago after taking `last_took` (none yet: `None`).
    fn due(&self, dead_rows: i64, last: Option<(Duration, Duration)>) -> bool {
        let rested =
            last.is_none_or(|(since_last, last_took)| since_last >= last_took * self.rest_factor);
        dead_rows >= self.dead_rows && rested
    }
}

/// The two-key advisory lock one replica holds while it vacuums ("vacu").
const VACUUM_LOCK_CLASS: i32 = 0x7661_6375;

/// Vacuums `jobs` by `policy` until `stop` fires or is dropped, timing each
/// VACUUM into `took`. Ends at once if this role does not own the table
/// (VACUUM would skip it with a warning): autovacuum then has it alone.
pub async fn run(
    options: PgConnectOptions,
    policy: Policy,
    took: Histogram,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connection: Option<PgConnection> = None;
    // When the last VACUUM ended, and how long it took.
    let mut last: Option<(Instant, Duration)> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(policy.check_every) => {}
            _ = &mut stop => break,
        }
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match options.connect().await {
                Ok(conn) => connection.insert(conn),
                Err(error) => {
                    tracing::warn!(%error, "the vacuum of jobs cannot connect; trying again");
                    continue;
                }
            },
        };
        match round(conn, &policy, &mut last, &took).await {
            Ok(Round::Continue) => {}
            Ok(Round::NotOwner) => {
                tracing::info!(
                    "this role does not own the jobs table: its vacuuming is left to autovacuum"
                );
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "vacuuming jobs failed; trying again");
                // A fresh connection next time: this one may be broken, or
                // still hold the lock.
                if let Some(conn) = connection.take() {
                    let _ = conn.close().await;
                }
            }
        }
    }
    if let Some(conn) = connection {
        let _ = conn.close().await;
    }
}

enum Round {
    Continue,
    NotOwner,
}

/// Reads the dead row versions and vacuums if `policy` says so and no
/// other replica is.
async fn round(
    conn: &mut PgConnection,
    policy: &Policy,
    last: &mut Option<(Instant, Duration)>,
    took: &Histogram,
) -> Result<Round> {
    let (owner, dead_rows): (bool, i64) = sqlx::query_as(
        "SELECT pg_has_role(c.relowner, 'USAGE'), COALESCE(s.n_dead_tup, 0) \
         FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE c.oid = 'jobs'::regclass",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !owner {
        return Ok(Round::NotOwner);
    }
    let since = last.map(|(ended, took)| (ended.elapsed(), took));
    if !policy.due(dead_rows, since) {
        return Ok(Round::Continue);
    }
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, 0)")
        .bind(VACUUM_LOCK_CLASS)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        // Another replica is vacuuming.
        return Ok(Round::Continue);
    }
    let started = Instant::now();
    // VACUUM runs outside any transaction block; a text without arguments
    // goes as a simple query.
    let vacuumed = conn.execute("VACUUM jobs").await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, 0)")
        .bind(VACUUM_LOCK_CLASS)
        .execute(&mut *conn)
        .await;
    vacuumed?;
    unlocked?;
    let duration = started.elapsed();
    took.observe(duration.as_secs_f64());
    *last = Some((Instant::now(), duration));
    tracing::debug!(
        dead_rows,
        took_ms = duration.as_millis() as u64,
        "vacuumed jobs"
    );
    Ok(Round::Continue)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Policy;
    use crate::clock::Clock;
    use crate::store::conformance::ready;
    use crate::store::testing::{self, PostgresDatabase};

    const POLICY: Policy = Policy {
        dead_rows: 100,
        // Often enough for a quick test, rarely enough not to load the
        // database the other tests share.
        check_every: Duration::from_millis(50),
        rest_factor: 4,
    };

    #[test]
    fn vacuums_once_enough_rows_are_dead_and_it_has_rested() {
        let ms = Duration::from_millis;
        // The first: only the dead rows count.
        assert!(!POLICY.due(99, None));
        assert!(POLICY.due(100, None));
        // Then at least four times the last one's duration apart.
        assert!(!POLICY.due(1_000, Some((ms(39), ms(10)))));
        assert!(POLICY.due(1_000, Some((ms(40), ms(10)))));
        assert!(!POLICY.due(99, Some((ms(1_000), ms(10)))));
    }

    /// Jobs leaving `pending` leave dead row versions behind; the store's
    /// vacuum removes them without being asked, long before autovacuum's
    /// thresholds (a fifth of the table) would.
    #[tokio::test]
    async fn a_churning_jobs_table_is_vacuumed() {
        let database = PostgresDatabase::create().await;
        let store = crate::store::postgres::open_with(
            &database.url,
            Duration::from_secs(10),
            Clock::system(),
            POLICY,
        )
        .await
        .unwrap();
        let space_id = testing::add_space(&store).await;
        testing::create(&store, &space_id, 300).await;
        let now = Clock::system().now();
        let delivered = store.deliver(ready(&space_id, 300, now)).await.unwrap();
        assert_eq!(delivered.len(), 300);

        let stats = sqlx::PgPool::connect(&database.url).await.unwrap();
        let mut seen = jobs_stats(&stats).await;
        for _ in 0..300 {
            if seen.0 >= 1 {
                break;
            }
            // A backend passes its table statistics on when a transaction
            // ends, once a second at most (else after 10 s idle): these
            // creates end some on the writers' backends.
            testing::create(&store, &space_id, 1).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = jobs_stats(&stats).await;
        }
        let (vacuums, dead_rows) = seen;
        assert!(vacuums >= 1, "no VACUUM of jobs within 30 s");
        assert!(
            dead_rows < POLICY.dead_rows,
            "{dead_rows} dead rows left after a VACUUM"
        );
        stats.close().await;
    }

    /// The VACUUMs `jobs` has had, and its dead row versions.
    async fn jobs_stats(pool: &sqlx::PgPool) -> (i64, i64) {
        sqlx::query_as(
            "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'jobs'",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    }
}
