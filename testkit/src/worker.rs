//! A gRPC stream worker for tests that check leases: it acks and completes
//! every job pushed to it and writes down, in a shared ledger, when each
//! lease began and ended and which completions the server accepted.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::AnyError;
use crate::ack_worker::{Heard, ack_and_complete_all};

/// One job pushed to one session.
pub struct Lease {
    pub job_id: String,
    pub lease_id: String,
    pub payload_json: Option<String>,
    pub session: usize,
    /// When the server leased it (its `delivered_at`).
    pub began: SystemTime,
}

#[derive(Default)]
pub struct Ledger {
    pub leases: Vec<Lease>,
    /// When each session's stream ended (the server died or it drained).
    pub session_ends: HashMap<usize, SystemTime>,
    /// Per job: completions the server accepted.
    pub completions: HashMap<String, usize>,
    next_session: usize,
}

impl Ledger {
    /// Checks that no job was held by two sessions at once. A lease may end
    /// no sooner than its session's stream ends (the server releases the
    /// job) or `timeout` after the server leased it (its delivery timeout; the
    /// execution timeout runs from the later ack); the next lease of the job
    /// may not begin before that. Lease times are the server's, so the push's
    /// own latency does not count against it. Also: at most one
    /// completion accepted per job. Returns the number of jobs leased more
    /// than once.
    pub fn assert_no_overlapping_leases(&self, timeout: Duration) -> usize {
        // The worker sees its stream end a little after the server does.
        const SLACK: Duration = Duration::from_millis(250);
        let mut by_job: HashMap<&str, Vec<&Lease>> = HashMap::new();
        for lease in &self.leases {
            by_job.entry(&lease.job_id).or_default().push(lease);
        }
        let mut released = 0;
        for (job_id, mut leases) in by_job {
            assert!(
                self.completions.get(job_id).copied().unwrap_or(0) <= 1,
                "job {job_id}: two completions accepted"
            );
            if leases.len() < 2 {
                continue;
            }
            released += 1;
            leases.sort_by_key(|lease| lease.began);
            for pair in leases.windows(2) {
                let (earlier, later) = (pair[0], pair[1]);
                assert_ne!(
                    earlier.lease_id, later.lease_id,
                    "job {job_id}: lease reused"
                );
                let ended = self
                    .session_ends
                    .get(&earlier.session)
                    .copied()
                    .map_or(earlier.began + timeout, |end| {
                        end.min(earlier.began + timeout)
                    });
                assert!(
                    later.began + SLACK >= ended,
                    "job {job_id} leased to session {} while session {} held it ({:?} after it began)",
                    later.session,
                    earlier.session,
                    later
                        .began
                        .duration_since(earlier.began)
                        .unwrap_or_default()
                );
            }
        }
        released
    }
}

/// Runs one session with `capacity` until the stream ends; acks and
/// completes each pushed job at once.
pub async fn run_session(
    grpc_url: &str,
    key: &str,
    space_id: &str,
    capacity: u32,
    ledger: &Mutex<Ledger>,
) -> Result<(), AnyError> {
    let session = {
        let mut ledger = ledger.lock().unwrap();
        ledger.next_session += 1;
        ledger.next_session
    };
    let result = session_loop(grpc_url, key, space_id, capacity, ledger, session).await;
    ledger
        .lock()
        .unwrap()
        .session_ends
        .insert(session, SystemTime::now());
    result
}

async fn session_loop(
    grpc_url: &str,
    key: &str,
    space_id: &str,
    capacity: u32,
    ledger: &Mutex<Ledger>,
    session: usize,
) -> Result<(), AnyError> {
    ack_and_complete_all(grpc_url, key, space_id, capacity, |heard| {
        let mut ledger = ledger.lock().unwrap();
        match heard {
            Heard::Assigned(job) => ledger.leases.push(Lease {
                job_id: job.id.clone(),
                lease_id: job.lease_id.clone(),
                payload_json: job.payload_json.clone(),
                session,
                began: job
                    .delivered_at
                    .map(|at| {
                        SystemTime::UNIX_EPOCH + Duration::new(at.seconds as u64, at.nanos as u32)
                    })
                    .expect("a delivery says when it was leased"),
            }),
            Heard::Completed { job_id, result } if result.code == 0 => {
                *ledger.completions.entry(job_id.to_owned()).or_default() += 1;
            }
            Heard::Completed { .. } | Heard::AckRefused(_) => {}
        }
        ControlFlow::Continue(())
    })
    .await
}
