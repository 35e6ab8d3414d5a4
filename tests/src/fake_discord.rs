//! A fake Discord REST API (a real HTTP server under `/api/v10`) that records every call, for
//! serenity's HTTP client pointed at it through its proxy base URL. It stores command
//! registrations (bulk overwrite) and answers them back as Discord would.

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

/// Handle to a running fake.
#[derive(Clone)]
pub struct FakeDiscord {
    /// Where it listens (the adapter's `api_base_url` is `http://<addr>`).
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<(String, String, Value)>>>,
    commands: Arc<Mutex<HashMap<String, Vec<Value>>>>,
}

impl FakeDiscord {
    /// Starts on a free loopback port.
    pub async fn start() -> FakeDiscord {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake discord");
        let fake = FakeDiscord {
            addr: listener.local_addr().expect("addr"),
            calls: Arc::default(),
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
                patch(edit_original),
            )
            .route(
                "/api/v10/channels/{channel}/messages",
                axum::routing::post(post_message),
            )
            .route(
                "/api/v10/channels/{channel}/messages/{message}",
                patch(edit_message),
            )
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
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
        if let Ok(mut c) = self.calls.lock() {
            c.push((method.to_string(), path, body));
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
    axum::Json(f.store("global", &app, None, &body)).into_response()
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
