//! A fake Discord REST API (a real HTTP server under `/api/v10`) that records every call, for
//! serenity's HTTP client pointed at it through its proxy base URL. It stores command
//! registrations (bulk overwrite) and answers them back as Discord would. It also plays the
//! gateway: `GET /gateway` points at a websocket speaking Discord's protocol (HELLO, IDENTIFY,
//! READY, heartbeat ACKs) that delivers the interactions a test sends as INTERACTION_CREATE.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Handle to a running fake.
#[derive(Clone)]
pub struct FakeDiscord {
    /// Where it listens (the adapter's `api_base_url` is `http://<addr>`).
    pub addr: SocketAddr,
    /// The gateway websocket.
    pub gateway: SocketAddr,
    calls: Arc<Mutex<Vec<(String, String, Value)>>>,
    times: Arc<Mutex<Vec<std::time::Instant>>>,
    limits: Arc<Mutex<Limits>>,
    identified: Arc<Mutex<Vec<Value>>>,
    events: broadcast::Sender<Value>,
    commands: Arc<Mutex<HashMap<String, Vec<Value>>>>,
}

impl FakeDiscord {
    /// Starts on a free loopback port (plain HTTP, for serenity's proxy base URL).
    pub async fn start() -> FakeDiscord {
        Self::serve(false).await
    }

    /// Starts on a free loopback port over TLS with a certificate for `discord.com`
    /// (`tests/fixtures/tls`): serenity with its rate limiter on, exactly as in production,
    /// reaches it through [`FakeDiscord::tls_client`].
    pub async fn start_tls() -> FakeDiscord {
        Self::serve(true).await
    }

    /// An HTTP client for which `discord.com` is this fake (started with
    /// [`FakeDiscord::start_tls`]) and its certificate is trusted: handed to
    /// `facteur_discord::discord_http_with` with Discord's own base URL, the adapter builds its
    /// REST client exactly as in production.
    pub fn tls_client(&self) -> reqwest::Client {
        let cert = reqwest::Certificate::from_pem(TLS_CERT.as_bytes()).expect("test certificate");
        reqwest::Client::builder()
            .resolve("discord.com", self.addr)
            .add_root_certificate(cert)
            .build()
            .expect("reqwest client")
    }

    /// Answers the next `n` calls whose method is `method` with 429 and `Retry-After: secs`.
    pub fn rate_limit_next(&self, method: &str, n: usize, secs: f64) {
        if let Ok(mut l) = self.limits.lock() {
            l.too_many = Some((method.to_string(), n, secs));
        }
    }

    /// Marks the next answer to `method` as the last of its bucket
    /// (`X-RateLimit-Remaining: 0`, resetting after `secs`).
    pub fn exhaust_bucket_on(&self, method: &str, secs: f64) {
        if let Ok(mut l) = self.limits.lock() {
            l.exhaust = Some((method.to_string(), secs));
        }
    }

    /// Refuses every bulk overwrite holding a command named `name` (HTTP 400, code 50035), as
    /// Discord refuses one invalid command, until [`FakeDiscord::accept_commands`].
    pub fn refuse_command(&self, name: &str) {
        if let Ok(mut l) = self.limits.lock() {
            l.refuse_commands.push(name.to_string());
        }
    }

    /// Stops refusing the names given to [`FakeDiscord::refuse_command`].
    pub fn accept_commands(&self) {
        if let Ok(mut l) = self.limits.lock() {
            l.refuse_commands.clear();
        }
    }

    /// When each call of [`FakeDiscord::calls`] arrived (same order).
    pub fn call_times(&self) -> Vec<std::time::Instant> {
        self.times.lock().map(|t| t.clone()).unwrap_or_default()
    }

