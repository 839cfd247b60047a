use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use emit_core::auth::RateLimit;
use emit_core::{CoreConfig, RunningCore, Secret};
use emit_gateway::{GatewayConfig, RunningGateway};
use emit_proto::v1::job_service_client::JobServiceClient;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::transport::Channel;

pub const ADMIN_KEY: &str = "emit_test_admin_key";

pub struct TestApp {
    pub base: String,
    pub grpc_url: String,
    pub http: reqwest::Client,
    dir: PathBuf,
    rate_limit: RateLimit,
    core: Option<RunningCore>,
    gateway: Option<RunningGateway>,
}

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
        let dir = std::env::temp_dir().join(format!("emit-test-{}", ulid::Ulid::new()));
        let rate_limit = RateLimit(per_second.and_then(NonZeroU32::new));
        let mut app = Self {
            base: String::new(),
            grpc_url: String::new(),
            http: reqwest::Client::new(),
            dir,
            rate_limit,
            core: None,
            gateway: None,
        };
        app.start().await;
        app
    }

    pub fn database_url(&self) -> String {
        format!("sqlite://{}/emit.db", self.dir.display())
    }

    async fn start(&mut self) {
        let core = emit_core::start(CoreConfig {
            grpc_addr: loopback(),
            database_url: self.database_url(),
            admin_key: Some(Secret(ADMIN_KEY.into())),
            rate_limit: self.rate_limit,
        })
        .await
        .expect("core starts");
        let gateway = emit_gateway::start(GatewayConfig {
            http_addr: loopback(),
            core_url: format!("http://{}", core.grpc_addr),
        })
        .await
        .expect("gateway starts");
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
        self.start().await;
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

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
