//! SQLite, the embedded default, in WAL mode. Every commit is fsynced before
//! anything tells of it, so an acknowledged write survives a power cut, not
//! just a crash of the process. Group commit in the writer (one transaction
//! per batch of waiting requests) keeps that affordable, and the fsync runs
//! beside the writer while it goes on to its next batch (`WalFile`,
//! `store::durability`). Reads run on a separate pool of read-only
//! connections that WAL lets proceed alongside the writer.
//!
//! WAL checkpoints run on a connection of their own (`checkpoints`), never
//! inside the writer's COMMIT: an automatic checkpoint there stalled every
//! write waiting on that batch for as long as copying the WAL back took.
//! The WAL stays bounded: see `checkpoints`.

mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite};
use tokio::sync::oneshot;

use self::writer::SqliteWriter;
use super::dialect::Dialect;
use super::durability::SyncCommits;
use super::{Broadcasts, OutboxEntry, Store, rows};
use crate::clock::{Clock, UnixMillis};
use crate::error::{Error, Result};

const READ_CONNECTIONS: u32 = 4;
/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL content past which a checkpoint makes the writer start the WAL over.
const WAL_RESTART_BYTES: i64 = 8 * 1024 * 1024;
/// What the WAL file is cut back to when the writer starts it over.
const WAL_FILE_LIMIT_BYTES: i64 = 32 * 1024 * 1024;

/// Opens (creating it if need be) the database `url` names, with one
/// writer connection and a pool of read-only ones.
pub async fn open(url: &str, clock: Clock) -> Result<Store> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|error| Error::invalid(format!("invalid sqlite URL: {error}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .disable_statement_logging();
    if let Some(directory) = options.get_filename().parent()
        && !directory.as_os_str().is_empty()
    {
        std::fs::create_dir_all(directory).map_err(|error| {
            Error::invalid(format!("cannot create {}: {error}", directory.display()))
        })?;
    }
    let mut write_connection = options.connect().await?;
    sqlx::migrate!("./migrations/sqlite")
        .run(&mut write_connection)
        .await?;
    sqlx::query("PRAGMA wal_autocheckpoint = 0")
        .execute(&mut write_connection)
        .await?;
    let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut write_connection)
        .await?;
    // In WAL mode COMMIT leaves the fsync to the writer (`WalFile`);
    // anything else (an in-memory database) keeps FULL.
    let sync: Option<Box<dyn SyncCommits>> = if journal_mode.eq_ignore_ascii_case("wal") {
        let mut name = options.get_filename().as_os_str().to_owned();
        name.push("-wal");
        let wal = WalFile::open(&PathBuf::from(name))?;
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut write_connection)
            .await?;
        Some(Box::new(wal))
    } else {
        None
    };
    // A statement that changes many rows inside the batch's transaction
    // keeps a journal of its own, to undo just itself; past 64 KiB SQLite
    // spills it to a temporary file, a write and a page-cache copy per page
    // for a file nobody reads back. In memory it stays as large as one
    // statement's changes: one bulk create at most.
    sqlx::query("PRAGMA temp_store = MEMORY")
        .execute(&mut write_connection)
        .await?;
    sqlx::query(&format!(
        "PRAGMA journal_size_limit = {WAL_FILE_LIMIT_BYTES}"
    ))
    .execute(&mut write_connection)
    .await?;
    let (stop_checkpoints, stopped) = oneshot::channel();
    let restart_wal = Arc::new(AtomicBool::new(false));
    tokio::spawn(checkpoints(
        options.connect().await?,
        restart_wal.clone(),
        stopped,
    ));
    let reads = SqlitePoolOptions::new()
        .max_connections(READ_CONNECTIONS)
        .connect_with(options.read_only(true))
        .await?;
    let broadcasts = Broadcasts::single();
    let writer = SqliteWriter::new(
        write_connection,
        broadcasts.published.clone(),
        restart_wal,
        clock.clone(),
        sync,
    )
    .await?;
    Ok(Store::start(
        reads,
        vec![writer],
        broadcasts,
        clock,
        vec![stop_checkpoints],
    ))
}

