//! Slack notifications: a space's chosen job events (created, started,
//! completed, failed, dead, killed) posted to its Slack Incoming Webhook.
//!
//! The space's event log is the outbox: the notifier keeps, per space, the
//! sequence number of the last event it has told Slack of (a setting,
//! `slack:<space>`), so nothing is lost across restarts and a failed post
//! is tried again from the same place, with backoff and honouring
//! `Retry-After`. A burst (more than `DIGEST_OVER` events waiting) becomes
//! one digest message instead of a message each. With several cores, the
//! cursor doubles as a lease (compare and set): one core at a time tells a
//! space's Slack. Delivery is at least once: a core that dies between a
//! post and saving its cursor posts those events again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::guard;
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::job::{EventKind, JobEvent, LiveEvent};
use crate::store::{SettingWrite, SlackTarget, SpaceRecord, Store};

/// How often spaces are looked at.
const TICK: Duration = Duration::from_secs(1);
/// Spaces told at once.
const SPACES_AT_ONCE: usize = 16;
/// How long a core holds a space's notifications without renewing.
const LEASE: Duration = Duration::from_secs(30);
/// Events read per look at a space.
const MAX_EVENTS_PER_LOOK: usize = 1000;
/// More waiting events than this go out as one digest.
pub const DIGEST_OVER: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, Default)]
pub struct SlackConfig {
    /// The dashboard's public base URL, for links to jobs.
    pub public_url: Option<String>,
    pub allow_private: bool,
}

/// The URL as shown: Slack's webhook path is its secret.
pub fn masked(url: &str) -> String {
    match url
        .find("://")
        .and_then(|scheme| url[scheme + 3..].find('/').map(|path| scheme + 3 + path))
    {
        Some(path) => format!("{}/***", &url[..path]),
        None => url.to_owned(),
    }
}

/// Makes a space's notifications start from its latest event (when Slack
/// is turned on: the space's history is not posted).
pub async fn start_from_now(store: &Store, space_id: &str) -> Result<()> {
    let head = store
        .space_log(space_id, None, 0)
        .await?
        .map_or(0, |log| log.head.seq);
    let cursor = Cursor {
        owner: String::new(),
        until: 0,
        seq: head,
    };
    store
        .put_setting(
            &format!("slack:{space_id}"),
            &cursor.text(),
            SettingWrite::Replace,
        )
        .await?;
    Ok(())
}

pub struct SlackNotifier {
    sender: Arc<Sender>,
    /// Spaces not to look at before the instant (backoff, Retry-After).
    paused: HashMap<String, (Instant, Duration)>,
    /// One task per space being told, and those spaces.
    telling: tokio::task::JoinSet<(String, std::result::Result<(), Option<Duration>>)>,
    busy: HashSet<String>,
}

/// What tells one space's Slack; shared by the spaces told at once.
struct Sender {
    store: Arc<Store>,
    client: reqwest::Client,
    config: SlackConfig,
    /// This core, as a lease holder.
    owner: String,
}

/// A space's cursor and who holds it: `owner|until|seq`.
struct Cursor {
    owner: String,
    until: i64,
    seq: i64,
}

impl Cursor {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '|');
        Some(Self {
            owner: parts.next()?.to_owned(),
            until: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
        })
    }

    fn text(&self) -> String {
        format!("{}|{}|{}", self.owner, self.until, self.seq)
    }
}

