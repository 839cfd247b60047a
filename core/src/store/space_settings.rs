//! Writing a space's settings, for both backends: the statements are the
//! same SQL on SQLite and PostgreSQL, so they are written once, generic over
//! the connection.

use sqlx::{Database, Encode, Executor, IntoArguments, Type};

use super::rows::{self, Columns};
use super::{SpaceRecord, SpaceSettings};
use crate::error::{Error, Result};

/// Applies the settings that are set and returns the space as it is after;
/// NotFound without the space.
pub async fn update<DB>(
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