/// The WAL file, open for the writer's fsync task: the writer's
/// connection runs `synchronous = NORMAL`, so its COMMIT writes the WAL
/// without syncing it, and this makes what it wrote durable. (An fsync
/// through any descriptor of a file flushes all of the file's written data.)
struct WalFile(std::fs::File);

impl WalFile {
    fn open(path: &Path) -> Result<Self> {
        let unopenable =
            |error: std::io::Error| Error::internal(format!("{}: {error}", path.display()));
        let file = std::fs::File::open(path).map_err(unopenable)?;
        // The file's name must survive a power cut too: SQLite made it
        // without syncing its directory.
        let directory = path
            .parent()
            .filter(|directory| !directory.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(directory)
            .and_then(|directory| directory.sync_all())
            .map_err(unopenable)?;
        Ok(Self(file))
    }
}

impl SyncCommits for WalFile {
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

impl Dialect for Sqlite {
    // The bundled SQLite (3.32 and later) accepts 32,766.
    const MAX_PARAMETERS: usize = 32_766;

    // `?`, taken in order: SQLite keeps `$N` names in a list it searches
    // for each new one, so a 1,000-row insert spent a second parsing them.
    fn push_placeholder(sql: &mut String, _n: usize) {
        sql.push('?');
    }
    // SQLite's LIKE ignores the case of ASCII letters already.
    const LIKE_ANY_CASE: &'static str = "LIKE";
    // A read transaction reads one snapshot of the WAL.
    const SNAPSHOT: Option<&'static str> = None;

    async fn announce_revocation<'c>(
        _conn: &'c mut SqliteConnection,
        _token_id: &'c str,
    ) -> Result<()> {
        Ok(())
    }

    async fn due_callbacks<'a>(
        reads: &'a SqlitePool,
        now: UnixMillis,
        limit: u32,
        per_space: u32,
        _in_flight: &'a [(String, u32)],
    ) -> Result<Vec<OutboxEntry>> {
        // Reads claim nothing here (one core): entries in flight are still
        // due and are the oldest, so ranking them counts them already.
        let rows = sqlx::query(
            "SELECT * FROM (SELECT o.*, s.webhook_secret, ROW_NUMBER() OVER \
             (PARTITION BY o.space_id ORDER BY o.next_at, o.id) AS space_rank \
             FROM callback_outbox o JOIN spaces s ON s.id = o.space_id WHERE o.next_at <= $1) \
             WHERE space_rank <= $2 ORDER BY next_at, id LIMIT $3",
        )
        .bind(now)
        .bind(i64::from(per_space))
        .bind(i64::from(limit))
        .fetch_all(reads)
        .await?;
        rows.iter().map(rows::outbox_entry).collect()
    }
}

/// Writes a consistent copy of the database `url` names to `path` while a
/// server may be using it: `VACUUM INTO` reads one snapshot (WAL readers
/// never block the writer, nor it them) and writes a compact, standalone
/// database file, which is restored by putting it in the original's place
/// while the server is stopped.
pub async fn backup(url: &str, path: &std::path::Path) -> Result<()> {
    if !url.starts_with("sqlite:") {
        return Err(Error::invalid(
            "emit backup copies SQLite databases; back PostgreSQL up with pg_dump (see the README)",
        ));
    }
    if path.exists() {
        return Err(Error::invalid(format!(
            "{} exists already; name a new file",
            path.display()
        )));
    }
    let target = path
        .to_str()
        .ok_or_else(|| Error::invalid("the backup path must be valid UTF-8"))?;
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|error| Error::invalid(format!("invalid sqlite URL: {error}")))?
        .read_only(true)
        .busy_timeout(Duration::from_secs(10))
        .disable_statement_logging();
    if !options.get_filename().exists() {
        return Err(Error::invalid(format!(
            "there is no database at {}",
            options.get_filename().display()
        )));
    }
    let mut connection = options.connect().await?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    Ok(())
}

