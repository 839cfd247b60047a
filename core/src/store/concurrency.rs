//! Dispatch under a space's flow limits (concurrency keys and rate
//! limits), for both backends: which ready jobs a delivery takes, and
//! whether a claim may lease its job. The rules live here once; each writer
//! supplies the statements (`FlowDispatch`), because how rows are locked
//! and what a batch has written so far differ.
//!
//! - **Turns.** Each key is a lane, and jobs without a key are one more.
//!   A delivery takes one job from each lane in turn (within a lane by
//!   priority, then age) until it has enough, starting after the key the
//!   previous delivery of the space ended on; so a key with a backlog of
//!   100,000 jobs delays another key's job by one turn, not by its backlog.
//! - **Limits.** A keyed job is leased only while its key holds fewer
//!   leases (delivered or running jobs) than the job's limit
//!   (`ConcurrencyLimits::for_job`). Leases are counted from the job rows in
//!   the transaction that leases, under a lock per key on PostgreSQL, so two
//!   cores never both take the last slot; whatever ends a lease frees its
//!   slot in its own commit.
//! - **Rates.** A rate-limited job name is leased only while fewer than its
//!   limit of its dispatches fall in the window ending now. Dispatches are
//!   rows written in the leasing transaction; the count and the instant
//!   are taken under a lock per name on PostgreSQL, so the instants the
//!   cores record are ordered and no window ever holds more than the limit.
//!   A name whose window is full is left out of the picks, so it cannot
//!   hold up other names' jobs.
//! - A space with no ready keyed job and no rate limit is dispatched exactly
//!   as before: one statement, by priority, then age.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{Database, Decode, Encode, Executor, IntoArguments, QueryBuilder, Type};

use crate::clock::UnixMillis;
use crate::concurrency::{ConcurrencyLimits, RateLimit};
use crate::error::{Error, Result};
use crate::job::{Job, JobStatus};
use crate::store::DeliverRequest;
use crate::store::rows::{self, Columns};

/// Keys one delivery looks at (it needs at most one per job it hands out,
/// plus the saturated ones it passes).
const MAX_LANES: u32 = 256;

/// Which key a ready job's condition asks for, in either backend's pick.
#[derive(Clone, Copy, Debug)]
pub enum ReadyKey {
    /// Jobs without a key.
    None,
    /// The key of the lane being read (`found.key`, after
    /// `push_round_keys`).
    Lane,
}

impl ReadyKey {
    /// The condition, to follow others in a `WHERE`.
    pub fn condition(self) -> &'static str {
        match self {
            // Also what lets a pick use the unkeyed ready index.
            Self::None => " AND concurrency_key IS NULL",
            Self::Lane => " AND concurrency_key = found.key",
        }
    }
}

/// Where one round of key lanes starts and ends (`FlowDispatch::key_lanes`).
#[derive(Clone, Copy, Debug)]
pub struct KeyRound<'a> {
    /// Keys after this one.
    pub after: &'a str,
    /// None past this one: where the delivery began, once it wrapped.
    pub until: Option<&'a str>,
    /// Most keys to read.
    pub max: u32,
    /// Turns the delivery still has to fill.
    pub turns: usize,
    /// Whether the unkeyed lane is still to be read.
    pub with_unkeyed: bool,
}

impl KeyRound<'_> {
    /// Jobs to read of each of `keys` keys: enough for the turns left.
    pub fn per_key(&self, keys: usize) -> u32 {
        self.turns.div_ceil(keys.max(1)).max(1) as u32
    }
}

/// One round of key lanes: the keys in order, their first jobs (and the
/// unkeyed lane's, when `with_unkeyed`), each key's in dispatch order.
#[derive(Debug, Default)]
pub struct KeyLanes {
    pub keys: Vec<String>,
    pub jobs: Vec<Job>,
    pub with_unkeyed: bool,
}

impl KeyLanes {
    /// The round from the rows of its statement (`push_round_keys`, then
    /// the jobs): each found key's jobs, or one row without a job
    /// (`id` null) for a key none of whose jobs is ready, in lane order
    /// (`lane_key` null for the unkeyed lane).
    pub fn read(rows: &[impl Columns], round: &KeyRound<'_>) -> Result<Self> {
        let mut lanes = Self::default();
        for row in rows {
            if let Some(key) = row.opt_text("lane_key")?
                && lanes.keys.last() != Some(&key)
            {
                lanes.keys.push(key);
            }
            if row.opt_text("id")?.is_some() {
                lanes.jobs.push(rows::job(row)?);
            }
        }
        // The keys ran out before `max`: the unkeyed lane came with them.
        lanes.with_unkeyed =
            round.with_unkeyed && !lanes.keys.is_empty() && lanes.keys.len() < round.max as usize;
        Ok(lanes)
    }
}

