//! Resolves presented keys to principals. Lookups are cached briefly so a hot
//! worker key does not cost a database read per call; revocation evicts the
//! key at once on this replica.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;

use super::{ApiKey, KeyHash, Principal, Scope, generate_key, hash_key, parse_scopes};
use prometheus_client::metrics::counter::Counter;

use crate::background::Background;
use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::{SessionRecord, SessionWrite};

/// Waits for one key's revocation.
pub struct Revocation {
    watch: Option<(broadcast::Receiver<String>, String)>,
}

impl Revocation {
    pub async fn revoked(&mut self) {
        let Some((revoked, token_id)) = &mut self.watch else {
            return std::future::pending().await;
        };
        loop {
            match revoked.recv().await {
                Ok(id) if id == *token_id => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            }
        }
    }
}

/// What a caller presented: a key (API key or the admin key), or the token
/// of a dashboard session the gateway read from its cookie.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    Key(&'a str),
    Session(&'a str),
}

/// A session just opened: its token (shown once, to the browser) and what
/// it may do.
pub struct OpenedSession {
    pub token: String,
    pub principal: Principal,
    pub expires_at: UnixMillis,
}

/// How long a dashboard session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Session tokens look like keys with another prefix, so a session token
/// pasted where a key belongs is plainly not one.
const SESSION_PREFIX: &str = "emitsession_";

const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_CAPACITY: usize = 100_000;
/// Longest key looked at: keys are 69 characters, anything far longer is
/// refused without hashing or a lookup.
pub const MAX_KEY_BYTES: usize = 1024;

/// Requests per second allowed to one API key; `None` disables the limit.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit(pub Option<NonZeroU32>);

