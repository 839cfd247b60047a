//! The `emit` command: run the server (core and gateway together or apart)
//! and administer spaces and tokens over the core's gRPC admin API.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use emit_core::auth::RateLimit;
use emit_core::callbacks::CallbackConfig;
use emit_core::clock::Clock;
use emit_core::realtime::StreamLimits;
use emit_core::retention::{RetentionConfig, RetentionPolicy};
use emit_core::{CoreConfig, Secret};
use emit_gateway::{CoreLink, GatewayConfig};
use emit_proto::v1 as pb;
use emit_proto::v1::admin_service_client::AdminServiceClient;

#[derive(Parser)]
#[command(
    name = "emit",
    version,
    about = "A self-hostable job dispatch server",
    after_help = "Start here: `emit serve` runs everything with SQLite in ./emit-data/ \
                  and prints the admin key on its first start."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line). The filter is RUST_LOG (default `info`).
    #[arg(long, env = "EMIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Send traces (OpenTelemetry, OTLP over gRPC) to this collector, e.g.
    /// http://127.0.0.1:4317; W3C `traceparent` is followed from REST
    /// callers through the gateway and the core to the store.
    #[arg(long, env = "EMIT_OTLP_ENDPOINT", global = true)]
    otlp_endpoint: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run core and gateway in one process (SQLite by default).
    Serve {
        #[command(flatten)]
        core: CoreArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Run the gRPC core alone (put gateways in front with `emit gateway`).
    Core {
        #[command(flatten)]
        core: CoreArgs,
    },
    /// Run the REST/WebSocket gateway alone, in front of a core.
    Gateway {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The core's gRPC address, e.g. http://127.0.0.1:50051.
        #[arg(long, env = "EMIT_CORE_URL")]
        core_url: String,
    },
    /// Manage spaces (over the core's gRPC admin API).
    Space {
        #[command(subcommand)]
        command: SpaceCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage a space's API tokens (over the core's gRPC admin API).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Operate on one job (over the core's gRPC job API, with the admin key
    /// or a key with the matching scope).
    Job {
        #[command(subcommand)]
        command: JobCommand,
        #[command(flatten)]
        admin: AdminArgs,
        /// `table` or `json` (one object per line for `tail`); the default
        /// is a table for `list` and `tail`, JSON for the others.
        #[arg(long, value_enum, global = true)]
        output: Option<Output>,
    },
    /// Copy a running server's SQLite database to PATH, consistently, while
    /// it serves (PostgreSQL: use pg_dump, see the README).
    Backup {
        /// Where the copy goes; must not exist yet.
        path: std::path::PathBuf,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Recover access: replace the stored admin key.
    AdminKey {
        #[command(subcommand)]
        command: AdminKeyCommand,
    },
}

#[derive(Args)]
struct CoreArgs {
    /// Address the gRPC core listens on.
    #[arg(long, env = "EMIT_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    #[command(flatten)]
    database: DatabaseArgs,
    /// Admin key (at least 32 characters); when unset one is generated on
    /// first start, stored hashed and printed once.
    #[arg(long, env = "EMIT_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Requests per second allowed to each API key (0 disables the limit).
    #[arg(long, env = "EMIT_RATE_LIMIT", default_value_t = 1000)]
    rate_limit: u32,
    /// Commits a stream watcher may fall behind before it is disconnected.
    #[arg(long, env = "EMIT_STREAM_QUEUE", default_value_t = StreamLimits::default().watcher_queue)]
    stream_queue: usize,
    /// Most events replayed to a space stream reconnecting with `since`.
    #[arg(long, env = "EMIT_REPLAY_LIMIT", default_value_t = StreamLimits::default().replay_limit)]
    replay_limit: u32,
    /// Development and tests only: let callbacks reach loopback, private and
    /// link-local addresses.
    #[arg(long, env = "EMIT_CALLBACK_ALLOW_PRIVATE")]
    callback_allow_private: bool,
    /// The dashboard's public base URL (e.g. https://emit.example.com), for
    /// links to jobs in Slack notifications.
    #[arg(long, env = "EMIT_PUBLIC_URL")]
    public_url: Option<String>,
    /// How long completed jobs are kept before they are deleted with their
    /// events and logs: seconds, or 90s, 15m, 12h, 7d; 0 keeps them forever.
    /// A space may set its own.
    #[arg(long, env = "EMIT_RETAIN_COMPLETED", default_value = "7d", value_parser = parse_age, value_name = "AGE")]
    retain_completed: u64,
    /// How long dead jobs are kept (as --retain-completed).
    #[arg(long, env = "EMIT_RETAIN_DEAD", default_value = "30d", value_parser = parse_age, value_name = "AGE")]
    retain_dead: u64,
    /// How long killed jobs are kept (as --retain-completed).
    #[arg(long, env = "EMIT_RETAIN_KILLED", default_value = "7d", value_parser = parse_age, value_name = "AGE")]
    retain_killed: u64,
    /// How often the retention sweeper looks for expired jobs.
    #[arg(long, env = "EMIT_RETENTION_SWEEP", default_value = "30s", value_parser = parse_age, value_name = "AGE")]
    retention_sweep: u64,
}

/// An age: whole seconds, or a number with a unit s, m, h or d.
fn parse_age(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => (&text[..at], unit),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("unknown unit '{unit}' (use s, m, h or d)")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not an age like 30, 90s, 15m, 12h or 7d"))?;
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too long an age"))
}

#[derive(Args)]
struct DatabaseArgs {
    /// Where jobs live: sqlite://PATH (created if missing) or
    /// postgres://USER:PASSWORD@HOST:PORT/DB (several cores may share it).
    #[arg(
        long,
        env = "EMIT_DATABASE_URL",
        default_value = "sqlite://./emit-data/emit.db"
    )]
    database_url: String,
    /// Seconds a start keeps retrying a database that does not answer yet
    /// (PostgreSQL still starting), saying so in the log.
    #[arg(long, env = "EMIT_DATABASE_WAIT", default_value_t = 30)]
    database_wait: u64,
}