    async fn serve(tls: bool) -> FakeDiscord {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake discord");
        let gateway = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake gateway");
        let fake = FakeDiscord {
            addr: listener.local_addr().expect("addr"),
            gateway: gateway.local_addr().expect("addr"),
            calls: Arc::default(),
            times: Arc::default(),
            limits: Arc::default(),
            identified: Arc::default(),
            events: broadcast::channel(64).0,
            commands: Arc::default(),
        };
        let app = Router::new()
            .route(
                "/api/v10/applications/{app}/guilds/{guild}/commands",
                get(list).put(overwrite),
            )
            .route(
                "/api/v10/applications/{app}/commands",
                get(list_global).put(overwrite_global),
            )
            .route(
                "/api/v10/webhooks/{app}/{token}/messages/@original",
                patch(edit_original).delete(delete_original),
            )
            .route(
                "/api/v10/webhooks/{app}/{token}",
                axum::routing::post(followup),
            )
            .route(
                "/api/v10/channels/{channel}/messages",
                axum::routing::post(post_message),
            )
            .route(
                "/api/v10/channels/{channel}/messages/{message}",
                patch(edit_message),
            )
            .route("/api/v10/gateway", get(gateway_url))
            .route(
                "/api/v10/interactions/{id}/{token}/callback",
                axum::routing::post(callback),
            )
            .layer(axum::middleware::from_fn_with_state(fake.clone(), limiter))
            .with_state(fake.clone());
        if tls {
            tokio::spawn(serve_tls(listener, app));
        } else {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = gateway.accept().await {
                tokio::spawn(gateway_session(tcp, f.clone()));
            }
        });
        fake
    }

    /// IDENTIFY payloads received by the gateway so far.
    pub fn identified(&self) -> Vec<Value> {
        self.identified
            .lock()
            .map(|i| i.clone())
            .unwrap_or_default()
    }

    /// Delivers `interaction` to every identified gateway session as INTERACTION_CREATE.
    pub fn send_interaction(&self, interaction: Value) {
        let _ = self.events.send(interaction);
    }

    /// Base URL for `discord.api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call: (method, path, JSON body).
    pub fn calls(&self) -> Vec<(String, String, Value)> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, method: Method, path: String, body: Value) {
        if let (Ok(mut c), Ok(mut t)) = (self.calls.lock(), self.times.lock()) {
            c.push((method.to_string(), path, body));
            t.push(std::time::Instant::now());
        }
    }

    fn stored(&self, scope: &str) -> Vec<Value> {
        self.commands
            .lock()
            .ok()
            .and_then(|c| c.get(scope).cloned())
            .unwrap_or_default()
    }

    fn store(&self, scope: &str, app: &str, guild: Option<&str>, body: &Value) -> Vec<Value> {
        let list: Vec<Value> = body
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                c["id"] = json!(format!("90000000000000000{i}"));
                c["application_id"] = json!(app);
                c["version"] = json!("1");
                if let Some(g) = guild {
                    c["guild_id"] = json!(g);
                }
                c
            })
            .collect();
        if let Ok(mut c) = self.commands.lock() {
            c.insert(scope.to_string(), list.clone());
        }
        list
    }
}

async fn list(
    State(f): State<FakeDiscord>,
    Path((app, guild)): Path<(String, String)>,
) -> Response {
    f.record(
        Method::GET,
        format!("/applications/{app}/guilds/{guild}/commands"),
        Value::Null,
    );
    axum::Json(f.stored(&guild)).into_response()
}