impl SlackNotifier {
    pub fn new(store: Arc<Store>, config: SlackConfig) -> Result<Self> {
        let policy = guard::Policy {
            allow_private: config.allow_private,
        };
        Ok(Self {
            sender: Arc::new(Sender {
                store,
                client: guard::client(policy, TIMEOUT)?,
                config,
                owner: new_id(),
            }),
            paused: HashMap::new(),
            telling: tokio::task::JoinSet::new(),
            busy: HashSet::new(),
        })
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.look().await {
                tracing::warn!(%error, "slack notifications: a look failed; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Starts telling each space's Slack what is new, up to
    /// `SPACES_AT_ONCE` spaces at a time and one task per space: a slow or
    /// broken webhook holds up only its own space.
    async fn look(&mut self) -> Result<()> {
        while let Some(joined) = self.telling.try_join_next() {
            if let Ok((space_id, outcome)) = joined {
                self.busy.remove(&space_id);
                self.settle(space_id, outcome);
            }
        }
        for space in self.sender.store.list_spaces().await? {
            if self.busy.len() >= SPACES_AT_ONCE {
                break;
            }
            let Some(target) = space.slack.clone() else {
                continue;
            };
            let paused = self
                .paused
                .get(&space.id)
                .is_some_and(|(until, _)| Instant::now() < *until);
            if paused || !self.busy.insert(space.id.clone()) {
                continue;
            }
            let sender = self.sender.clone();
            self.telling.spawn(async move {
                let outcome = sender.notify(&space, &target).await;
                (space.id, outcome)
            });
        }
        Ok(())
    }

    /// Backs a space off after a failed try, or clears its backoff.
    fn settle(&mut self, space_id: String, outcome: std::result::Result<(), Option<Duration>>) {
        match outcome {
            Ok(()) => {
                self.paused.remove(&space_id);
            }
            Err(wait) => {
                let backoff = self
                    .paused
                    .get(&space_id)
                    .map_or(TICK, |(_, last)| (*last * 2).min(MAX_BACKOFF));
                let wait = wait.unwrap_or(backoff);
                self.paused
                    .insert(space_id, (Instant::now() + wait, backoff));
            }
        }
    }
}

impl Sender {
    /// Tells the space's Slack what happened since its cursor. `Err`: try
    /// later, after the given wait if Slack named one.
    async fn notify(
        &self,
        space: &SpaceRecord,
        target: &SlackTarget,
    ) -> std::result::Result<(), Option<Duration>> {
        let key = format!("slack:{}", space.id);
        let failed = |error: Error| {
            tracing::warn!(space_id = %space.id, %error, "slack notifications: store error");
            None
        };
        let now = self.store.clock().now();
        let lease_until = now + LEASE.as_millis() as i64;
        let stored = self.store.get_setting(&key).await.map_err(failed)?;
        let Some(cursor) = stored.as_deref().and_then(Cursor::parse) else {
            // Notifications start from now, not from the space's history.
            let head = self.head(&space.id).await.map_err(failed)?;
            let fresh = Cursor {
                owner: self.owner.clone(),
                until: lease_until,
                seq: head,
            };
            let write = match stored {
                Some(unreadable) => SettingWrite::ReplaceIf(unreadable),
                None => SettingWrite::KeepExisting,
            };
            self.store
                .put_setting(&key, &fresh.text(), write)
                .await
                .map_err(failed)?;
            return Ok(());
        };
        if cursor.owner != self.owner && cursor.until > now {
            return Ok(());
        }
        // Nothing new: no write (the lease is taken only to work).
        let head = self.head(&space.id).await.map_err(failed)?;
        if head <= cursor.seq {
            return Ok(());
        }
        // Take (or renew) the lease; whoever's write lands first holds it.
        let mut held = Cursor {
            owner: self.owner.clone(),
            until: lease_until,
            seq: cursor.seq,
        };
        let won = self
            .store
            .put_setting(&key, &held.text(), SettingWrite::ReplaceIf(cursor.text()))
            .await
            .map_err(failed)?;
        if won != held.text() {
            return Ok(());
        }
        let mut events = Vec::new();
        let mut after = held.seq;
        while after < head && events.len() < MAX_EVENTS_PER_LOOK {
            let page = self
                .store
                .space_events(&space.id, after, head)
                .await
                .map_err(failed)?;
            let Some(last) = page.last() else {
                // The rest was pruned.
                after = head;
                break;
            };
            after = last.seq().unwrap_or(head);
            // Slack is told of jobs' events; a space's own are passed over.
            events.extend(page.into_iter().filter_map(|live| match live {
                LiveEvent::Job(event) => Some(event),
                LiveEvent::Space(_) | LiveEvent::Log(_) => None,
            }));
        }
        let told: Vec<Told> = events
            .iter()
            .flat_map(|event| told(event, &target.events))
            .collect();
        let messages = if told.len() > DIGEST_OVER {
            vec![self.digest(space, &told)]
        } else {
            told.iter().map(|told| self.message(space, told)).collect()
        };
        for message in messages {
            self.post(&target.url, &message).await?;
        }
        let before = held.text();
        held.seq = after;
        self.store
            .put_setting(&key, &held.text(), SettingWrite::ReplaceIf(before))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn head(&self, space_id: &str) -> Result<i64> {
        Ok(self
            .store
            .space_log(space_id, None, 0)
            .await?
            .map_or(0, |log| log.head.seq))
    }

    async fn post(&self, url: &str, message: &Value) -> std::result::Result<(), Option<Duration>> {
        let response = self.client.post(url).json(message).send().await;
        match response {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
                tracing::warn!(
                    status = response.status().as_u16(),
                    "slack refused a notification; trying again later"
                );
                Err(retry_after)
            }
            Err(error) => {
                tracing::warn!(error = %guard_cause(&error), "slack notification failed; trying again later");
                Err(None)
            }
        }
    }

    fn link(&self, space: &SpaceRecord, job_id: &str) -> Option<String> {
        self.config.public_url.as_ref().map(|base| {
            format!(
                "{}/spaces/{}/jobs/{job_id}",
                base.trim_end_matches('/'),
                space.id
            )
        })
    }

    fn message(&self, space: &SpaceRecord, told: &Told) -> Value {
        let mut text = format!(
            "{} *{}* · job *{}* `{}` in {} · attempt {}",
            told.icon(),
            told.what,
            told.event.job_name,
            told.event.job_id,
            space.name,
            told.attempt
                .map_or("-".to_owned(), |attempt| attempt.to_string()),
        );
        if let Some(error) = &told.error {
            text.push_str(&format!(" · {error}"));
        }
        if let Some(link) = self.link(space, &told.event.job_id) {
            text.push_str(&format!(" · <{link}|open>"));
        }
        json!({ "text": text })
    }

    fn digest(&self, space: &SpaceRecord, told: &[Told]) -> Value {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for told in told {
            *counts.entry(told.what).or_default() += 1;
        }
        let summary: Vec<String> = counts
            .iter()
            .map(|(what, count)| format!("{count} {what}"))
            .collect();
        let mut text = format!(
            ":bell: {} job events in {}: {}",
            told.len(),
            space.name,
            summary.join(", ")
        );
        for told in told.iter().take(5) {
            text.push_str(&format!(
                "\n• {} *{}* `{}`{}",
                told.what,
                told.event.job_name,
                told.event.job_id,
                told.error
                    .as_deref()
                    .map_or(String::new(), |error| format!(": {error}"))
            ));
        }
        if told.len() > 5 {
            text.push_str(&format!("\n… and {} more", told.len() - 5));
        }
        json!({ "text": text })
    }
}

fn guard_cause(error: &reqwest::Error) -> String {
    let mut cause = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = format!("{cause}: {inner}");
        source = inner.source();
    }
    cause
}

/// One thing Slack is told of.
struct Told<'a> {
    what: &'static str,
    event: &'a JobEvent,
    attempt: Option<u64>,
    error: Option<String>,
}

impl Told<'_> {
    fn icon(&self) -> &'static str {
        match self.what {
            "created" => ":new:",
            "started" => ":arrow_forward:",
            "completed" => ":white_check_mark:",
            "failed" => ":warning:",
            "dead" => ":x:",
            _ => ":no_entry:",
        }
    }
}