#[derive(Args)]
struct GatewayArgs {
    /// Address the REST/WebSocket gateway listens on.
    #[arg(long, env = "EMIT_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Messages a WebSocket client may leave unread before it is disconnected.
    #[arg(long, env = "EMIT_WS_QUEUE", default_value_t = GatewayConfig::DEFAULT_STREAM_QUEUE)]
    ws_queue: usize,
}

impl GatewayArgs {
    fn config(&self, core: CoreLink) -> GatewayConfig {
        GatewayConfig {
            http_addr: self.http_addr,
            core,
            stream_queue: self.ws_queue,
            timeouts: Default::default(),
        }
    }
}

#[derive(Args)]
struct AdminArgs {
    /// The core's gRPC address.
    #[arg(
        long,
        env = "EMIT_CORE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    core_url: String,
    /// The admin key (printed on the server's first start).
    #[arg(long, env = "EMIT_ADMIN_KEY", hide_env_values = true, global = true)]
    admin_key: Option<String>,
}

#[derive(Subcommand)]
enum SpaceCommand {
    /// Create a space; it comes with a public jobs:read:progress token.
    Create {
        /// The space's name.
        name: String,
    },
    /// List every space.
    List,
    /// Show one space.
    Get {
        /// The space's id.
        space_id: String,
    },
    /// Issue a new public (jobs:read:progress) token; the old one stops
    /// working at once.
    RotatePublicToken {
        /// The space's id.
        space_id: String,
    },
    /// Set how long the space keeps finished jobs: an age (30, 90s, 15m,
    /// 12h, 7d), 0 for forever, or `default` for the server's.
    SetRetention {
        /// The space's id.
        space_id: String,
        /// How long completed jobs are kept.
        #[arg(long, value_parser = parse_retention_age)]
        completed: Option<RetentionAge>,
        /// How long dead jobs are kept.
        #[arg(long, value_parser = parse_retention_age)]
        dead: Option<RetentionAge>,
        /// How long killed jobs are kept.
        #[arg(long, value_parser = parse_retention_age)]
        killed: Option<RetentionAge>,
    },
}

