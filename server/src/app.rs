//! Wiring: bind listeners first (failing fast with the address), open the database and the
//! session store, migrate, then serve gRPC and HTTP until the shutdown token is cancelled.
//! Shutdown stops accepting, lets in-flight RPCs finish within the grace period, and ends
//! server streams (they watch the same token).

use crate::auth::{self, Authenticator};
use crate::grpc::{AdminApi, CodexApi, CommandApi, DispatchApi, layer::RpcObserverLayer};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::session::{MemorySessionStore, RedisSessionStore, SessionStore};
use crate::state::AppState;
use crate::store::Store;
use anyhow::{Context, bail};
use facteur_config::{Config, redact_url};
use facteur_proto::v1::{
    admin_service_server::AdminServiceServer, codex_service_server::CodexServiceServer,
    command_service_server::CommandServiceServer, dispatch_service_server::DispatchServiceServer,
};
use facteur_runtime::supervise::{Lifetime, Supervisor};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// A generated service that accepts gzip- and zstd-compressed requests and compresses its
/// answers the same way when the caller accepts it (advertised in `grpc-accept-encoding`).
macro_rules! compressed {
    ($svc:expr) => {
        $svc.accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .send_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Zstd)
    };
}

/// A started server.
pub struct RunningServer {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Shared state (tests inspect the store and metrics through it).
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Starts shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until both listeners have stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.handle.await.context("server task panicked")?
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown();
        self.wait().await
    }
}

fn parse_addr(key: &str, s: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("{key} `{s}` is not a socket address"))
}

async fn bind(key: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// Opens the database named by the configuration and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.database_url();
    let store = Store::connect(
        url,
        config.database.max_connections,
        Duration::from_secs(config.database.connect_timeout_seconds.max(1)),
    )
    .await
    .with_context(|| format!("cannot open database {}", redact_url(url)))?
    .with_codex_batch_slots(config.database.codex_batch_slots as usize);
    store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate database {}", redact_url(url)))?;
    tracing::info!(backend = store.backend_name(), url = %redact_url(url), "database ready");
    Ok(store)
}

/// The session store named by the configuration.
pub fn open_sessions(config: &Config) -> anyhow::Result<Arc<dyn SessionStore>> {
    if config.redis.url.is_empty() {
        tracing::info!("session store: in-memory (set redis.url for several replicas)");
        return Ok(Arc::new(MemorySessionStore::new()));
    }
    let store = RedisSessionStore::new(
        config.redis.url.expose(),
        &config.redis.key_prefix,
        config.redis.pool_size,
        Duration::from_millis(config.redis.timeout_ms),
    )?;
    tracing::info!(url = %redact_url(config.redis.url.expose()), "session store: redis");
    Ok(Arc::new(store))
}

