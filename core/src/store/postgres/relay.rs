//! Cross-replica events. Every commit that wrote events or log lines sends a
//! NOTIFY naming what it wrote (per space the range of sequence numbers, per
//! job the range of log lines); the events themselves stay in the database,
//! the durable log. Each replica's relay LISTENs and reads the named ranges
//! back by sequence, so:
//! - order holds: PostgreSQL delivers notifications in commit order, and per
//!   space commit order is sequence order (see `writer`);
//! - payloads stay small whatever was written: a notice carries ids and
//!   numbers only, and one that would pass the 8000-byte limit is split into
//!   several notifications;
//! - nothing is lost to a dropped LISTEN connection: the relay keeps each
//!   space's last relayed sequence number and, on reconnecting, reads every
//!   space's gap from the table.
//!
//! A replica's own commits skip the read: the writer leaves what it published
//! in a stash under its commit number, and the relay takes it from there when
//! the notice arrives, so local watchers get events in the same global order
//! as everyone else.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::{PgPool, Row};
use tokio::sync::{broadcast, oneshot};

use crate::error::{Error, Result};
use crate::job::{JobLogEntry, JobStatus, LiveEvent};
use crate::store::rows;

pub const COMMITS_CHANNEL: &str = "emit_commits";
pub const REVOCATIONS_CHANNEL: &str = "emit_revocations";
/// NOTIFY payloads must stay under 8000 bytes.
const MAX_PAYLOAD: usize = 7000;
/// Most events of one space read back after a lost connection; beyond it the
/// relay skips ahead (space streams see the jump in `seq`).
const MAX_CATCH_UP: i64 = 10_000;
/// Own commits whose notice was already handled, remembered for notices
/// split in several parts.
const HANDLED_MEMORY: usize = 256;

/// What one commit wrote, as announced to every replica.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct CommitNotice {
    #[serde(rename = "r")]
    pub replica: String,
    #[serde(rename = "c")]
    pub commit: u64,
    /// (space id, first seq, last seq)
    #[serde(rename = "s", default)]
    pub spaces: Vec<(String, i64, i64)>,
    /// (job id, first log seq, last log seq)
    #[serde(rename = "l", default)]
    pub logs: Vec<(String, i64, i64)>,
}

impl CommitNotice {
    /// The notice as NOTIFY payloads, each under the size limit.
    pub fn payloads(self) -> Vec<String> {
        let mut payloads = Vec::new();
        let mut part = self.part();
        let mut size = 0;
        let entries = self
            .spaces
            .into_iter()
            .map(|space| (true, space))
            .chain(self.logs.into_iter().map(|log| (false, log)));
        for (is_space, entry) in entries {
            let entry_size = entry.0.len() + 48;
            if size + entry_size > MAX_PAYLOAD && size > 0 {
                payloads.push(part.to_json());
                part = part.part();
                size = 0;
            }
            size += entry_size;
            if is_space {
                part.spaces.push(entry);
            } else {
                part.logs.push(entry);
            }
        }
        payloads.push(part.to_json());
        payloads
    }