/// Copies the WAL back into the database file now and then, alongside the
/// writer (PASSIVE: it takes no lock the writer or the readers wait on).
///
/// The writer starts the WAL over only when a checkpoint has caught up with
/// it when it begins a transaction; under steady writes that never happens,
/// and the WAL grew by about 5 KB a job for as long as the load lasted
/// (336 MiB after 60,000 jobs). So once the WAL holds more than
/// `WAL_RESTART_BYTES`, this asks the writer (`restart_wal`) to finish the
/// copy between two batches (a RESTART checkpoint); its next transaction
/// starts the WAL over, and `journal_size_limit` cuts the file back. Run
/// from here instead, a RESTART waited hundreds of milliseconds for a gap
/// between batches while the WAL kept growing.
async fn checkpoints(
    mut conn: sqlx::SqliteConnection,
    restart_wal: Arc<AtomicBool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(4096);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            // The store is gone.
            _ = &mut stopped => break,
        }
        let passive: std::result::Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut conn)
                .await;
        match passive {
            Ok((_, wal_pages, _)) => {
                if wal_pages.saturating_mul(page_size) > WAL_RESTART_BYTES {
                    restart_wal.store(true, Ordering::Release);
                }
            }
            Err(error) => tracing::warn!(%error, "WAL checkpoint failed; trying again"),
        }
    }
    let _ = conn.close().await;
}

