//! A client that keeps presenting keys the core refuses is slowed here, per
//! client address, before its requests reach the core: guessing keys costs
//! the guesser, never the other tenants (each unknown key is a database
//! lookup in the core).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// Refused keys one client address may present per window.
pub const MAX_AUTH_FAILURES: u32 = 50;
const WINDOW: Duration = Duration::from_secs(1);
/// Addresses remembered at once; beyond it, windows that ended are dropped.
const MAX_ADDRESSES: usize = 100_000;

#[derive(Clone, Default)]
pub struct AuthFailures {
    windows: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
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
        self.windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub async fn limit(State(failures): State<AuthFailures>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    let Some(client) = client else {
        return next.run(request).await;
    };
    if failures.over_limit(client) {
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
    if response.status() == StatusCode::UNAUTHORIZED {
        failures.record(client);
    }
    response
}
