//! Pausing dispatch, for both backends (the same SQL on each, generic over
//! the connection). A pause is a row: the space and a job name, or the
//! empty name for the whole space. Deliveries skip the jobs a pause covers
//! in the same statement that picks them, so a pause holds on every core
//! from its commit on.

use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Type};

use crate::clock::UnixMillis;
use crate::error::Result;
use crate::job::{SpaceEvent, SpaceEventKind};

/// The name a pause of the whole space is stored under.
pub const WHOLE_SPACE: &str = "";

/// The condition a delivery adds to its pick of ready `jobs` rows. Two
/// lookups, not one with `p.name IN ('', jobs.name)`: SQLite builds a
/// temporary b-tree for that list once per row the pick considers.
pub const NOT_PAUSED: &str = " AND NOT EXISTS (SELECT 1 FROM pauses p \
     WHERE p.space_id = jobs.space_id AND p.name = '') \
     AND NOT EXISTS (SELECT 1 FROM pauses p \
     WHERE p.space_id = jobs.space_id AND p.name = jobs.name)";

/// Pauses (or resumes) `name` in `space_id`; returns whether that changed
/// anything.
pub async fn write<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    name: &str,
    paused: bool,
    now: UnixMillis,
) -> Result<bool>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
{
    let changed: Option<(String,)> = if paused {
        sqlx::query_as::<DB, (String,)>(
            "INSERT INTO pauses (space_id, name, paused_at) VALUES ($1, $2, $3) \
             ON CONFLICT (space_id, name) DO NOTHING RETURNING name",
        )
        .bind(space_id)
        .bind(name)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?
    } else {
        sqlx::query_as::<DB, (String,)>(
            "DELETE FROM pauses WHERE space_id = $1 AND name = $2 RETURNING name",
        )
        .bind(space_id)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
    };
    Ok(changed.is_some())
}

/// The space event a change of pause records (numbered at commit).
pub fn event(space_id: &str, name: &str, paused: bool, now: UnixMillis) -> SpaceEvent {
    SpaceEvent {
        seq: 0,
        space_id: space_id.to_owned(),
        kind: if paused {
            SpaceEventKind::Paused
        } else {
            SpaceEventKind::Resumed
        },
        name: (name != WHOLE_SPACE).then(|| name.to_owned()),
        at: now,
    }
}

/// The space's pauses: the names paused, `WHOLE_SPACE` for all of them.
pub async fn list<'c, DB, E>(reads: E, space_id: &str) -> Result<Vec<String>>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
{
    let names: Vec<(String,)> = sqlx::query_as::<DB, (String,)>(
        "SELECT name FROM pauses WHERE space_id = $1 ORDER BY name",
    )
    .bind(space_id)
    .fetch_all(reads)
    .await?;
    Ok(names.into_iter().map(|(name,)| name).collect())
}
