//! Fixtures for unit tests that need a real store.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::clock::Clock;
use crate::ids::new_id;
use crate::job::Job;
use crate::job::spec::{self, JobInput};
use crate::store::concurrency::{FlowDispatch, KeyRound};
use crate::store::{DeliverRequest, SpaceRecord, Store, TokenRecord};

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

/// Asks `writer` for rounds of key lanes over jobs it makes in `store`
/// and checks each round against a model of it (`modelled_round`): the
/// same keys, the same jobs in the same order, the unkeyed lane when the
/// model has it. The rounds start, stop short, wrap and filter by name.
pub async fn key_lanes_follow_their_model(
    store: &Store,
    space_id: &str,
    writer: &mut impl FlowDispatch,
) {
    // Keys k00..k11 with 0 to 3 jobs each, of two names and three
    // priorities, and unkeyed jobs among them.
    let mut made = jobs(space_id, 40);
    for (index, job) in made.iter_mut().enumerate() {
        let key = (index * 7) % 13;
        job.concurrency_key = (key < 12).then(|| format!("k{key:02}"));
        job.name = if index % 3 == 0 { "b" } else { "a" }.into();
        job.priority = (index % 3) as i32 - 1;
    }
    store.create_jobs(made.clone().into()).await.unwrap();
    let now = Clock::system().now();
    let mut compared = 0;
    for (names, excluded_names) in [
        (vec![], vec![]),
        (vec!["b".to_owned()], vec![]),
        (vec![], vec!["b".to_owned()]),
    ] {
        let request = DeliverRequest {
            space_id: space_id.to_owned(),
            names,
            count: 6,
            now,
            excluded_names,
        };
        for after in ["", "k03", "k10", "k11"] {
            for until in [None, Some("k05"), Some("k10")] {
                for max in [1, 3, 5, 20] {
                    for turns in [1, 4, 10] {
                        for with_unkeyed in [false, true] {
                            let round = KeyRound {
                                after,
                                until,
                                max,
                                turns,
                                with_unkeyed,
                            };
                            let read = writer.key_lanes(&request, round).await.unwrap();
                            let (keys, ids, with_unkeyed) = modelled_round(&made, &request, &round);
                            let read_ids: Vec<&str> =
                                read.jobs.iter().map(|job| job.id.as_str()).collect();
                            let context = format!("{round:?} {request:?}");
                            assert_eq!(read.keys, keys, "{context}");
                            assert_eq!(read_ids, ids, "{context}");
                            assert_eq!(read.with_unkeyed, with_unkeyed, "{context}");
                            compared += usize::from(!ids.is_empty());
                        }
                    }
                }
            }
        }
    }
    assert!(compared > 150, "only {compared} rounds read any job");
}

/// A round of key lanes worked out from the jobs themselves (all pending
/// and due): its keys, its jobs' ids in order, and whether the unkeyed
/// lane came with them.
fn modelled_round<'a>(
    jobs: &'a [Job],
    request: &DeliverRequest,
    round: &KeyRound<'_>,
) -> (Vec<String>, Vec<&'a str>, bool) {
    // Keys of pending jobs, whatever their names: a lane passed counts.
    let keys: Vec<String> = jobs
        .iter()
        .filter_map(|job| job.concurrency_key.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|key| key.as_str() > round.after)
        .filter(|key| round.until.is_none_or(|until| key.as_str() <= until))
        .take(round.max as usize)
        .collect();
    let first = |key: Option<&String>, count: usize| {
        let mut lane: Vec<&Job> = jobs
            .iter()
            .filter(|job| job.concurrency_key.as_ref() == key)
            .filter(|job| request.names.is_empty() || request.names.contains(&job.name))
            .filter(|job| !request.excluded_names.contains(&job.name))
            .collect();
        lane.sort_by_key(|job| (Reverse(job.priority), job.state.due_at(), job.id.clone()));
        lane.into_iter().take(count).map(|job| job.id.as_str())
    };
    let mut ids = Vec::new();
    for key in &keys {
        ids.extend(first(Some(key), round.per_key(keys.len()) as usize));
    }
    let with_unkeyed = round.with_unkeyed && !keys.is_empty() && keys.len() < round.max as usize;
    if with_unkeyed {
        ids.extend(first(None, request.count as usize));
    }
    (keys, ids, with_unkeyed)
}
