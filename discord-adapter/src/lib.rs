//! The discord-adapter (`facteur-discord`), HTTP interactions mode: thin and stateless.
//!
//! ```text
//!  Discord ──POST /interactions (Ed25519-signed)──▶ verify ─▶ CommandService.Invoke / Interact ─▶ reply
//!                                    (server slower than 2.5 s: deferred reply, then edit @original)
//!  start: CommandService.ListCommands ─▶ diff against Discord ─▶ bulk overwrite only if different
//! ```
//!
//! Permission, validation and state live in the server; this process only translates.

pub mod gateway;
pub mod render;
pub mod verify;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use facteur_client::{Client, pb};
use serde_json::{Value, json};
use serenity::all::{CreateInteractionResponse, CreateInteractionResponseMessage};
use serenity::http::Http;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use verify::{Refusal, Verifier};

/// Discord allows 3 s for the first response; past this we defer and edit later.
pub const DEFER_AFTER: Duration = Duration::from_millis(2500);

/// What the handlers share.
#[derive(Clone)]
pub struct Adapter {
    /// None in gateway mode, where nothing arrives over HTTP.
    verifier: Option<Verifier>,
    control: Client,
    http: Arc<Http>,
    /// Deferred answers still to be sent (an edit of `@original` once the server answers): a
    /// drain waits for them, so a stop does not leave a user looking at "thinking…".
    deferred: TaskTracker,
}

impl Adapter {
    /// An adapter over a control-plane client and Discord's REST API.
    pub fn new(verifier: Verifier, control: Client, http: Arc<Http>) -> Self {
        Self {
            verifier: Some(verifier),
            control,
            http,
            deferred: TaskTracker::new(),
        }
    }

    /// An adapter for gateway mode: no HTTP interactions, so no signature key.
    pub fn for_gateway(control: Client, http: Arc<Http>) -> Self {
        Self {
            verifier: None,
            control,
            http,
            deferred: TaskTracker::new(),
        }
    }

    /// After the listener stopped: waits up to `grace` for the deferred answers still being
    /// sent. An error when the grace ran out and some were cut (the binary exits non-zero).
    pub async fn drain(&self, grace: Duration) -> anyhow::Result<()> {
        self.deferred.close();
        if !self.deferred.is_empty() {
            tracing::info!(
                pending = self.deferred.len(),
                "waiting for deferred interaction answers"
            );
        }
        match tokio::time::timeout(grace, self.deferred.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => anyhow::bail!(
                "shutdown grace ({} s) ran out with {} deferred interaction answer(s) unsent",
                grace.as_secs(),
                self.deferred.len()
            ),
        }
    }
}

/// The REST client: `api_base_url` replaces `https://discord.com` (tests, proxies). For
/// Discord itself serenity's rate limiter is on (429 Retry-After and buckets are honoured);
/// serenity 0.12 only honours a proxy base URL with its limiter off, so limiting is then the
/// proxy's job.
pub fn discord_http(bot_token: &str, application_id: u64, api_base_url: &str) -> Http {
    discord_http_with(bot_token, application_id, api_base_url, None)
}

/// [`discord_http`] over a given HTTP client (tests give one that resolves `discord.com` to a
/// fake and trusts its certificate, so the production path runs unchanged).
pub fn discord_http_with(
    bot_token: &str,
    application_id: u64,
    api_base_url: &str,
    client: Option<reqwest::Client>,
) -> Http {
    let mut b = serenity::http::HttpBuilder::new(bot_token).application_id(application_id.into());
    if let Some(c) = client {
        b = b.client(c);
    }
    let base = api_base_url.trim_end_matches('/');
    if base != "https://discord.com" {
        b = b.proxy(base.to_string()).ratelimiter_disabled(true);
    }
    b.build()
}

/// The HTTP router.
pub fn router(adapter: Adapter) -> Router {
    Router::new()
        .route("/interactions", post(interactions))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(adapter)
}

fn unauthorized(why: Refusal) -> Response {
    tracing::info!(reason = ?why, "interaction refused: invalid request signature");
    (StatusCode::UNAUTHORIZED, "invalid request signature").into_response()
}

