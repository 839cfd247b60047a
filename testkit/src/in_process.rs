//! A core and gateway in this process, on loopback: what the benchmarks
//! load, one replica on SQLite or several on PostgreSQL.

use std::num::NonZeroU32;

use emit_core::auth::RateLimit;
use emit_core::{CoreConfig, RunningCore, Secret};
use emit_gateway::{GatewayConfig, RunningGateway};
use serde_json::{Value, json};

use crate::{ADMIN_KEY, AnyError, postgres};

/// Core and gateway on loopback, SQLite in `dir`, no rate limit.
pub async fn start_server(dir: &str) -> Result<(RunningCore, RunningGateway), AnyError> {
    start_server_with(dir, Default::default()).await
}

/// `start_server` with the given retention.
pub async fn start_server_with(
    dir: &str,
    retention: emit_core::retention::RetentionConfig,
) -> Result<(RunningCore, RunningGateway), AnyError> {
    let core = start_core_with(format!("sqlite://{dir}/emit.db"), retention).await?;
    let gateway = start_gateway(&core).await?;
    Ok((core, gateway))
}

async fn start_core(database_url: String) -> Result<RunningCore, AnyError> {
    start_core_with(database_url, Default::default()).await
}

async fn start_core_with(
    database_url: String,
    retention: emit_core::retention::RetentionConfig,
) -> Result<RunningCore, AnyError> {
    Ok(emit_core::start(CoreConfig {
        grpc_addr: "127.0.0.1:0".parse()?,
        database_url,
        database_wait: std::time::Duration::from_secs(30),
        admin_key: Some(Secret(ADMIN_KEY.into())),
        rate_limit: RateLimit(NonZeroU32::new(0)),
        streams: Default::default(),
        callbacks: Default::default(),
        retention,
        clock: Default::default(),
    })
    .await?)
}

async fn start_gateway(core: &RunningCore) -> Result<RunningGateway, AnyError> {
    emit_gateway::start(GatewayConfig {
        http_addr: "127.0.0.1:0".parse()?,
        core: emit_gateway::CoreLink::in_process(core.in_process()),
        stream_queue: GatewayConfig::DEFAULT_STREAM_QUEUE,
        timeouts: Default::default(),
    })
    .await
}

/// Core replicas, each with a gateway in front, on one database: SQLite (one
/// replica only) or, with `EMIT_BENCH_DATABASE=postgres`, a fresh PostgreSQL
/// database on this machine's server.
pub struct Cluster {
    pub cores: Vec<RunningCore>,
    pub gateways: Vec<RunningGateway>,
    pub engine: &'static str,
    _postgres: Option<postgres::PostgresDatabase>,
    sqlite_dir: Option<std::path::PathBuf>,
}

impl Cluster {
    pub async fn start(replicas: usize) -> Result<Self, AnyError> {
        let postgres =
            std::env::var("EMIT_BENCH_DATABASE").is_ok_and(|engine| engine == "postgres");
        let (url, postgres, sqlite_dir) = if postgres {
            let database = postgres::PostgresDatabase::create().await;
            (database.url.clone(), Some(database), None)
        } else {
            if replicas != 1 {
                return Err("SQLite runs one replica; set EMIT_BENCH_DATABASE=postgres".into());
            }
            let dir = std::env::temp_dir().join(format!("emit-bench-{}", std::process::id()));
            (
                format!("sqlite://{}/emit.db", dir.display()),
                None,
                Some(dir),
            )
        };
        let mut cores = Vec::new();
        let mut gateways = Vec::new();
        for _ in 0..replicas {
            let core = start_core(url.clone()).await?;
            gateways.push(start_gateway(&core).await?);
            cores.push(core);
        }
        Ok(Self {
            cores,
            gateways,
            engine: if postgres.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            _postgres: postgres,
            sqlite_dir,
        })
    }

    /// `http://HOST:PORT/api/v1` of each gateway.
    pub fn api_bases(&self) -> Vec<String> {
        self.gateways
            .iter()
            .map(|gateway| format!("http://{}/api/v1", gateway.http_addr))
            .collect()
    }

    pub fn grpc_urls(&self) -> Vec<String> {
        self.cores
            .iter()
            .map(|core| format!("http://{}", core.grpc_addr))
            .collect()
    }

    pub async fn stop(self) {
        for gateway in self.gateways {
            gateway.stop().await;
        }
        for core in self.cores {
            core.stop().await;
        }
        if let Some(dir) = self.sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
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