/// Starts a round's statement: `WITH RECURSIVE ...` defining `found (key,
/// n)`, the round's ready keys in key order (the n-th is the n-th lane):
/// after `after`, at most `max`, none past `until`. A loose index scan, one index
/// seek per key over `jobs_key_ready`, so a key's backlog costs nothing to
/// pass. It reads the pending keys, due or not: a key found without a
/// ready job still counts as a lane passed.
pub fn push_round_keys<'args, DB>(
    select: &mut QueryBuilder<'args, DB>,
    space_id: &str,
    round: &KeyRound<'_>,
) where
    DB: Database,
    String: Encode<'args, DB> + Type<DB>,
    i64: Encode<'args, DB> + Type<DB>,
{
    select.push(
        "WITH RECURSIVE lanes (key, n) AS ( \
           SELECT (SELECT MIN(concurrency_key) FROM jobs WHERE space_id = ",
    );
    select.push_bind(space_id.to_owned());
    select.push(" AND status = 'pending' AND concurrency_key > ");
    select.push_bind(round.after.to_owned());
    select.push(
        "), CAST(1 AS BIGINT) \
         UNION ALL \
         SELECT (SELECT MIN(j.concurrency_key) FROM jobs j WHERE j.space_id = ",
    );
    select.push_bind(space_id.to_owned());
    select.push(
        " AND j.status = 'pending' AND j.concurrency_key > lanes.key), lanes.n + 1 \
         FROM lanes WHERE lanes.key IS NOT NULL AND lanes.n < ",
    );
    select.push_bind(i64::from(round.max));
    if let Some(until) = round.until {
        select.push(" AND lanes.key < ").push_bind(until.to_owned());
    }
    select.push("), found AS MATERIALIZED (SELECT key, n FROM lanes WHERE key IS NOT NULL");
    if let Some(until) = round.until {
        select.push(" AND key <= ").push_bind(until.to_owned());
    }
    select.push(")");
}

/// What a writer provides for dispatch under flow limits.
#[async_trait]
pub trait FlowDispatch: Send {
    /// The time now, fresh: a rate window is counted at the moment of the
    /// decision, never at a time a queued request was made.
    fn now(&self) -> UnixMillis;
    /// The first `count` ready jobs without a key, in dispatch order
    /// (locked for this transaction where the backend locks rows).
    async fn pick_unkeyed(&mut self, request: &DeliverRequest, count: u32) -> Result<Vec<Job>>;
    /// Takes the key's lock for the rest of the transaction, if no other
    /// transaction holds it (PostgreSQL); always true with one writer.
    async fn lock_key(&mut self, space_id: &str, key: &str) -> Result<bool>;
    /// Leases the key holds now.
    async fn leases(&mut self, space_id: &str, key: &str) -> Result<u32>;
    /// The space's limits as stored (`limits_of` reads them when
    /// `limits_read` does not hold them).
    async fn read_limits(&mut self, space_id: &str) -> Result<ConcurrencyLimits>;
    /// The limits read before, by space, kept while they are known to be
    /// current: for one transaction where other cores may change them
    /// (PostgreSQL), until a change may have run with a single writer
    /// (SQLite).
    fn limits_read(&mut self) -> &mut HashMap<String, ConcurrencyLimits>;
    /// The next round of key lanes, in one statement: the ready keys after
    /// `after` (at most `max`, none past `until`; `push_round_keys`) and
    /// the first jobs of each (`per_key` of them, locked like
    /// `pick_unkeyed`'s). When the keys run out within `max` and
    /// `with_unkeyed` is set, the jobs without a key come too (up to the
    /// request's count): the unkeyed lane follows the last key.
    async fn key_lanes(
        &mut self,
        request: &DeliverRequest,
        round: KeyRound<'_>,
    ) -> Result<KeyLanes>;
    /// The lane the space's last delivery ended on: a key, or None for the
    /// jobs without one (and at first).
    fn turn(&mut self, space_id: &str) -> &mut Option<String>;
    /// Takes the lock of a rate-limited name for the rest of the
    /// transaction, if no other transaction holds it (PostgreSQL).
    async fn lock_rate(&mut self, space_id: &str, name: &str) -> Result<bool>;
    /// Dispatches of the name after `since` (with `rate_key`, or all),
    /// first deleting the older ones.
    async fn dispatched(
        &mut self,
        space_id: &str,
        name: &str,
        rate_key: Option<&str>,
        since: UnixMillis,
    ) -> Result<u32>;
    async fn record_dispatch(
        &mut self,
        space_id: &str,
        name: &str,
        rate_key: &str,
        at: UnixMillis,
    ) -> Result<()>;
}