fn s(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    match cur {
        Value::String(x) => x.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn context(i: &Value) -> pb::InteractionContext {
    let user = if i["member"].is_object() {
        &i["member"]["user"]
    } else {
        &i["user"]
    };
    pb::InteractionContext {
        interaction_id: s(i, &["id"]),
        application_id: s(i, &["application_id"]),
        token: s(i, &["token"]),
        guild_id: s(i, &["guild_id"]),
        channel_id: if i["channel_id"].is_string() {
            s(i, &["channel_id"])
        } else {
            s(i, &["channel", "id"])
        },
        user_id: s(user, &["id"]),
        user_name: {
            let g = s(user, &["global_name"]);
            if g.is_empty() {
                s(user, &["username"])
            } else {
                g
            }
        },
        role_ids: i["member"]["roles"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        locale: s(i, &["locale"]),
        received_at: None,
    }
}

/// A refusal the member should read; anything else is not theirs to see.
fn status_notice(st: &tonic::Status) -> CreateInteractionResponse {
    use tonic::Code::*;
    match st.code() {
        // The server's own words: a refusal, a bad value, a quota used up (saying when it
        // frees), a reused key.
        PermissionDenied | InvalidArgument | NotFound | FailedPrecondition | ResourceExhausted
        | AlreadyExists => render::notice(st.message()),
        _ => {
            tracing::warn!(code = ?st.code(), error = %st.message(), "control plane call failed");
            render::notice("facteur cannot take this right now; try again in a moment.")
        }
    }
}

async fn interactions(State(a): State<Adapter>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let Some(verifier) = &a.verifier else {
        return (
            StatusCode::NOT_FOUND,
            "interactions arrive over the gateway",
        )
            .into_response();
    };
    if let Err(why) = verifier.check(
        header("x-signature-ed25519"),
        header("x-signature-timestamp"),
        &body,
        now,
    ) {
        return unauthorized(why);
    }
    let Ok(i) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    match respond(&a, &i).await {
        Some(answer) => Json(response_body(&answer)).into_response(),
        None => (StatusCode::BAD_REQUEST, "unsupported interaction type").into_response(),
    }
}

/// A response's JSON body. serenity writes `"data": null` for the responses without data; a
/// PONG is answered exactly as Discord's documentation shows it, `{"type": 1}`.
fn response_body(answer: &CreateInteractionResponse) -> Value {
    let mut v = serde_json::to_value(answer).unwrap_or_else(|_| json!({}));
    if let Some(m) = v.as_object_mut()
        && m.get("data").is_some_and(Value::is_null)
    {
        m.remove("data");
    }
    v
}

/// What an interaction asks of the control plane, read from its JSON alone (no I/O, so the
/// parser can be fuzzed: `fuzz/fuzz_targets/discord_interaction.rs`).
pub enum Request {
    /// A PING: answered PONG here.
    Ping,
    /// A slash command or a modal submission.
    Invoke(pb::InvokeRequest),
    /// A button or select click.
    Interact(pb::InteractRequest),
    /// An autocomplete query.
    Autocomplete(pb::AutocompleteRequest),
}

fn option_values(options: &[Value]) -> Vec<pb::OptionValue> {
    options
        .iter()
        .map(|o| pb::OptionValue {
            name: s(o, &["name"]),
            value: s(o, &["value"]),
        })
        .collect()
}

/// Parses one interaction object; `None`: not a type Discord sends.
pub fn request(i: &Value) -> Option<Request> {
    use render::interaction;
    let kind = i["type"].as_u64().and_then(|t| u8::try_from(t).ok());
    let options = || i["data"]["options"].as_array().cloned().unwrap_or_default();
    Some(match kind? {
        interaction::PING => Request::Ping,
        interaction::COMMAND => Request::Invoke(pb::InvokeRequest {
            context: Some(context(i)),
            kind: pb::InvocationKind::SlashCommand as i32,
            command: s(i, &["data", "name"]),
            options: option_values(&options()),
            ..Default::default()
        }),
        interaction::COMPONENT => Request::Interact(pb::InteractRequest {
            context: Some(context(i)),
            custom_id: s(i, &["data", "custom_id"]),
        }),
        interaction::MODAL => {
            let mut values = std::collections::HashMap::new();
            render::modal_values(&i["data"]["components"], &mut values);
            Request::Invoke(pb::InvokeRequest {
                context: Some(context(i)),
                kind: pb::InvocationKind::ModalSubmit as i32,
                modal_custom_id: s(i, &["data", "custom_id"]),
                modal_values: values,
                ..Default::default()
            })
        }
        interaction::AUTOCOMPLETE => {
            let options = options();
            let focused = options
                .iter()
                .find(|o| o["focused"].as_bool() == Some(true));
            Request::Autocomplete(pb::AutocompleteRequest {
                context: Some(context(i)),
                command: s(i, &["data", "name"]),
                focused_option: focused.map(|o| s(o, &["name"])).unwrap_or_default(),
                partial_value: focused.map(|o| s(o, &["value"])).unwrap_or_default(),
                options: option_values(&options),
            })
        }
        _ => return None,
    })
}

/// The answer to one authentic interaction (an interaction response object), whatever the
/// transport: the HTTP endpoint returns it as its body, gateway mode sends it to the callback
/// route. Within Discord's 3 s: a command the server is slow to answer gets a deferral now and
/// its answer as an edit of the original response later. `None`: not a type Discord sends.
pub async fn respond(a: &Adapter, i: &Value) -> Option<CreateInteractionResponse> {
    use tracing::Instrument;
    // The root of the interaction's trace: the control plane's span, the run, the argo-adapter's
    // create and the Workflow's `traceparent` annotation all join it.
    let kind = i["type"].as_u64().unwrap_or(0);
    let span = tracing::info_span!(
        "interaction",
        otel.name = %format!("discord.interaction {}", interaction_kind(kind)),
        otel.kind = "server",
        discord.interaction.type = kind,
        discord.interaction.id = %s(i, &["id"]),
        discord.guild.id = %s(i, &["guild_id"]),
    );
    respond_in_span(a, i).instrument(span).await
}

fn interaction_kind(kind: u64) -> &'static str {
    use render::interaction;
    match u8::try_from(kind).unwrap_or(0) {
        interaction::PING => "ping",
        interaction::COMMAND => "command",
        interaction::COMPONENT => "component",
        interaction::MODAL => "modal",
        interaction::AUTOCOMPLETE => "autocomplete",
        _ => "unknown",
    }
}

async fn respond_in_span(a: &Adapter, i: &Value) -> Option<CreateInteractionResponse> {
    use tracing::Instrument;
    Some(match request(i)? {
        Request::Ping => CreateInteractionResponse::Pong,
        Request::Invoke(req) => invoke(a, i, req).await,
        Request::Interact(req) => {
            let control = a.control.clone();
            let call = tokio::spawn(
                async move {
                    control.command().interact(req).await.map(|r| {
                        let r = r.into_inner();
                        // Approve of a step that asks for values: its form.
                        if let Some(m) = r.modal {
                            return render::modal(&m);
                        }
                        let mut reply = r.reply.unwrap_or_default();
                        if !r.update_message {
                            reply.ephemeral = true;
                        }
                        render::response(r.update_message, &reply)
                    })
                }
                .instrument(tracing::Span::current()),
            );
            // Buttons update the message they sit on, or answer the clicker alone.
            match tokio::time::timeout(DEFER_AFTER, call).await {
                Ok(Ok(Ok(response))) => response,
                Ok(Ok(Err(st))) => status_notice(&st),
                _ => CreateInteractionResponse::Acknowledge,
            }
        }
        Request::Autocomplete(req) => {
            let mut command = a.control.command();
            // Autocomplete cannot be deferred: no answer in time means no suggestions.
            let choices = match tokio::time::timeout(DEFER_AFTER, command.autocomplete(req)).await {
                Ok(Ok(r)) => r.into_inner().choices,
                _ => vec![],
            };
            render::autocomplete(&choices)
        }
    })
}

/// Sends an `Invoke` and answers with a message, a modal, or a deferral.
async fn invoke(a: &Adapter, i: &Value, req: pb::InvokeRequest) -> CreateInteractionResponse {
    use tracing::Instrument;
    let control = a.control.clone();
    // The call runs on its own task (it may outlive the deferral); it stays in the
    // interaction's span, so the control plane's span joins the interaction's trace.
    let call = tokio::spawn(
        async move {
            control.command().invoke(req).await.map(|r| {
                let r = r.into_inner();
                match r.modal {
                    Some(m) => render::modal(&m),
                    None => render::response(r.update_message, &r.reply.unwrap_or_default()),
                }
            })
        }
        .instrument(tracing::Span::current()),
    );
    // A modal opened from a message (a run card's Approve) may update that message; a late
    // answer then edits it, and the deferral is Discord's DEFERRED_UPDATE_MESSAGE.
    let on_message = i["type"] == render::interaction::MODAL && i["message"].is_object();
    answer(a, i, call, on_message).await
}

/// Answers within Discord's deadline: the server's answer if it comes in time, else a deferred
/// response now and an edit of the original message when the answer arrives. `on_message`: the
/// interaction came from a message (a modal opened by its button), which a late answer edits
/// after a DEFERRED_UPDATE_MESSAGE (type 6) that shows nothing.
async fn answer(
    a: &Adapter,
    i: &Value,
    mut call: tokio::task::JoinHandle<Result<CreateInteractionResponse, tonic::Status>>,
    on_message: bool,
) -> CreateInteractionResponse {
    match tokio::time::timeout(DEFER_AFTER, &mut call).await {
        Ok(Ok(Ok(response))) => response,
        Ok(Ok(Err(st))) => status_notice(&st),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "interaction handler failed");
            render::notice("facteur failed to handle this; try again.")
        }
        Err(_) => {
            let (http, token) = (a.http.clone(), s(i, &["token"]));
            a.deferred.spawn(async move {
                let failed = || render::notice_message("facteur failed to handle this; try again.");
                let body = match call
                    .await
                    .map(|r| r.unwrap_or_else(|st| status_notice(&st)))
                {
                    Ok(
                        CreateInteractionResponse::Message(m)
                        | CreateInteractionResponse::UpdateMessage(m)
                        | CreateInteractionResponse::Defer(m),
                    ) => m,
                    // A modal cannot follow a deferral; say so instead.
                    Ok(CreateInteractionResponse::Modal(_)) => render::notice_message(
                        "facteur was too slow to open the form; run the command again.",
                    ),
                    Ok(_) | Err(_) => failed(),
                };
                // The deferral was public: an edit of `@original` cannot make it ephemeral
                // (Discord honours no EPHEMERAL flag on an edit). An answer meant for the
                // member alone (a refusal, say) goes as an ephemeral follow-up, and the public
                // "thinking…" is deleted, so the channel never sees it.
                let ephemeral = serde_json::to_value(&body)
                    .ok()
                    .and_then(|v| v["flags"].as_u64())
                    .is_some_and(|f| f & render::EPHEMERAL != 0);
                // The deferral may still be on its way to Discord when a slow answer lands
                // just after it: a refused call is tried again.
                if ephemeral {
                    // After a type 6 there is no "thinking…" to delete: `@original` is the card.
                    if retried("send an ephemeral follow-up", || {
                        http.create_followup_message(&token, &body, vec![])
                    })
                    .await
                        && !on_message
                    {
                        retried("delete the public deferral", || {
                            http.delete_original_interaction_response(&token)
                        })
                        .await;
                    }
                } else {
                    retried("complete a deferred interaction", || {
                        http.edit_original_interaction_response(&token, &body, vec![])
                    })
                    .await;
                }
            });
            if on_message {
                CreateInteractionResponse::Acknowledge
            } else {
                CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new())
            }
        }
    }
}

