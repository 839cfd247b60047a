//! What every benchmark needs: a server and a space to load.

// Each benchmark uses the parts it needs.
#![allow(dead_code)]

use std::num::NonZeroU32;

use emit_core::auth::RateLimit;
use emit_core::{CoreConfig, RunningCore, Secret};
use emit_gateway::{GatewayConfig, RunningGateway};
use serde_json::{Value, json};

pub const ADMIN_KEY: &str = "emit_bench_admin";

pub type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Core and gateway on loopback, SQLite in `dir`, no rate limit.
pub async fn start_server(dir: &str) -> Result<(RunningCore, RunningGateway), AnyError> {
    let core = emit_core::start(CoreConfig {
        grpc_addr: "127.0.0.1:0".parse()?,
        database_url: format!("sqlite://{dir}/emit.db"),
        admin_key: Some(Secret(ADMIN_KEY.into())),
        rate_limit: RateLimit(NonZeroU32::new(0)),
        streams: Default::default(),
        callbacks: Default::default(),
    })
    .await?;
    let gateway = emit_gateway::start(GatewayConfig {
        http_addr: "127.0.0.1:0".parse()?,
        core_url: format!("http://{}", core.grpc_addr),
        stream_queue: GatewayConfig::DEFAULT_STREAM_QUEUE,
    })
    .await?;
    Ok((core, gateway))
}

pub struct BenchSpace {
    pub id: String,
    pub public_token: String,
    /// A key with jobs:worker and jobs:create.
    pub key: String,
}

/// A fresh space on the server at `base` (`http://HOST:PORT/api/v1`).
pub async fn create_space(http: &reqwest::Client, base: &str) -> Result<BenchSpace, AnyError> {
    let space: Value = http
        .post(format!("{base}/spaces"))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({ "name": "bench" }))
        .send()
        .await?
        .json()
        .await?;
    let id = space["id"].as_str().ok_or("no space id")?.to_owned();
    let token: Value = http
        .post(format!("{base}/spaces/{id}/tokens"))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({ "name": "bench", "scopes": ["jobs:worker", "jobs:create"] }))
        .send()
        .await?
        .json()
        .await?;
    Ok(BenchSpace {
        public_token: space["publicToken"]
            .as_str()
            .ok_or("no public token")?
            .to_owned(),
        key: token["key"].as_str().ok_or("no key")?.to_owned(),
        id,
    })
}