/// The space's limits, read when not already held: a change applies from
/// the next batch on, on every core.
async fn limits_of(writer: &mut impl FlowDispatch, space_id: &str) -> Result<ConcurrencyLimits> {
    if let Some(limits) = writer.limits_read().get(space_id) {
        return Ok(limits.clone());
    }
    let limits = writer.read_limits(space_id).await?;
    writer
        .limits_read()
        .insert(space_id.to_owned(), limits.clone());
    Ok(limits)
}

/// What a space's rate limits leave for one delivery.
struct RateBudget {
    /// The instant the delivery counts from and records (taken under the
    /// names' locks).
    now: UnixMillis,
    /// Dispatches left, by (name, rate key); per-key budgets are read when
    /// first needed.
    left: HashMap<(String, String), u32>,
    /// Names this delivery may not dispatch at all.
    full: Vec<String>,
}

impl RateBudget {
    async fn of(
        writer: &mut impl FlowDispatch,
        request: &DeliverRequest,
        limits: &ConcurrencyLimits,
    ) -> Result<Option<Self>> {
        let rated: Vec<(&String, &RateLimit)> = limits
            .rates
            .iter()
            .filter(|(name, _)| request.names.is_empty() || request.names.contains(name))
            .collect();
        if rated.is_empty() {
            return Ok(None);
        }
        let mut locked = Vec::new();
        let mut full = Vec::new();
        for (name, _) in &rated {
            if writer.lock_rate(&request.space_id, name).await? {
                locked.push(*name);
            } else {
                // Another core is dispatching this name right now.
                full.push((*name).clone());
            }
        }
        let now = writer.now().max(request.now);
        let mut left = HashMap::new();
        for (name, rate) in rated {
            if !locked.contains(&name) || rate.per_key {
                continue;
            }
            let since = now - rate.period_millis();
            let used = writer
                .dispatched(&request.space_id, name, None, since)
                .await?;
            match rate.limit.saturating_sub(used) {
                0 => full.push(name.clone()),
                room => {
                    left.insert((name.clone(), String::new()), room);
                }
            }
        }
        Ok(Some(Self { now, left, full }))
    }

    /// Whether `job` may go now; if so, its dispatch is recorded.
    async fn spend(
        &mut self,
        writer: &mut impl FlowDispatch,
        limits: &ConcurrencyLimits,
        job: &Job,
    ) -> Result<bool> {
        let Some(rate) = limits.rates.get(&job.name) else {
            return Ok(true);
        };
        if self.full.contains(&job.name) {
            return Ok(false);
        }
        let rate_key = match rate.per_key {
            true => job.concurrency_key.clone().unwrap_or_default(),
            false => String::new(),
        };
        let slot = (job.name.clone(), rate_key.clone());
        let left = match self.left.get(&slot) {
            Some(left) => *left,
            None => {
                let since = self.now - rate.period_millis();
                let used = writer
                    .dispatched(&job.space_id, &job.name, Some(&rate_key), since)
                    .await?;
                rate.limit.saturating_sub(used)
            }
        };
        if left == 0 {
            self.left.insert(slot, 0);
            return Ok(false);
        }
        writer
            .record_dispatch(&job.space_id, &job.name, &rate_key, self.now)
            .await?;
        self.left.insert(slot, left - 1);
        Ok(true)
    }
}

/// The jobs a delivery leases, in the order it hands them out, and the
/// instant to lease them at (the rate limits' when they apply).
pub async fn choose_within_limits(
    writer: &mut impl FlowDispatch,
    request: &DeliverRequest,
) -> Result<(Vec<Job>, UnixMillis)> {
    let limits = limits_of(writer, &request.space_id).await?;
    let Some(mut budget) = RateBudget::of(writer, request, &limits).await? else {
        return Ok((choose(writer, request).await?, request.now));
    };
    let mut narrowed = request.clone();
    narrowed.excluded_names.extend(budget.full.iter().cloned());
    let mut leased = Vec::new();
    for job in choose(writer, &narrowed).await? {
        if budget.spend(writer, &limits, &job).await? {
            leased.push(job);
        }
    }
    Ok((leased, budget.now))
}

