//! Who is calling and what they may do: scopes, API keys, the admin key,
//! and the authenticator that turns presented keys into principals (with the
//! per-key rate limit).

mod authenticator;
mod keys;
mod scope;

pub use authenticator::{
    Authenticator, Credential, OpenedSession, RateLimit, Revocation, SESSION_TTL,
};
pub use keys::{
    KeyHash, MIN_ADMIN_KEY_CHARS, check_admin_key, generate_key, hash_from_hex, hash_key,
    hash_to_hex, presented_key,
};
pub use scope::{Scope, ScopeSet, parse_scopes};

use std::sync::Arc;

use crate::error::{Error, Result};

/// A space API key as the authenticator resolved it.
#[derive(Debug)]
pub struct ApiKey {
    pub token_id: String,
    pub space_id: String,
    pub scopes: ScopeSet,
}

#[derive(Clone, Debug)]
pub enum Principal {
    /// The operator: every space, every scope.
    Admin,
    ApiKey(Arc<ApiKey>),
}

impl Principal {
    pub fn require_admin(&self) -> Result<()> {
        match self {
            Self::Admin => Ok(()),
            Self::ApiKey(_) => Err(Error::Forbidden("this operation requires the admin key")),
        }
    }

    /// For calls addressed to a space: the key must belong to it and hold `scope`.
    pub fn authorize_space(&self, space_id: &str, scope: Scope) -> Result<()> {
        match self {
            Self::Admin => Ok(()),
            Self::ApiKey(key) if key.space_id != space_id => Err(Error::Forbidden(
                "API key does not have access to this space",
            )),
            Self::ApiKey(key) => key.scopes.require(scope),
        }
    }

    /// For calls addressed to a job: checks `scope` and returns the space the
    /// job must belong to (None for the admin). A job of another space is then
    /// reported as not found.
    pub fn authorize_job(&self, scope: Scope) -> Result<Option<&str>> {
        self.authorize_job_any(&[scope])
    }

    /// Like `authorize_job`, accepting any of `scopes`; a refusal names the first.
    pub fn authorize_job_any(&self, scopes: &[Scope]) -> Result<Option<&str>> {
        match self {
            Self::Admin => Ok(None),
            Self::ApiKey(key) => {
                if scopes.iter().any(|scope| key.scopes.allows(*scope)) {
                    Ok(Some(&key.space_id))
                } else {
                    Err(Error::MissingScope(scopes[0]))
                }
            }
        }
    }
}