    fn part(&self) -> Self {
        Self {
            replica: self.replica.clone(),
            commit: self.commit,
            ..Self::default()
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// This replica's side of the relay, shared with its writers.
pub struct Relay {
    replica: String,
    next_commit: AtomicU64,
    stash: Mutex<HashMap<u64, Arc<[LiveEvent]>>>,
}

impl Relay {
    pub fn new(replica: String) -> Self {
        Self {
            replica,
            next_commit: AtomicU64::new(1),
            stash: Mutex::new(HashMap::new()),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn next_commit(&self) -> u64 {
        self.next_commit.fetch_add(1, Ordering::Relaxed)
    }

    pub fn stash(&self, commit: u64, published: Arc<[LiveEvent]>) {
        self.lock_stash().insert(commit, published);
    }

    pub fn unstash(&self, commit: u64) -> Option<Arc<[LiveEvent]>> {
        self.lock_stash().remove(&commit)
    }

    fn lock_stash(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<[LiveEvent]>>> {
        self.stash
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where the relay sends what it reads.
pub struct Outlets {
    pub published: broadcast::Sender<Arc<[LiveEvent]>>,
    pub revoked: broadcast::Sender<String>,
}

/// Starts listening; returns once LISTEN is in place, so no commit after
/// this can go unseen. The relay stops when `stop` is dropped.
pub async fn start(
    relay: Arc<Relay>,
    pool: PgPool,
    outlets: Outlets,
    stop: oneshot::Receiver<()>,
) -> Result<()> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener
        .listen_all([COMMITS_CHANNEL, REVOCATIONS_CHANNEL])
        .await?;
    let mut task = RelayTask {
        relay,
        pool,
        outlets,
        cursors: HashMap::new(),
        handled: VecDeque::new(),
    };
    // Start from every space's current head: nothing before now is live.
    for row in sqlx::query("SELECT id, event_seq FROM spaces")
        .fetch_all(&task.pool)
        .await?
    {
        task.cursors
            .insert(row.try_get("id")?, row.try_get("event_seq")?);
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = task.run(listener) => {}
            _ = stop => {}
        }
    });
    Ok(())
}

struct RelayTask {
    relay: Arc<Relay>,
    pool: PgPool,
    outlets: Outlets,
    /// Per space, the last sequence number relayed. Spaces created after
    /// start are absent: their sequence starts at 0.
    cursors: HashMap<String, i64>,
    handled: VecDeque<u64>,
}

impl RelayTask {
    async fn run(&mut self, mut listener: PgListener) {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Err(error) = self.handle(&notification).await {
                        // The cursors did not move: the next notice of the
                        // same space reads the gap too.
                        tracing::warn!(%error, "relaying a commit failed");
                    }
                }
                Ok(None) => {
                    tracing::warn!("event relay lost its connection; catching up");
                    self.catch_up_until_done().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "event relay cannot listen; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.catch_up_until_done().await;
                }
            }
        }
    }

    async fn handle(&mut self, notification: &PgNotification) -> Result<()> {
        if notification.channel() == REVOCATIONS_CHANNEL {
            let _ = self.outlets.revoked.send(notification.payload().to_owned());
            return Ok(());
        }
        let notice: CommitNotice =
            serde_json::from_str(notification.payload()).map_err(Error::internal)?;
        let own = notice.replica == self.relay.replica;
        if own && let Some(published) = self.relay.unstash(notice.commit) {
            self.remember(notice.commit);
            let fresh: Vec<LiveEvent> = published
                .iter()
                .filter(|live| match live {
                    LiveEvent::Job(event) => self.advance(&event.space_id, event.seq),
                    LiveEvent::Space(event) => self.advance(&event.space_id, event.seq),
                    LiveEvent::Log(_) => true,
                })
                .cloned()
                .collect();
            self.publish(fresh);
            return Ok(());
        }
        if own && self.handled.contains(&notice.commit) {
            return Ok(());
        }
        let mut fresh = Vec::new();
        for (space_id, first, last) in &notice.spaces {
            let after = self
                .cursors
                .get(space_id)
                .copied()
                .unwrap_or(first - 1)
                .max(first - 1);
            if *last > after {
                fresh.extend(events_between(&self.pool, space_id, after, *last).await?);
                self.cursors.insert(space_id.clone(), *last);
            }
        }
        for (job_id, first, last) in &notice.logs {
            fresh.extend(log_lines(&self.pool, job_id, *first, *last).await?);
        }
        self.publish(fresh);
        Ok(())
    }

    /// Moves a space's cursor to `seq`; false if it was relayed already.
    fn advance(&mut self, space_id: &str, seq: i64) -> bool {
        match self.cursors.get_mut(space_id) {
            Some(cursor) if *cursor >= seq => false,
            Some(cursor) => {
                *cursor = seq;
                true
            }
            None => {
                self.cursors.insert(space_id.to_owned(), seq);
                true
            }
        }
    }

    fn remember(&mut self, commit: u64) {
        if self.handled.len() == HANDLED_MEMORY {
            self.handled.pop_front();
        }
        self.handled.push_back(commit);
    }

    fn publish(&self, fresh: Vec<LiveEvent>) {
        if !fresh.is_empty() {
            // No subscribers is fine: nobody is watching.
            let _ = self.outlets.published.send(fresh.into());
        }
    }

    async fn catch_up_until_done(&mut self) {
        while let Err(error) = self.catch_up().await {
            tracing::warn!(%error, "event relay cannot catch up; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Relays every event committed while notices could not arrive. Log
    /// lines of that time are not relayed (they stay readable over REST).
    async fn catch_up(&mut self) -> Result<()> {
        // Stashed commits whose notice was lost are read back below; those
        // whose notice is still to come fall back to reading the table.
        self.relay.lock_stash().clear();
        let heads = sqlx::query("SELECT id, event_seq FROM spaces")
            .fetch_all(&self.pool)
            .await?;
        for row in heads {
            let (space_id, head): (String, i64) = (row.try_get("id")?, row.try_get("event_seq")?);
            let cursor = self.cursors.get(&space_id).copied().unwrap_or(0);
            if head > cursor {
                let after = cursor.max(head - MAX_CATCH_UP);
                let events = events_between(&self.pool, &space_id, after, head).await?;
                self.publish(events);
                self.cursors.insert(space_id.clone(), head);
            }
        }
        Ok(())
    }
}

async fn events_between(
    pool: &PgPool,
    space_id: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<LiveEvent>> {
    let sql = format!(
        "{} AND e.space_id = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq",
        rows::SPACE_EVENTS
    );
    let rows = sqlx::query(&sql)
        .bind(space_id)
        .bind(after)
        .bind(upto)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| match rows::live_event(row)? {
            LiveEvent::Job(event) => {
                let mut event = Arc::unwrap_or_clone(event);
                event.counts = row
                    .try_get::<Option<String>, _>("counts")?
                    .map(|text| rows::counts_from_json(&text))
                    .transpose()?;
                Ok(LiveEvent::Job(Arc::new(event)))
            }
            other => Ok(other),
        })
        .collect()
}

async fn log_lines(pool: &PgPool, job_id: &str, first: i64, last: i64) -> Result<Vec<LiveEvent>> {
    let rows = sqlx::query(
        "SELECT l.*, j.name AS job_name, j.space_id, j.status FROM job_logs l \
         JOIN jobs j ON j.id = l.job_id WHERE l.job_id = $1 AND l.seq BETWEEN $2 AND $3 \
         ORDER BY l.seq",
    )
    .bind(job_id)
    .bind(first)
    .bind(last)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(LiveEvent::Log(Arc::new(JobLogEntry {
                space_id: row.try_get("space_id")?,
                job_id: row.try_get("job_id")?,
                job_name: row.try_get("job_name")?,
                status: JobStatus::parse(row.try_get("status")?)
                    .ok_or_else(|| Error::internal("corrupt row: status"))?,
                line: rows::log_line(row)?,
            })))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_notice_is_split_into_payloads_under_the_notify_limit() {
        let notice = CommitNotice {
            replica: "r".repeat(26),
            commit: 7,
            spaces: (0..500)
                .map(|n| (format!("space-{n:020}"), n, n + 1000))
                .collect(),
            logs: (0..500).map(|n| (format!("job-{n:022}"), 1, 3)).collect(),
        };
        let payloads = notice.payloads();
        assert!(payloads.len() > 1);
        let mut spaces = Vec::new();
        let mut logs = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < 8000, "{} bytes", payload.len());
            let part: CommitNotice = serde_json::from_str(payload).unwrap();
            assert_eq!(
                (part.replica.as_str(), part.commit),
                ("r".repeat(26).as_str(), 7)
            );
            spaces.extend(part.spaces);
            logs.extend(part.logs);
        }
        assert_eq!(spaces.len(), 500);
        assert_eq!(logs.len(), 500);
        assert_eq!(spaces[499], (format!("space-{:020}", 499), 499, 1499));
    }

    #[test]
    fn a_small_notice_is_one_payload() {
        let notice = CommitNotice {
            replica: "r".into(),
            commit: 1,
            spaces: vec![("s".into(), 1, 2)],
            logs: vec![],
        };
        assert_eq!(
            notice.payloads(),
            [r#"{"r":"r","c":1,"s":[["s",1,2]],"l":[]}"#]
        );
    }
}
