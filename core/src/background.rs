//! The core's background loops (timers, scheduler, callbacks, retention,
//! notifiers, event routing), owned in one place: each is named, a stop
//! waits for all of them to end after the shutdown signal, and one that has
//! not ended within the grace is aborted and named in the log. None
//! outlives the core that started it.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Background {
    tasks: JoinSet<&'static str>,
    stopping: watch::Receiver<bool>,
}

impl Background {
    /// Loops that end on `stopping` turning true.
    pub fn new(stopping: watch::Receiver<bool>) -> Self {
        Self {
            tasks: JoinSet::new(),
            stopping,
        }
    }

    /// A loop that watches the shutdown signal itself and ends its own way
    /// (finishing what it holds: a callback try, a sweep).
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move {
            task.await;
            name
        });
    }

    /// A loop with no shutdown of its own (it only follows a channel): it
    /// is dropped at its next await once shutdown begins.
    pub fn spawn_until_stopped(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let mut stopping = self.stopping.clone();
        self.spawn(name, async move {
            tokio::select! {
                () = task => {}
                _ = stopping.wait_for(|stopping| *stopping) => {}
            }
        });
    }

    /// Waits for every loop to end (the shutdown signal must have been
    /// sent); aborts those still running after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(None) => return,
                Ok(Some(Ok(name))) => tracing::debug!(task = name, "background task stopped"),
                Ok(Some(Err(error))) if error.is_panic() => {
                    tracing::error!(%error, "a background task panicked");
                }
                Ok(Some(Err(_))) => {}
                Err(_) => {
                    tracing::warn!(
                        left = self.tasks.len(),
                        "background tasks did not stop within {grace:?}; aborting them"
                    );
                    self.tasks.shutdown().await;
                    return;
                }
            }
        }
    }

    /// How many loops are running (for tests).
    pub fn running(&self) -> usize {
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_joins_loops_that_end_and_aborts_those_that_do_not() {
        let (stop, stopping) = watch::channel(false);
        let mut background = Background::new(stopping.clone());
        let mut watcher = stopping.clone();
        background.spawn("polite", async move {
            let _ = watcher.wait_for(|stopping| *stopping).await;
        });
        background.spawn_until_stopped("follower", std::future::pending());
        background.spawn("stubborn", std::future::pending());
        let (dropped, gone) = tokio::sync::oneshot::channel::<()>();
        background.spawn("holder", async move {
            let _keep = dropped;
            std::future::pending::<()>().await;
        });
        assert_eq!(background.running(), 4);
        stop.send_replace(true);
        background.stop(Duration::from_millis(100)).await;
        // The loop that ignored the signal was aborted, dropping what it held.
        assert!(gone.await.is_err());
    }
}