async fn overwrite(
    State(f): State<FakeDiscord>,
    Path((app, guild)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.record(
        Method::PUT,
        format!("/applications/{app}/guilds/{guild}/commands"),
        body.clone(),
    );
    if let Some(refused) = f.refusal(&body) {
        return refused;
    }
    axum::Json(f.store(&guild, &app, Some(&guild), &body)).into_response()
}

async fn list_global(State(f): State<FakeDiscord>, Path(app): Path<String>) -> Response {
    f.record(
        Method::GET,
        format!("/applications/{app}/commands"),
        Value::Null,
    );
    axum::Json(f.stored("global")).into_response()
}

async fn overwrite_global(
    State(f): State<FakeDiscord>,
    Path(app): Path<String>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.record(
        Method::PUT,
        format!("/applications/{app}/commands"),
        body.clone(),
    );
    if let Some(refused) = f.refusal(&body) {
        return refused;
    }
    axum::Json(f.store("global", &app, None, &body)).into_response()
}

impl FakeDiscord {
    /// Discord's answer to a bulk overwrite it refuses, or None when it takes it.
    fn refusal(&self, body: &Value) -> Option<Response> {
        let refuse = self
            .limits
            .lock()
            .map(|l| l.refuse_commands.clone())
            .unwrap_or_default();
        let mut problems = invalid_commands(body);
        for (i, c) in body.as_array().into_iter().flatten().enumerate() {
            if refuse.iter().any(|n| c["name"] == n.as_str()) {
                problems.push((
                    format!("{i}.name"),
                    "APPLICATION_COMMAND_INVALID_NAME",
                    "Command name is invalid".into(),
                ));
            }
        }
        if problems.is_empty() {
            return None;
        }
        let mut r = axum::Json(refusal_body(&problems)).into_response();
        *r.status_mut() = axum::http::StatusCode::BAD_REQUEST;
        Some(r)
    }
}

/// Discord's error body for an invalid form: code 50035 and an `errors` object nesting each
/// problem under its path, ending in `_errors`.
pub fn refusal_body(problems: &[(String, &str, String)]) -> Value {
    let mut errors = json!({});
    for (path, code, message) in problems {
        let mut at = &mut errors;
        for part in path.split('.') {
            at = at
                .as_object_mut()
                .expect("object")
                .entry(part.to_string())
                .or_insert_with(|| json!({}));
        }
        let list = at
            .as_object_mut()
            .expect("object")
            .entry("_errors".to_string())
            .or_insert_with(|| json!([]));
        if let Some(l) = list.as_array_mut() {
            l.push(json!({"code": code, "message": message}));
        }
    }
    json!({"code": 50035, "message": "Invalid Form Body", "errors": errors})
}

fn len(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

/// Discord's documented rules for a bulk overwrite of CHAT_INPUT commands
/// (interactions/application-commands), written from the documentation, independently of
/// facteur's own check: each problem as (path, Discord's error code, message).
pub fn invalid_commands(body: &Value) -> Vec<(String, &'static str, String)> {
    let mut out: Vec<(String, &'static str, String)> = Vec::new();
    let Some(list) = body.as_array() else {
        return vec![("_".into(), "BASE_TYPE_ARRAY", "Must be an array".into())];
    };
    if list.len() > 100 {
        out.push((
            "_".into(),
            "BASE_TYPE_MAX_LENGTH",
            "Must be 100 or fewer in length.".into(),
        ));
    }
    let name_ok = |v: &Value| {
        let s = v.as_str().unwrap_or("");
        let n = s.chars().count();
        (1..=32).contains(&n)
            && s.chars().all(|c| {
                (c.is_alphanumeric()
                    || "-_'".contains(c)
                    || ('\u{0900}'..='\u{097F}').contains(&c)
                    || ('\u{0E00}'..='\u{0E7F}').contains(&c))
                    && c.to_lowercase().eq(std::iter::once(c))
            })
    };
    let mut names = std::collections::HashSet::new();
    for (i, c) in list.iter().enumerate() {
        let mut bad = |path: String, code: &'static str, m: &str| {
            out.push((format!("{i}.{path}"), code, m.to_string()))
        };
        if !name_ok(&c["name"]) {
            bad(
                "name".into(),
                "APPLICATION_COMMAND_INVALID_NAME",
                "Command name is invalid",
            );
        }
        if !names.insert(c["name"].to_string()) {
            bad(
                "name".into(),
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
                "Application command names must be unique",
            );
        }
        if !(1..=100).contains(&len(&c["description"])) {
            bad(
                "description".into(),
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            );
        }
        let options = c["options"].as_array().cloned().unwrap_or_default();
        if options.len() > 25 {
            bad(
                "options".into(),
                "BASE_TYPE_MAX_LENGTH",
                "Must be 25 or fewer in length.",
            );
        }
        let mut total = len(&c["name"]) + len(&c["description"]);
        let mut optional = false;
        for (j, o) in options.iter().enumerate() {
            total += len(&o["name"]) + len(&o["description"]);
            if !name_ok(&o["name"]) {
                bad(
                    format!("options.{j}.name"),
                    "APPLICATION_COMMAND_INVALID_NAME",
                    "Command name is invalid",
                );
            }
            if !(1..=100).contains(&len(&o["description"])) {
                bad(
                    format!("options.{j}.description"),
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                );
            }
            let required = o["required"].as_bool().unwrap_or(false);
            if required && optional {
                bad(
                    format!("options.{j}.required"),
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                );
            }
            optional |= !required;
            for f in ["min_length", "max_length"] {
                if o[f].as_u64().is_some_and(|n| n > 6000) {
                    bad(
                        format!("options.{j}.{f}"),
                        "NUMBER_TYPE_MAX",
                        "int value should be less than or equal to 6000.",
                    );
                }
            }
            let kind = o["type"].as_u64().unwrap_or(0);
            let choices = o["choices"].as_array().cloned().unwrap_or_default();
            if choices.len() > 25 {
                bad(
                    format!("options.{j}.choices"),
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 25 or fewer in length.",
                );
            }
            if !choices.is_empty() && !matches!(kind, 3 | 4 | 10) {
                bad(
                    format!("options.{j}.choices"),
                    "APPLICATION_COMMAND_OPTION_CHOICES_INVALID",
                    "This option type does not take choices",
                );
            }
            for (k, ch) in choices.iter().enumerate() {
                total += len(&ch["name"]);
                if !(1..=100).contains(&len(&ch["name"])) {
                    bad(
                        format!("options.{j}.choices.{k}.name"),
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 100 in length.",
                    );
                }
                let v = &ch["value"];
                let ok = match kind {
                    3 => {
                        total += len(v);
                        v.is_string() && (1..=100).contains(&len(v))
                    }
                    4 => {
                        total += v.to_string().len();
                        v.as_i64()
                            .is_some_and(|n| n.unsigned_abs() <= 9_007_199_254_740_991)
                    }
                    10 => {
                        total += v.to_string().len();
                        v.is_number()
                    }
                    _ => true,
                };
                if !ok {
                    bad(
                        format!("options.{j}.choices.{k}.value"),
                        "BASE_TYPE_CHOICES",
                        "Value is not valid for this option type",
                    );
                }
            }
        }
        if total > 8000 {
            bad(
                "_".into(),
                "APPLICATION_COMMAND_TOO_LARGE",
                "Command exceeds maximum size (8000)",
            );
        }
    }
    out
}

fn message(id: &str, channel: &str, content: &Value) -> Value {
    json!({
        "id": id, "channel_id": channel, "type": 0,
        "author": {"id": "400000000000000001", "username": "facteur", "discriminator": "0000", "avatar": null},
        "content": content, "timestamp": "2026-11-23T00:00:00+00:00", "edited_timestamp": null,
        "tts": false, "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": [], "pinned": false, "components": []
    })
}

async fn post_message(
    State(f): State<FakeDiscord>,
    Path(channel): Path<String>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.record(
        Method::POST,
        format!("/channels/{channel}/messages"),
        body.clone(),
    );
    axum::Json(message("800000000000000099", &channel, &body["content"])).into_response()
}

async fn edit_message(
    State(f): State<FakeDiscord>,
    Path((channel, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.record(
        Method::PATCH,
        format!("/channels/{channel}/messages/{id}"),
        body.clone(),
    );
    axum::Json(message(&id, &channel, &body["content"])).into_response()
}

async fn edit_original(
    State(f): State<FakeDiscord>,
    Path((app, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.record(
        Method::PATCH,
        format!("/webhooks/{app}/{token}/messages/@original"),
        body.clone(),
    );
    axum::Json(json!({
        "id": "800000000000000001", "channel_id": "500000000000000001", "type": 0,
        "author": {"id": app, "username": "facteur", "discriminator": "0000", "avatar": null},
        "content": body["content"], "timestamp": "2026-11-23T00:00:00+00:00", "edited_timestamp": null,
        "tts": false, "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": [], "pinned": false, "components": []
    }))
    .into_response()
}

/// `DELETE @original`: Discord answers 204.
async fn delete_original(
    State(f): State<FakeDiscord>,
    Path((app, token)): Path<(String, String)>,
) -> Response {
    f.record(
        Method::DELETE,
        format!("/webhooks/{app}/{token}/messages/@original"),
        Value::Null,
    );
    axum::http::StatusCode::NO_CONTENT.into_response()
}

/// A follow-up message (`POST /webhooks/{app}/{token}`): unlike an edit, it honours EPHEMERAL.
async fn followup(
    State(f): State<FakeDiscord>,
    Path((app, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.record(
        Method::POST,
        format!("/webhooks/{app}/{token}"),
        body.clone(),
    );
    let mut m = message("800000000000000002", "500000000000000001", &body["content"]);
    m["flags"] = body["flags"].clone();
    axum::Json(m).into_response()
}

async fn gateway_url(State(f): State<FakeDiscord>) -> Response {
    axum::Json(json!({"url": format!("ws://{}", f.gateway)})).into_response()
}

async fn callback(
    State(f): State<FakeDiscord>,
    Path((id, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    f.record(
        Method::POST,
        format!("/interactions/{id}/{token}/callback"),
        body,
    );
    axum::http::StatusCode::NO_CONTENT.into_response()
}

/// One gateway connection: HELLO, then READY after IDENTIFY, ACKs to heartbeats, and every
/// interaction sent with [`FakeDiscord::send_interaction`] once identified.
async fn gateway_session(tcp: tokio::net::TcpStream, f: FakeDiscord) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let frame = |v: Value| Message::Text(v.to_string());
    let hello = json!({"op": 10, "d": {"heartbeat_interval": 41250}, "s": null, "t": null});
    if ws.send(frame(hello)).await.is_err() {
        return;
    }
    let mut events = f.events.subscribe();
    let mut seq = 0u64;
    let mut ready = false;
    loop {
        tokio::select! {
            msg = ws.next() => {
                let v: Value = match msg {
                    Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap_or(Value::Null),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                let reply = match v["op"].as_u64() {
                    Some(2) => {
                        if let Ok(mut i) = f.identified.lock() {
                            i.push(v["d"].clone());
                        }
                        seq += 1;
                        ready = true;
                        json!({"op": 0, "t": "READY", "s": seq, "d": {
                            "v": 10,
                            "user": {"id": "400000000000000001", "username": "facteur", "discriminator": "0000",
                                     "global_name": null, "avatar": null, "bot": true},
                            "guilds": [], "session_id": "fake-session",
                            "resume_gateway_url": format!("ws://{}", f.gateway),
                            "shard": [0, 1],
                            "application": {"id": "400000000000000001", "flags": 0},
                        }})
                    }
                    Some(1) => json!({"op": 11, "d": null, "s": null, "t": null}),
                    _ => continue,
                };
                if ws.send(frame(reply)).await.is_err() {
                    return;
                }
            }
            ev = events.recv(), if ready => {
                let Ok(interaction) = ev else { continue };
                seq += 1;
                let dispatch = json!({"op": 0, "t": "INTERACTION_CREATE", "s": seq, "d": interaction});
                if ws.send(frame(dispatch)).await.is_err() {
                    return;
                }
            }
        }
    }
}

const TLS_CERT: &str = include_str!("../fixtures/tls/discord.com.crt");
const TLS_KEY: &str = include_str!("../fixtures/tls/discord.com.key");

/// Rate limits the fake applies, as Discord does.
#[derive(Default)]
struct Limits {
    /// (method, how many more, Retry-After seconds).
    too_many: Option<(String, usize, f64)>,
    /// (method, reset-after seconds) for the next answer.
    exhaust: Option<(String, f64)>,
    /// Command names whose registration is refused as invalid (a rule facteur cannot know).
    refuse_commands: Vec<String>,
}

/// Answers 429 while asked to (recording the refused call), and adds bucket headers.
async fn limiter(
    State(f): State<FakeDiscord>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().trim_start_matches("/api/v10").to_string();
    let refuse = f
        .limits
        .lock()
        .ok()
        .and_then(|mut l| match &mut l.too_many {
            Some((m, n, secs)) if *m == method && *n > 0 => {
                *n -= 1;
                Some(*secs)
            }
            _ => None,
        });
    if let Some(secs) = refuse {
        f.record(req.method().clone(), path, json!({"rate_limited": true}));
        let mut r = axum::Json(json!({
            "message": "You are being rate limited.", "retry_after": secs, "global": false
        }))
        .into_response();
        *r.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
        let h = r.headers_mut();
        h.insert("retry-after", secs.to_string().parse().expect("header"));
        h.insert("x-ratelimit-limit", "5".parse().expect("header"));
        h.insert("x-ratelimit-remaining", "0".parse().expect("header"));
        h.insert(
            "x-ratelimit-reset-after",
            secs.to_string().parse().expect("header"),
        );
        h.insert("x-ratelimit-scope", "user".parse().expect("header"));
        return r;
    }
    let exhaust = f.limits.lock().ok().and_then(|mut l| match &l.exhaust {
        Some((m, secs)) if *m == method => {
            let secs = *secs;
            l.exhaust = None;
            Some(secs)
        }
        _ => None,
    });
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert("x-ratelimit-limit", "5".parse().expect("header"));
    match exhaust {
        Some(secs) => {
            h.insert("x-ratelimit-remaining", "0".parse().expect("header"));
            h.insert(
                "x-ratelimit-reset-after",
                secs.to_string().parse().expect("header"),
            );
        }
        None => {
            h.insert("x-ratelimit-remaining", "4".parse().expect("header"));
            h.insert("x-ratelimit-reset-after", "0.001".parse().expect("header"));
        }
    }
    r
}

/// Serves `app` over TLS as `discord.com`.
async fn serve_tls(listener: tokio::net::TcpListener, app: Router) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(TLS_CERT.as_bytes()).expect("certificate")];
    let key = PrivateKeyDer::from_pem_slice(TLS_KEY.as_bytes()).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}