/// What an event tells, among the chosen: a job that ends dead fails too.
fn told<'a>(event: &'a JobEvent, chosen: &[String]) -> Vec<Told<'a>> {
    let data: Value = event
        .data
        .as_deref()
        .and_then(|data| serde_json::from_str(data).ok())
        .unwrap_or(Value::Null);
    let error = data["error"]
        .as_str()
        .or(data["reason"].as_str())
        .map(str::to_owned);
    // A retried event names the attempt about to run; the one that failed
    // is the one before.
    let attempt = match event.kind {
        EventKind::Retried => data["attemptNumber"]
            .as_u64()
            .map(|next| next.saturating_sub(1)),
        _ => data["attemptNumber"].as_u64(),
    };
    let whats: &[&'static str] = match event.kind {
        EventKind::Created => &["created"],
        EventKind::Acked => &["started"],
        EventKind::Completed => &["completed"],
        // An operator's retry is not a failure.
        EventKind::Retried if data["manual"] != true => &["failed"],
        EventKind::Dead => &["failed", "dead"],
        EventKind::Killed => &["killed"],
        _ => &[],
    };
    whats
        .iter()
        .filter(|what| chosen.iter().any(|chosen| chosen == *what))
        .map(|what| Told {
            what,
            event,
            attempt,
            error: error.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_path_is_masked() {
        assert_eq!(
            masked("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(masked("http://127.0.0.1:9/hook"), "http://127.0.0.1:9/***");
    }
}
