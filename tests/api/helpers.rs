use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use emit_core::auth::RateLimit;
use emit_core::callbacks::{CallbackConfig, RetryPolicy};
use emit_core::clock::Clock;
use emit_core::retention::RetentionConfig;
use emit_core::realtime::StreamLimits;
use emit_core::{CoreConfig, RunningCore, Secret};
use emit_gateway::{ConnectionTimeouts, GatewayConfig, RunningGateway};
use emit_proto::v1::job_service_client::JobServiceClient;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tonic::transport::Channel;

use emit_testkit::PostgresDatabase;

pub const ADMIN_KEY: &str = "emit_test_admin_key_0123456789abcdef";

/// The storage engine a test binary runs the suite against (each binary
/// names one, so the other looks unused to it).
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test.
enum Database {
    Sqlite { dir: PathBuf },
    Postgres(PostgresDatabase),
}

impl Database {
    async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::Sqlite {
                dir: std::env::temp_dir().join(format!("emit-test-{}", ulid::Ulid::new())),
            },
            Backend::Postgres => Self::Postgres(PostgresDatabase::create().await),
        }
    }

    fn url(&self) -> String {
        match self {
            Self::Sqlite { dir } => format!("sqlite://{}/emit.db", dir.display()),
            Self::Postgres(database) => database.url.clone(),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Self::Sqlite { dir } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub grpc_url: String,
    pub http: reqwest::Client,
    database: Database,
    rate_limit: RateLimit,
    streams: StreamLimits,
    ws_queue: usize,
    timeouts: ConnectionTimeouts,
    callbacks: CallbackConfig,
    retention: RetentionConfig,
    /// The core's clock: a test sets it ahead to stand for time passing
    /// (kept across restarts).
    pub clock: Clock,
    core: Option<RunningCore>,
    gateway: Option<RunningGateway>,
}

/// A second core and gateway on a test server's database.
#[allow(dead_code)]
pub struct Replica {
    pub base: String,
    pub grpc_url: String,
    core: RunningCore,
    gateway: RunningGateway,
}

#[allow(dead_code)]
impl Replica {
    pub async fn stop(self) {
        self.gateway.stop().await;
        self.core.stop().await;
    }
}

/// Server settings a test may change.
pub struct Options {
    pub rate_limit: Option<u32>,
    pub streams: StreamLimits,
    pub ws_queue: usize,
    pub timeouts: ConnectionTimeouts,
    pub callbacks: CallbackConfig,
    pub retention: RetentionConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate_limit: None,
            streams: StreamLimits::default(),
            ws_queue: GatewayConfig::DEFAULT_STREAM_QUEUE,
            timeouts: ConnectionTimeouts::default(),
            // Test receivers listen on loopback.
            callbacks: CallbackConfig {
                allow_private: true,
                retry: RetryPolicy {
                    delays: vec![Duration::from_millis(100), Duration::from_millis(200)],
                    timeout: Duration::from_secs(1),
                },
                public_url: Some("https://emit.example".into()),
            },
            retention: RetentionConfig::default(),
        }
    }
}

pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A space with a producer key (create + read), a worker key and its public token.
pub struct Space {
    pub id: String,
    pub public_token: String,
    pub producer: String,
    pub worker: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with_rate_limit(None).await
    }

    pub async fn spawn_with_rate_limit(per_second: Option<u32>) -> Self {
        Self::spawn_with(Options {
            rate_limit: per_second,
            ..Options::default()
        })
        .await
    }

    pub async fn spawn_with(options: Options) -> Self {
        let database = Database::create(crate::BACKEND).await;
        let rate_limit = RateLimit(options.rate_limit.and_then(NonZeroU32::new));
        let mut app = Self {
            base: String::new(),
            grpc_url: String::new(),
            http: reqwest::Client::new(),
            database,
            rate_limit,
            streams: options.streams,
            ws_queue: options.ws_queue,
            timeouts: options.timeouts,
            callbacks: options.callbacks,
            retention: options.retention,
            clock: Clock::system(),
            core: None,
            gateway: None,
        };
        app.start(loopback(), loopback()).await;
        app
    }

    pub fn database_url(&self) -> String {
        self.database.url()
    }

    /// A core and its gateway with this server's settings and database.
    async fn start_pair(
        &self,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> (RunningCore, RunningGateway) {
        let core = emit_core::start(CoreConfig {
            grpc_addr,
            database_url: self.database_url(),
            database_wait: Duration::from_secs(30),
            admin_key: Some(Secret(ADMIN_KEY.into())),
            rate_limit: self.rate_limit,
            streams: self.streams,
            callbacks: self.callbacks.clone(),
            retention: self.retention,
            clock: self.clock.clone(),
        })
        .await
        .expect("core starts");
        let gateway = emit_gateway::start(GatewayConfig {
            http_addr,
            core: emit_gateway::CoreLink::in_process(core.in_process()),
            stream_queue: self.ws_queue,
            timeouts: self.timeouts,
        })
        .await
        .expect("gateway starts");
        (core, gateway)
    }

    async fn start(&mut self, grpc_addr: SocketAddr, http_addr: SocketAddr) {
        let (core, gateway) = self.start_pair(grpc_addr, http_addr).await;
        self.grpc_url = format!("http://{}", core.grpc_addr);
        self.base = format!("http://{}", gateway.http_addr);
        self.core = Some(core);
        self.gateway = Some(gateway);
    }

    pub async fn stop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
        if let Some(core) = self.core.take() {
            core.stop().await;
        }
    }

    /// Stops the server and starts it again on the same database.
    pub async fn restart(&mut self) {
        self.stop().await;
        // Let the writer task finish and close the database.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.start(loopback(), loopback()).await;
    }

    /// Stops the server and starts it again on the same database and the
    /// same ports, as a restarted deployment would be (clients reconnect).
    #[allow(dead_code)]
    pub async fn restart_in_place(&mut self) {
        let (grpc, http) = match (&self.core, &self.gateway) {
            (Some(core), Some(gateway)) => (core.grpc_addr, gateway.http_addr),
            _ => panic!("the server is running"),
        };
        self.stop().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.start(grpc, http).await;
    }

    /// Another core, with a gateway, on this server's database (the
    /// scale-out setup; PostgreSQL only). Returns its REST base URL.
    #[allow(dead_code)]
    pub async fn replica(&self) -> Replica {
        let (core, gateway) = self.start_pair(loopback(), loopback()).await;
        Replica {
            base: format!("http://{}", gateway.http_addr),
            grpc_url: format!("http://{}", core.grpc_addr),
            core,
            gateway,
        }
    }

    /// Up to `count` jobs by gRPC `PollJobs`, with the space's worker key.
    #[allow(dead_code)]
    pub async fn grpc_poll(&self, space: &Space, count: u32) -> Vec<emit_proto::v1::Delivery> {
        let mut request = tonic::Request::new(emit_proto::v1::PollJobsRequest {
            space_id: space.id.clone(),
            count: Some(count),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-api-key", space.worker.parse().expect("a metadata value"));
        self.grpc_jobs()
            .await
            .poll_jobs(request)
            .await
            .expect("the poll is answered")
            .into_inner()
            .jobs
    }

    pub async fn grpc_jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::connect(self.grpc_url.clone())
            .await
            .expect("grpc connects")
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "DELETE" => self.http.delete(url),
            "PATCH" => self.http.patch(url),
            other => panic!("unsupported method {other}"),
        };
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request is answered");
        let status = response.status();
        let text = response.text().await.expect("body is readable");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("body is JSON")
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.request("GET", path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.request("POST", path, Some(key), Some(body)).await
    }

    /// `PATCH /api/v1/spaces/:id` (space settings) with `key`.
    pub async fn patch_space(&self, space_id: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let path = format!("/api/v1/spaces/{space_id}");
        self.request("PATCH", &path, Some(key), Some(body)).await
    }

    pub async fn create_space(&self) -> Space {
        let (status, space) = self
            .post("/api/v1/spaces", ADMIN_KEY, json!({ "name": "test" }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{space}");
        let id = space["id"].as_str().unwrap().to_owned();
        Space {
            producer: self
                .token(&id, &["jobs:create", "jobs:read", "jobs:kill"])
                .await,
            worker: self.token(&id, &["jobs:worker"]).await,
            public_token: space["publicToken"].as_str().unwrap().to_owned(),
            id,
        }
    }

    pub async fn token(&self, space_id: &str, scopes: &[&str]) -> String {
        let body = json!({ "name": "t", "scopes": scopes });
        let (status, token) = self
            .post(
                &format!("/api/v1/spaces/{space_id}/tokens"),
                ADMIN_KEY,
                body,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{token}");
        token["key"].as_str().unwrap().to_owned()
    }

    pub async fn create_job(&self, space: &Space, job: Value) -> String {
        let (status, created) = self
            .post(
                &format!("/api/v1/spaces/{}/jobs", space.id),
                &space.producer,
                job,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    /// `count` jobs named `name` in one bulk create.
    pub async fn create_bulk(&self, space: &Space, name: &str, count: usize) {
        let jobs: Vec<Value> = (0..count).map(|_| json!({ "name": name })).collect();
        let (status, created) = self
            .post(
                &format!("/api/v1/spaces/{}/jobs", space.id),
                &space.producer,
                json!(jobs),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
    }

    /// A long poll for one job through the gateway at `base`, waiting up to
    /// 20 s, in a task of its own; answers the poll's body.
    #[allow(dead_code)]
    pub fn long_poll(&self, base: &str, space: &Space) -> tokio::task::JoinHandle<Value> {
        let (http, url, key) = (
            self.http.clone(),
            format!("{base}/api/v1/spaces/{}/jobs/poll", space.id),
            space.worker.clone(),
        );
        tokio::spawn(async move {
            let response = http
                .post(url)
                .header("x-api-key", key)
                .json(&json!({ "count": 1, "waitSeconds": 20 }))
                .send()
                .await
                .expect("the poll is answered");
            response.json::<Value>().await.expect("a JSON body")
        })
    }

    pub async fn poll(&self, space: &Space, body: Value) -> Vec<Value> {
        let (status, polled) = self
            .post(
                &format!("/api/v1/spaces/{}/jobs/poll", space.id),
                &space.worker,
                body,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{polled}");
        polled["jobs"].as_array().unwrap().clone()
    }

    /// Polls until the job is delivered to us, and returns the delivery.
    pub async fn poll_one(&self, space: &Space) -> Value {
        let mut jobs = self.poll(space, json!({})).await;
        assert_eq!(jobs.len(), 1, "exactly one job ready");
        jobs.remove(0)
    }

    /// Polls until a job is ready (a retry's backoff or a timeout past),
    /// then returns it; fails after 10 s.
    pub async fn poll_until_one(&self, space: &Space) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut jobs = self.poll(space, json!({})).await;
            if let Some(job) = jobs.pop() {
                assert!(jobs.is_empty(), "one job at most");
                return job;
            }
            assert!(Instant::now() < deadline, "no job became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn worker_call(
        &self,
        space: &Space,
        job_id: &str,
        action: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/api/v1/jobs/{job_id}/{action}"),
            &space.worker,
            body,
        )
        .await
    }

    pub async fn job(&self, space: &Space, job_id: &str) -> Value {
        let (status, job) = self
            .get(&format!("/api/v1/jobs/{job_id}"), &space.producer)
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job
    }

    /// Waits (bounded) until the job reaches `status`.
    pub async fn wait_for_status(&self, space: &Space, job_id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let job = self.job(space, job_id).await;
            if job["status"] == status {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job never became {status}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl TestApp {
    /// Opens a WebSocket on the gateway; a refused handshake is returned as
    /// its HTTP status and JSON body.
    pub async fn ws(
        &self,
        path: &str,
        key_header: Option<&str>,
    ) -> Result<WebSocket, (StatusCode, Value)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}{path}", self.base.replacen("http", "ws", 1));
        let mut request = url.into_client_request().expect("valid ws url");
        if let Some(key) = key_header {
            request
                .headers_mut()
                .insert("x-api-key", key.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
                let body = response.body().clone().unwrap_or_default();
                let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                Err((status, value))
            }
            Err(error) => panic!("websocket connect failed: {error}"),
        }
    }

    /// A job stream opened with `?token=`.
    pub async fn watch_job(&self, job_id: &str, token: &str) -> WebSocket {
        self.ws(&format!("/api/v1/realtime/{job_id}?token={token}"), None)
            .await
            .expect("job stream opens")
    }

    /// A space stream opened with `?token=` and any extra query.
    pub async fn watch_space(&self, space_id: &str, token: &str, query: &str) -> WebSocket {
        self.ws(
            &format!("/api/v1/realtime/spaces/{space_id}?token={token}{query}"),
            None,
        )
        .await
        .expect("space stream opens")
    }
}

/// The next JSON message (bounded wait); pings and pongs are skipped.
pub async fn next_json(socket: &mut WebSocket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10s")
            .expect("stream open")
            .expect("valid frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON message"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the server closes the stream; returns its close frame.
pub async fn next_close(socket: &mut WebSocket) -> Option<CloseFrame> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("closed within 20s");
        match message {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Whether nothing arrives within `wait` (the stream stays open and quiet).
pub async fn stays_quiet(socket: &mut WebSocket, wait: Duration) -> bool {
    tokio::time::timeout(wait, socket.next()).await.is_err()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn event_types(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect()
}
