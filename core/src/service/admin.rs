use std::sync::Arc;

use crate::auth::{Authenticator, Principal, Scope, generate_key, hash_key, parse_scopes};
use crate::error::{Error, Result};
use crate::ids::{is_well_formed, new_id};
use crate::job::spec;
use crate::metrics::CoreMetrics;
use crate::retention::{RetentionChange, RetentionOverrides, RetentionPolicy};
use crate::store::{
    PushTarget, SLACK_EVENTS, SlackTarget, SpaceRecord, SpaceSettings, Store, TokenRecord,
    WHOLE_SPACE,
};

const MAX_NAME_CHARS: usize = 200;
pub const PUBLIC_TOKEN_NAME: &str = "Public read-only (progress)";

pub struct AdminApi {
    store: Arc<Store>,
    auth: Arc<Authenticator>,
    /// The server's retention, which spaces may override.
    retention: RetentionPolicy,
    metrics: Arc<CoreMetrics>,
}

impl AdminApi {
    pub fn new(
        store: Arc<Store>,
        auth: Arc<Authenticator>,
        retention: RetentionPolicy,
        metrics: Arc<CoreMetrics>,
    ) -> Self {
        Self {
            store,
            auth,
            retention,
            metrics,
        }
    }

    /// This core's metrics, as Prometheus scrapes them.
    pub async fn metrics(&self, who: &Principal) -> Result<String> {
        who.require_admin()?;
        self.metrics.render(&self.store).await
    }

    /// How long the space's finished jobs are kept.
    pub fn retention_of(&self, space: &SpaceRecord) -> RetentionPolicy {
        self.retention.with(&space.retention)
    }

    /// Every space is born with its public `jobs:read:progress` token.
    pub async fn create_space(&self, who: &Principal, name: &str) -> Result<SpaceRecord> {
        who.require_admin()?;
        let name = checked_name(name)?;
        let now = self.store.clock().now();
        let public_key = generate_key()?;
        let space = SpaceRecord {
            id: new_id(),
            name,
            public_token: Some(public_key.clone()),
            stream_id: new_id(),
            anonymous_progress_streams: false,
            push: None,
            retention: RetentionOverrides::default(),
            slack: None,
            concurrency: Default::default(),
            created_at: now,
        };
        let token = public_token_record(&space.id, &public_key, now);
        self.store.create_space(space.clone(), token).await?;
        tracing::info!(space_id = %space.id, "space created");
        Ok(space)
    }

    pub async fn list_spaces(&self, who: &Principal) -> Result<Vec<SpaceRecord>> {
        who.require_admin()?;
        self.store.list_spaces().await
    }

    pub async fn get_space(&self, who: &Principal, space_id: &str) -> Result<SpaceRecord> {
        who.require_admin()?;
        self.find_space(space_id).await
    }

    pub async fn update_space(
        &self,
        who: &Principal,
        space_id: &str,
        settings: SpaceSettings,
        retention: Option<RetentionChange>,
    ) -> Result<SpaceRecord> {
        who.require_admin()?;
        let mut settings = settings;
        if let Some(Some(slack)) = &settings.slack {
            let checked = spec::check_webhook_target(
                "slack.url",
                "slack.headers",
                slack.url.clone(),
                vec![],
            )?;
            if slack.events.is_empty() {
                return Err(Error::invalid(format!(
                    "slack.events must name at least one of {}",
                    SLACK_EVENTS.join(", ")
                )));
            }
            for (index, event) in slack.events.iter().enumerate() {
                if !SLACK_EVENTS.contains(&event.as_str()) {
                    return Err(Error::invalid(format!(
                        "slack.events[{index}] must be one of {}",
                        SLACK_EVENTS.join(", ")
                    )));
                }
            }
            settings.slack = Some(Some(SlackTarget {
                url: checked.url,
                events: slack.events.clone(),
            }));
        }
        if let Some(limits) = &settings.concurrency {
            limits.check()?;
        }
        if let Some(change) = retention {
            let current = self.find_space(space_id).await?;
            let overrides = change.applied_to(current.retention);
            overrides.check()?;
            settings.retention = Some(overrides);
        }
        settings.push = match settings.push.take() {
            Some(Some(target)) => {
                let checked = spec::check_webhook_target(
                    "push.url",
                    "push.headers",
                    target.url,
                    target.headers,
                )?;
                for (index, name) in target.names.iter().enumerate() {
                    spec::check_text(&format!("push.names[{index}]"), name)?;
                }
                Some(Some(PushTarget {
                    url: checked.url,
                    names: target.names,
                    headers: checked.headers,
                }))
            }
            other => other,
        };
        let slack_on = matches!(settings.slack, Some(Some(_)));
        let space = self.store.update_space(space_id, settings).await?;
        if slack_on {
            crate::callbacks::slack::start_from_now(&self.store, space_id).await?;
        }
        tracing::info!(
            space_id,
            anonymous_progress_streams = space.anonymous_progress_streams,
            "space settings updated"
        );
        Ok(space)
    }

