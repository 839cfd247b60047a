use std::sync::Arc;

use emit_proto::v1 as pb;
use emit_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::{presented, principal};
use crate::auth::{Authenticator, Principal};
use crate::clock::{UnixMillis, to_timestamp};
use crate::retention::RetentionChange;
use crate::service::AdminApi;
use crate::store::{PushTarget, SlackTarget, SpaceRecord, SpaceSettings, WHOLE_SPACE};

type Reply<T> = Result<Response<T>, Status>;

pub struct AdminGrpc {
    auth: Arc<Authenticator>,
    admin: Arc<AdminApi>,
}

impl AdminGrpc {
    pub fn new(auth: Arc<Authenticator>, admin: Arc<AdminApi>) -> Self {
        Self { auth, admin }
    }

    /// The space as shown, with the retention in force for it and its
    /// pauses.
    async fn space(&self, space: SpaceRecord) -> Result<pb::Space, Status> {
        let retention = self.admin.retention_of(&space);
        let pauses = self.admin.pauses(&space.id).await?;
        let mut shown: pb::Space = space.into();
        shown.retention = Some(pb::Retention {
            completed_seconds: retention.completed,
            dead_seconds: retention.dead,
            killed_seconds: retention.killed,
        });
        shown.paused = pauses.iter().any(|name| name == WHOLE_SPACE);
        shown.paused_names = pauses
            .into_iter()
            .filter(|name| name != WHOLE_SPACE)
            .collect();
        Ok(shown)
    }
}

/// A retention change as asked; an absent status is left as it is.
fn retention_change(change: pb::RetentionChange) -> RetentionChange {
    let age = |age: Option<pb::RetentionAge>| {
        age.and_then(|age| age.age).map(|age| match age {
            pb::retention_age::Age::Seconds(seconds) => Some(seconds),
            pb::retention_age::Age::ServerDefault(_) => None,
        })
    };
    RetentionChange {
        completed: age(change.completed),
        dead: age(change.dead),
        killed: age(change.killed),
    }
}