/// The jobs a delivery leases, in the order it hands them out.
///
/// Lanes come in a fixed cycle: the keys in key order, then the jobs
/// without a key. A delivery starts after the lane the last one ended on,
/// fetches lanes lazily, a few keys' jobs per statement (a delivery of one
/// job reads one lane), and takes one job per lane per round.
async fn choose(writer: &mut impl FlowDispatch, request: &DeliverRequest) -> Result<Vec<Job>> {
    let space_id = request.space_id.as_str();
    let count = request.count as usize;
    let start = writer.turn(space_id).clone();
    let mut cursor = start.clone().unwrap_or_default();
    let mut wrapped = start.is_none();
    let mut unkeyed_done = false;
    let mut any_key = false;
    let mut visited = 0u32;
    let mut lanes: Vec<(Option<String>, Vec<Job>)> = Vec::new();
    while lanes.len() < count && visited < MAX_LANES {
        let wanted = ((count - lanes.len()) as u32 + 1).min(MAX_LANES - visited);
        let round = KeyRound {
            after: &cursor,
            // Once wrapped, the round ends where this delivery began.
            until: if wrapped { start.as_deref() } else { None },
            max: wanted,
            turns: count - lanes.len(),
            // Past the last key the unkeyed lane is next: read it with them.
            with_unkeyed: !unkeyed_done,
        };
        let KeyLanes {
            keys: in_round,
            jobs,
            with_unkeyed,
        } = writer.key_lanes(request, round).await?;
        // Fewer keys than asked for: they ran out, or reached the start.
        let exhausted = (in_round.len() as u32) < wanted;
        if let Some(last) = in_round.last() {
            any_key = true;
            visited += in_round.len() as u32;
            cursor.clone_from(last);
            unkeyed_done |= with_unkeyed;
            let mut unkeyed = Vec::new();
            let mut by_key: HashMap<String, Vec<Job>> = HashMap::new();
            for job in jobs {
                match job.concurrency_key.clone() {
                    Some(key) => by_key.entry(key).or_default().push(job),
                    None => unkeyed.push(job),
                }
            }
            for key in in_round {
                let Some(ready) = by_key.remove(&key) else {
                    continue;
                };
                let admitted = admit_lane(writer, request, &key, ready).await?;
                if !admitted.is_empty() {
                    lanes.push((Some(key), admitted));
                    if lanes.len() >= count {
                        break;
                    }
                }
            }
            if !unkeyed.is_empty() && lanes.len() < count {
                lanes.push((None, unkeyed));
            }
        }
        if lanes.len() >= count {
            break;
        }
        if !exhausted {
            continue;
        }
        // Past the last key: the jobs without one, then round to the first.
        if !unkeyed_done {
            unkeyed_done = true;
            if !any_key && wrapped {
                // No ready keyed job at all: as before keys existed.
                *writer.turn(space_id) = None;
                return writer.pick_unkeyed(request, request.count).await;
            }
            let jobs = writer.pick_unkeyed(request, request.count).await?;
            if !jobs.is_empty() {
                lanes.push((None, jobs));
            }
        }
        if wrapped {
            break;
        }
        wrapped = true;
        cursor.clear();
    }
    Ok(take_turns(lanes, count, writer.turn(space_id)))
}

/// Of one key's ready jobs (in order), those that may be leased now: up to
/// each one's limit. Keys without a limit need no lock and no count.
async fn admit_lane(
    writer: &mut impl FlowDispatch,
    request: &DeliverRequest,
    key: &str,
    ready: Vec<Job>,
) -> Result<Vec<Job>> {
    let limits = limits_of(writer, &request.space_id).await?;
    if ready
        .iter()
        .all(|job| limits.for_job(&job.name, job.concurrency_limit).is_none())
    {
        return Ok(ready);
    }
    if !writer.lock_key(&request.space_id, key).await? {
        // Another core is leasing this key's jobs right now.
        return Ok(Vec::new());
    }
    let held = writer.leases(&request.space_id, key).await?;
    Ok(admit_in_order(ready, held, &limits))
}

/// The longest run of `ready` (one key's jobs, in order) that fits under
/// each job's limit, given `held` leases: a job that does not fit stops the
/// run, so a key's jobs keep their order.
fn admit_in_order(ready: Vec<Job>, held: u32, limits: &ConcurrencyLimits) -> Vec<Job> {
    let mut holding = held;
    let mut admitted = Vec::new();
    for job in ready {
        match limits.for_job(&job.name, job.concurrency_limit) {
            Some(limit) if holding >= limit => break,
            _ => {
                holding += 1;
                admitted.push(job);
            }
        }
    }
    admitted
}

