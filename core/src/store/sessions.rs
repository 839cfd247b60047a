//! Dashboard sessions, for both backends: the statements are the same SQL on
//! SQLite and PostgreSQL, so they are written once, generic over the
//! connection. A session row holds the SHA-256 of its token and of the key
//! it stands for; the key is checked again on every use.

use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Type};

use crate::auth::KeyHash;
use crate::clock::UnixMillis;
use crate::error::Result;

/// Most live sessions one key holds: signing in once more ends the oldest,
/// so a key signing in in a loop cannot grow the table.
pub const MAX_SESSIONS_PER_KEY: i64 = 100;

#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub id_hash: KeyHash,
    pub key_hash: KeyHash,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

#[derive(Clone, Debug)]
pub enum SessionWrite {
    /// Stores a new session, first dropping expired ones and, past
    /// `MAX_SESSIONS_PER_KEY`, the key's oldest.
    Open(SessionRecord),
    /// Ends a session (sign-out).
    Close { id_hash: KeyHash },
}

/// Runs `write` on the writer's open transaction; returns whether a session
/// was stored or ended.
pub async fn write<DB>(conn: &mut DB::Connection, write: &SessionWrite) -> Result<bool>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
{
    match write {
        SessionWrite::Open(session) => {
            sqlx::query::<DB>("DELETE FROM sessions WHERE expires_at <= $1")
                .bind(session.created_at)
                .execute(&mut *conn)
                .await?;
            sqlx::query::<DB>(
                "INSERT INTO sessions (id_hash, key_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&session.id_hash[..])
            .bind(&session.key_hash[..])
            .bind(session.created_at)
            .bind(session.expires_at)
            .execute(&mut *conn)
            .await?;
            sqlx::query::<DB>(
                "DELETE FROM sessions WHERE key_hash = $1 AND id_hash NOT IN \
                 (SELECT id_hash FROM sessions WHERE key_hash = $1 \
                  ORDER BY created_at DESC LIMIT $2)",
            )
            .bind(&session.key_hash[..])
            .bind(MAX_SESSIONS_PER_KEY)
            .execute(&mut *conn)
            .await?;
            Ok(true)
        }
        SessionWrite::Close { id_hash } => {
            let ended: Option<i64> = sqlx::query_scalar::<DB, i64>(
                "DELETE FROM sessions WHERE id_hash = $1 RETURNING created_at",
            )
            .bind(&id_hash[..])
            .fetch_optional(&mut *conn)
            .await?;
            Ok(ended.is_some())
        }
    }
}

/// The live session whose token hashes to `id_hash`, if any.
pub async fn find<'c, DB, E>(
    reads: E,
    id_hash: &KeyHash,
    now: UnixMillis,
) -> Result<Option<SessionRecord>>
where
    DB: Database,
    E: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> (Vec<u8>, i64, i64): sqlx::FromRow<'r, DB::Row>,
{
    let row: Option<(Vec<u8>, i64, i64)> = sqlx::query_as::<DB, (Vec<u8>, i64, i64)>(
        "SELECT key_hash, created_at, expires_at FROM sessions \
         WHERE id_hash = $1 AND expires_at > $2",
    )
    .bind(&id_hash[..])
    .bind(now)
    .fetch_optional(reads)
    .await?;
    Ok(row.and_then(|(key_hash, created_at, expires_at)| {
        Some(SessionRecord {
            id_hash: *id_hash,
            key_hash: key_hash.try_into().ok()?,
            created_at,
            expires_at,
        })
    }))
}
