//! Which jobs a listing, a count or a bulk action addresses: the conditions
//! are the same SQL on both backends, so they are written once.

use super::JobFilter;
use super::dialect::Statement;
use crate::job::JobStatus;

/// A page of the filter's jobs, newest first.
///
/// A space's jobs are indexed by (space, status, id), not by (space, id):
/// that second index cost every job write one more index entry (three per
/// lifecycle on PostgreSQL, where no status change is a HOT update). So a
/// listing of every status reads each status's newest jobs in id order and
/// merges them: one ordered arm per status, each at most a page deep.
pub fn newest_first(filter: &JobFilter, limit: u32, offset: u32) -> Statement {
    let depth = i64::from(limit) + i64::from(offset);
    let mut select = Statement::new("");
    match filter.status {
        Some(_) => {
            select.push("SELECT * FROM jobs WHERE TRUE");
            push_conditions(&mut select, filter);
        }
        None => {
            for (arm, status) in JobStatus::ALL.into_iter().enumerate() {
                if arm > 0 {
                    select.push(" UNION ALL ");
                }
                // Each arm is a subquery so that it may be ordered and
                // limited, which both backends allow only there.
                select.push("SELECT * FROM (SELECT * FROM jobs WHERE TRUE");
                let by_status = JobFilter {
                    status: Some(status),
                    ..filter.clone()
                };
                push_conditions(&mut select, &by_status);
                select
                    .push(" ORDER BY id DESC LIMIT ")
                    .push_int(depth)
                    .push(&format!(") AS arm{arm}"));
            }
        }
    }
    select
        .push(" ORDER BY id DESC LIMIT ")
        .push_int(i64::from(limit))
        .push(" OFFSET ")
        .push_int(i64::from(offset));
    select
}

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