/// Calls `f` up to three times, 1 s then 2 s apart; whether it succeeded (a last failure is
/// logged as `cannot {what}`).
async fn retried<T, F, Fut>(what: &str, f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = serenity::Result<T>>,
{
    for attempt in 1..=3 {
        match f().await {
            Ok(_) => return true,
            Err(e) if attempt == 3 => {
                tracing::warn!(error = %e, "cannot {what}");
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(attempt)).await,
        }
    }
    false
}

/// Normalises a command (ours or one read back from Discord) for comparison.
pub fn normal(v: &Value) -> Value {
    let opts: Vec<Value> = v["options"]
        .as_array()
        .map(|o| {
            o.iter()
                .map(|o| {
                    json!({
                        "type": o["type"], "name": o["name"], "description": o["description"],
                        "required": o["required"].as_bool().unwrap_or(false),
                        // A choice's value compares as text: `5` and `"5"` are the same choice.
                        "choices": o["choices"].as_array().cloned().unwrap_or_default().iter().map(|c| json!({"name": c["name"], "value": match &c["value"] { Value::String(s) => s.clone(), other => other.to_string() }})).collect::<Vec<_>>(),
                        "min_value": o["min_value"].as_f64(), "max_value": o["max_value"].as_f64(),
                        "min_length": o["min_length"].as_u64(), "max_length": o["max_length"].as_u64(),
                        "autocomplete": o["autocomplete"].as_bool().unwrap_or(false),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"name": v["name"], "description": v["description"], "options": opts})
}

/// What a registration did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered {
    /// Whether it wrote (false: Discord already had exactly this catalog).
    pub wrote: bool,
    /// Commands in the catalog.
    pub commands: usize,
}

/// Registers the server's catalog with Discord when it differs from what is registered
/// (guild-scoped when `guild_id` is set, global otherwise).
pub async fn register(
    control: &Client,
    http: &Http,
    guild_id: Option<u64>,
) -> anyhow::Result<Registered> {
    let catalog = control
        .command()
        .list_commands(pb::ListCommandsRequest::default())
        .await?
        .into_inner()
        .commands;
    let wanted: Vec<Value> = catalog.iter().map(render::command).collect();
    let existing = match guild_id {
        Some(g) => http.get_guild_commands(g.into()).await,
        None => http.get_global_commands().await,
    };
    let mut want_norm: Vec<Value> = wanted.iter().map(normal).collect();
    want_norm.sort_by_key(|v| v["name"].to_string());
    if let Ok(existing) = existing {
        let mut have: Vec<Value> = existing
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .map(|v| normal(&v))
            .collect();
        have.sort_by_key(|v| v["name"].to_string());
        if have == want_norm {
            tracing::info!(
                commands = wanted.len(),
                guild_id = ?guild_id,
                "discord commands already up to date"
            );
            return Ok(Registered {
                wrote: false,
                commands: wanted.len(),
            });
        }
    }
    match guild_id {
        Some(g) => http.create_guild_commands(g.into(), &wanted).await?,
        None => http.create_global_commands(&wanted).await?,
    };
    tracing::info!(commands = wanted.len(), guild_id = ?guild_id, "discord commands registered");
    Ok(Registered {
        wrote: true,
        commands: wanted.len(),
    })
}

/// Discord's JSON error code and message (with every path its `errors` object names) when
/// Discord refused the request; code 0 and the error's text for anything else (Discord not
/// reached, the control plane not answering).
pub fn refusal_of(e: &anyhow::Error) -> (i32, String) {
    use serenity::http::HttpError;
    if let Some(serenity::Error::Http(HttpError::UnsuccessfulRequest(r))) =
        e.downcast_ref::<serenity::Error>()
    {
        let mut text = format!("HTTP {}: {}", r.status_code.as_u16(), r.error.message);
        for one in &r.error.errors {
            text.push_str(&format!("; {}: {} ({})", one.path, one.message, one.code));
        }
        return (i32::try_from(r.error.code).unwrap_or(0), text);
    }
    (0, format!("{e:#}"))
}

/// Reports one registration attempt to the server (`generation` 0: the adapter's own scope),
/// so `facteurctl status` shows it; a report that cannot be sent is logged.
async fn report_registration(
    control: &Client,
    guild_id: Option<u64>,
    generation: i64,
    catalog_version: u64,
    outcome: &anyhow::Result<Registered>,
) {
    let (commands, error, discord_code) = match outcome {
        Ok(r) => (r.commands as u32, String::new(), 0),
        Err(e) => {
            let (code, text) = refusal_of(e);
            (0, text, code)
        }
    };
    let report = pb::ReportGuildRegistrationRequest {
        guild_id: guild_id.map(|g| g.to_string()).unwrap_or_default(),
        generation,
        commands,
        error,
        catalog_version,
        discord_code,
    };
    if let Err(st) = control.command().report_guild_registration(report).await {
        tracing::warn!(guild_id = ?guild_id, error = %st.message(), "cannot report a command registration");
    }
}

/// Registers the catalog in every guild set up with `AdminService.SetupGuild` (`facteurctl
/// guild setup`), as the server announces them, and in the adapter's own scope (`home`: the
/// configured guild, or global commands), until `shutdown`. Each scope has one registrar
/// ([`register_scope`]): once per catalog version (and set-up generation), a refusal retried
/// with backoff and jitter, every outcome reported (`facteurctl guild list`, `facteurctl
/// status`). When the catalog changes (WorkflowTemplate commands), the server says so and
/// announces every guild again. Each registration writes only when Discord's commands differ.
/// Reconnects with capped backoff.
pub async fn follow_guilds(
    control: Client,
    http: Arc<Http>,
    home: Option<u64>,
    shutdown: CancellationToken,
) {
    let open = || {
        let mut command = control.command();
        async move {
            command
                .watch_guilds(pb::WatchGuildsRequest {
                    catalog_notices: true,
                })
                .await
        }
    };
    // What the server announced last (catalog version, set-up generation), per scope: each
    // scope has its registrar, which follows it.
    let (wanted, versions) = watch::channel(None::<Wanted>);
    let guilds: std::sync::Mutex<HashMap<u64, watch::Sender<Option<Wanted>>>> = Default::default();
    let registrars = TaskTracker::new();
    let each = |u: pb::WatchGuildsResponse| {
        let (control, http, wanted, guilds, registrars) =
            (&control, &http, &wanted, &guilds, &registrars);
        let shutdown = shutdown.clone();
        async move {
            let latest = |g: i64| Some((u.catalog_version, g));
            let Some(g) = u.guild else {
                wanted.send_if_modified(|v| {
                    let changed = *v != latest(0);
                    *v = latest(0);
                    changed
                });
                return;
            };
            let Ok(id) = g.guild_id.parse::<u64>() else {
                return;
            };
            let Ok(mut map) = guilds.lock() else { return };
            if let Some(tx) = map.get(&id) {
                tx.send_if_modified(|v| {
                    let changed = *v != latest(g.generation);
                    *v = latest(g.generation);
                    changed
                });
                return;
            }
            let (tx, rx) = watch::channel(latest(g.generation));
            map.insert(id, tx);
            let (control, http) = (control.clone(), http.clone());
            registrars.spawn(async move {
                register_scope(&control, &http, Some(id), rx, &shutdown).await;
            });
        }
    };
    tokio::join!(
        facteur_runtime::adapter::follow("guild set-ups", &shutdown, open, each),
        register_scope(&control, &http, home, versions, &shutdown),
    );
    registrars.close();
    registrars.wait().await;
}

/// What a scope's registrar is asked to register: the catalog version and, for a set-up guild,
/// the set-up generation (0 for the adapter's own scope).
type Wanted = (u64, i64);

/// Registers one scope (`None`: global) once for every (catalog version, generation) `versions`
/// announces (one already registered is never registered again, so start-up registers once),
/// retrying a failure with exponential backoff and jitter (1 s to 5 min) until it succeeds, a
/// newer one arrives, or `shutdown`. Every attempt is reported to the server.
pub async fn register_scope(
    control: &Client,
    http: &Http,
    scope: Option<u64>,
    mut versions: watch::Receiver<Option<Wanted>>,
    shutdown: &CancellationToken,
) {
    use backon::BackoffBuilder;
    let mut done: Option<Wanted> = None;
    loop {
        let (version, generation) = loop {
            let v = *versions.borrow_and_update();
            if let Some(v) = v
                && done != Some(v)
            {
                break v;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = versions.changed() => if changed.is_err() { return },
            }
        };
        let mut delays = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(300))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let outcome = register(control, http, scope).await;
            report_registration(control, scope, generation, version, &outcome).await;
            match outcome {
                Ok(_) => {
                    done = Some((version, generation));
                    break;
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(300));
                    tracing::warn!(guild_id = ?scope, error = %refusal_of(&e).1, retry_in = ?delay, "discord command registration failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                        // Something newer: try it at once.
                        _ = versions.changed() => break,
                    }
                }
            }
        }
    }
}

/// At most one edit of a run's message per this interval (Discord rate-limits message edits;
/// a fast-moving Workflow reports far more often).
pub const EDIT_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps every Discord-started run's message in step with the run, until `shutdown`: edits
/// the original interaction response while its token lives (15 minutes), then posts once in
/// the channel with the bot token, records that message, and edits it afterwards. Edits are
/// coalesced per run ([`Coalescer`]). Resumes from the last cursor after a reconnect, with
/// capped backoff. On `shutdown`, the edits still pending are sent before it returns.
pub async fn follow_runs(control: Client, http: Arc<Http>, shutdown: CancellationToken) {
    follow_runs_from(control, http, Arc::default(), shutdown).await
}

/// [`follow_runs`] from the cursor in `cursor`, kept there as updates arrive: a follower started
/// again after a failure (see `facteur_runtime::supervise`) resumes where the last one stopped
/// rather than from now, so no update is skipped.
pub async fn follow_runs_from(
    control: Client,
    http: Arc<Http>,
    cursor: Arc<std::sync::Mutex<String>>,
    shutdown: CancellationToken,
) {
    let cursor = &*cursor;
    let edits = Coalescer::new(control.clone(), http, EDIT_INTERVAL);
    let open = || {
        let mut command = control.command();
        let cursor = cursor.lock().map(|c| c.clone()).unwrap_or_default();
        async move { command.watch_runs(pb::WatchRunsRequest { cursor }).await }
    };
    let each = |update: pb::WatchRunsResponse| {
        let (edits, cursor) = (&edits, &cursor);
        async move {
            let next = update.cursor.clone();
            edits.offer(update);
            if let Ok(mut c) = cursor.lock() {
                *c = next;
            }
        }
    };
    facteur_runtime::adapter::follow("run updates", &shutdown, open, each).await;
    edits.flush().await;
}

/// Per-run edits at most one per interval: the first update of a run is shown at once; those
/// arriving within the interval after an edit replace one another, and the latest is shown when
/// the interval ends. So the final state always lands, and a burst costs one edit per interval.
pub struct Coalescer {
    control: Client,
    http: Arc<Http>,
    interval: Duration,
    /// The latest update not yet shown, per run with an edit in progress or in its interval.
    pending: Arc<std::sync::Mutex<HashMap<String, watch::Sender<pb::WatchRunsResponse>>>>,
    tasks: TaskTracker,
}

impl Coalescer {
    /// Edits through `http`, recording channel messages through `control`.
    pub fn new(control: Client, http: Arc<Http>, interval: Duration) -> Self {
        Self {
            control,
            http,
            interval,
            pending: Arc::default(),
            tasks: TaskTracker::new(),
        }
    }

    /// Shows `u` now, or as soon as its run's interval allows (replacing an older pending one).
    pub fn offer(&self, u: pb::WatchRunsResponse) {
        let Some(run_id) = u.run.as_ref().map(|r| r.id.clone()) else {
            return;
        };
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if let Some(tx) = pending.get(&run_id) {
            tx.send_replace(u);
            return;
        }
        let (tx, rx) = watch::channel(u);
        pending.insert(run_id.clone(), tx);
        let (control, http, interval, all) = (
            self.control.clone(),
            self.http.clone(),
            self.interval,
            self.pending.clone(),
        );
        self.tasks.spawn(async move {
            let mut rx = rx;
            loop {
                let u = rx.borrow_and_update().clone();
                show(&control, &http, &u).await;
                tokio::time::sleep(interval).await;
                // Under the map's lock, so an update offered now either is seen here or finds
                // no entry and starts a new worker.
                let Ok(mut pending) = all.lock() else {
                    return;
                };
                if !rx.has_changed().unwrap_or(false) {
                    pending.remove(&run_id);
                    return;
                }
            }
        });
    }

    /// Waits until every pending edit has been sent.
    pub async fn flush(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Renders one update where it belongs. Failures are logged; the next update retries.
async fn show(control: &Client, http: &Http, u: &pb::WatchRunsResponse) {
    let (Some(target), Some(reply), Some(run)) = (&u.target, &u.reply, &u.run) else {
        return;
    };
    let body = render::message(&pb::Reply {
        ephemeral: false,
        ..reply.clone()
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let token_live = !target.interaction_token.is_empty()
        && target
            .token_expires_at
            .as_ref()
            .is_some_and(|t| t.seconds > now + 5);
    let result = if token_live {
        http.edit_original_interaction_response(&target.interaction_token, &body, vec![])
            .await
            .map(|_| ())
    } else if let (Ok(channel), Ok(message)) = (
        target.channel_id.parse::<u64>(),
        target.message_id.parse::<u64>(),
    ) {
        http.edit_message(channel.into(), message.into(), &body, vec![])
            .await
            .map(|_| ())
    } else if let Ok(channel) = target.channel_id.parse::<u64>() {
        match http.send_message(channel.into(), vec![], &body).await {
            Ok(m) => {
                let req = pb::RecordRunMessageRequest {
                    run_id: run.id.clone(),
                    channel_id: channel.to_string(),
                    message_id: m.id.get().to_string(),
                };
                if let Err(st) = control.command().record_run_message(req).await {
                    tracing::warn!(run_id = %run.id, error = %st.message(), "cannot record the run's message");
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    } else {
        return;
    };
    if let Err(e) = result {
        tracing::warn!(run_id = %run.id, error = %e, "cannot update the run's message");
    }
}