type RetentionAge = pb::retention_age::Age;

fn parse_retention_age(text: &str) -> Result<RetentionAge, String> {
    if text == "default" {
        return Ok(RetentionAge::ServerDefault(true));
    }
    parse_age(text).map(RetentionAge::Seconds)
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; its key is printed once.
    Create {
        /// The space the token belongs to.
        space_id: String,
        /// Scopes, repeated or comma-separated: `--scope jobs:create,jobs:read`
        /// or `--scope jobs:create --scope jobs:read`. Shorthands: jobs:worker,
        /// jobs:write.
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// A name to recognise the token by.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List a space's tokens (never their keys).
    List {
        /// The space's id.
        space_id: String,
    },
    /// Revoke a token: its key stops working at once, on every core.
    Revoke {
        /// The space's id.
        space_id: String,
        /// The token's id (from `token list`).
        token_id: String,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// List a space's jobs, newest first.
    List {
        /// The space's id.
        space_id: String,
        /// Only jobs in this status.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs with this name.
        #[arg(long)]
        name: Option<String>,
        /// Most jobs shown (1 to 100).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Follow a space's events as they happen (the space stream), until
    /// interrupted.
    Tail {
        /// The space's id.
        space_id: String,
    },
    /// Show a job.
    Get {
        /// The job's id.
        job_id: String,
    },
    /// Stop a job and mark it killed.
    Kill {
        /// The job's id.
        job_id: String,
        /// Why, kept on the job.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run a dead or killed job again, with a fresh set of attempts.
    Retry {
        /// The job's id.
        job_id: String,
    },
    /// Delete a completed, dead or killed job with its events and logs.
    Delete {
        /// The job's id.
        job_id: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum AdminKeyCommand {
    /// Generate a new admin key, store it in place of the old one and print
    /// it once. Restart the server (every core) afterwards.
    Reset {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

impl CoreArgs {
    fn config(self) -> CoreConfig {
        CoreConfig {
            grpc_addr: self.grpc_addr,
            database_url: self.database.database_url,
            database_wait: Duration::from_secs(self.database.database_wait),
            admin_key: self.admin_key.map(Secret),
            rate_limit: RateLimit(NonZeroU32::new(self.rate_limit)),
            streams: StreamLimits {
                watcher_queue: self.stream_queue,
                replay_limit: self.replay_limit,
            },
            callbacks: CallbackConfig {
                allow_private: self.callback_allow_private,
                public_url: self.public_url,
                ..CallbackConfig::default()
            },
            retention: RetentionConfig {
                policy: RetentionPolicy {
                    completed: self.retain_completed,
                    dead: self.retain_dead,
                    killed: self.retain_killed,
                },
                sweep_every: Duration::from_secs(self.retention_sweep.max(1)),
            },
            clock: Clock::system(),
        }
    }
}

fn main() {
    keep_large_buffers_unmapped();
    let runtime = emit_core::server::runtime().expect("the tokio runtime starts");
    runtime.block_on(async_main());
}

async fn async_main() {
    let cli = Cli::parse();
    let traces = match init_logging(cli.log_format, cli.otlp_endpoint.as_deref()) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("error: {}", describe(&*error));
            std::process::exit(1);
        }
    };
    let outcome = run(cli.command).await;
    if let Some(traces) = traces
        && let Err(error) = traces.shutdown()
    {
        eprintln!("warning: traces not all sent: {error}");
    }
    if let Err(error) = outcome {
        eprintln!("error: {}", describe(&*error));
        std::process::exit(1);
    }
}

/// Logs to stderr and, with an OTLP endpoint, traces to the collector;
/// returns the trace pipeline, to be flushed at exit.
fn init_logging(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, AnyError> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs.json().boxed(),
        LogFormat::Text => {
            // Colour codes only for a person at a terminal, never into
            // journald or a file.
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            logs.with_ansi(colour).boxed()
        }
    };
    let (traces, provider) = match otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry::trace::TracerProvider;
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|error| format!("invalid --otlp-endpoint {endpoint}: {error}"))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("emit")
                        .build(),
                )
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("emit"));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    Ok(provider)
}

/// An error with its causes, `outer: inner: innermost`, each said once.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut said = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        cause = inner.source();
    }
    said
}

