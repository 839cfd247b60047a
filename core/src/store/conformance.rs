//! The store's contract, asked of both backends alike: each case takes a
//! `&Store` holding one space, and `on_both_backends!` runs it on a
//! fresh SQLite file and on a fresh PostgreSQL database. The cases at the
//! end need two writers on one database (PostgreSQL replicas), which SQLite,
//! a single writer by design, does not have.
//!
//! Time is passed in (`now`), so a timer case moves the clock instead of
//! waiting for it.

use std::collections::HashSet;
use std::time::Duration;

use crate::clock::{Clock, UnixMillis};
use crate::error::Error;
use crate::job::machine::{Command, Fence};
use crate::job::{Job, JobStatus};
use crate::store::testing::{self, PostgresDatabase};
use crate::store::{DeliverRequest, JobTarget, Step, Store};

pub(crate) fn ready(space_id: &str, count: u32, now: UnixMillis) -> DeliverRequest {
    DeliverRequest {
        space_id: space_id.to_owned(),
        names: Vec::new(),
        count,
        now,
        excluded_names: Vec::new(),
    }
}

fn target(job: &Job) -> JobTarget {
    JobTarget {
        job_id: job.id.clone(),
        space_id: Some(job.space_id.clone()),
    }
}

fn step(command: Command, fence: &Fence) -> Step {
    Step {
        command,
        fence: fence.clone(),
    }
}

/// The worker holding `delivered` reports `command` for it: the command's
/// own outcome.
async fn report(
    store: &Store,
    delivered: &Job,
    command: Command,
    now: UnixMillis,
) -> crate::error::Result<Job> {
    let steps = vec![step(command, &Fence::holding(delivered))];
    let mut outcomes = store
        .apply(&target(delivered), steps, now, None)
        .await
        .unwrap();
    outcomes.remove(0)
}

async fn event_kinds(store: &Store, job_id: &str) -> Vec<&'static str> {
    let events = store.job_events(job_id).await.unwrap();
    events.iter().map(|event| event.kind.as_str()).collect()
}

async fn job(store: &Store, id: &str) -> Job {
    let target = JobTarget {
        job_id: id.to_owned(),
        space_id: None,
    };
    store.get_job(&target).await.unwrap().unwrap()
}

