//! Which jobs a listing, a count or a bulk action addresses: the conditions
//! are the same SQL on both backends, so they are written once.

use super::JobFilter;
use super::dialect::Statement;

/// Appends ` AND ...` for every condition of `filter` after the space.
pub fn push_conditions(select: &mut Statement, filter: &JobFilter) {
    select
        .push(" AND space_id = ")
        .push_text(filter.space_id.as_str());
    if let Some(status) = filter.status {
        select.push(" AND status = ").push_text(status.as_str());
    }
    if let Some(name) = &filter.name {
        select.push(" AND name = ").push_text(name.as_str());
    }
    if let Some(from) = filter.created_from {
        select.push(" AND created_at >= ").push_int(from);
    }
    if let Some(until) = filter.created_until {
        select.push(" AND created_at < ").push_int(until);
    }
    if let Some(schedule_id) = &filter.schedule_id {
        select
            .push(" AND schedule_id = ")
            .push_text(schedule_id.as_str());
    }
    if let Some(before) = &filter.before_id {
        select.push(" AND id < ").push_text(before.as_str());
    }
}
