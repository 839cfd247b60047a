//! Push wake-ups: when a commit makes a job ready (created, released from
//! its schedule, retried, delivery timed out or released), POST
//! `{"type":"job.pending","jobId","jobName","spaceId","timestamp"}` to the
//! space's push URL so a sleeping worker can claim exactly that job.
//!
//! Best effort by design: one try, a short timeout, the same SSRF guard as
//! callbacks, and a bounded number in flight; when that bound is reached,
//! wake-ups are dropped rather than queued. Nothing here can slow dispatch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, watch};

use super::guard;
use crate::clock::{UnixMillis, to_timestamp};
use crate::job::{JobStatus, LiveEvent};
use crate::metrics::PushWakeups;
use crate::store::{PushTarget, Store};

const IN_FLIGHT: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a space's push settings are cached, in milliseconds.
const SETTINGS_TTL_MILLIS: UnixMillis = 2_000;

pub struct PushNotifier {
    store: Arc<Store>,
    client: reqwest::Client,
    policy: guard::Policy,
    slots: Arc<Semaphore>,
    /// Each space's push target, and when it was read.
    targets: HashMap<String, (Option<PushTarget>, UnixMillis)>,
    wakeups: PushWakeups,
}

impl PushNotifier {
    pub fn new(
        store: Arc<Store>,
        allow_private: bool,
        wakeups: PushWakeups,
    ) -> crate::error::Result<Self> {
        let policy = guard::Policy { allow_private };
        let client = guard::client(policy, TIMEOUT)?;
        Ok(Self {
            store,
            client,
            policy,
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            targets: HashMap::new(),
            wakeups,
        })
    }

    pub async fn run(
        mut self,
        mut published: broadcast::Receiver<Arc<[LiveEvent]>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let commit = tokio::select! {
                commit = published.recv() => commit,
                _ = shutdown.changed() => return,
            };
            let commit = match commit {
                Ok(commit) => commit,
                // Best effort: wake-ups missed while behind are skipped.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for event in commit.iter() {
                let LiveEvent::Job(event) = event else {
                    continue;
                };
                if event.status != JobStatus::Pending || !event.changes_counts() {
                    continue;
                }
                let Some(target) = self.target(&event.space_id).await else {
                    continue;
                };
                if !target.names.is_empty() && !target.names.contains(&event.job_name) {
                    continue;
                }
                let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                    tracing::debug!(job_id = %event.job_id, "push wake-up dropped: too many in flight");
                    self.wakeups.count("dropped");
                    continue;
                };
                let body = serde_json::json!({
                    "type": "job.pending",
                    "jobId": event.job_id,
                    "jobName": event.job_name,
                    "spaceId": event.space_id,
                    "timestamp": to_timestamp(event.at).to_string(),
                });
                let (client, policy) = (self.client.clone(), self.policy);
                let wakeups = self.wakeups.clone();
                tokio::spawn(async move {
                    wakeups.count(send(&client, policy, &target, body).await);
                    drop(slot);
                });
            }
        }
    }

    async fn target(&mut self, space_id: &str) -> Option<PushTarget> {
        let now = self.store.clock().now();
        if let Some((target, fetched)) = self.targets.get(space_id)
            && now - fetched < SETTINGS_TTL_MILLIS
        {
            return target.clone();
        }
        let target = match self.store.get_space(space_id).await {
            Ok(space) => space.and_then(|space| space.push),
            Err(error) => {
                tracing::warn!(%error, "reading push settings failed");
                None
            }
        };
        self.targets
            .insert(space_id.to_owned(), (target.clone(), now));
        target
    }
}

/// Sends one wake-up; returns its outcome, as `PushWakeups` counts it.
async fn send(
    client: &reqwest::Client,
    policy: guard::Policy,
    target: &PushTarget,
    body: serde_json::Value,
) -> &'static str {
    let Ok(url) = reqwest::Url::parse(&target.url) else {
        return "failed";
    };
    if let Err(refusal) = policy.check_literal(&url) {
        tracing::debug!(%refusal, "push wake-up not sent");
        return "refused";
    }
    let mut request = client.post(url).json(&body);
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => "sent",
        Ok(response) => {
            tracing::debug!(status = %response.status(), "push wake-up refused");
            "failed"
        }
        Err(error) => {
            tracing::debug!(%error, "push wake-up failed");
            "failed"
        }
    }
}