/// Several commands in one call run in one transaction: a job changed
/// three times in it is written once, as the last command left it, and
/// each command's event is recorded once, in order.
async fn one_call_applies_its_commands_in_order(store: &Store, space_id: &str) {
    let id = testing::create(store, space_id, 1).await.remove(0);
    let now = Clock::system().now();
    let delivered = store.deliver(ready(space_id, 1, now)).await.unwrap();
    assert_eq!(delivered.len(), 1);
    let fence = Fence::holding(&delivered[0]);
    let steps = vec![
        step(Command::Ack, &fence),
        step(
            Command::Progress {
                data: r#"{"percent":50}"#.into(),
            },
            &fence,
        ),
        step(
            Command::Complete {
                result: Some("42".into()),
            },
            &fence,
        ),
    ];
    let outcomes = store
        .apply(&target(&delivered[0]), steps, now + 1, None)
        .await
        .unwrap();
    let statuses: Vec<JobStatus> = outcomes
        .iter()
        .map(|outcome| outcome.as_ref().unwrap().status())
        .collect();
    assert_eq!(
        statuses,
        [JobStatus::Running, JobStatus::Running, JobStatus::Completed]
    );
    let stored = job(store, &id).await;
    assert_eq!(stored.status(), JobStatus::Completed);
    assert_eq!(stored.result.as_deref(), Some("42"));
    assert_eq!(stored.progress.as_deref(), Some(r#"{"percent":50}"#));
    assert_eq!(
        event_kinds(store, &id).await,
        ["created", "delivered", "acked", "progress", "completed"]
    );
}

/// A refused command writes nothing, and the commands after it still run.
async fn a_refused_command_writes_nothing(store: &Store, space_id: &str) {
    let id = testing::create(store, space_id, 1).await.remove(0);
    let now = Clock::system().now();
    let delivered = store.deliver(ready(space_id, 1, now)).await.unwrap();
    let fence = Fence::holding(&delivered[0]);
    let stale = Fence {
        attempt_number: None,
        lease: Some("not-the-lease".into()),
    };
    let outcomes = store
        .apply(
            &target(&delivered[0]),
            vec![
                step(Command::Complete { result: None }, &stale),
                step(Command::Ack, &fence),
            ],
            now + 1,
            None,
        )
        .await
        .unwrap();
    assert!(matches!(outcomes[0], Err(Error::Stale(_))), "{outcomes:?}");
    assert_eq!(outcomes[1].as_ref().unwrap().status(), JobStatus::Running);
    assert_eq!(job(store, &id).await.status(), JobStatus::Running);
    assert_eq!(
        event_kinds(store, &id).await,
        ["created", "delivered", "acked"]
    );
}

/// Deliveries hand out each ready job once, the oldest first, and nothing
/// once none is ready.
async fn deliveries_take_each_job_once_oldest_first(store: &Store, space_id: &str) {
    let ids = testing::create(store, space_id, 50).await;
    let now = Clock::system().now();
    let mut taken = Vec::new();
    for _ in 0..3 {
        let delivered = store.deliver(ready(space_id, 20, now)).await.unwrap();
        taken.extend(delivered.into_iter().map(|job| job.id));
    }
    assert_eq!(taken, ids);
    assert!(
        store
            .deliver(ready(space_id, 20, now))
            .await
            .unwrap()
            .is_empty()
    );
}

/// An expired delivery makes the job ready again under a new lease; the
/// old lease is fenced out, the new one completes it.
async fn an_expired_delivery_fences_its_lease(store: &Store, space_id: &str) {
    let id = testing::create(store, space_id, 1).await.remove(0);
    let now = Clock::system().now();
    let first = store
        .deliver(ready(space_id, 1, now))
        .await
        .unwrap()
        .remove(0);
    let timeout = i64::from(first.timeout_seconds) * 1000;
    let sweep = store.fire_due_timers(now + timeout + 1, 100).await.unwrap();
    assert_eq!(sweep.fired, 1);
    assert_eq!(sweep.ready, [(space_id.to_owned(), "a".to_owned())]);
    assert_eq!(job(store, &id).await.status(), JobStatus::Pending);

    let later = now + timeout + 2;
    let second = store
        .deliver(ready(space_id, 1, later))
        .await
        .unwrap()
        .remove(0);
    assert_ne!(first.state.lease(), second.state.lease());
    let complete = || Command::Complete { result: None };
    let stale = report(store, &first, complete(), later).await;
    assert!(matches!(stale, Err(Error::Stale(_))), "{stale:?}");
    let current = report(store, &second, complete(), later).await.unwrap();
    assert_eq!(current.status(), JobStatus::Completed);
    assert_eq!(
        event_kinds(store, &id).await,
        [
            "created",
            "delivered",
            "delivery_timeout",
            "delivered",
            "completed"
        ]
    );
}

/// Calls that run at once (and so share write batches) each see the
/// others' writes: completions, deliveries and releases in any mix end with
/// every job completed exactly once.
async fn concurrent_calls_share_batches_without_losing_writes(store: &Store, space_id: &str) {
    let ids = testing::create(store, space_id, 200).await;
    let now = Clock::system().now();
    let completed = std::sync::Mutex::new(HashSet::new());
    let worker = |release_every: usize| {
        let completed = &completed;
        async move {
            let mut turn = 0;
            loop {
                let delivered = store.deliver(ready(space_id, 5, now)).await.unwrap();
                if delivered.is_empty() {
                    break;
                }
                for job in delivered {
                    turn += 1;
                    let command = if turn % release_every == 0 {
                        Command::Release
                    } else {
                        Command::Complete { result: None }
                    };
                    let outcome = report(store, &job, command, now).await.unwrap();
                    if outcome.status() == JobStatus::Completed {
                        assert!(completed.lock().unwrap().insert(job.id.clone()));
                    }
                }
            }
        }
    };
    tokio::join!(worker(3), worker(7), worker(1000), worker(1000));
    let completed = completed.into_inner().unwrap();
    assert_eq!(completed, ids.iter().cloned().collect::<HashSet<_>>());
    for id in ids.iter().step_by(17) {
        let kinds = event_kinds(store, id).await;
        assert_eq!(kinds.iter().filter(|kind| **kind == "completed").count(), 1);
        assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
    }
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, space_id, dir) = super::testing::store_with_space().await;
                    super::$case(&store, &space_id).await;
                    let _ = std::fs::remove_dir_all(dir);
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, space_id, _database) = super::postgres_with_space().await;
                    super::$case(&store, &space_id).await;
                }
            )*
        }
    };
}