/// glibc raises its mmap threshold each time a large mapped buffer is freed
/// (up to 32 MiB). From then on, request bodies of that size come from heap
/// arenas that stay resident: a few 30 MiB bodies left the server 120 MiB
/// larger for good. A fixed threshold keeps large buffers mapped, so they go
/// back to the OS when freed (see `cli/tests/decoding.rs`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_large_buffers_unmapped() {
    const THRESHOLD_BYTES: libc::c_int = 256 * 1024;
    // SAFETY: mallopt only sets an allocator parameter, takes no pointers,
    // and runs before the runtime starts any thread; M_MMAP_THRESHOLD accepts
    // any value up to 32 MiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD_BYTES);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_buffers_unmapped() {}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

async fn run(command: Command) -> Result<(), AnyError> {
    match command {
        Command::Serve { core, gateway } => {
            // Both ports are taken before anything is stored, so a start that
            // cannot serve never generates (and loses) an admin key.
            let http = emit_gateway::bind(gateway.http_addr).await?;
            let mut core = emit_core::start(core.config()).await?;
            let gateway = http.serve(&gateway.config(CoreLink::in_process(core.in_process())))?;
            announce_admin_key(&core, Some(gateway.http_addr));
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = core.wait() => tracing::error!("core stopped unexpectedly"),
            }
            // No new leases from here; requests in flight finish through
            // the gateway, then the core drains.
            core.stop_dispatch();
            gateway.stop().await;
            core.stop().await;
        }
        Command::Core { core } => {
            let mut core = emit_core::start(core.config()).await?;
            announce_admin_key(&core, None);
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = core.wait() => tracing::error!("core stopped unexpectedly"),
            }
            core.stop().await;
        }
        Command::Gateway { gateway, core_url } => {
            let gateway = emit_gateway::start(gateway.config(CoreLink::Url(core_url))).await?;
            println!(
                "emit gateway is serving: http://{} (REST, WebSockets)",
                gateway.http_addr
            );
            shutdown_signal().await;
            gateway.stop().await;
        }
        Command::Space { command, admin } => space(command, admin).await?,
        Command::Token { command, admin } => token(command, admin).await?,
        Command::Job {
            command,
            admin,
            output,
        } => job(command, admin, output).await?,
        Command::Backup { path, database } => {
            emit_core::store::sqlite::backup(&database.database_url, &path).await?;
            println!("Backed up {} to {}", database.database_url, path.display());
        }
        Command::AdminKey {
            command: AdminKeyCommand::Reset { database },
        } => {
            let Secret(key) = emit_core::server::reset_admin_key(
                &database.database_url,
                Duration::from_secs(database.database_wait),
            )
            .await?;
            println!("New admin key (shown only once, store it now): {key}");
            println!("Restart the server (every core) for it to take effect.");
        }
    }
    Ok(())
}

/// Printed once everything listens, so the key is never shown by a start
/// that then fails; to stdout, never to the log (only its hash is stored).
/// The serving line names the ports actually bound: the testkit starts
/// servers on port 0 and reads them from it (`Process::spawn_announced`).
fn announce_admin_key(core: &emit_core::RunningCore, http_addr: Option<SocketAddr>) {
    if let Some(Secret(key)) = &core.generated_admin_key {
        println!("Generated admin key (shown only once, store it now): {key}");
        println!("Lost it later? Stop the server and run `emit admin-key reset`.");
    }
    match http_addr {
        Some(http) => println!(
            "emit is serving: http://{http} (REST, WebSockets), gRPC on {}",
            core.grpc_addr
        ),
        None => println!("emit core is serving: gRPC on {}", core.grpc_addr),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
}

async fn admin_client(
    admin: &AdminArgs,
) -> Result<AdminServiceClient<tonic::transport::Channel>, AnyError> {
    Ok(AdminServiceClient::new(core_channel(admin).await?))
}

async fn core_channel(admin: &AdminArgs) -> Result<tonic::transport::Channel, AnyError> {
    let endpoint = tonic::transport::Endpoint::from_shared(admin.core_url.clone())
        .map_err(|error| format!("invalid --core-url {}: {error}", admin.core_url))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|error| {
        format!(
            "cannot reach the core at {}: {} (is `emit serve` or `emit core` running there? see --core-url)",
            admin.core_url,
            describe(&error)
        )
    })?;
    Ok(channel)
}

