//! A discord-adapter stack for tests and benchmarks: the real server, the adapter's HTTP
//! interactions endpoint on loopback, a fake Discord REST API, and requests signed with a test
//! Ed25519 key exactly as Discord signs them (timestamp + raw body).

use crate::fake_discord::FakeDiscord;
use crate::{
    Backend, CuttableProxy, DISCORD_TOKEN, RedisPrefix, TestDb, TestServer, config, http,
    redis_url, with_deploy_command, with_tokens,
};
use ed25519_dalek::{Signer, SigningKey};
use facteur_config::{CommandConfig, Config, OptionConfig, Secret};
use facteur_discord::{Adapter, verify::Verifier};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

/// The application id the stack registers as.
pub const APP: &str = "400000000000000001";
/// The guild every [`command`] comes from.
pub const GUILD: &str = "100000000000000001";
/// The role allowed to run `/deploy`.
pub const DEPLOYER: &str = "200000000000000001";
/// A role with no grant.
pub const OPS: &str = "200000000000000002";
/// The channel every [`command`] comes from.
pub const CHANNEL: &str = "500000000000000001";

/// The application's signing key (the public half is the adapter's `discord.public_key`).
pub fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// Hex of [`key`]'s public half.
pub fn public_hex() -> String {
    hex(&key().verifying_key().to_bytes())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `X-Signature-Ed25519` and `X-Signature-Timestamp` for `raw` signed by `k` at `ts`.
pub fn signature(k: &SigningKey, ts: i64, raw: &[u8]) -> (String, String) {
    let ts = ts.to_string();
    let mut msg = ts.as_bytes().to_vec();
    msg.extend_from_slice(raw);
    (hex(&k.sign(&msg).to_bytes()), ts)
}

/// A slash command interaction from a member of [`GUILD`] with `roles`.
pub fn command(id: &str, roles: &[&str], name: &str, options: Value) -> Value {
    json!({
        "id": id, "application_id": APP, "type": 2, "token": format!("token-{id}"), "version": 1,
        "guild_id": GUILD, "channel_id": CHANNEL, "locale": "en-US",
        "member": {"user": {"id": "300000000000000001", "username": "alice"}, "roles": roles},
        "data": {"id": "600000000000000001", "name": name, "type": 1, "options": options},
    })
}

/// How to build a [`Stack`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The server's database.
    pub backend: Backend,
    /// Sessions in Redis (a unique key prefix) instead of in memory.
    pub redis: bool,
    /// Put a [`CuttableProxy`] between the adapter and the server.
    pub proxy: bool,
    /// Codex implementation orchestration on (into `argo.namespace`).
    pub codex: bool,
    /// `argo.ui_base_url` (cards link to Argo when set).
    pub argo_ui: &'static str,
    /// `/deploy` shows its failed step's log tail.
    pub show_logs: bool,
    /// Roles that may approve `/deploy`'s suspend steps.
    pub approvers: &'static [&'static str],
    /// `/deploy`'s requester may not approve their own run.
    pub second_person: bool,
    /// `/deploy`'s configured quota of runs at once per guild.
    pub max_concurrent: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Sqlite,
            redis: false,
            proxy: false,
            codex: false,
            argo_ui: "",
            show_logs: false,
            approvers: &[],
            second_person: false,
            max_concurrent: None,
        }
    }
}

/// Server + adapter endpoint + fake Discord.
pub struct Stack {
    /// The server.
    pub srv: TestServer,
    /// The fake Discord REST API.
    pub discord: FakeDiscord,
    /// The adapter's interactions endpoint.
    pub endpoint: SocketAddr,
    /// The adapter's control-plane client.
    pub control: facteur_client::Client,
    /// The adapter's Discord REST client.
    pub http: Arc<serenity::http::Http>,
    /// Between the adapter and the server, when asked for.
    pub proxy: Option<CuttableProxy>,
    _redis: Option<RedisPrefix>,
    _db: TestDb,
}

/// The server configuration of a [`Stack`]: `/deploy` for [`DEPLOYER`] and the `/plan` modal.
pub fn stack_config(db: &TestDb) -> Config {
    let mut cfg = with_deploy_command(with_tokens(config(db)), DEPLOYER);
    cfg.commands.push(CommandConfig {
        name: "plan".into(),
        description: "Plan an implementation".into(),
        options: vec![OptionConfig {
            name: "payload".into(),
            kind: "string".into(),
            required: true,
            max_length: Some(4000),
            ..Default::default()
        }],
        modal: Some(facteur_config::ModalConfig {
            title: "Plan".into(),
            inputs: vec![facteur_config::ModalInputConfig {
                name: "payload".into(),
                label: "What should be built?".into(),
                paragraph: true,
                ..Default::default()
            }],
        }),
        ..Default::default()
    });
    cfg
}

