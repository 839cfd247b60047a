//! Handing jobs to waiting workers inside the write batch that makes them
//! ready. A worker session registers a `Waiter` with the room it has; at the
//! end of every batch, before COMMIT, the writer leases ready jobs to the
//! waiters of the spaces that batch touched, and to any waiter that asked to
//! be looked at. The lease commits with whatever made the job ready (its
//! create, a completion that freed a worker's slot), so a job reaches an idle
//! worker after one commit, not two, and a busy worker's next job comes with
//! the commit of its last completion.
//!
//! The leased jobs are sent to the waiter only once the commit is durable
//! (`store::durability`). A waiter that went away meanwhile leaves them with
//! the writer, which hands them back (releases them) in a later batch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::job::Job;

/// A worker waiting for jobs of one space.
pub struct Waiter {
    pub space_id: String,
    /// Only these job names; empty means any.
    pub names: Vec<String>,
    /// Jobs the writer may still lease to this waiter. The session adds to
    /// it as it frees slots; the writer takes from it as it leases, and,
    /// once a batch commits, adds the slots of the jobs that reports in that
    /// batch ended for this waiter. Negative while the worker holds more
    /// than its (lowered) capacity.
    room: AtomicI64,
    /// Set once the waiter takes no more jobs (draining, gone).
    closed: AtomicBool,
    /// Asked to be looked at in the next batch, whatever it touches.
    wanted: AtomicBool,
    jobs: mpsc::UnboundedSender<Vec<Job>>,
}

impl Waiter {
    /// Adds (or with a negative `delta`, removes) room.
    pub fn add_room(&self, delta: i64) {
        self.room.fetch_add(delta, Ordering::AcqRel);
    }

    /// How many more jobs the waiter takes now.
    pub fn room(&self) -> u32 {
        if self.is_closed() {
            return 0;
        }
        u32::try_from(self.room.load(Ordering::Acquire).max(0)).unwrap_or(u32::MAX)
    }

    /// Asks to be looked at in the next batch.
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    /// No more jobs for this waiter.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Takes all the room there is, for a batch to fill.
    fn take_room(&self) -> u32 {
        if self.is_closed() {
            return 0;
        }
        let mut room = self.room.load(Ordering::Acquire);
        loop {
            if room <= 0 {
                return 0;
            }
            match self
                .room
                .compare_exchange(room, 0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return u32::try_from(room).unwrap_or(u32::MAX),
                Err(now) => room = now,
            }
        }
    }
}

/// The receiving side of a waiter: jobs leased to it, one batch's worth per
/// message.
pub type Handed = mpsc::UnboundedReceiver<Vec<Job>>;

/// Every waiter of this process, by space.
#[derive(Default)]
pub struct Waiters {
    spaces: Mutex<HashMap<String, Vec<Arc<Waiter>>>>,
    /// Set when the server stops leasing jobs.
    stopped: AtomicBool,
}

impl Waiters {
    /// Registers a waiter with `room`; it is looked at in the next batch.
    pub fn register(&self, space_id: &str, names: Vec<String>, room: u32) -> (Arc<Waiter>, Handed) {
        let (jobs, handed) = mpsc::unbounded_channel();
        let waiter = Arc::new(Waiter {
            space_id: space_id.to_owned(),
            names,
            room: AtomicI64::new(room.into()),
            closed: AtomicBool::new(false),
            wanted: AtomicBool::new(true),
            jobs,
        });
        self.lock()
            .entry(space_id.to_owned())
            .or_default()
            .push(waiter.clone());
        (waiter, handed)
    }

    /// Forgets `waiter` and returns the jobs already leased to it that it
    /// has not taken up. Jobs leased after this are the writer's to release.
    pub fn leave(&self, waiter: &Arc<Waiter>, handed: &mut Handed) -> Vec<Job> {
        self.remove(waiter);
        handed.close();
        let mut left = Vec::new();
        while let Ok(jobs) = handed.try_recv() {
            left.extend(jobs);
        }
        left
    }

    /// Closes and forgets a waiter.
    fn remove(&self, waiter: &Arc<Waiter>) {
        waiter.close();
        let mut spaces = self.lock();
        if let Some(waiters) = spaces.get_mut(&waiter.space_id) {
            waiters.retain(|other| !Arc::ptr_eq(other, waiter));
            if waiters.is_empty() {
                spaces.remove(&waiter.space_id);
            }
        }
    }

