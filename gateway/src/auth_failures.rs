//! A client that keeps presenting keys the core refuses is slowed here, per
//! client address, before its requests reach the core: guessing keys costs
//! the guesser, never the other tenants (each unknown key is a database
//! lookup in the core). Requests with a credential the core accepted
//! recently always pass, so tenants sharing an address with a guesser (a
//! proxy, a NAT) are not locked out with it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// Refused keys one client address may present per window.
pub const MAX_AUTH_FAILURES: u32 = 50;
const WINDOW: Duration = Duration::from_secs(1);
/// Addresses remembered at once; beyond it, windows that ended are dropped.
const MAX_ADDRESSES: usize = 100_000;

/// Accepted credentials remembered (by keyed hash), at most.
const MAX_ACCEPTED: usize = 100_000;

#[derive(Clone, Default)]
pub struct AuthFailures {
    windows: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
    accepted: Arc<Mutex<HashSet<u64>>>,
    hasher: RandomState,
}

impl AuthFailures {
    fn over_limit(&self, client: IpAddr) -> bool {
        let windows = self.lock();
        windows.get(&client).is_some_and(|(started, failures)| {
            started.elapsed() < WINDOW && *failures >= MAX_AUTH_FAILURES
        })
    }

    fn record(&self, client: IpAddr) {
        let mut windows = self.lock();
        if windows.len() >= MAX_ADDRESSES {
            windows.retain(|_, (started, _)| started.elapsed() < WINDOW);
        }
        let entry = windows.entry(client).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        lock(&self.windows)
    }

    /// The request's credentials as one keyed hash (never stored in clear).
    fn credential(&self, request: &Request) -> Option<u64> {
        let headers = request.headers();
        let presented = [headers.get("x-api-key"), headers.get("authorization")];
        let token = request.uri().query().and_then(|query| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("token="))
        });
        if presented.iter().all(Option::is_none) && token.is_none() {
            return None;
        }
        let mut hasher = self.hasher.build_hasher();
        for value in presented.into_iter().flatten() {
            std::hash::Hasher::write(&mut hasher, value.as_bytes());
        }
        if let Some(token) = token {
            std::hash::Hasher::write(&mut hasher, token.as_bytes());
        }
        Some(std::hash::Hasher::finish(&hasher))
    }

    fn was_accepted(&self, credential: Option<u64>) -> bool {
        credential.is_some_and(|credential| lock(&self.accepted).contains(&credential))
    }

    fn remember_accepted(&self, credential: u64) {
        let mut accepted = lock(&self.accepted);
        if accepted.len() >= MAX_ACCEPTED {
            accepted.clear();
        }
        accepted.insert(credential);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub async fn limit(State(failures): State<AuthFailures>, request: Request, next: Next) -> Response {
    let client = crate::serve::client_address(&request).map(|address| address.ip());
    let Some(client) = client else {
        return next.run(request).await;
    };
    let credential = failures.credential(&request);
    if failures.over_limit(client) && !failures.was_accepted(credential) {
        let mut refused = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests with invalid API keys",
        )
        .into_response();
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return refused;
    }
    let response = next.run(request).await;
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        failures.record(client);
    } else if (status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS)
        && let Some(credential) = credential
    {
        // Only a success proves the credential real (a 404 from an
        // unknown route proves nothing).
        failures.remember_accepted(credential);
    }
    response
}
