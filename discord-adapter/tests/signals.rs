//! `facteur-discord` as Kubernetes stops it: SIGTERM drains the listener and exits 0 (it used to
//! listen for SIGINT only, so SIGTERM killed it at once, cutting requests in flight) — idle, with
//! a slash command in flight, which is still answered, and with a deferred answer still owed to
//! Discord (the server took longer than Discord's 3 s), which is still sent as the edit of the
//! original response before the process exits. And at `RUST_LOG=trace`, neither the bot token
//! nor an interaction token reaches its log.

use ed25519_dalek::{Signer, SigningKey};
use facteur_client::pb;
use pb::command_service_server::{CommandService, CommandServiceServer};
use std::io::{Read, Write};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// A control plane whose `Invoke` takes this long (the command is in flight when SIGTERM comes).
struct SlowControlPlane(Duration);

#[tonic::async_trait]
impl CommandService for SlowControlPlane {
    async fn list_commands(
        &self,
        _: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        Ok(Response::new(pb::ListCommandsResponse::default()))
    }
    async fn invoke(
        &self,
        _: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        tokio::time::sleep(self.0).await;
        Ok(Response::new(pb::InvokeResponse {
            reply: Some(pb::Reply {
                content: "answered while draining".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
    async fn autocomplete(
        &self,
        _: Request<pb::AutocompleteRequest>,
    ) -> Result<Response<pb::AutocompleteResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn interact(
        &self,
        _: Request<pb::InteractRequest>,
    ) -> Result<Response<pb::InteractResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn record_run_message(
        &self,
        _: Request<pb::RecordRunMessageRequest>,
    ) -> Result<Response<pb::RecordRunMessageResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    type WatchGuildsStream = Stream<pb::WatchGuildsResponse>;
    async fn watch_guilds(
        &self,
        _: Request<pb::WatchGuildsRequest>,
    ) -> Result<Response<Self::WatchGuildsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
    async fn report_guild_registration(
        &self,
        _: Request<pb::ReportGuildRegistrationRequest>,
    ) -> Result<Response<pb::ReportGuildRegistrationResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    type WatchRunsStream = Stream<pb::WatchRunsResponse>;
    async fn watch_runs(
        &self,
        _: Request<pb::WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn start_adapter(control_plane: &str, public_key: &str, port: u16) -> Child {
    start_adapter_with(control_plane, public_key, port, &Secrets::plain())
}

/// What a test gives the adapter that it must never log, and where its log goes.
struct Secrets {
    discord: String,
    bot_token: String,
    interaction_token: String,
    rust_log: &'static str,
    log: Option<std::path::PathBuf>,
}

impl Secrets {
    fn plain() -> Secrets {
        Secrets {
            discord: "http://127.0.0.1:9".into(),
            bot_token: "test-bot-token".into(),
            interaction_token: "in-flight-token".into(),
            rust_log: "info",
            log: None,
        }
    }
}

fn start_adapter_with(control_plane: &str, public_key: &str, port: u16, s: &Secrets) -> Child {
    let out = || match &s.log {
        None => Stdio::null(),
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("log file"),
        ),
    };
    Command::new(env!("CARGO_BIN_EXE_facteur-discord"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", s.rust_log)
        .env("FACTEUR_CONTROL_PLANE_URL", control_plane)
        .env("FACTEUR_DISCORD_BOT_TOKEN", &s.bot_token)
        .env("FACTEUR_DISCORD_APPLICATION_ID", "400000000000000001")
        .env("FACTEUR_DISCORD_PUBLIC_KEY", public_key)
        .env("FACTEUR_DISCORD_API_BASE_URL", &s.discord)
        .env(
            "FACTEUR_DISCORD_INTERACTIONS_LISTEN_ADDRESS",
            format!("127.0.0.1:{port}"),
        )
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("start facteur-discord")
}

fn wait_listening(child: &mut Child, port: u16) {
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("facteur-discord exited at start: {status}");
        }
        assert!(up.elapsed() < Duration::from_secs(20), "never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let sent = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if sent.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("facteur-discord did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The PATCHes of `@original` a fake Discord REST API received: (path, body).
type Edits = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A fake Discord REST API that records edits of original interaction responses.
async fn fake_discord() -> (String, Edits) {
    let edits = Edits::default();
    let seen = edits.clone();
    let app = axum::Router::new().route(
        "/api/v10/webhooks/{app}/{token}/messages/@original",
        axum::routing::patch(
            move |uri: axum::http::Uri, body: axum::body::Bytes| async move {
                let body = String::from_utf8_lossy(&body).to_string();
                seen.lock()
                    .expect("edits")
                    .push((uri.path().to_string(), body));
                axum::Json(serde_json::json!({
                    "id": "600000000000000001", "channel_id": "500000000000000001",
                    "content": "", "type": 0, "timestamp": "2026-12-04T00:00:00+00:00",
                    "author": {"id": "400000000000000001", "username": "facteur",
                               "discriminator": "0000", "avatar": null},
                    "tts": false, "mention_everyone": false, "mentions": [],
                    "mention_roles": [], "attachments": [], "embeds": [], "pinned": false
                }))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, edits)
}

/// Starts `facteur-discord` over a control plane whose `Invoke` takes `server_delay`, sends one
/// signed slash command, SIGTERMs the process `stop_after` later, and returns the HTTP answer,
/// the exit status and what the fake Discord received.
async fn slash_command_then_sigterm(
    server_delay: Duration,
    stop_after: Duration,
    mut secrets: Secrets,
) -> (String, std::process::ExitStatus, Vec<(String, String)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let control = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CommandServiceServer::new(SlowControlPlane(server_delay)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (discord, edits) = fake_discord().await;
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let port = free_port();
    secrets.discord = discord;
    let mut child = start_adapter_with(
        &control,
        &hex(&key.verifying_key().to_bytes()),
        port,
        &secrets,
    );
    wait_listening(&mut child, port);

    let body = serde_json::json!({
        "type": 2, "id": "900000000000000001", "application_id": "400000000000000001",
        "token": secrets.interaction_token, "guild_id": "100000000000000001",
        "channel_id": "500000000000000001",
        "member": {"user": {"id": "300000000000000001", "username": "alice"}, "roles": []},
        "data": {"name": "deploy", "options": []},
    })
    .to_string();
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .to_string();
    let signature = hex(&key.sign(format!("{ts}{body}").as_bytes()).to_bytes());
    let request = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let head = format!(
            "POST /interactions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nX-Signature-Ed25519: {signature}\r\nX-Signature-Timestamp: {ts}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    tokio::time::sleep(stop_after).await;
    sigterm(&child);
    let answer = tokio::task::spawn_blocking(move || request.join().expect("request"))
        .await
        .expect("join");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .expect("join");
    let edits = edits.lock().expect("edits").clone();
    (answer, status, edits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_command_in_flight_then_exits_zero() {
    // The command is at the control plane (1 s) when the stop comes.
    let (answer, status, edits) = slash_command_then_sigterm(
        Duration::from_millis(1000),
        Duration::from_millis(300),
        Secrets::plain(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("answered while draining"), "{answer}");
    assert!(
        edits.is_empty(),
        "answered in time, nothing deferred: {edits:?}"
    );
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_a_deferred_answer_still_owed_then_exits_zero() {
    // The server takes 4 s: the adapter defers at 2.5 s; the stop comes at 3 s, while the
    // answer is still owed to Discord. Before, the edit was a detached task the exit cut.
    let (answer, status, edits) = slash_command_then_sigterm(
        Duration::from_millis(4000),
        Duration::from_millis(3000),
        Secrets::plain(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""type":5"#), "a deferral: {answer}");
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert_eq!(
        edits[0].0,
        "/api/v10/webhooks/400000000000000001/in-flight-token/messages/@original"
    );
    assert!(edits[0].1.contains("answered while draining"), "{edits:?}");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_at_trace() {
    // Random secrets, RUST_LOG=trace, and a command slow enough to be deferred: the interaction
    // token travels in serenity's route (its HTTP span) when the answer is sent as an edit, and
    // the bot token in every REST call (the command registration retried against a fake Discord
    // that knows only the edit route).
    let random = |what: &str| {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        format!("{what}{n:x}{}", std::process::id())
    };
    let dir = std::env::temp_dir().join(random("facteur-discord-trace-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("adapter.log");
    let secrets = Secrets {
        discord: String::new(),
        bot_token: random("bot"),
        interaction_token: random("itk"),
        rust_log: "trace",
        log: Some(log.clone()),
    };
    let (bot, token) = (secrets.bot_token.clone(), secrets.interaction_token.clone());
    let (answer, status, edits) = slash_command_then_sigterm(
        Duration::from_millis(3000),
        Duration::from_millis(3500),
        secrets,
    )
    .await;
    assert!(answer.contains(r#""type":5"#), "a deferral: {answer}");
    assert_eq!(edits.len(), 1, "the deferred answer was sent: {edits:?}");
    assert!(edits[0].0.contains(&token), "sent with the real token");
    assert_eq!(status.code(), Some(0), "{status}");
    let text = std::fs::read_to_string(&log).expect("log");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        text.lines().count() > 20 && text.contains("TRACE"),
        "the log is at trace: {text}"
    );
    for (what, secret) in [("bot token", &bot), ("interaction token", &token)] {
        let hits: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(hits.is_empty(), "{what} in the log: {hits:#?}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let port = free_port();
    // Nothing answers at the control plane: the adapter keeps trying in the background, as in a
    // real start-up before the server is up.
    let mut child = start_adapter(
        "http://127.0.0.1:9",
        "0000000000000000000000000000000000000000000000000000000000000000",
        port,
    );
    wait_listening(&mut child, port);
    sigterm(&child);
    let status = wait_exit(&mut child);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a drain, not a kill: {status}"
    );
}