on_both_backends!(
    one_call_applies_its_commands_in_order,
    a_refused_command_writes_nothing,
    deliveries_take_each_job_once_oldest_first,
    an_expired_delivery_fences_its_lease,
    concurrent_calls_share_batches_without_losing_writes,
);

async fn postgres_store(url: &str) -> Store {
    crate::store::postgres::open(url, Duration::from_secs(10), Clock::system())
        .await
        .unwrap()
}

async fn postgres_with_space() -> (Store, String, PostgresDatabase) {
    let database = PostgresDatabase::create().await;
    let store = postgres_store(&database.url).await;
    let space_id = testing::add_space(&store).await;
    (store, space_id, database)
}

/// Two replicas delivering from one database at once (`SKIP LOCKED`
/// claims) never hand out one job twice, and between them hand out all.
#[tokio::test]
async fn postgres_replicas_never_deliver_one_job_twice() {
    let (one, space_id, database) = postgres_with_space().await;
    let two = postgres_store(&database.url).await;
    let ids = testing::create(&one, &space_id, 300).await;
    let now = Clock::system().now();
    let drain = |store: &'static str| {
        let store: &Store = if store == "one" { &one } else { &two };
        let space_id = &space_id;
        async move {
            let mut taken = Vec::new();
            loop {
                let delivered = store.deliver(ready(space_id, 7, now)).await.unwrap();
                if delivered.is_empty() {
                    return taken;
                }
                taken.extend(delivered.into_iter().map(|job| job.id));
            }
        }
    };
    let (a, b) = tokio::join!(drain("one"), drain("two"));
    assert!(!a.is_empty() && !b.is_empty(), "both replicas took jobs");
    let mut all: Vec<String> = a.into_iter().chain(b).collect();
    assert_eq!(all.len(), ids.len(), "no job handed out twice");
    all.sort();
    assert_eq!(all, ids);
}

/// The same report sent to two replicas at once (a worker retrying on
/// another core): one applies it, the other finds the job already ended
/// and refuses; the job ends once.
#[tokio::test]
async fn postgres_replicas_racing_on_one_job_apply_it_once() {
    let (one, space_id, database) = postgres_with_space().await;
    let two = postgres_store(&database.url).await;
    let ids = testing::create(&one, &space_id, 20).await;
    let delivered = one
        .deliver(ready(&space_id, 20, Clock::system().now()))
        .await
        .unwrap();
    for job in &delivered {
        let complete = |store: &'static str| {
            let store: &Store = if store == "one" { &one } else { &two };
            report(
                store,
                job,
                Command::Complete { result: None },
                Clock::system().now(),
            )
        };
        let (a, b) = tokio::join!(complete("one"), complete("two"));
        let outcomes = [a, b];
        let applied = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(applied, 1, "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|outcome| matches!(outcome, Err(Error::Conflict(_))))
        );
    }
    for id in &ids {
        assert_eq!(
            event_kinds(&one, id).await,
            ["created", "delivered", "completed"]
        );
    }
}
