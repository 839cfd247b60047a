//! Callbacks: when a job with a `callbackUrl` ends (completed, dead or
//! killed; never on a failure that will be retried), POST its outcome there.
//!
//! The callback is written to an outbox in the same transaction as the
//! terminal transition and delivered afterwards, so a crash between the two
//! delays it but never loses it. Each try is recorded on the job as a
//! `callback_sent` or `callback_failed` event. Only a 2xx counts; redirects
//! are not followed; proxies from the environment are ignored; every address
//! connected to passes the SSRF guard. Failed tries are retried on the
//! schedule in `RetryPolicy`, honouring `Retry-After` on 429 and 503.

pub mod guard;
pub mod push;
pub mod signing;
pub mod slack;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::{UnixMillis, to_timestamp};
use crate::job::{Job, JobStatus};
use crate::store::{CallbackOutcome, CallbackTry, OutboxEntry, Store};

pub const USER_AGENT: &str = concat!("emit/", env!("CARGO_PKG_VERSION"), " (callbacks)");
/// How often the outbox is looked at when nothing is known to be due.
const POLL_EVERY: Duration = Duration::from_millis(200);
const TRIES_AT_ONCE: usize = 64;
/// Tries one space may have in flight: a space whose receivers are slow
/// waits for its own tries, never for the other spaces' share.
const TRIES_AT_ONCE_PER_SPACE: usize = 8;
/// Response bodies kept in `callback_failed` events.
const MAX_RESPONSE_BODY_CHARS: usize = 1024;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The body POSTed: `{jobId, spaceId, name, status, attemptNumber, result,
/// timestamp}`, fixed when the job ends.
pub fn payload(job: &Job, now: UnixMillis) -> String {
    let embedded = |text: &Option<String>| {
        text.as_deref()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let result = match job.status() {
        JobStatus::Completed => embedded(&job.result),
        JobStatus::Dead => serde_json::json!({ "error": job.last_error }),
        JobStatus::Killed => serde_json::json!({ "reason": job.kill_reason }),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "jobId": job.id,
        "spaceId": job.space_id,
        "name": job.name,
        "status": job.status().as_str(),
        "attemptNumber": job.attempt_number,
        "result": result,
        "timestamp": to_timestamp(now).to_string(),
    })
    .to_string()
}

/// When to try again after a failure.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Delay before each retry; after the last, the callback is given up.
    pub delays: Vec<Duration>,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// 10 s, 30 s, 1 min, 5 min, 15 min, 30 min, 1 h, 2 h, 4 h, 8 h: eleven
    /// tries over about 16 hours, each delay jittered by up to 20%.
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            delays: vec![
                Duration::from_secs(10),
                Duration::from_secs(30),
                minutes(1),
                minutes(5),
                minutes(15),
                minutes(30),
                minutes(60),
                minutes(120),
                minutes(240),
                minutes(480),
            ],
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before the retry after try `attempt` (0-based), or None to
    /// give up; a server's `Retry-After` replaces the schedule's delay.
    fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = *self.delays.get(attempt as usize)?;
        Some(match retry_after {
            Some(asked) => asked.min(MAX_RETRY_AFTER),
            None => jitter(scheduled),
        })
    }
}

fn jitter(delay: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    // 80% to 100% of the delay.
    delay.mul_f64(0.8 + 0.2 * f64::from(byte[0]) / 255.0)
}

#[derive(Clone, Debug, Default)]
pub struct CallbackConfig {
    /// Development and tests only: let callbacks reach private addresses.
    pub allow_private: bool,
    pub retry: RetryPolicy,
    /// The dashboard's public base URL, for links in Slack notifications.
    pub public_url: Option<String>,
}

pub struct Deliverer {
    store: Arc<Store>,
    client: reqwest::Client,
    policy: guard::Policy,
    retry: RetryPolicy,
}

impl Deliverer {
    pub fn new(store: Arc<Store>, config: CallbackConfig) -> crate::error::Result<Self> {
        let policy = guard::Policy {
            allow_private: config.allow_private,
        };
        let client = guard::client(policy, config.retry.timeout)?;
        Ok(Self {
            store,
            client,
            policy,
            retry: config.retry,
        })
    }