/// A refusal or failure of an admin call, saying where and why.
fn call_failed(admin: &AdminArgs) -> impl Fn(tonic::Status) -> AnyError + '_ {
    move |status| {
        let cause = match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal => {
                describe(&status)
            }
            _ => status.message().to_owned(),
        };
        format!(
            "the core at {} answered {:?}: {cause}",
            admin.core_url,
            status.code()
        )
        .into()
    }
}

/// The core's answer to a call, or what it refused, naming the core.
async fn answer<T>(
    admin: &AdminArgs,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, AnyError> {
    Ok(call.await.map_err(call_failed(admin))?.into_inner())
}

fn authorized<T>(admin: &AdminArgs, message: T) -> Result<tonic::Request<T>, AnyError> {
    let key = admin
        .admin_key
        .as_deref()
        .ok_or("the admin key is required (--admin-key or EMIT_ADMIN_KEY)")?;
    let mut request = tonic::Request::new(message);
    let value = key
        .parse()
        .map_err(|_| "the admin key must be printable ASCII")?;
    request.metadata_mut().insert("x-api-key", value);
    Ok(request)
}

fn print_json(value: serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
}

fn space_json(space: pb::Space) -> serde_json::Value {
    let retention = space.retention.map(|retention| {
        serde_json::json!({
            "completed": retention.completed_seconds,
            "dead": retention.dead_seconds,
            "killed": retention.killed_seconds,
        })
    });
    serde_json::json!({
        "id": space.id,
        "name": space.name,
        "publicToken": space.public_token,
        "retention": retention,
    })
}

fn job_json(job: Option<pb::Job>) -> serde_json::Value {
    let job = job.unwrap_or_default();
    let status = pb::JobStatus::try_from(job.status)
        .map(|status| {
            status
                .as_str_name()
                .trim_start_matches("JOB_STATUS_")
                .to_lowercase()
        })
        .unwrap_or_default();
    serde_json::json!({
        "id": job.id,
        "spaceId": job.space_id,
        "name": job.name,
        "status": status,
        "attemptNumber": job.attempt_number,
        "maxRetries": job.max_retries,
        "error": job.last_error,
    })
}

async fn job(
    command: JobCommand,
    admin: AdminArgs,
    output: Option<Output>,
) -> Result<(), AnyError> {
    let channel = core_channel(&admin).await?;
    let mut client = emit_proto::v1::job_service_client::JobServiceClient::new(channel.clone());
    let job = match command {
        JobCommand::List {
            space_id,
            status,
            name,
            limit,
        } => {
            let output = output.unwrap_or(Output::Table);
            let status = match status.as_deref() {
                None => pb::JobStatus::Unspecified,
                Some(text) => {
                    pb::JobStatus::from_str_name(&format!("JOB_STATUS_{}", text.to_uppercase()))
                        .ok_or_else(|| format!("unknown status {text:?}"))?
                }
            };
            let request = pb::ListJobsRequest {
                space_id,
                status: status as i32,
                limit: Some(limit),
                name,
                ..Default::default()
            };
            let listed = client
                .list_jobs(authorized(&admin, request)?)
                .await
                .map_err(call_failed(&admin))?
                .into_inner();
            let jobs: Vec<_> = listed
                .jobs
                .into_iter()
                .map(|job| job_json(Some(job)))
                .collect();
            match output {
                Output::Json => {
                    print_json(serde_json::json!({ "jobs": jobs, "total": listed.total }))
                }
                Output::Table => {
                    println!(
                        "{:<26}  {:<24}  {:<9}  {:>7}  ERROR",
                        "ID", "NAME", "STATUS", "ATTEMPT"
                    );
                    for job in &jobs {
                        println!(
                            "{:<26}  {:<24}  {:<9}  {:>7}  {}",
                            job["id"].as_str().unwrap_or_default(),
                            job["name"].as_str().unwrap_or_default(),
                            job["status"].as_str().unwrap_or_default(),
                            job["attemptNumber"],
                            job["error"].as_str().unwrap_or_default(),
                        );
                    }
                    println!("{} of {} shown", jobs.len(), listed.total);
                }
            }
            return Ok(());
        }
        JobCommand::Tail { space_id } => {
            let output = output.unwrap_or(Output::Table);
            let mut events = emit_proto::v1::event_service_client::EventServiceClient::new(channel);
            let request = pb::WatchSpaceRequest {
                space_id,
                ..Default::default()
            };
            let mut stream = events
                .watch_space(authorized(&admin, request)?)
                .await
                .map_err(call_failed(&admin))?
                .into_inner();
            while let Some(message) = stream.message().await.map_err(call_failed(&admin))? {
                let event = match message.message {
                    Some(pb::watch_space_response::Message::Event(event)) => event,
                    Some(pb::watch_space_response::Message::Connected(connected)) => {
                        match output {
                            Output::Json => println!(
                                "{}",
                                serde_json::json!({ "type": "connected", "seq": connected.seq })
                            ),
                            Output::Table => println!(
                                "# following space {} from seq {}",
                                connected.space_id, connected.seq
                            ),
                        }
                        continue;
                    }
                    Some(pb::watch_space_response::Message::SpaceEvent(space)) => {
                        let kind = pb::SpaceEventType::try_from(space.r#type)
                            .map(|kind| {
                                kind.as_str_name()
                                    .trim_start_matches("SPACE_EVENT_TYPE_")
                                    .to_lowercase()
                            })
                            .unwrap_or_default();
                        let name = space.name.unwrap_or_else(|| "*".to_owned());
                        match output {
                            Output::Json => println!(
                                "{}",
                                serde_json::json!({ "type": kind, "name": name, "seq": space.seq })
                            ),
                            Output::Table => println!("{:>8}  {kind:<16} {name}", space.seq),
                        }
                        continue;
                    }
                    None => continue,
                };
                let kind = pb::JobEventType::try_from(event.r#type)
                    .map(|kind| {
                        kind.as_str_name()
                            .trim_start_matches("JOB_EVENT_TYPE_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                let status = pb::JobStatus::try_from(event.status)
                    .map(|status| {
                        status
                            .as_str_name()
                            .trim_start_matches("JOB_STATUS_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                match output {
                    Output::Json => println!(
                        "{}",
                        serde_json::json!({
                            "seq": event.seq,
                            "type": kind,
                            "jobId": event.job_id,
                            "name": event.job_name,
                            "status": status,
                        })
                    ),
                    Output::Table => println!(
                        "{:>8}  {:<16}  {:<26}  {:<24}  {status}",
                        event.seq, kind, event.job_id, event.job_name
                    ),
                }
            }
            return Ok(());
        }
        JobCommand::Get { job_id } => {
            let request = authorized(&admin, pb::GetJobRequest { job_id })?;
            answer(&admin, client.get_job(request)).await?.job
        }
        JobCommand::Kill { job_id, reason } => {
            let request = authorized(&admin, pb::KillJobRequest { job_id, reason })?;
            answer(&admin, client.kill_job(request)).await?.job
        }
        JobCommand::Retry { job_id } => {
            let request = authorized(&admin, pb::RetryJobRequest { job_id })?;
            answer(&admin, client.retry_job(request)).await?.job
        }
        JobCommand::Delete { job_id } => {
            let request = authorized(&admin, pb::DeleteJobRequest { job_id })?;
            answer(&admin, client.delete_job(request)).await?.job
        }
    };
    let job = job_json(job);
    match output.unwrap_or(Output::Json) {
        Output::Json => print_json(job),
        Output::Table => {
            if let Some(fields) = job.as_object() {
                for (field, value) in fields {
                    let value = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    println!("{field:<14} {value}");
                }
            }
        }
    }
    Ok(())
}

async fn space(command: SpaceCommand, admin: AdminArgs) -> Result<(), AnyError> {
    let mut client = admin_client(&admin).await?;
    match command {
        SpaceCommand::Create { name } => {
            let response = client
                .create_space(authorized(&admin, pb::CreateSpaceRequest { name })?)
                .await
                .map_err(call_failed(&admin))?;
            print_json(space_json(response.into_inner().space.unwrap_or_default()));
        }
        SpaceCommand::List => {
            let response = client
                .list_spaces(authorized(&admin, pb::ListSpacesRequest {})?)
                .await
                .map_err(call_failed(&admin))?;
            let spaces = response
                .into_inner()
                .spaces
                .into_iter()
                .map(space_json)
                .collect();
            print_json(serde_json::Value::Array(spaces));
        }
        SpaceCommand::RotatePublicToken { space_id } => {
            let response = client
                .rotate_public_token(authorized(
                    &admin,
                    pb::RotatePublicTokenRequest { space_id },
                )?)
                .await
                .map_err(call_failed(&admin))?;
            print_json(space_json(response.into_inner().space.unwrap_or_default()));
        }
        SpaceCommand::SetRetention {
            space_id,
            completed,
            dead,
            killed,
        } => {
            let age =
                |age: Option<RetentionAge>| age.map(|age| pb::RetentionAge { age: Some(age) });
            let request = pb::UpdateSpaceRequest {
                space_id,
                retention: Some(pb::RetentionChange {
                    completed: age(completed),
                    dead: age(dead),
                    killed: age(killed),
                }),
                ..Default::default()
            };
            let response = client
                .update_space(authorized(&admin, request)?)
                .await
                .map_err(call_failed(&admin))?;
            print_json(space_json(response.into_inner().space.unwrap_or_default()));
        }
        SpaceCommand::Get { space_id } => {
            let response = client
                .get_space(authorized(&admin, pb::GetSpaceRequest { space_id })?)
                .await
                .map_err(call_failed(&admin))?;
            print_json(space_json(response.into_inner().space.unwrap_or_default()));
        }
    }
    Ok(())
}

async fn token(command: TokenCommand, admin: AdminArgs) -> Result<(), AnyError> {
    let mut client = admin_client(&admin).await?;
    let token_json = |token: pb::Token| serde_json::json!({ "id": token.id, "name": token.name, "scopes": token.scopes });
    match command {
        TokenCommand::Create {
            space_id,
            scopes,
            name,
        } => {
            let request = pb::CreateTokenRequest {
                space_id,
                name,
                scopes,
            };
            let response = client
                .create_token(authorized(&admin, request)?)
                .await
                .map_err(call_failed(&admin))?
                .into_inner();
            let mut json = token_json(response.token.unwrap_or_default());
            json["key"] = response.key.into();
            print_json(json);
        }
        TokenCommand::List { space_id } => {
            let response = client
                .list_tokens(authorized(&admin, pb::ListTokensRequest { space_id })?)
                .await
                .map_err(call_failed(&admin))?;
            let tokens = response
                .into_inner()
                .tokens
                .into_iter()
                .map(token_json)
                .collect();
            print_json(serde_json::Value::Array(tokens));
        }
        TokenCommand::Revoke { space_id, token_id } => {
            client
                .revoke_token(authorized(
                    &admin,
                    pb::RevokeTokenRequest { space_id, token_id },
                )?)
                .await
                .map_err(call_failed(&admin))?;
            println!("revoked");
        }
    }
    Ok(())
}