    /// From now on no job is leased to any waiter.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<Waiter>>>> {
        self.spaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the room of the waiters a batch should fill: those whose name
    /// filter matches a job the batch made ready in their space, those that
    /// asked, and those the batch `freed` slots for (a waiter once per
    /// slot). Waiters with the same space and names are grouped, to be
    /// filled by one delivery. So a batch costs deliveries for what it made
    /// ready, never for the idle waiters that could not take it.
    pub(super) fn take(&self, touched: &Touched, freed: &[Arc<Waiter>]) -> Vec<Fill> {
        if self.stopped.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut fills: Vec<Fill> = Vec::new();
        for (space_id, waiters) in self.lock().iter() {
            let ready = touched.ready_names(space_id);
            for waiter in waiters {
                let asked = waiter.wanted.swap(false, Ordering::AcqRel);
                let freed = freed.iter().filter(|w| Arc::ptr_eq(w, waiter)).count();
                let matches = touched.whole.contains(space_id.as_str())
                    || ready.is_some_and(|ready| {
                        waiter.names.is_empty()
                            || waiter.names.iter().any(|name| ready.contains(name))
                    });
                if !(matches || asked || freed > 0) || waiter.is_closed() {
                    continue;
                }
                let share = Share {
                    waiter: waiter.clone(),
                    room: waiter.take_room(),
                    freed: u32::try_from(freed).unwrap_or(u32::MAX),
                };
                if share.room.saturating_add(share.freed) == 0 {
                    continue;
                }
                match fills
                    .iter_mut()
                    .find(|fill| fill.space_id == *space_id && fill.names == waiter.names)
                {
                    Some(fill) => fill.shares.push(share),
                    None => fills.push(Fill {
                        space_id: space_id.clone(),
                        names: waiter.names.clone(),
                        shares: vec![share],
                    }),
                }
            }
        }
        fills
    }
}

/// The jobs a batch made ready: their names, by space.
#[derive(Default)]
pub(super) struct Touched {
    spaces: HashMap<String, HashSet<String>>,
    /// Spaces where jobs of any name may have become ready.
    whole: HashSet<String>,
}

impl Touched {
    pub fn none() -> Self {
        Self::default()
    }

    /// A job named `name` became ready in `space_id`.
    pub fn add(&mut self, space_id: &str, name: &str) {
        let names = match self.spaces.get_mut(space_id) {
            Some(names) => names,
            None => self.spaces.entry(space_id.to_owned()).or_default(),
        };
        if !names.contains(name) {
            names.insert(name.to_owned());
        }
    }

    /// Jobs of any name may have become ready in `space_id` (a resume).
    pub fn add_space(&mut self, space_id: &str) {
        self.whole.insert(space_id.to_owned());
    }

    fn ready_names(&self, space_id: &str) -> Option<&HashSet<String>> {
        self.spaces.get(space_id)
    }
}

/// Waiters of one space and name filter, with the room taken from each.
pub(super) struct Fill {
    pub space_id: String,
    pub names: Vec<String>,
    shares: Vec<Share>,
}

/// One waiter's part of a fill.
struct Share {
    waiter: Arc<Waiter>,
    /// Taken from the waiter's room.
    room: u32,
    /// Slots that reports in this batch ended. They exist only if the batch
    /// commits, so until then no other writer may see them: they are used
    /// first, and what is left of them is added to the room after COMMIT.
    freed: u32,
}

impl Fill {
    pub fn room(&self) -> u32 {
        self.shares
            .iter()
            .map(|share| share.room.saturating_add(share.freed))
            .fold(0, u32::saturating_add)
    }