#[tonic::async_trait]
impl AdminService for AdminGrpc {
    async fn create_space(
        &self,
        request: Request<pb::CreateSpaceRequest>,
    ) -> Reply<pb::CreateSpaceResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let space = self
            .admin
            .create_space(&who, &request.get_ref().name)
            .await?;
        Ok(Response::new(pb::CreateSpaceResponse {
            space: Some(self.space(space).await?),
        }))
    }

    async fn list_spaces(
        &self,
        request: Request<pb::ListSpacesRequest>,
    ) -> Reply<pb::ListSpacesResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let spaces = self.admin.list_spaces(&who).await?;
        let mut shown = Vec::with_capacity(spaces.len());
        for space in spaces {
            shown.push(self.space(space).await?);
        }
        Ok(Response::new(pb::ListSpacesResponse { spaces: shown }))
    }

    async fn get_space(
        &self,
        request: Request<pb::GetSpaceRequest>,
    ) -> Reply<pb::GetSpaceResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let space = self
            .admin
            .get_space(&who, &request.get_ref().space_id)
            .await?;
        Ok(Response::new(pb::GetSpaceResponse {
            space: Some(self.space(space).await?),
        }))
    }

    async fn update_space(
        &self,
        request: Request<pb::UpdateSpaceRequest>,
    ) -> Reply<pb::UpdateSpaceResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let settings = SpaceSettings {
            anonymous_progress_streams: request.anonymous_progress_streams,
            push: match (request.remove_push, request.push) {
                (true, _) => Some(None),
                (false, Some(push)) => Some(Some(PushTarget {
                    url: push.url,
                    names: push.names,
                    headers: push.headers.into_iter().collect(),
                })),
                (false, None) => None,
            },
            retention: None,
            concurrency: request.concurrency.map(super::convert::limits_from_proto),
            slack: request.slack.map(|slack| {
                (!slack.url.is_empty()).then_some(SlackTarget {
                    url: slack.url,
                    events: slack.events,
                })
            }),
        };
        let retention = request.retention.map(retention_change);
        let space = self
            .admin
            .update_space(&who, &request.space_id, settings, retention)
            .await?;
        Ok(Response::new(pb::UpdateSpaceResponse {
            space: Some(self.space(space).await?),
        }))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Reply<pb::RotateWebhookSecretResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let secret = self
            .admin
            .rotate_webhook_secret(&who, &request.get_ref().space_id)
            .await?;
        Ok(Response::new(pb::RotateWebhookSecretResponse { secret }))
    }

    async fn rotate_public_token(
        &self,
        request: Request<pb::RotatePublicTokenRequest>,
    ) -> Reply<pb::RotatePublicTokenResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let space = self
            .admin
            .rotate_public_token(&who, &request.get_ref().space_id)
            .await?;
        Ok(Response::new(pb::RotatePublicTokenResponse {
            space: Some(self.space(space).await?),
        }))
    }

    async fn delete_webhook_secret(
        &self,
        request: Request<pb::DeleteWebhookSecretRequest>,
    ) -> Reply<pb::DeleteWebhookSecretResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        self.admin
            .delete_webhook_secret(&who, &request.get_ref().space_id)
            .await?;
        Ok(Response::new(pb::DeleteWebhookSecretResponse {}))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Reply<pb::CreateTokenResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let (token, key) = self
            .admin
            .create_token(&who, &request.space_id, &request.name, request.scopes)
            .await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token.into()),
            key,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Reply<pb::ListTokensResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let tokens = self
            .admin
            .list_tokens(&who, &request.get_ref().space_id)
            .await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(Into::into).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Reply<pb::RevokeTokenResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.get_ref();
        self.admin
            .revoke_token(&who, &request.space_id, &request.token_id)
            .await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Reply<pb::GetMetricsResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let text = self.admin.metrics(&who).await?;
        Ok(Response::new(pb::GetMetricsResponse { text }))
    }

    async fn pause_space(
        &self,
        request: Request<pb::PauseSpaceRequest>,
    ) -> Reply<pb::PauseSpaceResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let space = self
            .admin
            .set_pause(&who, &request.space_id, request.name.as_deref(), true)
            .await?;
        Ok(Response::new(pb::PauseSpaceResponse {
            space: Some(self.space(space).await?),
        }))
    }

    async fn resume_space(
        &self,
        request: Request<pb::ResumeSpaceRequest>,
    ) -> Reply<pb::ResumeSpaceResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let request = request.into_inner();
        let space = self
            .admin
            .set_pause(&who, &request.space_id, request.name.as_deref(), false)
            .await?;
        Ok(Response::new(pb::ResumeSpaceResponse {
            space: Some(self.space(space).await?),
        }))
    }

    async fn start_dashboard_session(
        &self,
        request: Request<pb::StartDashboardSessionRequest>,
    ) -> Reply<pb::StartDashboardSessionResponse> {
        let opened = self
            .auth
            .open_session(presented(request.metadata()))
            .await?;
        Ok(Response::new(pb::StartDashboardSessionResponse {
            token: opened.token,
            session: Some(session_info(&opened.principal, opened.expires_at)),
        }))
    }

    async fn get_dashboard_session(
        &self,
        request: Request<pb::GetDashboardSessionRequest>,
    ) -> Reply<pb::GetDashboardSessionResponse> {
        let who = principal(&self.auth, request.metadata()).await?;
        let expires_at = self
            .auth
            .session_expiry(presented(request.metadata()))
            .await?;
        Ok(Response::new(pb::GetDashboardSessionResponse {
            session: Some(session_info(&who, expires_at)),
        }))
    }

    async fn end_dashboard_session(
        &self,
        request: Request<pb::EndDashboardSessionRequest>,
    ) -> Reply<pb::EndDashboardSessionResponse> {
        self.auth
            .close_session(presented(request.metadata()))
            .await?;
        Ok(Response::new(pb::EndDashboardSessionResponse {}))
    }
}

fn session_info(who: &Principal, expires_at: UnixMillis) -> pb::DashboardSession {
    let expires_at = Some(to_timestamp(expires_at));
    match who {
        Principal::Admin => pb::DashboardSession {
            admin: true,
            expires_at,
            ..Default::default()
        },
        Principal::ApiKey(key) => pb::DashboardSession {
            admin: false,
            space_id: key.space_id.clone(),
            scopes: key.scopes.names().into_iter().map(str::to_owned).collect(),
            expires_at,
        },
    }
}
