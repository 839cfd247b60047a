//! PostgreSQL, the scale-out backend: several core replicas share one
//! database. Each replica writes through its own group-commit writers (see
//! `writer` for how they stay correct side by side) and reads through a
//! pool; `relay` carries every replica's events to every other, and
//! `vacuum` keeps the churning `jobs` table lean.

mod relay;
mod vacuum;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Postgres};
use tokio::sync::oneshot;

use self::relay::{Outlets, Relay};
use self::writer::PgWriter;
use super::dialect::Dialect;
use super::{Broadcasts, OutboxEntry, Store, rows};
use crate::clock::{Clock, UnixMillis};
use crate::error::{Error, Result};
use crate::ids::new_id;

const READ_CONNECTIONS: u32 = 8;
/// Group-commit writers per replica, each on its own connection.
const WRITERS: usize = 2;
/// A claimed callback comes due again after this long if its replica never
/// records the try (it died mid-send). Longer than a try's timeout.
const CALLBACK_CLAIM_MILLIS: i64 = 60_000;

/// Connects to the database `url` names (waiting up to `wait` for it to
/// answer), runs the migrations, and starts this replica's writers, its
/// relay and its vacuum of `jobs`.
pub async fn open(url: &str, wait: Duration, clock: Clock) -> Result<Store> {
    open_with(url, wait, clock, vacuum::Policy::DEFAULT).await
}

/// `open`, vacuuming `jobs` by `vacuum`.
pub(crate) async fn open_with(
    url: &str,
    wait: Duration,
    clock: Clock,
    vacuum: vacuum::Policy,
) -> Result<Store> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|error| Error::invalid(format!("invalid postgres URL: {error}")))?
        .disable_statement_logging();
    wait_until_reachable(&options, wait).await?;
    let reads = PgPoolOptions::new()
        .max_connections(READ_CONNECTIONS)
        .connect_with(options.clone())
        .await?;
    // Replicas starting together take turns (the migrator locks).
    sqlx::migrate!("./migrations/postgres").run(&reads).await?;

    let broadcasts = Broadcasts::replicated();
    let relay = Arc::new(Relay::new(new_id()));
    let (stop_relay, stop) = oneshot::channel();
    let outlets = Outlets {
        published: broadcasts.published.clone(),
        revoked: broadcasts.revoked.clone(),
    };
    relay::start(relay.clone(), reads.clone(), outlets, stop).await?;

    let mut writers = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        writers.push(PgWriter::new(
            options.connect().await?,
            relay.clone(),
            broadcasts.own_commits.clone(),
            clock.clone(),
        ));
    }
    let (stop_vacuum, vacuum_stopped) = oneshot::channel();
    let store = Store::start(
        reads,
        writers,
        broadcasts,
        clock,
        vec![stop_relay, stop_vacuum],
    );
    tokio::spawn(vacuum::run(
        options,
        vacuum,
        store.writer_metrics().vacuum_seconds,
        vacuum_stopped,
    ));
    Ok(store)
}

impl Dialect for Postgres {
    // The protocol numbers them in 16 bits.
    const MAX_PARAMETERS: usize = 65_535;

    fn push_placeholder(sql: &mut String, n: usize) {
        use std::fmt::Write;
        let _ = write!(sql, "${n}");
    }
    // PostgreSQL's LIKE heeds case; SQLite's does not.
    const LIKE_ANY_CASE: &'static str = "ILIKE";
    const SNAPSHOT: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");

    // The relay of every replica, this one's included, hears it once the
    // revoking transaction commits (NOTIFY is transactional).
    async fn announce_revocation<'c>(conn: &'c mut PgConnection, token_id: &'c str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(relay::REVOCATIONS_CHANNEL)
            .bind(token_id)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn due_callbacks<'a>(
        reads: &'a PgPool,
        now: UnixMillis,
        limit: u32,
        per_space: u32,
        in_flight: &'a [(String, u32)],
    ) -> Result<Vec<OutboxEntry>> {
        // Claimed, not just read: another replica's deliverer skips them.
        // Claimed entries are no longer due, so this core's tries in flight
        // are counted from `in_flight`.
        let (busy, tries): (Vec<&str>, Vec<i64>) = in_flight
            .iter()
            .map(|(space, tries)| (space.as_str(), i64::from(*tries)))
            .unzip();
        let rows = sqlx::query(
            "WITH ranked AS ( \
                 SELECT id, space_id, ROW_NUMBER() OVER (PARTITION BY space_id ORDER BY next_at, id) AS space_rank \
                 FROM callback_outbox WHERE next_at <= $1), \
             due AS ( \
                 SELECT o.id FROM callback_outbox o JOIN ranked r ON r.id = o.id \
                 LEFT JOIN unnest($4::text[], $6::int8[]) AS busy(space_id, tries) \
                     ON busy.space_id = r.space_id \
                 WHERE r.space_rank + COALESCE(busy.tries, 0) <= $5 \
                 ORDER BY o.next_at, o.id LIMIT $2 FOR UPDATE OF o SKIP LOCKED), \
             claimed AS ( \
                 UPDATE callback_outbox o SET next_at = $3 FROM due WHERE o.id = due.id \
                 RETURNING o.*) \
             SELECT c.*, s.webhook_secret FROM claimed c JOIN spaces s ON s.id = c.space_id \
             ORDER BY c.id",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(now + CALLBACK_CLAIM_MILLIS)
        .bind(&busy)
        .bind(i64::from(per_space))
        .bind(&tries)
        .fetch_all(reads)
        .await?;
        rows.iter().map(rows::outbox_entry).collect()
    }
}

/// Longest wait for one connection attempt (an unroutable host never refuses).
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects once, retrying with backoff and saying so, so a database that is
/// still starting (or a wrong address) shows up in the log at once, by name.
async fn wait_until_reachable(options: &PgConnectOptions, patience: Duration) -> Result<()> {
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    );
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failure = match tokio::time::timeout(CONNECT_ATTEMPT_TIMEOUT, options.connect()).await {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {}s", CONNECT_ATTEMPT_TIMEOUT.as_secs()),
        };
        if started.elapsed() + delay > patience {
            return Err(Error::Startup(format!(
                "cannot connect to PostgreSQL at {target} (tried {attempt} times over {}s): {failure}",
                started.elapsed().as_secs()
            )));
        }
        tracing::warn!(
            %target, attempt, error = %failure,
            "waiting for PostgreSQL; retrying in {}ms", delay.as_millis()
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
}