/// One job from each lane in turn, up to `count`; `turn` moves to the last
/// lane served, so the next delivery starts after it.
fn take_turns(
    lanes: Vec<(Option<String>, Vec<Job>)>,
    count: usize,
    turn: &mut Option<String>,
) -> Vec<Job> {
    let mut lanes: Vec<(Option<String>, std::vec::IntoIter<Job>)> = lanes
        .into_iter()
        .map(|(key, jobs)| (key, jobs.into_iter()))
        .collect();
    let mut taken = Vec::with_capacity(count);
    while taken.len() < count {
        let mut any = false;
        for (key, jobs) in &mut lanes {
            if taken.len() == count {
                break;
            }
            if let Some(job) = jobs.next() {
                turn.clone_from(key);
                taken.push(job);
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    taken
}

/// Whether a claim may lease `job` now: Conflict when its key is at its
/// limit (or being leased by another core this instant).
pub async fn admit_claim(writer: &mut impl FlowDispatch, job: &Job) -> Result<()> {
    if job.status() != JobStatus::Pending {
        // The claim fails on the job's state; it must not spend a dispatch.
        return Ok(());
    }
    let limits = limits_of(writer, &job.space_id).await?;
    admit_key(writer, job, &limits).await?;
    if let Some(rate) = limits.rates.get(&job.name) {
        let request = DeliverRequest {
            space_id: job.space_id.clone(),
            names: vec![job.name.clone()],
            count: 1,
            now: writer.now(),
            excluded_names: Vec::new(),
        };
        let budget = RateBudget::of(writer, &request, &limits).await?;
        let admitted = match budget {
            Some(mut budget) => budget.spend(writer, &limits, job).await?,
            None => true,
        };
        if !admitted {
            return Err(Error::Conflict(format!(
                "job {} waits: the rate limit of {} per {} s of {:?} is reached",
                job.id, rate.limit, rate.period_seconds, job.name
            )));
        }
    }
    Ok(())
}

async fn admit_key(
    writer: &mut impl FlowDispatch,
    job: &Job,
    limits: &ConcurrencyLimits,
) -> Result<()> {
    let Some(key) = &job.concurrency_key else {
        return Ok(());
    };
    let Some(limit) = limits.for_job(&job.name, job.concurrency_limit) else {
        return Ok(());
    };
    let full = || {
        Error::Conflict(format!(
            "job {} waits: concurrency key {key:?} holds its {limit} lease{}",
            job.id,
            if limit == 1 { "" } else { "s" }
        ))
    };
    if !writer.lock_key(&job.space_id, key).await? {
        return Err(full());
    }
    if writer.leases(&job.space_id, key).await? >= limit {
        return Err(full());
    }
    Ok(())
}

/// Most keys a listing of every key holding leases names.
pub const MAX_LISTED_KEYS: i64 = 1000;

/// Leases (delivered or running jobs) of each key, for the keys given, or
/// (None) for the keys holding the most, at most `MAX_LISTED_KEYS`.
pub async fn leases_by_key<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    keys: Option<&[String]>,
) -> Result<HashMap<String, u32>>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> (String, i64): sqlx::FromRow<'r, DB::Row>,
{
    // One indexed count per key (`jobs_key_leases`); callers name few.
    let counted: Vec<(String, i64)> = match keys {
        Some(keys) => {
            let mut counted = Vec::with_capacity(keys.len());
            for key in keys {
                let held: Vec<(String, i64)> = sqlx::query_as::<DB, (String, i64)>(
                    "SELECT concurrency_key, COUNT(*) FROM jobs \
                     WHERE space_id = $1 AND concurrency_key = $2 \
                     AND status IN ('delivered', 'running') GROUP BY concurrency_key",
                )
                .bind(space_id)
                .bind(key.as_str())
                .fetch_all(&mut *conn)
                .await?;
                counted.extend(held);
            }
            counted
        }
        None => {
            sqlx::query_as::<DB, (String, i64)>(
                "SELECT concurrency_key, COUNT(*) FROM jobs \
                 WHERE space_id = $1 AND concurrency_key IS NOT NULL \
                 AND status IN ('delivered', 'running') GROUP BY concurrency_key \
                 ORDER BY COUNT(*) DESC, concurrency_key LIMIT $2",
            )
            .bind(space_id)
            .bind(MAX_LISTED_KEYS)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    Ok(counted
        .into_iter()
        .map(|(key, held)| (key, u32::try_from(held).unwrap_or(u32::MAX)))
        .collect())
}

/// The space's limits, as stored on it.
pub async fn space_limits<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
) -> Result<ConcurrencyLimits>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB> + Type<DB>,
    for<'r> (Option<String>,): sqlx::FromRow<'r, DB::Row>,
{
    let stored: Option<(Option<String>,)> =
        sqlx::query_as::<DB, (Option<String>,)>("SELECT concurrency FROM spaces WHERE id = $1")
            .bind(space_id)
            .fetch_optional(&mut *conn)
            .await?;
    match stored.and_then(|(text,)| text) {
        Some(text) => {
            serde_json::from_str(&text).map_err(|_| Error::internal("corrupt spaces.concurrency"))
        }
        None => Ok(ConcurrencyLimits::default()),
    }
}

/// Dispatches of a rate-limited name after `since`: with `rate_key`, or all.
pub async fn dispatches<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    name: &str,
    rate_key: Option<&str>,
    since: UnixMillis,
) -> Result<u32>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
{
    let (count,): (i64,) = match rate_key {
        Some(rate_key) => {
            sqlx::query_as::<DB, (i64,)>(
                "SELECT COUNT(*) FROM dispatches \
                 WHERE space_id = $1 AND name = $2 AND rate_key = $3 AND at > $4",
            )
            .bind(space_id)
            .bind(name)
            .bind(rate_key)
            .bind(since)
            .fetch_one(&mut *conn)
            .await?
        }
        None => {
            sqlx::query_as::<DB, (i64,)>(
                "SELECT COUNT(*) FROM dispatches WHERE space_id = $1 AND name = $2 AND at > $3",
            )
            .bind(space_id)
            .bind(name)
            .bind(since)
            .fetch_one(&mut *conn)
            .await?
        }
    };
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// Deletes a name's dispatches at or before `before` (out of every window).
pub async fn forget_dispatches<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    name: &str,
    before: UnixMillis,
) -> Result<()>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>("DELETE FROM dispatches WHERE space_id = $1 AND name = $2 AND at <= $3")
        .bind(space_id)
        .bind(name)
        .bind(before)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn record_dispatch<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    name: &str,
    rate_key: &str,
    at: UnixMillis,
) -> Result<()>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO dispatches (space_id, name, rate_key, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(space_id)
    .bind(name)
    .bind(rate_key)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;

    fn job(id: &str, key: Option<&str>) -> Job {
        let mut job = crate::store::testing::jobs("space", 1).remove(0);
        job.id = id.to_owned();
        job.state = JobState::Pending { available_at: 0 };
        job.concurrency_key = key.map(str::to_owned);
        job
    }

    #[test]
    fn lanes_take_turns_and_the_turn_moves_to_the_last_key_served() {
        let lanes = vec![
            (None, vec![job("u1", None), job("u2", None)]),
            (
                Some("a".to_owned()),
                vec![job("a1", Some("a")), job("a2", Some("a"))],
            ),
            (Some("b".to_owned()), vec![job("b1", Some("b"))]),
        ];
        let mut turn = None;
        let taken = take_turns(lanes, 4, &mut turn);
        let ids: Vec<&str> = taken.iter().map(|job| job.id.as_str()).collect();
        assert_eq!(ids, ["u1", "a1", "b1", "u2"]);
        assert_eq!(turn, None, "the jobs without a key were served last");
    }

    #[test]
    fn a_key_admits_jobs_in_order_up_to_each_ones_limit() {
        let limits = ConcurrencyLimits {
            default: Some(3),
            ..Default::default()
        };
        let mut own = job("a2", Some("a"));
        own.concurrency_limit = Some(1);
        let ready = vec![job("a1", Some("a")), own, job("a3", Some("a"))];
        let admitted = admit_in_order(ready.clone(), 0, &limits);
        // a2's own limit of 1 is full once a1 holds a lease: the run stops.
        assert_eq!(admitted.len(), 1);
        assert_eq!(admit_in_order(ready.clone(), 3, &limits).len(), 0);
        // Without space limits a2's own limit still applies.
        assert_eq!(
            admit_in_order(ready.clone(), 0, &ConcurrencyLimits::default()).len(),
            1
        );
        assert_eq!(
            admit_in_order(ready[..1].to_vec(), 9, &ConcurrencyLimits::default()).len(),
            1
        );
    }
}
