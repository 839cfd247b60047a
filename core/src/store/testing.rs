//! Fixtures for unit tests that need a real store.

use std::path::PathBuf;

use crate::clock::Clock;
use crate::ids::new_id;
use crate::job::Job;
use crate::job::spec::{self, JobInput};
use crate::store::{SpaceRecord, Store, TokenRecord};

/// A SQLite store in a fresh directory (to remove afterwards) with one
/// space.
pub async fn store_with_space() -> (Store, String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("emit-unit-{}", new_id()));
    let store = crate::store::sqlite::open(
        &format!("sqlite://{}/emit.db", dir.display()),
        Clock::system(),
    )
    .await
    .unwrap();
    let space_id = add_space(&store).await;
    (store, space_id, dir)
}

/// Creates a space (and its public token) in `store`; returns its id.
pub async fn add_space(store: &Store) -> String {
    let space_id = new_id();
    let space = SpaceRecord {
        id: space_id.clone(),
        name: "unit".into(),
        public_token: Some(new_id()),
        stream_id: new_id(),
        anonymous_progress_streams: false,
        push: None,
        retention: Default::default(),
        slack: None,
        concurrency: Default::default(),
        created_at: Clock::system().now(),
    };
    let token = TokenRecord {
        id: new_id(),
        space_id: space_id.clone(),
        name: "public".into(),
        scopes: vec![],
        key_hash: [7; 32],
        created_at: Clock::system().now(),
    };
    store.create_space(space, token).await.unwrap();
    space_id
}

pub use emit_testkit::PostgresDatabase;

/// `count` ready jobs named "a", not yet stored.
pub fn jobs(space_id: &str, count: usize) -> Vec<Job> {
    if count == 0 {
        return Vec::new();
    }
    let inputs = (0..count)
        .map(|_| JobInput {
            name: "a".into(),
            payload: None,
            max_retries: None,
            timeout_seconds: None,
            scheduled_for: None,
            callback_url: None,
            callback_headers: vec![],
            retry_backoff: None,
            priority: None,
            idempotency_key: None,
            idempotency_window_seconds: None,
            concurrency_key: None,
            concurrency_limit: None,
        })
        .collect();
    spec::build_jobs(space_id, inputs, Clock::system().now(), new_id)
        .unwrap()
        .jobs
}

/// Stores `count` ready jobs; returns their ids in order.
pub async fn create(store: &Store, space_id: &str, count: usize) -> Vec<String> {
    let jobs = jobs(space_id, count);
    let ids = jobs.iter().map(|job| job.id.clone()).collect();
    store.create_jobs(jobs.into()).await.unwrap();
    ids
}

/// The kinds of a job's events, once it has `count` of them (or after two
/// seconds, whatever it has).
pub async fn events_once_there_are(store: &Store, job_id: &str, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..100 {
        let events = store.job_events(job_id).await.unwrap();
        seen = events
            .iter()
            .map(|event| event.kind.as_str().to_owned())
            .collect();
        if seen.len() >= count {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    seen
}