    /// Shares `jobs` out in order. Room left over goes back at once; freed
    /// slots left over go back with the handoff, after COMMIT.
    pub fn share(self, jobs: Vec<Job>) -> Vec<Handoff> {
        let mut jobs = jobs.into_iter();
        let mut handoffs = Vec::new();
        for Share {
            waiter,
            room,
            freed,
        } in self.shares
        {
            let taken: Vec<Job> = jobs
                .by_ref()
                .take(room.saturating_add(freed) as usize)
                .collect();
            let used = u32::try_from(taken.len()).unwrap_or(u32::MAX);
            let used_freed = used.min(freed);
            let used_room = used - used_freed;
            if room > used_room {
                waiter.add_room((room - used_room).into());
            }
            let handoff = Handoff {
                waiter,
                jobs: taken,
                on_commit: freed - used_freed,
                on_rollback: used_room,
            };
            if !handoff.jobs.is_empty() || handoff.on_commit > 0 {
                handoffs.push(handoff);
            }
        }
        handoffs
    }

    /// The batch failed: the room goes back; the freed slots never were.
    pub fn give_back(self) {
        for share in self.shares {
            share.waiter.add_room(share.room.into());
        }
    }
}

/// Jobs a batch leased to a waiter, to send once it commits.
pub(super) struct Handoff {
    waiter: Arc<Waiter>,
    jobs: Vec<Job>,
    /// Room the waiter gets once the batch commits.
    on_commit: u32,
    /// Room the waiter gets back if the batch rolls back.
    on_rollback: u32,
}

impl Handoff {
    /// The batch committed: the waiter gets its freed slots back at once
    /// (the next batch may fill them: whatever it hands over is released
    /// after this batch's), and the jobs to send once the commit is
    /// durable.
    pub fn committed(self) -> Option<Delivery> {
        if self.on_commit > 0 {
            self.waiter.add_room(self.on_commit.into());
        }
        if self.jobs.is_empty() {
            return None;
        }
        Some(Delivery {
            waiter: self.waiter,
            jobs: self.jobs,
        })
    }

    /// The batch failed: the leases never happened.
    pub fn undo(self) {
        if self.on_rollback > 0 {
            self.waiter.add_room(self.on_rollback.into());
        }
    }
}

/// Jobs a committed batch leased to a waiter.
pub(super) struct Delivery {
    waiter: Arc<Waiter>,
    jobs: Vec<Job>,
}

impl Delivery {
    /// Sends the jobs; returns them if the waiter is gone.
    pub fn send(self) -> Option<Vec<Job>> {
        self.waiter.jobs.send(self.jobs).err().map(|error| error.0)
    }
}

#[cfg(test)]
mod tests {
    use crate::clock::Clock;
    use crate::job::JobStatus;
    use crate::job::machine::{Command, Fence};
    use crate::store::testing::{create, events_once_there_are, jobs, store_with_space};
    use crate::store::{JobTarget, Step, Store};

    use super::{Touched, Waiters};

    async fn status(store: &Store, job_id: &str) -> JobStatus {
        let target = JobTarget {
            job_id: job_id.to_owned(),
            space_id: None,
        };
        store.get_job(&target).await.unwrap().unwrap().status()
    }

    #[tokio::test]
    async fn the_commit_that_makes_a_job_ready_or_frees_a_slot_leases_the_next_job() {
        let (store, space_id, dir) = store_with_space().await;
        let (waiter, mut handed) = store.waiters().register(&space_id, vec![], 1);
        let ids = create(&store, &space_id, 2).await;

        // Leased in the create's own commit: there when the create returns.
        let first = handed.try_recv().expect("leased with the create");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, ids[0]);
        assert_eq!(status(&store, &ids[0]).await, JobStatus::Delivered);
        assert_eq!(status(&store, &ids[1]).await, JobStatus::Pending);
        assert_eq!(waiter.room(), 0, "room is what was not filled");

        // The completion gives the slot back and leases the next job with it.
        let fence = Fence::holding(&first[0]);
        let steps = [Command::Ack, Command::Complete { result: None }]
            .into_iter()
            .map(|command| Step {
                command,
                fence: fence.clone(),
            })
            .collect();
        let target = JobTarget {
            job_id: ids[0].clone(),
            space_id: Some(space_id.clone()),
        };
        let outcomes = store
            .apply(&target, steps, Clock::system().now(), Some(waiter.clone()))
            .await
            .unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let next = handed.try_recv().expect("leased with the completion");
        assert_eq!(next[0].id, ids[1]);
        assert_eq!(status(&store, &ids[0]).await, JobStatus::Completed);
        assert_eq!(status(&store, &ids[1]).await, JobStatus::Delivered);