/// Starts the server; returns once it accepts connections.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<RunningServer> {
    let grpc_addr = parse_addr(
        "server.grpc_listen_address",
        &config.server.grpc_listen_address,
    )?;
    let http_addr = parse_addr("server.listen_address", &config.server.listen_address)?;
    if !config.auth_enabled() {
        for (key, addr) in [
            ("server.grpc_listen_address", grpc_addr),
            ("server.listen_address", http_addr),
        ] {
            if !addr.ip().is_loopback() {
                bail!(
                    "refusing to listen on {addr} ({key}) without authentication: configure auth.tokens \
                     (FACTEUR_AUTH_TOKENS) or listen on a loopback address such as 127.0.0.1"
                );
            }
        }
        tracing::warn!("auth is off: no auth.tokens configured; listening on loopback only");
    }
    let grpc_listener = bind("server.grpc_listen_address", grpc_addr).await?;
    let http_listener = bind("server.listen_address", http_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let tls = tls_config(&config)?;
    let store = open_store(&config).await?;
    store
        .seed_policy(
            &config.role_map,
            crate::domain::policy::DefaultPolicy::parse(&config.discord.default_policy),
        )
        .await
        .context("cannot seed the role policy from role_map")?;
    let sessions = open_sessions(&config)?;
    let metrics = Arc::new(Metrics::new());
    let check_timeout = Duration::from_millis(config.redis.timeout_ms.clamp(100, 5000));
    let supervisor = Supervisor::new(shutdown.clone());
    {
        let metrics = metrics.clone();
        supervisor.on_restart(move |task| {
            metrics.add(
                crate::metrics::Metric::BackgroundTaskRestarts,
                vec![("task", task.into())],
                1,
            )
        });
    }
    let health = Health::new(
        store.clone(),
        sessions.clone(),
        metrics.clone(),
        check_timeout,
        supervisor.clone(),
    );
    let auth = Arc::new(Authenticator::from_config(&config.auth));
    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    let interval = Duration::from_secs(config.server.health_check_interval_seconds.max(1));

    let state = Arc::new(AppState {
        catalog: crate::domain::catalog::Catalog::from_config(&config),
        argo_ui: crate::domain::workflow::ArgoUi::of(&config),
        dispatch_policy: crate::domain::dispatch::DispatchPolicy::from_config(&config.dispatcher),
        dispatch_wake: tokio::sync::Notify::new(),
        guilds_wake: tokio::sync::Notify::new(),
        auth: auth.clone(),
        config,
        store,
        sessions,
        metrics: metrics.clone(),
        health: health.clone(),
        started_at: chrono::Utc::now(),
        shutdown: shutdown.clone(),
        supervisor: supervisor.clone(),
        completions: Default::default(),
    });

    // The commands of labelled WorkflowTemplates, as last reported, before anything is served.
    crate::service::templates::reload(&state)
        .await
        .context("cannot read the WorkflowTemplate commands")?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health.publish(&reporter).await;
    spawn_background(&supervisor, &state, &health, reporter, interval);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(facteur_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcio's reflection client (Python) speaks only v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(facteur_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .context("invalid TLS configuration")?;
    }
    let router = builder
        .layer(RpcObserverLayer(metrics))
        .add_service(compressed!(health_service))
        .add_service(compressed!(reflection_v1))
        .add_service(compressed!(reflection_v1alpha))
        .add_service(InterceptedService::new(
            compressed!(CommandServiceServer::new(CommandApi(state.clone()))),
            auth::interceptor(auth.clone(), auth::allowed::COMMAND),
        ))
        .add_service(InterceptedService::new(
            compressed!(CodexServiceServer::new(CodexApi(state.clone()))),
            auth::interceptor(auth.clone(), auth::allowed::CODEX),
        ))
        .add_service(InterceptedService::new(
            compressed!(DispatchServiceServer::new(DispatchApi(state.clone()))),
            auth::interceptor(auth.clone(), auth::allowed::DISPATCH),
        ))
        .add_service(InterceptedService::new(
            compressed!(AdminServiceServer::new(AdminApi(state.clone()))),
            auth::interceptor(auth, auth::allowed::ADMIN),
        ));

    // Nagle's algorithm plus delayed ACKs adds ~40 ms to small request/response exchanges.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
        |s| {
            s.inspect(|tcp| {
                let _ = tcp.set_nodelay(true);
            })
        },
    );
    let grpc = router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let http_listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http = axum::serve(http_listener, crate::http::router(state.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tracing::info!(grpc = %grpc_addr, http = %http_addr, version = env!("CARGO_PKG_VERSION"), "facteur serving");

    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        let both = async {
            let (g, h) = tokio::join!(grpc, http.into_future());
            g.context("gRPC server failed")?;
            h.context("HTTP server failed")?;
            supervisor.join(grace).await;
            // A background task that could not be kept alive is why the server stopped.
            if let Some(why) = supervisor.failed() {
                anyhow::bail!("{why}");
            }
            anyhow::Ok(())
        };
        let deadline = async {
            token.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            r = both => r,
            _ = deadline => {
                tracing::warn!(grace_seconds = grace.as_secs(), "in-flight requests did not finish in time; stopping anyway");
                Err(anyhow::anyhow!(
                    "the shutdown grace of {} s (server.shutdown_grace_seconds) ran out: in-flight requests were cut",
                    grace.as_secs()
                ))
            }
        }
    });
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        state,
        shutdown,
        handle,
    })
}

/// The server's long-lived background tasks, each owned by `supervisor` (restarted when it
/// dies; the process stops when one cannot be kept alive).
fn spawn_background(
    supervisor: &Supervisor,
    state: &Arc<AppState>,
    health: &Health,
    reporter: tonic_health::server::HealthReporter,
    interval: Duration,
) {
    let shutdown = &state.shutdown;
    {
        let state = state.clone();
        supervisor.spawn("templates", Lifetime::UntilShutdown, move || {
            let state = state.clone();
            async move {
                crate::service::templates::follow(state).await;
                Ok(())
            }
        });
    }

    {
        let (health, shutdown) = (health.clone(), shutdown.clone());
        supervisor.spawn("health", Lifetime::UntilShutdown, move || {
            let (health, reporter, shutdown) = (health.clone(), reporter.clone(), shutdown.clone());
            async move {
                health.watch(reporter, interval, shutdown).await;
                Ok(())
            }
        });
    }
    if !state.config.dispatcher.disabled {
        let state = state.clone();
        supervisor.spawn("assignment", Lifetime::UntilShutdown, move || {
            let state = state.clone();
            async move {
                crate::service::dispatch::watch_served(
                    state,
                    crate::service::dispatch::ASSIGNMENT_REFRESH,
                )
                .await;
                Ok(())
            }
        });
    }
    {
        let state = state.clone();
        supervisor.spawn("retention", Lifetime::UntilShutdown, move || {
            let state = state.clone();
            async move { crate::service::history::follow(state).await }
        });
    }
    {
        let state = state.clone();
        supervisor.spawn("feed-lag", Lifetime::UntilShutdown, move || {
            let state = state.clone();
            async move { crate::service::history::watch_feed_lag(state).await }
        });
    }
}

fn tls_config(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let s = &config.server;
    if s.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let read = |key: &str, path: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {key} `{path}`"))
    };
    let identity = Identity::from_pem(
        read("server.tls_cert_file", &s.tls_cert_file)?,
        read("server.tls_key_file", &s.tls_key_file)?,
    );
    let mut tls = ServerTlsConfig::new().identity(identity);
    if !s.tls_client_ca_file.is_empty() {
        tls = tls.client_ca_root(Certificate::from_pem(read(
            "server.tls_client_ca_file",
            &s.tls_client_ca_file,
        )?));
    }
    Ok(Some(tls))
}
