//! Which jobs a listing, a count or a bulk action addresses: the conditions
//! are the same SQL on both backends, so they are written once, generic over
//! the query builder.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::JobFilter;

/// Appends ` AND ...` for every condition of `filter` after the space.
pub fn push_conditions<'a, DB>(select: &mut QueryBuilder<'a, DB>, filter: &'a JobFilter)
where
    DB: Database,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    select
        .push(" AND space_id = ")
        .push_bind(filter.space_id.as_str());
    if let Some(status) = filter.status {
        select.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(name) = &filter.name {
        select.push(" AND name = ").push_bind(name.as_str());
    }
    if let Some(from) = filter.created_from {
        select.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(until) = filter.created_until {
        select.push(" AND created_at < ").push_bind(until);
    }
    if let Some(schedule_id) = &filter.schedule_id {
        select
            .push(" AND schedule_id = ")
            .push_bind(schedule_id.as_str());
    }
    if let Some(before) = &filter.before_id {
        select.push(" AND id < ").push_bind(before.as_str());
    }
}
