//! Writing spaces, their tokens and settings, and the server's settings, for
//! both backends: the statements are the same SQL on SQLite and PostgreSQL,
//! so they are written once, generic over the writer's connection.

use sqlx::{Database, Decode, Encode, Executor, FromRow, IntoArguments, Type};

use super::dialect::Dialect;
use super::rows::{self, Columns};
use super::{SettingWrite, SpaceRecord, SpaceSettings, TokenRecord};
use crate::clock::UnixMillis;
use crate::error::{Error, Result};

/// Applies the settings that are set and returns the space as it is after;
/// NotFound without the space.
pub async fn update_settings<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    settings: SpaceSettings,
) -> Result<SpaceRecord>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    DB::Row: Columns,
{
    // Each column group with its values, as the settings ask.
    let mut updates: Vec<(&str, Vec<Option<String>>)> = Vec::new();
    if let Some(push) = settings.push {
        let (url, names, headers) = rows::push_columns(push.as_ref())?;
        updates.push((
            "push_url = $1, push_names = $2, push_headers = $3",
            vec![url, names, headers],
        ));
    }
    if let Some(retention) = settings.retention {
        updates.push(("retention = $1", vec![rows::retention_column(&retention)?]));
    }
    if let Some(slack) = settings.slack {
        let (url, events) = rows::slack_columns(slack.as_ref())?;
        updates.push(("slack_url = $1, slack_events = $2", vec![url, events]));
    }
    if let Some(limits) = settings.concurrency {
        let column = (!limits.is_empty())
            .then(|| serde_json::to_string(&limits))
            .transpose()
            .map_err(Error::internal)?;
        updates.push(("concurrency = $1", vec![column]));
    }
    for (columns, values) in updates {
        let sql = format!(
            "UPDATE spaces SET {columns} WHERE id = ${}",
            values.len() + 1
        );
        let mut query = sqlx::query::<DB>(&sql);
        for value in values {
            query = query.bind(value);
        }
        query.bind(space_id).execute(&mut *conn).await?;
    }
    if let Some(allowed) = settings.anonymous_progress_streams {
        sqlx::query::<DB>("UPDATE spaces SET anonymous_progress_streams = $1 WHERE id = $2")
            .bind(allowed)
            .bind(space_id)
            .execute(&mut *conn)
            .await?;
    }
    let row = sqlx::query::<DB>("SELECT * FROM spaces WHERE id = $1")
        .bind(space_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(Error::NotFound("space"))?;
    rows::space(&row)
}

/// Stores a new space with its public token.
pub async fn insert<DB>(
    conn: &mut DB::Connection,
    space: &SpaceRecord,
    public_token: &TokenRecord,
) -> Result<()>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO spaces (id, name, public_token, stream_id, anonymous_progress_streams, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(space.id.as_str())
    .bind(space.name.as_str())
    .bind(space.public_token.as_deref())
    .bind(space.stream_id.as_str())
    .bind(space.anonymous_progress_streams)
    .bind(space.created_at)
    .execute(&mut *conn)
    .await?;
    insert_token::<DB>(conn, public_token).await
}

/// Stores a new token of a space the caller knows exists.
pub async fn insert_token<DB>(conn: &mut DB::Connection, token: &TokenRecord) -> Result<()>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let scopes = serde_json::to_string(&token.scopes).map_err(Error::internal)?;
    sqlx::query::<DB>(
        "INSERT INTO tokens (id, space_id, name, scopes, key_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token.id.as_str())
    .bind(token.space_id.as_str())
    .bind(token.name.as_str())
    .bind(scopes.as_str())
    .bind(&token.key_hash[..])
    .bind(token.created_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets or clears the signing secret of a space the caller knows exists.
pub async fn set_webhook_secret<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    secret: Option<&str>,
) -> Result<()>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>("UPDATE spaces SET webhook_secret = $1 WHERE id = $2")
        .bind(secret)
        .bind(space_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Revokes a live token of the space; returns whether there was one. A
/// revoked public token leaves its space without one (shown as absent)
/// until a new one is issued.
pub async fn revoke_token<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    token_id: &str,
    now: UnixMillis,
) -> Result<bool>
where
    DB: Dialect,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (Option<String>,): FromRow<'r, DB::Row>,
    for<'r> (Vec<u8>,): FromRow<'r, DB::Row>,
{
    let revoked = sqlx::query_as::<DB, (String,)>(
        "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND space_id = $3 \
         AND revoked_at IS NULL RETURNING id",
    )
    .bind(now)
    .bind(token_id)
    .bind(space_id)
    .fetch_optional(&mut *conn)
    .await?
    .is_some();
    if !revoked {
        return Ok(false);
    }
    DB::announce_revocation(conn, token_id).await?;
    let Some(public) = public_key::<DB>(conn, space_id)
        .await?
        .filter(|key| !key.is_empty())
    else {
        return Ok(true);
    };
    let hash: Option<(Vec<u8>,)> =
        sqlx::query_as::<DB, (Vec<u8>,)>("SELECT key_hash FROM tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(&mut *conn)
            .await?;
    if hash.is_some_and(|(hash,)| hash == crate::auth::hash_key(&public)) {
        sqlx::query::<DB>("UPDATE spaces SET public_token = '' WHERE id = $1")
            .bind(space_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(true)
}

/// Makes `key` (stored as `token`) the space's public token and revokes the
/// one before; returns the revoked token's id, if there was one. NotFound
/// without the space.
pub async fn replace_public_token<DB>(
    conn: &mut DB::Connection,
    space_id: &str,
    key: &str,
    token: &TokenRecord,
    now: UnixMillis,
) -> Result<Option<String>>
where
    DB: Dialect,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (Option<String>,): FromRow<'r, DB::Row>,
{
    let current = public_key::<DB>(conn, space_id)
        .await?
        .ok_or(Error::NotFound("space"))?;
    let revoked = if current.is_empty() {
        None
    } else {
        sqlx::query_as::<DB, (String,)>(
            "UPDATE tokens SET revoked_at = $1 WHERE space_id = $2 AND key_hash = $3 \
             AND revoked_at IS NULL RETURNING id",
        )
        .bind(now)
        .bind(space_id)
        .bind(&crate::auth::hash_key(&current)[..])
        .fetch_optional(&mut *conn)
        .await?
        .map(|(id,)| id)
    };
    insert_token::<DB>(conn, token).await?;
    sqlx::query::<DB>("UPDATE spaces SET public_token = $1 WHERE id = $2")
        .bind(key)
        .bind(space_id)
        .execute(&mut *conn)
        .await?;
    if let Some(token_id) = &revoked {
        DB::announce_revocation(conn, token_id).await?;
    }
    Ok(revoked)
}

/// The space's public key: None without the space, empty when revoked.
async fn public_key<DB>(conn: &mut DB::Connection, space_id: &str) -> Result<Option<String>>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB> + Type<DB>,
    for<'r> (Option<String>,): FromRow<'r, DB::Row>,
{
    let row =
        sqlx::query_as::<DB, (Option<String>,)>("SELECT public_token FROM spaces WHERE id = $1")
            .bind(space_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(key,)| key.unwrap_or_default()))
}

/// Stores `value` as `write` says; returns the value stored afterwards.
pub async fn put_setting<DB>(
    conn: &mut DB::Connection,
    name: &str,
    value: &str,
    write: &SettingWrite,
) -> Result<String>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    let mut statement = sqlx::query::<DB>(write.statement()).bind(name).bind(value);
    if let Some(expected) = write.expected() {
        statement = statement.bind(expected);
    }
    statement.execute(&mut *conn).await?;
    let (stored,) = sqlx::query_as::<DB, (String,)>("SELECT value FROM settings WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(stored)
}

/// NotFound unless the space exists.
pub async fn require<DB>(conn: &mut DB::Connection, space_id: &str) -> Result<()>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
{
    sqlx::query_as::<DB, (String,)>("SELECT id FROM spaces WHERE id = $1")
        .bind(space_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|_| ())
        .ok_or(Error::NotFound("space"))
}
