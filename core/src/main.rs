//! The `emit` command: run the server (core and gateway together or apart)
//! and administer spaces and tokens over the core's gRPC admin API.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use clap::{Args, Parser, Subcommand};
use emit_core::auth::RateLimit;
use emit_core::callbacks::CallbackConfig;
use emit_core::realtime::StreamLimits;
use emit_core::{CoreConfig, Secret};
use emit_gateway::GatewayConfig;
use emit_proto::v1 as pb;
use emit_proto::v1::admin_service_client::AdminServiceClient;

#[derive(Parser)]
#[command(name = "emit", version, about = "A self-hostable job dispatch server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Run the gRPC core alone.
    Core {
        #[command(flatten)]
        core: CoreArgs,
    },
    /// Run the REST/WebSocket gateway alone, in front of a core.
    Gateway {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long, env = "EMIT_CORE_URL")]
        core_url: String,
    },
    /// Manage spaces.
    Space {
        #[command(subcommand)]
        command: SpaceCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage a space's API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
struct CoreArgs {
    #[arg(long, env = "EMIT_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    #[arg(
        long,
        env = "EMIT_DATABASE_URL",
        default_value = "sqlite://./emit-data/emit.db"
    )]
    database_url: String,
    /// Admin key; when unset one is generated on first start and printed once.
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
}

#[derive(Args)]
struct GatewayArgs {
    #[arg(long, env = "EMIT_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Messages a WebSocket client may leave unread before it is disconnected.
    #[arg(long, env = "EMIT_WS_QUEUE", default_value_t = GatewayConfig::DEFAULT_STREAM_QUEUE)]
    ws_queue: usize,
}

impl GatewayArgs {
    fn config(self, core_url: String) -> GatewayConfig {
        GatewayConfig {
            http_addr: self.http_addr,
            core_url,
            stream_queue: self.ws_queue,
        }
    }
}

#[derive(Args)]
struct AdminArgs {
    #[arg(
        long,
        env = "EMIT_CORE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    core_url: String,
    #[arg(long, env = "EMIT_ADMIN_KEY", hide_env_values = true, global = true)]
    admin_key: Option<String>,
}

#[derive(Subcommand)]
enum SpaceCommand {
    Create { name: String },
    List,
    Get { space_id: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; its key is printed once.
    Create {
        space_id: String,
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    List {
        space_id: String,
    },
    Revoke {
        space_id: String,
        token_id: String,
    },
}

impl CoreArgs {
    fn config(self) -> CoreConfig {
        CoreConfig {
            grpc_addr: self.grpc_addr,
            database_url: self.database_url,
            admin_key: self.admin_key.map(Secret),
            rate_limit: RateLimit(NonZeroU32::new(self.rate_limit)),
            streams: StreamLimits {
                watcher_queue: self.stream_queue,
                replay_limit: self.replay_limit,
            },
            callbacks: CallbackConfig {
                allow_private: self.callback_allow_private,
                ..CallbackConfig::default()
            },
        }
    }
}

fn main() {
    keep_large_buffers_unmapped();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    runtime.block_on(async_main());
}

async fn async_main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = run(Cli::parse().command).await {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// glibc raises its mmap threshold each time a large mapped buffer is freed
/// (up to 32 MiB). From then on, request bodies of that size come from heap
/// arenas that stay resident: a few 30 MiB bodies left the server 120 MiB
/// larger for good. A fixed threshold keeps large buffers mapped, so they go
/// back to the OS when freed (see `core/tests/decoding.rs`).
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
            let mut core = emit_core::start(core.config()).await?;
            announce_admin_key(&core);
            let gateway =
                emit_gateway::start(gateway.config(format!("http://{}", core.grpc_addr))).await?;
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
            announce_admin_key(&core);
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = core.wait() => tracing::error!("core stopped unexpectedly"),
            }
            core.stop().await;
        }
        Command::Gateway { gateway, core_url } => {
            let gateway = emit_gateway::start(gateway.config(core_url)).await?;
            shutdown_signal().await;
            gateway.stop().await;
        }
        Command::Space { command, admin } => space(command, admin).await?,
        Command::Token { command, admin } => token(command, admin).await?,
    }
    Ok(())
}

fn announce_admin_key(core: &emit_core::RunningCore) {
    if let Some(Secret(key)) = &core.generated_admin_key {
        // Printed to stdout once, never logged: only its hash is stored.
        println!("Generated admin key (shown only once, store it now): {key}");
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
    Ok(AdminServiceClient::connect(admin.core_url.clone()).await?)
}

fn authorized<T>(admin: &AdminArgs, message: T) -> Result<tonic::Request<T>, AnyError> {
    let key = admin
        .admin_key
        .as_deref()
        .ok_or("the admin key is required (--admin-key or EMIT_ADMIN_KEY)")?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-api-key", key.parse()?);
    Ok(request)
}

fn print_json(value: serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
}

fn space_json(space: pb::Space) -> serde_json::Value {
    serde_json::json!({ "id": space.id, "name": space.name, "publicToken": space.public_token })
}

async fn space(command: SpaceCommand, admin: AdminArgs) -> Result<(), AnyError> {
    let mut client = admin_client(&admin).await?;
    match command {
        SpaceCommand::Create { name } => {
            let response = client
                .create_space(authorized(&admin, pb::CreateSpaceRequest { name })?)
                .await?;
            print_json(space_json(response.into_inner().space.unwrap_or_default()));
        }
        SpaceCommand::List => {
            let response = client
                .list_spaces(authorized(&admin, pb::ListSpacesRequest {})?)
                .await?;
            let spaces = response
                .into_inner()
                .spaces
                .into_iter()
                .map(space_json)
                .collect();
            print_json(serde_json::Value::Array(spaces));
        }
        SpaceCommand::Get { space_id } => {
            let response = client
                .get_space(authorized(&admin, pb::GetSpaceRequest { space_id })?)
                .await?;
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
                .await?
                .into_inner();
            let mut json = token_json(response.token.unwrap_or_default());
            json["key"] = response.key.into();
            print_json(json);
        }
        TokenCommand::List { space_id } => {
            let response = client
                .list_tokens(authorized(&admin, pb::ListTokensRequest { space_id })?)
                .await?;
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
                .await?;
            println!("revoked");
        }
    }
    Ok(())
}