    /// Delivers due callbacks until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut in_flight: HashSet<i64> = HashSet::new();
        let mut per_space: HashMap<String, usize> = HashMap::new();
        let mut tries: JoinSet<(i64, String)> = JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let room = TRIES_AT_ONCE.saturating_sub(tries.len());
            if room > 0 {
                let in_flight_per_space: Vec<(String, u32)> = per_space
                    .iter()
                    .map(|(space, tries)| (space.clone(), *tries as u32))
                    .collect();
                match this
                    .store
                    .due_callbacks(
                        this.store.clock().now(),
                        room as u32 * 2,
                        TRIES_AT_ONCE_PER_SPACE as u32,
                        &in_flight_per_space,
                    )
                    .await
                {
                    Ok(due) => {
                        for entry in due {
                            let space_tries = per_space.get(&entry.space_id).copied().unwrap_or(0);
                            if tries.len() >= TRIES_AT_ONCE
                                || space_tries >= TRIES_AT_ONCE_PER_SPACE
                                || !in_flight.insert(entry.id)
                            {
                                continue;
                            }
                            *per_space.entry(entry.space_id.clone()).or_default() += 1;
                            let this = this.clone();
                            tries.spawn(async move {
                                let done = (entry.id, entry.space_id.clone());
                                this.try_once(entry).await;
                                done
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "reading the callback outbox failed"),
                }
            }
            tokio::select! {
                Some(done) = tries.join_next(), if !tries.is_empty() => {
                    if let Ok((id, space)) = done {
                        in_flight.remove(&id);
                        if let Some(tries) = per_space.get_mut(&space) {
                            *tries -= 1;
                            if *tries == 0 {
                                per_space.remove(&space);
                            }
                        }
                    }
                }
                () = tokio::time::sleep(POLL_EVERY) => {}
                _ = shutdown.changed() => {}
            }
        }
        // Tries in flight are recorded if they finish; an interrupted one is
        // simply made again after the restart.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tries.join_next().await.is_some() {}
        })
        .await;
    }

    async fn try_once(&self, entry: OutboxEntry) {
        let (outcome, retry_after) = self.post(&entry).await;
        let retry_at = match &outcome {
            CallbackOutcome::Delivered { .. } => None,
            CallbackOutcome::Failed { .. } => self
                .retry
                .next_delay(entry.attempt, retry_after)
                .map(|delay| self.store.clock().now() + delay.as_millis() as i64),
        };
        if let CallbackOutcome::Failed { error, .. } = &outcome {
            tracing::info!(
                job_id = %entry.job_id,
                attempt = entry.attempt,
                will_retry = retry_at.is_some(),
                %error,
                "callback failed"
            );
        }
        let attempt = CallbackTry {
            entry,
            outcome,
            retry_at,
        };
        if let Err(error) = self
            .store
            .record_callback_try(attempt, self.store.clock().now())
            .await
        {
            tracing::warn!(%error, "recording a callback try failed; it will be made again");
        }
    }

    async fn post(&self, entry: &OutboxEntry) -> (CallbackOutcome, Option<Duration>) {
        let failed = |error: String| {
            (
                CallbackOutcome::Failed {
                    error,
                    status: None,
                    response_body: None,
                },
                None,
            )
        };
        let url = match reqwest::Url::parse(&entry.url) {
            Ok(url) => url,
            Err(error) => return failed(format!("invalid URL: {error}")),
        };
        if let Err(refusal) = self.policy.check_literal(&url) {
            return failed(refusal);
        }
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in &entry.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(secret) = &entry.secret {
            let message_id = format!("msg_{}", entry.job_id);
            let timestamp = self.store.clock().now() / 1000;
            match signing::sign(secret, &message_id, timestamp, &entry.body) {
                Ok(signature) => {
                    request = request
                        .header("webhook-id", message_id)
                        .header("webhook-timestamp", timestamp.to_string())
                        .header("webhook-signature", signature);
                }
                Err(error) => return failed(format!("signing failed: {error}")),
            }
        }
        let response = match request.body(entry.body.clone()).send().await {
            Ok(response) => response,
            Err(error) => return failed(describe(&error)),
        };
        let status = response.status();
        if status.is_success() {
            return (
                CallbackOutcome::Delivered {
                    status: status.as_u16(),
                },
                None,
            );
        }
        let retry_after = matches!(status.as_u16(), 429 | 503)
            .then(|| {
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .cloned()
            })
            .flatten()
            .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(MAX_RESPONSE_BODY_CHARS).collect();
        (
            CallbackOutcome::Failed {
                error: format!("callback answered HTTP {}", status.as_u16()),
                status: Some(status.as_u16()),
                response_body: (!body.is_empty()).then_some(body),
            },
            retry_after,
        )
    }
}

/// A transport error with its cause (the SSRF guard's refusal included).
fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if error.is_timeout() {
        "callback timed out".to_owned()
    } else if error.is_redirect() {
        "callback answered with a redirect (not followed)".to_owned()
    } else {
        "callback request failed".to_owned()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
