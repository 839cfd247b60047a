//! What the backends' SQL does not share. Almost every statement is the
//! same SQL on both (numbered `$1` arguments, which SQLite reads too),
//! written once; a `Dialect` holds the few real differences.

use std::fmt::Write;
use std::future::Future;

use sqlx::query::Query;
use sqlx::{Database, Encode, Pool, Type};

use super::OutboxEntry;
use super::rows::Columns;
use crate::clock::UnixMillis;
use crate::error::Result;

pub trait Dialect: Database<Row: Columns> {
    /// Most bound parameters one statement may carry.
    const MAX_PARAMETERS: usize;
    /// Appends the placeholder of the `n`th argument (from 1) to `sql`.
    fn push_placeholder(sql: &mut String, n: usize);
    /// `LIKE` that ignores case, as the log search promises.
    const LIKE_ANY_CASE: &'static str;
    /// Run first in a read transaction so that all its statements read one
    /// snapshot, where a read transaction is not one already.
    const SNAPSHOT: Option<&'static str>;

    /// Tells the other replicas, with the transaction that revokes it, that
    /// a token is revoked (the only replica has no one to tell).
    fn announce_revocation<'c>(
        conn: &'c mut Self::Connection,
        token_id: &'c str,
    ) -> impl Future<Output = Result<()>> + Send + 'c;

    /// Callbacks due by `now` (see `Store::due_callbacks`).
    fn due_callbacks<'a>(
        reads: &'a Pool<Self>,
        now: UnixMillis,
        limit: u32,
        per_space: u32,
        in_flight: &'a [(String, u32)],
    ) -> impl Future<Output = Result<Vec<OutboxEntry>>> + Send + 'a;
}

/// SQL whose conditions vary with the request, with its arguments, which it
/// numbers as they are pushed. Unlike sqlx's `QueryBuilder` it owns them,
/// so one function runs it on either backend.
#[derive(Debug, Default)]
pub struct Statement {
    sql: String,
    arguments: Vec<Argument>,
}

#[derive(Debug)]
enum Argument {
    Text(String),
    Int(i64),
}

impl Statement {
    pub fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_owned(),
            arguments: Vec::new(),
        }
    }

    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    pub fn push_text(&mut self, value: impl Into<String>) -> &mut Self {
        self.push_argument(Argument::Text(value.into()))
    }

    pub fn push_int(&mut self, value: i64) -> &mut Self {
        self.push_argument(Argument::Int(value))
    }

    fn push_argument(&mut self, argument: Argument) -> &mut Self {
        self.arguments.push(argument);
        let _ = write!(self.sql, "${}", self.arguments.len());
        self
    }

    /// The query, its arguments bound, for the backend `DB`.
    pub fn query<DB>(&self) -> Query<'_, DB, DB::Arguments<'_>>
    where
        DB: Database,
        for<'q> &'q str: Encode<'q, DB> + Type<DB>,
        for<'q> i64: Encode<'q, DB> + Type<DB>,
    {
        self.arguments.iter().fold(
            sqlx::query::<DB>(&self.sql),
            |query, argument| match argument {
                Argument::Text(text) => query.bind(text.as_str()),
                Argument::Int(int) => query.bind(*int),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Statement;

    #[test]
    fn arguments_are_numbered_as_they_are_pushed() {
        let mut statement = Statement::new("SELECT * FROM jobs WHERE TRUE");
        statement
            .push(" AND space_id = ")
            .push_text("s")
            .push(" LIMIT ")
            .push_int(5);
        assert_eq!(
            statement.sql,
            "SELECT * FROM jobs WHERE TRUE AND space_id = $1 LIMIT $2"
        );
        assert_eq!(statement.arguments.len(), 2);
    }
}