        // Once the server stops leasing, a ready job stays pending.
        waiter.add_room(1);
        store.waiters().stop();
        let late = create(&store, &space_id, 1).await;
        assert!(handed.try_recv().is_err());
        assert_eq!(status(&store, &late[0]).await, JobStatus::Pending);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Fills one waiter with `room` and `freed` slots and `ready` jobs;
    /// returns the room other writers see before COMMIT, and after it or
    /// after a rollback.
    fn fill_once(room: u32, freed: usize, ready: usize) -> (u32, u32, u32) {
        let run = |commit: bool| {
            let waiters = Waiters::default();
            let (waiter, _handed) = waiters.register("s", vec![], room);
            let freed = vec![waiter.clone(); freed];
            let mut touched = Touched::none();
            touched.add("s", "a");
            let mut fills = waiters.take(&touched, &freed);
            assert!(fills.len() <= 1);
            let handoffs = match fills.pop() {
                Some(fill) => fill.share(jobs("s", ready)),
                None => Vec::new(),
            };
            let before_commit = waiter.room();
            for handoff in handoffs {
                if commit {
                    handoff.committed();
                } else {
                    handoff.undo();
                }
            }
            (before_commit, waiter.room())
        };
        let (before, committed) = run(true);
        let (_, rolled_back) = run(false);
        (before, committed, rolled_back)
    }

    #[test]
    fn slots_freed_in_a_batch_are_seen_only_once_it_commits() {
        // (room, freed, ready) => (seen before COMMIT, after it, after a rollback)
        // A free slot and a freed one, one job: the freed slot takes it.
        assert_eq!(fill_once(1, 1, 1), (1, 1, 1));
        // Nothing ready: the freed slot appears with the commit only.
        assert_eq!(fill_once(0, 1, 0), (0, 1, 0));
        assert_eq!(fill_once(2, 2, 0), (2, 4, 2));
        // Both used: a rollback undoes the lease on the free slot.
        assert_eq!(fill_once(1, 1, 2), (0, 0, 1));
        // More freed than ready.
        assert_eq!(fill_once(0, 3, 1), (0, 2, 0));
        // No room, nothing freed: not filled.
        assert_eq!(fill_once(0, 0, 3), (0, 0, 0));
    }

    #[test]
    fn a_batch_fills_only_the_waiters_that_can_take_what_it_made_ready() {
        let waiters = Waiters::default();
        // 2,000 idle waiters whose filters name jobs nobody makes ready.
        let idle: Vec<_> = (0..2000)
            .map(|i| waiters.register("s", vec![format!("other-{i}")], 1))
            .collect();
        let (named, _named_jobs) = waiters.register("s", vec!["a".into(), "b".into()], 1);
        let (any, _any_jobs) = waiters.register("s", vec![], 1);
        let (elsewhere, _elsewhere_jobs) = waiters.register("t", vec![], 1);
        // Registering asks for a first look; that look is taken here.
        let first = waiters.take(&Touched::none(), &[]);
        assert_eq!(first.len(), 2003, "every new waiter is looked at once");
        for fill in first {
            for share in fill.shares {
                share.waiter.add_room(share.room.into());
            }
        }

        let mut touched = Touched::none();
        touched.add("s", "a");
        let fills = waiters.take(&touched, &[]);
        let mut filled: Vec<&[String]> = fills.iter().map(|fill| fill.names.as_slice()).collect();
        filled.sort();
        assert_eq!(filled, [&[][..], &["a".to_owned(), "b".to_owned()][..]]);
        assert!(fills.iter().all(|fill| fill.space_id == "s"));
        drop((idle, named, any, elsewhere));
    }

    #[tokio::test]
    async fn a_job_leased_to_a_waiter_that_is_gone_is_released() {
        let (store, space_id, dir) = store_with_space().await;
        let (_waiter, mut handed) = store.waiters().register(&space_id, vec![], 1);
        // The session went away after its waiter was last looked at.
        handed.close();
        let ids = create(&store, &space_id, 1).await;
        let seen = events_once_there_are(&store, &ids[0], 3).await;
        assert_eq!(seen, ["created", "delivered", "released"]);
        assert_eq!(status(&store, &ids[0]).await, JobStatus::Pending);
        let _ = std::fs::remove_dir_all(dir);
    }
}