/// `per_second` requests a second, in bursts of at most a tenth of that. The
/// default burst (a whole second's worth) lets a key saturating the limit
/// get 10% more than the advertised rate over ten seconds.
fn quota(per_second: NonZeroU32) -> Quota {
    let burst = NonZeroU32::new(per_second.get() / 10).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

pub struct Authenticator {
    store: Arc<Store>,
    /// Ids of tokens as they are revoked, for open streams to end.
    revoked: broadcast::Sender<String>,
    admin_key_hash: KeyHash,
    cache: Mutex<HashMap<KeyHash, (Arc<ApiKey>, Instant)>>,
    /// Keys recently found unknown: refused again without a lookup, so one
    /// caller repeating a bad key costs the database nothing.
    unknown: Mutex<HashMap<KeyHash, Instant>>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Requests the rate limit refused, for metrics.
    rate_limited: Counter,
}

impl Authenticator {
    pub fn new(store: Arc<Store>, admin_key_hash: KeyHash, rate_limit: RateLimit) -> Self {
        Self {
            store,
            revoked: broadcast::channel(256).0,
            admin_key_hash,
            cache: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            limiter: rate_limit
                .0
                .map(|per_second| RateLimiter::keyed(quota(per_second))),
            rate_limited: Counter::default(),
        }
    }

    /// Counts the requests the rate limit refuses.
    pub fn rate_limited(&self) -> Counter {
        self.rate_limited.clone()
    }

    pub async fn authenticate(&self, presented: Option<Credential<'_>>) -> Result<Principal> {
        match presented.ok_or(Error::Unauthenticated("missing API key"))? {
            Credential::Key(key) => self.authenticate_key(key).await,
            Credential::Session(token) => {
                let session = self.find_session(token).await?;
                Ok(session_principal(
                    self.principal_of(session.key_hash).await?,
                ))
            }
        }
    }

    async fn authenticate_key(&self, key: &str) -> Result<Principal> {
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::Unauthenticated("invalid API key"));
        }
        self.principal_of(hash_key(key)).await
    }

    async fn principal_of(&self, hash: KeyHash) -> Result<Principal> {
        if bool::from(hash.ct_eq(&self.admin_key_hash)) {
            return Ok(Principal::Admin);
        }
        let api_key = match self.cached(&hash) {
            Some(api_key) => api_key,
            None => self.load(hash).await?,
        };
        self.check_rate(&api_key.token_id)?;
        Ok(Principal::ApiKey(api_key))
    }

    /// Signs a browser in with `presented`, which must be a key (the admin
    /// key, or a space key that may read jobs); returns the session's token
    /// and what it may do. The token is stored only as its SHA-256.
    pub async fn open_session(&self, presented: Option<Credential<'_>>) -> Result<OpenedSession> {
        let key = match presented.ok_or(Error::Unauthenticated("missing API key"))? {
            Credential::Key(key) => key,
            Credential::Session(_) => {
                return Err(Error::invalid("sign in with an API key, not a session"));
            }
        };
        let principal = self.authenticate_key(key).await?;
        if let Principal::ApiKey(api_key) = &principal {
            api_key.scopes.require(Scope::JobsRead)?;
        }
        let token = generate_key()?.replacen("emit_", SESSION_PREFIX, 1);
        let now = self.store.clock().now();
        let session = SessionRecord {
            id_hash: hash_key(&token),
            key_hash: hash_key(key),
            created_at: now,
            expires_at: now + SESSION_TTL.as_millis() as i64,
        };
        let expires_at = session.expires_at;
        self.store
            .write_session(SessionWrite::Open(session))
            .await?;
        Ok(OpenedSession {
            token,
            principal: session_principal(principal),
            expires_at,
        })
    }

    /// When the session `presented` ends (it must be a live session).
    pub async fn session_expiry(&self, presented: Option<Credential<'_>>) -> Result<UnixMillis> {
        match presented {
            Some(Credential::Session(token)) => Ok(self.find_session(token).await?.expires_at),
            _ => Err(Error::invalid("this call needs a session")),
        }
    }

    /// Signs the session `presented` out, on every replica at once (each
    /// use reads the session from the database).
    pub async fn close_session(&self, presented: Option<Credential<'_>>) -> Result<()> {
        let Some(Credential::Session(token)) = presented else {
            return Err(Error::invalid("this call needs a session"));
        };
        let id_hash = hash_key(token);
        self.store
            .write_session(SessionWrite::Close { id_hash })
            .await?;
        Ok(())
    }

    /// Sessions are read from the database on every use, not cached, so a
    /// sign-out takes effect on every replica at once.
    async fn find_session(&self, token: &str) -> Result<SessionRecord> {
        let expired = Error::Unauthenticated("session expired or signed out");
        if token.len() > MAX_KEY_BYTES {
            return Err(expired);
        }
        self.store
            .find_session(&hash_key(token), self.store.clock().now())
            .await?
            .ok_or(expired)
    }

    /// Counts one more request of an already authenticated caller against
    /// its key's rate limit (each report on a worker stream is one).
    pub fn charge(&self, who: &Principal) -> Result<()> {
        match who {
            Principal::ApiKey(key) => self.check_rate(&key.token_id),
            Principal::Admin => Ok(()),
        }
    }

    /// Drops a revoked token from the cache so it is refused from now on,
    /// and ends the streams it holds open on this replica.
    pub fn forget_token(&self, token_id: &str) {
        self.lock_cache()
            .retain(|_, (api_key, _)| api_key.token_id != token_id);
        let _ = self.revoked.send(token_id.to_owned());
    }

    /// Applies revocations made on any replica (the store reports them) as
    /// `forget_token` does, until the core stops. Holds the authenticator
    /// weakly, so it also stops when the server is dropped.
    pub fn follow_revocations(
        self: &Arc<Self>,
        mut revocations: broadcast::Receiver<String>,
        background: &mut Background,
    ) {
        let auth = Arc::downgrade(self);
        background.spawn_until_stopped("revocations", async move {
            loop {
                let revoked = revocations.recv().await;
                let Some(auth) = auth.upgrade() else { return };
                match revoked {
                    Ok(token_id) => auth.forget_token(&token_id),
                    // Which keys were revoked is unknown: look every key up again.
                    Err(broadcast::error::RecvError::Lagged(_)) => auth.lock_cache().clear(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Resolves when the key behind `principal` is revoked (never for the
    /// admin key or an anonymous caller).
    pub fn revocation(&self, principal: Option<&Principal>) -> Revocation {
        Revocation {
            watch: match principal {
                Some(Principal::ApiKey(key)) => {
                    Some((self.revoked.subscribe(), key.token_id.clone()))
                }
                _ => None,
            },
        }
    }

    fn cached(&self, hash: &KeyHash) -> Option<Arc<ApiKey>> {
        let cache = self.lock_cache();
        let (api_key, fetched) = cache.get(hash)?;
        (fetched.elapsed() < CACHE_TTL).then(|| api_key.clone())
    }

    async fn load(&self, hash: KeyHash) -> Result<Arc<ApiKey>> {
        let invalid = Error::Unauthenticated("invalid API key");
        if lock(&self.unknown)
            .get(&hash)
            .is_some_and(|seen| seen.elapsed() < CACHE_TTL)
        {
            return Err(invalid);
        }
        let Some(token) = self
            .store
            .find_token(&hash)
            .await?
            .filter(|token| bool::from(token.key_hash.ct_eq(&hash)))
        else {
            let mut unknown = lock(&self.unknown);
            if unknown.len() >= CACHE_CAPACITY {
                unknown.retain(|_, seen| seen.elapsed() < CACHE_TTL);
                if unknown.len() >= CACHE_CAPACITY {
                    unknown.clear();
                }
            }
            unknown.insert(hash, Instant::now());
            return Err(invalid);
        };
        let api_key = Arc::new(ApiKey {
            scopes: parse_scopes(&token.scopes)?,
            token_id: token.id,
            space_id: token.space_id,
        });
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(hash, (api_key.clone(), Instant::now()));
        Ok(api_key)
    }

    fn check_rate(&self, token_id: &str) -> Result<()> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&token_id.to_owned())
            .map_err(|not_until| {
                self.rate_limited.inc();
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                Error::RateLimited {
                    retry_after: wait.max(Duration::from_secs(1)),
                }
            })
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<KeyHash, (Arc<ApiKey>, Instant)>> {
        lock(&self.cache)
    }
}

/// What a session of the key `principal` may do: a space key's session is
/// a read-only view of its space; the admin's may do everything.
fn session_principal(principal: Principal) -> Principal {
    match principal {
        Principal::ApiKey(key) => Principal::ApiKey(Arc::new(ApiKey {
            token_id: key.token_id.clone(),
            space_id: key.space_id.clone(),
            scopes: key.scopes.read_only(),
        })),
        admin => admin,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