#[cfg(test)]
mod tests {
    use std::pin::{Pin, pin};
    use std::str::FromStr;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::task::{Context, Waker};

    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, SqliteConnection};
    use tokio::sync::broadcast;

    use super::WAL_FILE_LIMIT_BYTES;
    use super::writer::SqliteWriter;
    use crate::clock::Clock;
    use crate::error::Error;
    use crate::job::machine::{Command, Fence};
    use crate::job::{Job, LiveEvent};
    use crate::store::batch::{self, Writes};
    use crate::store::durability::{SyncCommits, Synced};
    use crate::store::handoff::Waiters;
    use crate::store::testing::{self, create, jobs, store_with_space};
    use crate::store::{DeliverRequest, JobTarget};

    /// Runs `writer`'s batches on `queue` as a store does, numbering them
    /// in `synced`.
    fn run_batches(writer: SqliteWriter, queue: batch::Queues, synced: Arc<Synced>) {
        tokio::spawn(batch::run(
            writer,
            queue,
            Arc::new(Waiters::default()),
            Default::default(),
            Clock::system(),
            synced,
        ));
    }

    /// Another connection to the database of a test store made in `dir`.
    async fn connect(dir: &std::path::Path) -> SqliteConnection {
        SqliteConnectOptions::from_str(&format!("sqlite://{}/emit.db", dir.display()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A writer on `connection` whose commits are durable at COMMIT, with
    /// nobody listening to what it publishes.
    async fn plain_writer(connection: SqliteConnection) -> SqliteWriter {
        SqliteWriter::new(
            connection,
            broadcast::channel(16).0,
            Arc::new(AtomicBool::new(false)),
            Clock::system(),
            None,
        )
        .await
        .unwrap()
    }

    fn named(space_id: &str, name: &str) -> Vec<Job> {
        let mut made = jobs(space_id, 1);
        made[0].name = name.into();
        made
    }

    /// One operation's failure in the database rolls back its batch: the
    /// operations that ran before it are answered "retry later", the
    /// failing one gets its error, and the ones after it run in the next
    /// batch instead of failing with it.
    #[tokio::test]
    async fn the_writes_after_a_failing_one_run_in_the_next_batch() {
        let (store, space_id, dir) = store_with_space().await;
        let mut connection = connect(&dir).await;
        // Creating a job named "poison" fails in the database, as it would
        // on a full disk.
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON jobs WHEN NEW.name = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'the disk is full'); END",
        )
        .execute(&mut connection)
        .await
        .unwrap();
        let writer = plain_writer(connection).await;
        let (sender, queue) = batch::inbox(16);
        let writes = Arc::new(Writes::new(vec![sender]));
        let mut answers = Vec::new();
        for (queued, name) in ["before", "poison", "after"].into_iter().enumerate() {
            let (writes, batch) = (writes.clone(), named(&space_id, name));
            let id = batch[0].id.clone();
            answers.push((
                id,
                tokio::spawn(async move { writes.create_jobs(batch.into()).await }),
            ));
            // One batch: every operation is queued before the writer runs.
            while queue.ops.len() <= queued {
                tokio::task::yield_now().await;
            }
        }
        run_batches(writer, queue, Default::default());
        let mut outcomes = Vec::new();
        for (id, answer) in answers {
            outcomes.push((id, answer.await.unwrap()));
        }
        assert!(
            matches!(outcomes[0].1, Err(Error::Unavailable)),
            "{:?}",
            outcomes[0].1
        );
        assert!(
            matches!(outcomes[1].1, Err(Error::Internal(_))),
            "{:?}",
            outcomes[1].1
        );
        assert!(outcomes[2].1.is_ok(), "{:?}", outcomes[2].1);
        let stored = |id: String| {
            let store = &store;
            async move { store.job_snapshot(&id).await.unwrap().is_some() }
        };
        assert!(!stored(outcomes[0].0.clone()).await);
        assert!(stored(outcomes[2].0.clone()).await);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The writer remembers the rows it wrote. Were one not as it left it
    /// (a bug: it is the only writer), the conditional UPDATE would skip
    /// that row; the check in the same round trip then fails before the
    /// COMMIT there, and the whole batch rolls back, the rows the same
    /// UPDATE did change included.
    #[tokio::test]
    async fn a_row_not_as_its_writer_left_it_rolls_the_whole_batch_back() {
        let (store, space_id, dir) = store_with_space().await;
        let writer = plain_writer(connect(&dir).await).await;
        let (sender, queue) = batch::inbox(16);
        let writes = Writes::new(vec![sender]);
        run_batches(writer, queue, Default::default());
        let made = jobs(&space_id, 2);
        let ids: Vec<String> = made.iter().map(|job| job.id.clone()).collect();
        writes.create_jobs(made.into()).await.unwrap();
        // Delivering them puts them in the writer's picture.
        let delivered = writes
            .deliver(DeliverRequest {
                space_id: space_id.clone(),
                names: Vec::new(),
                count: 2,
                now: Clock::system().now(),
                excluded_names: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(delivered.len(), 2);
        let mut behind_its_back = connect(&dir).await;
        sqlx::query("UPDATE jobs SET status = 'dead' WHERE id = ?")
            .bind(&ids[0])
            .execute(&mut behind_its_back)
            .await
            .unwrap();
        let both = ids.clone();
        let killed = writes
            .on_any("kill both", move |writer| {
                Box::pin(async move {
                    for job_id in both {
                        let target = JobTarget {
                            job_id,
                            space_id: None,
                        };
                        let kill = Command::Kill { reason: None };
                        let now = Clock::system().now();
                        writer.apply(&target, kill, &Fence::default(), now).await?;
                    }
                    Ok(())
                })
            })
            .await;
        // A write that did not happen: "retry later".
        assert!(matches!(killed, Err(Error::Unavailable)), "{killed:?}");
        for (id, status) in ids.iter().zip(["dead", "delivered"]) {
            let (job, _) = store.job_snapshot(id).await.unwrap().unwrap();
            assert_eq!(job.status().as_str(), status);
        }
        // The writer goes on with a fresh picture.
        writes.create_jobs(jobs(&space_id, 1).into()).await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// An fsync that waits for the test: tells when it starts, and returns
    /// when told to.
    struct HeldSync {
        started: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
    }

    impl SyncCommits for HeldSync {
        fn sync(&mut self) -> std::io::Result<()> {
            let _ = self.started.send(());
            // Bounded: a failing test must not leave the runtime waiting
            // on this thread forever.
            self.go
                .recv_timeout(std::time::Duration::from_secs(20))
                .map_err(|_| std::io::Error::other("the test is gone"))
        }
    }

    /// Polls `future` once: whether it is done.
    fn done_now<F: Future>(future: Pin<&mut F>) -> bool {
        let mut context = Context::from_waker(Waker::noop());
        future.poll(&mut context).is_ready()
    }

    /// A commit is in the WAL before its fsync, but its reply, the events
    /// it published and reads waiting on it are all held back until the
    /// fsync returns.
    #[tokio::test]
    async fn nothing_tells_of_a_commit_before_its_fsync() {
        let (store, space_id, dir) = store_with_space().await;
        let connection = connect(&dir).await;
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let (published, mut watching) = broadcast::channel(16);
        let writer = SqliteWriter::new(
            connection,
            published,
            Arc::new(AtomicBool::new(false)),
            Clock::system(),
            Some(Box::new(HeldSync {
                started: started_tx,
                go: go_rx,
            })),
        )
        .await
        .unwrap();
        let (sender, queue) = batch::inbox(16);
        let writes = Writes::new(vec![sender]);
        let synced = Arc::new(Synced::default());
        run_batches(writer, queue, synced.clone());
        let made = jobs(&space_id, 1);
        let id = made[0].id.clone();
        let mut create = pin!(writes.create_jobs(made.into()));
        assert!(!done_now(create.as_mut()));
        tokio::task::spawn_blocking(move || started.recv())
            .await
            .unwrap()
            .unwrap();
        // Committed: another connection reads the job.
        let target = JobTarget {
            job_id: id.clone(),
            space_id: None,
        };
        assert!(store.get_job(&target).await.unwrap().is_some());
        // But nothing tells of it yet.
        assert!(!done_now(create.as_mut()), "replied before the fsync");
        assert!(matches!(
            watching.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        let mut settled = pin!(synced.settled());
        assert!(!done_now(settled.as_mut()), "settled before the fsync");
        go.send(()).unwrap();
        create.await.unwrap();
        settled.await;
        let told = watching.recv().await.unwrap();
        assert!(matches!(&told[0], LiveEvent::Job(event) if event.job_id == id));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The timer and retention scans repeat their partial indexes'
    /// conditions word for word (`rows::TIMED`, `rows::FINISHED`), which
    /// SQLite needs before it uses them; and neither writing a job row nor a
    /// delivery's pick builds a temporary b-tree for a list of values.
    #[tokio::test]
    async fn the_scans_use_their_indexes_and_the_hot_statements_build_no_temporary_tables() {
        use sqlx::Row;

        use super::writer;
        use crate::job::JobStatus;
        use crate::store::{forget, pauses};

        let (_store, _space_id, dir) = store_with_space().await;
        let mut connection = connect(&dir).await;
        let mut plan = async |sql: String| -> String {
            let steps = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(&mut connection)
                .await
                .unwrap();
            let details: Vec<String> = steps.iter().map(|step| step.get("detail")).collect();
            details.join("; ")
        };
        for sql in [writer::due_timers_sql(), writer::next_timer_sql()] {
            let timers = plan(sql).await;
            assert!(timers.contains("USING INDEX jobs_timers"), "{timers}");
        }
        let expired = plan(forget::expired_ids(JobStatus::Dead, "'s'", "1", "10")).await;
        assert!(expired.contains("jobs_finished"), "{expired}");
        let keyed = plan(writer::KEYED_SPACE.replace('?', "'s'")).await;
        assert!(keyed.contains("USING INDEX jobs_keyed"), "{keyed}");

        let mut program = async |sql: String| -> Vec<String> {
            let steps = sqlx::query(&format!("EXPLAIN {sql}"))
                .fetch_all(&mut connection)
                .await
                .unwrap();
            steps.iter().map(|step| step.get("opcode")).collect()
        };
        for sql in [
            "UPDATE jobs SET status = 'completed', due_at = NULL WHERE id = 'j'".to_owned(),
            format!(
                "SELECT * FROM jobs WHERE status = 'pending' AND space_id = 's' \
                 AND concurrency_key IS NULL{} ORDER BY priority DESC, due_at, id LIMIT 20",
                pauses::NOT_PAUSED
            ),
        ] {
            let opcodes = program(sql.clone()).await;
            assert!(
                !opcodes.iter().any(|opcode| opcode == "OpenEphemeral"),
                "{sql}: {opcodes:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn size(path: &std::path::Path) -> i64 {
        std::fs::metadata(path).map_or(0, |meta| meta.len() as i64)
    }

    /// A delivery skips the search for ready keys in a space the writer
    /// found without keyed jobs, until it inserts one there.
    #[tokio::test]
    async fn a_space_found_without_keys_takes_turns_once_keyed_jobs_arrive() {
        let (store, space_id, _dir) = store_with_space().await;
        let deliver = |count: u32| {
            store.deliver(DeliverRequest {
                space_id: space_id.clone(),
                names: Vec::new(),
                count,
                now: Clock::system().now(),
                excluded_names: Vec::new(),
            })
        };
        // The writer reads that the space holds no keyed job, and from then
        // on skips the search for ready keys there.
        create(&store, &space_id, 1).await;
        assert_eq!(deliver(1).await.unwrap().len(), 1);
        // Keyed jobs behind two unkeyed ones, key `a` limited to one lease.
        create(&store, &space_id, 2).await;
        let mut keyed = jobs(&space_id, 3);
        for (job, key) in keyed.iter_mut().zip(["a", "a", "b"]) {
            job.concurrency_key = Some(key.to_owned());
            job.concurrency_limit = Some(1);
        }
        let keyed_ids: Vec<String> = keyed.iter().map(|job| job.id.clone()).collect();
        store.create_jobs(keyed.into()).await.unwrap();
        // Turns between the lanes, not the unkeyed jobs first: the keys are
        // searched again, and `a`'s second job waits for its first.
        let delivered = deliver(10).await.unwrap();
        let ids: Vec<&str> = delivered.iter().map(|job| job.id.as_str()).collect();
        assert_eq!(delivered.len(), 4, "{ids:?}");
        assert!(ids.contains(&keyed_ids[0].as_str()) && ids.contains(&keyed_ids[2].as_str()));
        assert!(!ids.contains(&keyed_ids[1].as_str()));
        assert!(
            delivered[..2]
                .iter()
                .any(|job| job.concurrency_key.is_some()),
            "a keyed job went in the first round: {ids:?}"
        );
    }

    /// The writer's round of key lanes (one statement, a correlated pick
    /// per key) reads what a model of the round says it holds.
    #[tokio::test]
    async fn key_lanes_follow_their_model() {
        let (store, space_id, dir) = store_with_space().await;
        let mut writer = plain_writer(connect(&dir).await).await;
        testing::key_lanes_follow_their_model(&store, &space_id, &mut writer).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Under steady writes the WAL would grow for as long as they last;
    /// here it is started over whenever it passes its bound.
    #[tokio::test]
    async fn the_wal_stays_bounded_under_steady_writes() {
        let (store, space_id, dir) = store_with_space().await;
        let (wal, database) = (dir.join("emit.db-wal"), dir.join("emit.db"));
        let mut peak = 0;
        // Keep writing until the database holds more than the WAL may.
        while size(&database) <= 2 * WAL_FILE_LIMIT_BYTES {
            create(&store, &space_id, 1000).await;
            peak = peak.max(size(&wal));
        }
        assert!(
            peak <= WAL_FILE_LIMIT_BYTES,
            "the WAL reached {peak} bytes while {} were written",
            size(&database)
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