    /// A new signing secret for the space's callbacks, shown only now.
    pub async fn rotate_webhook_secret(&self, who: &Principal, space_id: &str) -> Result<String> {
        who.require_admin()?;
        let secret = crate::callbacks::signing::generate_secret()?;
        self.store
            .set_webhook_secret(space_id, Some(secret.clone()))
            .await?;
        tracing::info!(space_id, "webhook secret rotated");
        Ok(secret)
    }

    pub async fn delete_webhook_secret(&self, who: &Principal, space_id: &str) -> Result<()> {
        who.require_admin()?;
        self.store.set_webhook_secret(space_id, None).await?;
        tracing::info!(space_id, "webhook secret removed");
        Ok(())
    }

    /// Returns the token and its key, which is never shown again.
    pub async fn create_token(
        &self,
        who: &Principal,
        space_id: &str,
        name: &str,
        scopes: Vec<String>,
    ) -> Result<(TokenRecord, String)> {
        who.require_admin()?;
        let name = checked_name(name)?;
        parse_scopes(&scopes)?;
        if !is_well_formed(space_id) {
            return Err(Error::NotFound("space"));
        }
        let key = generate_key()?;
        let token = TokenRecord {
            id: new_id(),
            space_id: space_id.to_owned(),
            name,
            scopes,
            key_hash: hash_key(&key),
            created_at: self.store.clock().now(),
        };
        self.store.create_token(token.clone()).await?;
        tracing::info!(space_id, token_id = %token.id, "token created");
        Ok((token, key))
    }

    pub async fn list_tokens(&self, who: &Principal, space_id: &str) -> Result<Vec<TokenRecord>> {
        who.require_admin()?;
        self.find_space(space_id).await?;
        self.store.list_tokens(space_id).await
    }

    pub async fn revoke_token(
        &self,
        who: &Principal,
        space_id: &str,
        token_id: &str,
    ) -> Result<()> {
        who.require_admin()?;
        if !self
            .store
            .revoke_token(space_id, token_id, self.store.clock().now())
            .await?
        {
            return Err(Error::NotFound("token"));
        }
        self.auth.forget_token(token_id);
        tracing::info!(space_id, token_id, "token revoked");
        Ok(())
    }

    /// A new public (jobs:read:progress) token; the one before is revoked
    /// in the same write, and its streams end on every core.
    pub async fn rotate_public_token(
        &self,
        who: &Principal,
        space_id: &str,
    ) -> Result<SpaceRecord> {
        who.require_admin()?;
        if !is_well_formed(space_id) {
            return Err(Error::NotFound("space"));
        }
        let key = generate_key()?;
        let token = public_token_record(space_id, &key, self.store.clock().now());
        let revoked = self
            .store
            .replace_public_token(space_id, &key, token, self.store.clock().now())
            .await?;
        if let Some(token_id) = &revoked {
            self.auth.forget_token(token_id);
        }
        tracing::info!(space_id, "public token rotated");
        self.find_space(space_id).await
    }

    /// Pauses (`paused`) or resumes dispatch of the job name `name` in a
    /// space, or of the whole space without a name. Creates and timers go
    /// on; a resume lets the jobs it covers go at once.
    pub async fn set_pause(
        &self,
        who: &Principal,
        space_id: &str,
        name: Option<&str>,
        paused: bool,
    ) -> Result<SpaceRecord> {
        who.require_admin()?;
        if !is_well_formed(space_id) {
            return Err(Error::NotFound("space"));
        }
        let name = match name {
            Some(name) => checked_name(name)?,
            None => WHOLE_SPACE.to_owned(),
        };
        if self
            .store
            .set_pause(space_id, &name, paused, self.store.clock().now())
            .await?
        {
            let what = if name == WHOLE_SPACE {
                "*"
            } else {
                name.as_str()
            };
            let action = if paused { "paused" } else { "resumed" };
            tracing::info!(space_id, name = what, "dispatch {action}");
        }
        self.find_space(space_id).await
    }

    /// The space's paused job names, `WHOLE_SPACE` when all are.
    pub async fn pauses(&self, space_id: &str) -> Result<Vec<String>> {
        self.store.pauses(space_id).await
    }

    async fn find_space(&self, space_id: &str) -> Result<SpaceRecord> {
        self.store
            .get_space(space_id)
            .await?
            .ok_or(Error::NotFound("space"))
    }
}

/// The token record of a space's public key.
fn public_token_record(space_id: &str, key: &str, now: crate::clock::UnixMillis) -> TokenRecord {
    TokenRecord {
        id: new_id(),
        space_id: space_id.to_owned(),
        name: PUBLIC_TOKEN_NAME.to_owned(),
        scopes: vec![Scope::JobsReadProgress.as_str().to_owned()],
        key_hash: hash_key(key),
        created_at: now,
    }
}

fn checked_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::invalid("name is required"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(format!(
            "name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    spec::check_text("name", name)?;
    Ok(name.to_owned())
}
