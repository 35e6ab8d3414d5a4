//! Shared support of the cross-process suite: a real server on port 0 over SQLite or a freshly
//! created Postgres database, Redis with a unique key prefix, a TCP proxy that can cut a
//! dependency off, and condition-waiting helpers (no fixed sleeps).
//!
//! Postgres and Redis are real servers: `FACTEUR_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `FACTEUR_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Every test makes its own database and key prefix and removes them.

use facteur_client::{Client, ClientConfig};
use facteur_config::{Config, Process, Secret, TokenConfig};
use facteur_server::RunningServer;
use sea_orm::{ConnectionTrait, Database};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub mod discord;
pub mod fake_discord;
pub mod fake_kube;
pub mod redis_server;
pub mod stack;

/// Admin token used by [`with_tokens`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// argo-adapter token used by [`with_tokens`].
pub const ARGO_TOKEN: &str = "test-argo-token-0123456789";
/// discord-adapter token used by [`with_tokens`].
pub const DISCORD_TOKEN: &str = "test-discord-token-0123456789";
/// codex-submitter token used by [`with_tokens`].
pub const CODEX_TOKEN: &str = "test-codex-token-0123456789";

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A new database on the local Postgres server.
    Postgres,
}

fn postgres_admin_url() -> String {
    std::env::var("FACTEUR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Redis URL of the test server.
pub fn redis_url() -> String {
    std::env::var("FACTEUR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database made for one test; removed on drop.
pub struct TestDb {
    /// Connection URL.
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Creates an empty database on `backend`.
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("facteur.db").display()
                );
                TestDb {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("facteur_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(postgres_admin_url())
                    .await
                    .expect("connect to the test Postgres server");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                let _ = admin.close().await;
                let base = postgres_admin_url();
                let url = match base.rsplit_once('/') {
                    Some((head, _)) => format!("{head}/{name}"),
                    None => panic!("FACTEUR_TEST_POSTGRES_URL must name a database"),
                };
                TestDb {
                    url,
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee: use a private one on a helper thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = Database::connect(postgres_admin_url()).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A unique Redis key prefix; its keys are deleted on drop.
pub struct RedisPrefix(pub String);

impl RedisPrefix {
    /// `facteur-test:<uuid>:`.
    pub fn new() -> Self {
        RedisPrefix(format!("facteur-test:{}:", uuid::Uuid::new_v4().simple()))
    }
}

impl Default for RedisPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.0);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let Ok(pool) = deadpool_redis::Config::from_url(redis_url())
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                else {
                    return;
                };
                let Ok(mut conn) = pool.get().await else {
                    return;
                };
                let keys: Vec<String> = deadpool_redis::redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<i64, _> = deadpool_redis::redis::cmd("DEL")
                        .arg(keys)
                        .query_async(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A configuration for tests: loopback listeners on port 0, the given database, in-memory sessions.
pub fn config(db: &TestDb) -> Config {
    let mut c = facteur_config::load_from(None, &Default::default(), Process::Server)
        .expect("default config");
    c.server.grpc_listen_address = "127.0.0.1:0".into();
    c.server.listen_address = "127.0.0.1:0".into();
    c.server.health_check_interval_seconds = 1;
    c.server.shutdown_grace_seconds = 5;
    c.database.url = Secret(db.url.clone());
    c.database.max_connections = 5;
    c
}

/// Adds one token per role ([`ADMIN_TOKEN`], [`ARGO_TOKEN`], ...).
pub fn with_tokens(mut c: Config) -> Config {
    c.auth.tokens = [
        ("ops", "admin", ADMIN_TOKEN),
        ("argo", "argo-adapter", ARGO_TOKEN),
        ("discord", "discord-adapter", DISCORD_TOKEN),
        ("froussard", "codex-submitter", CODEX_TOKEN),
    ]
    .into_iter()
    .map(|(name, role, token)| TokenConfig {
        name: name.into(),
        role: role.into(),
        token: Secret(token.into()),
        cluster: String::new(),
    })
    .collect();
    c
}

/// A server started for one test.
pub struct TestServer {
    /// The running server.
    pub server: RunningServer,
}

impl TestServer {
    /// Starts `config` (validated like the binary does).
    pub async fn start(config: Config) -> TestServer {
        let errs = config.validate(Process::Server);
        assert!(errs.is_empty(), "test config invalid: {errs:?}");
        let server = Box::pin(facteur_server::start(config, CancellationToken::new()))
            .await
            .expect("server starts");
        TestServer { server }
    }

    /// `http://<grpc addr>`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.server.grpc_addr)
    }

    /// `http://<http addr><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.http_addr)
    }

    /// A client presenting `token` (empty: none).
    pub async fn client(&self, token: &str) -> Client {
        Client::connect(ClientConfig::new(self.grpc_url()).with_token(token))
            .await
            .expect("client connects")
    }

    /// Shuts down and waits.
    pub async fn stop(self) {
        self.server.stop().await.expect("clean shutdown");
    }
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes; panics with `what` on timeout.
#[track_caller]
pub fn wait_until<'a, F, Fut>(
    what: &'a str,
    timeout: Duration,
    mut cond: F,
) -> impl Future<Output = ()> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = bool> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + timeout;
        loop {
            if cond().await {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what} (at {caller})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A TCP proxy in front of a dependency that a test can cut off and restore, or slow down.
/// While cut, open connections are closed and new ones are accepted and closed at once.
pub struct CuttableProxy {
    /// Address to connect to instead of the upstream.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    stop: CancellationToken,
}

impl CuttableProxy {
    /// Proxies to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(tx);
        let stop = CancellationToken::new();
        let upstream = upstream.to_string();
        let (c, g, s, d) = (
            cut.clone(),
            generation.clone(),
            stop.clone(),
            delay_ms.clone(),
        );
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut killed = g.subscribe();
                let upstream = upstream.clone();
                let delay = d.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut up_read, mut up_write) = outbound.into_split();
                    let (mut down_read, mut down_write) = inbound.split();
                    // Answers are held back by the current delay, chunk by chunk.
                    let answers = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match up_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let ms = delay.load(Ordering::SeqCst);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if down_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy(&mut down_read, &mut up_write) => {}
                        _ = answers => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        CuttableProxy {
            addr,
            cut,
            delay_ms,
            generation,
            stop,
        }
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Holds every answer from the upstream back by `delay` (zero: none).
    pub fn slow_down(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation.send_modify(|g| *g += 1);
    }
}

/// A run for store-level set-up.
pub fn sample_run(key: &str) -> facteur_server::domain::NewRun {
    facteur_server::domain::NewRun {
        idempotency_key: key.into(),
        command: "dispatch".into(),
        source: facteur_server::domain::RunSource::Admin,
        requester: Default::default(),
        cluster: "default".into(),
        namespace: "argo-workflows".into(),
        workflow_template: "facteur-dispatch".into(),
        service_account: String::new(),
        workflow_name_prefix: "facteur-dispatch-".into(),
        parameters: [("payload".to_string(), "{}".to_string())].into(),
        parent_run_id: None,
        trace_parent: String::new(),
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status code and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    // A server may answer (413) before reading a large body; a failed write is then expected.
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http response head");
    let status_line = String::from_utf8_lossy(&buf[..split]).to_string();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let mut body = buf[split + 4..].to_vec();
    if status_line
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (code, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 2 + size + 2..];
    }
    out
}

/// Rows in a table (`codex_kb.x` on Postgres is `codex_kb_x` on SQLite: pass `codex_kb.x`).
pub async fn count_rows(store: &facteur_server::store::Store, table: &str) -> i64 {
    let db = store.connection();
    let backend = db.get_database_backend();
    let table = if backend == sea_orm::DatabaseBackend::Sqlite {
        table.replace("codex_kb.", "codex_kb_")
    } else {
        table.to_string()
    };
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .expect("count query")
        .expect("one row");
    row.try_get::<i64>("", "n").expect("count")
}

/// The catalog the command tests share: `deploy` with one required `service` option whose only
/// choice is `api`, allowed for members with `role`.
pub fn with_deploy_command(mut c: Config, role: &str) -> Config {
    use facteur_config::{ChoiceConfig, CommandConfig, OptionConfig};
    c.commands = vec![CommandConfig {
        name: "deploy".into(),
        description: "Deploy a service".into(),
        options: vec![OptionConfig {
            name: "service".into(),
            description: "Service".into(),
            kind: "string".into(),
            required: true,
            choices: vec![ChoiceConfig {
                name: "API".into(),
                value: "api".into(),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }];
    c.role_map.insert("deploy".into(), vec![role.into()]);
    c
}

/// The member every interaction test speaks for.
pub const MEMBER: &str = "300000000000000001";

/// An interaction of [`MEMBER`] (named `alice`) in `guild` with `roles`, as the discord-adapter
/// sends it.
pub fn interaction(
    id: &str,
    guild: &str,
    roles: &[&str],
) -> facteur_client::pb::InteractionContext {
    facteur_client::pb::InteractionContext {
        interaction_id: id.into(),
        application_id: "400000000000000001".into(),
        token: "interaction-token-secret".into(),
        guild_id: guild.into(),
        channel_id: "500000000000000001".into(),
        user_id: MEMBER.into(),
        user_name: "alice".into(),
        role_ids: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

/// `/deploy service:api` (the command of [`with_deploy_command`]) from `context`.
pub fn deploy_invoke(
    context: facteur_client::pb::InteractionContext,
) -> facteur_client::pb::InvokeRequest {
    use facteur_client::pb;
    pb::InvokeRequest {
        context: Some(context),
        kind: pb::InvocationKind::SlashCommand as i32,
        command: "deploy".into(),
        options: vec![pb::OptionValue {
            name: "service".into(),
            value: "api".into(),
        }],
        ..Default::default()
    }
}

/// Everything a person reads in a Discord message body (content, then each embed's title,
/// description and fields), for assertions on what a message says.
pub fn message_text(body: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let mut out = vec![s(&body["content"])];
    for e in body["embeds"].as_array().into_iter().flatten() {
        out.push(s(&e["title"]));
        out.push(s(&e["description"]));
        for f in e["fields"].as_array().into_iter().flatten() {
            out.push(format!("{}: {}", s(&f["name"]), s(&f["value"])));
        }
    }
    out.join("\n")
}

/// [`message_text`] of a server reply.
pub fn reply_text(r: &facteur_client::pb::Reply) -> String {
    let mut out = vec![r.content.clone()];
    for e in &r.embeds {
        out.push(e.title.clone());
        out.push(e.description.clone());
        out.extend(e.fields.iter().map(|f| format!("{}: {}", f.name, f.value)));
    }
    out.join("\n")
}

/// A guild's policy as `AdminService.GetPolicy` answers it.
pub async fn policy_of(c: &facteur_client::Client, guild: &str) -> facteur_client::pb::GuildPolicy {
    c.admin()
        .get_policy(facteur_client::pb::GetPolicyRequest {
            guild_id: guild.into(),
        })
        .await
        .expect("policy")
        .into_inner()
        .policy
        .expect("policy")
}