impl Stack {
    /// Starts everything on loopback.
    pub async fn start(o: Options) -> Stack {
        let db = TestDb::new(o.backend).await;
        let mut cfg = stack_config(&db);
        cfg.codex_implementation_orchestrator.enabled = o.codex;
        cfg.argo.ui_base_url = o.argo_ui.into();
        for c in cfg.commands.iter_mut().filter(|c| c.name == "deploy") {
            c.show_logs = o.show_logs;
            c.approvers = o.approvers.iter().map(|r| r.to_string()).collect();
            c.require_second_person = o.second_person;
            c.max_concurrent = o.max_concurrent;
        }
        let redis = o.redis.then(RedisPrefix::new);
        if let Some(p) = &redis {
            cfg.redis.url = Secret(redis_url());
            cfg.redis.key_prefix = p.0.clone();
        }
        if o.backend == Backend::Postgres {
            cfg.database.max_connections = 16;
        }
        let srv = Box::pin(TestServer::start(cfg)).await;
        let discord = FakeDiscord::start().await;
        let proxy = match o.proxy {
            true => Some(CuttableProxy::start(&srv.server.grpc_addr.to_string()).await),
            false => None,
        };
        let url = match &proxy {
            Some(p) => format!("http://{}", p.addr),
            None => srv.grpc_url(),
        };
        let control = facteur_client::Client::lazy(
            facteur_client::ClientConfig::new(url).with_token(DISCORD_TOKEN),
        )
        .expect("client");
        let http = Arc::new(facteur_discord::discord_http(
            "bot-token",
            APP.parse().expect("id"),
            &discord.base_url(),
        ));
        let app = facteur_discord::router(Adapter::new(
            Verifier::new(&public_hex()).expect("key"),
            control.clone(),
            http.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = listener.local_addr().expect("addr");
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Stack {
            srv,
            discord,
            endpoint,
            control,
            http,
            proxy,
            _redis: redis,
            _db: db,
        }
    }

    /// The run that interaction `id` started.
    pub async fn run_of(&self, id: &str) -> facteur_server::domain::Run {
        self.srv
            .server
            .state
            .store
            .run_by_key(&format!("discord:{id}"))
            .await
            .expect("query")
            .expect("the interaction started a run")
    }

    /// POSTs `body` to the endpoint signed with [`key`] now; returns the status and JSON body.
    pub async fn post(&self, body: &Value) -> (u16, Value) {
        post(self.endpoint, body, Some((&key(), now()))).await
    }
}

/// POSTs `body` to `endpoint`, signed with `signer` at its timestamp (None: no signature).
pub async fn post(
    endpoint: SocketAddr,
    body: &Value,
    signer: Option<(&SigningKey, i64)>,
) -> (u16, Value) {
    let raw = body.to_string();
    let mut headers: Vec<(String, String)> =
        vec![("Content-Type".into(), "application/json".into())];
    if let Some((k, ts)) = signer {
        let (sig, ts) = signature(k, ts, raw.as_bytes());
        headers.push(("X-Signature-Ed25519".into(), sig));
        headers.push(("X-Signature-Timestamp".into(), ts));
    }
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (code, out) = http(endpoint, "POST", "/interactions", &h, raw.as_bytes()).await;
    (code, serde_json::from_slice(&out).unwrap_or(Value::Null))
}

/// A [`Stack`] with the rest of a deployment around it: the fake Kubernetes API, an argo-adapter
/// serving `argo-workflows`, and the discord-adapter's run-card follower.
pub struct Followed {
    /// Server, endpoint, fake Discord.
    pub s: Stack,
    /// The fake Kubernetes API.
    pub kube: crate::fake_kube::FakeKube,
    argo: crate::stack::Adapter,
    stop: tokio_util::sync::CancellationToken,
}

impl Followed {
    /// Starts everything.
    pub async fn start(o: Options) -> Followed {
        let s = Stack::start(o).await;
        let kube = crate::fake_kube::FakeKube::start().await;
        let argo = crate::stack::Adapter::start(&s.srv.grpc_url(), &kube, "argo-workflows");
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(facteur_discord::follow_runs(
            s.control.clone(),
            s.http.clone(),
            stop.clone(),
        ));
        Followed {
            s,
            kube,
            argo,
            stop,
        }
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.stop.cancel();
        self.argo.stop().await;
        self.s.srv.stop().await;
    }
}
