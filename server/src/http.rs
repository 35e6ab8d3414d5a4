//! The HTTP surface: liveness (`/healthz`, `/health`), readiness (`/readyz`, `/ready`) and
//! Prometheus metrics (`/metrics`), and the compatibility endpoints `POST /codex/tasks` and
//! `POST /events`.

use crate::auth::{AuthError, Role};
use crate::domain::Error;
use crate::service::codex::{ingest, reject};
use crate::service::discord::{self, Interaction};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use facteur_proto::froussard::CodexTask;
use facteur_proto::legacy::CommandEvent;
use serde_json::json;
use std::sync::Arc;

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(live))
        .route("/health", get(live))
        .route("/readyz", get(ready))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/events",
            post(events).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/codex/tasks",
            post(codex_tasks).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such endpoint"})),
            )
        })
        .with_state(state)
}

/// The process is up; checks nothing else (a liveness probe must not restart us for Redis).
async fn live() -> Response {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})).into_response()
}

/// 200 when the database and the session store answer; 503 naming the failing ones otherwise.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let reports = state.health.check().await;
    let checks: Vec<_> = reports
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "backend": r.backend,
                "healthy": r.healthy,
                "message": r.message,
                "latency_ms": r.latency.as_secs_f64() * 1000.0,
            })
        })
        .collect();
    let failing: Vec<String> = reports
        .iter()
        .filter(|r| !r.healthy)
        .map(|r| format!("{} ({})", r.backend, r.name))
        .collect();
    if failing.is_empty() {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "checks": checks})),
        )
            .into_response()
    } else {
        let body = json!({"status": "not ready", "failing": failing, "checks": checks});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Largest accepted CodexTask body.
const MAX_TASK_BODY: usize = 4 * 1024 * 1024;

/// Why a request body was not read.
enum BodyError {
    /// Longer than allowed (declared or sent).
    TooLarge,
    /// The connection failed while it was read.
    Unreadable(axum::Error),
}

/// Reads a body of at most `limit` bytes into one buffer sized from its `content-length`: each
/// chunk is copied in as it arrives and dropped, so the body is held once, and a body declared
/// too large is refused before it is read.
async fn read_body(
    body: axum::body::Body,
    headers: &axum::http::HeaderMap,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    use futures::StreamExt as _;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(BodyError::Unreadable)?;
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Counts the fields of a proto-JSON task that CodexTask does not declare (a producer built
/// against a newer CodexTask) and logs each path once per process: the task is taken without
/// them, as a binary body's unknown fields are.
fn skipped_fields(state: &AppState, unknown: &[String]) {
    if unknown.is_empty() {
        return;
    }
    state.metrics.add(
        crate::metrics::Metric::CodexUnknownFields,
        vec![],
        unknown.len() as u64,
    );
    static LOGGED: std::sync::LazyLock<std::sync::Mutex<std::collections::BTreeSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    let Ok(mut logged) = LOGGED.lock() else {
        return;
    };
    // Bounded: field names come from producers.
    let new: Vec<&String> = unknown
        .iter()
        .filter(|f| logged.len() < 256 && logged.insert(f.chars().take(100).collect()))
        .collect();
    if !new.is_empty() {
        tracing::warn!(fields = ?new, "codex task fields CodexTask does not declare were skipped (a newer producer?)");
    }
}

fn json_error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into()}))).into_response()
}

/// Bearer token check for the compatibility endpoints (same tokens as gRPC).
fn compat_principal(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    allowed: &[Role],
) -> Result<String, Box<Response>> {
    if state.config.server.compat_unauthenticated && headers.get("authorization").is_none() {
        return Ok("unauthenticated-compat".into());
    }
    state
        .auth
        .authorize(headers.get("authorization").map(|v| v.as_bytes()), allowed)
        .map(|p| p.name)
        .map_err(|e| -> Box<Response> {
            Box::new(match e {
                AuthError::Forbidden { .. } => {
                    json_error(StatusCode::FORBIDDEN, tonic::Status::from(e).message())
                }
                other => json_error(
                    StatusCode::UNAUTHORIZED,
                    tonic::Status::from(other).message(),
                ),
            })
        })
}

/// The HTTP status of an error, from its type: bad input 400, conflicts and failed
/// preconditions 409 (a producer behind Knative must not retry those as an outage), only an
/// unavailable dependency — or a feature turned off, as the old service answered — 503.
pub fn http_status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument { .. } | Error::Refused(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::AlreadyExists(_) | Error::Aborted(_) | Error::FailedPrecondition(_) => {
            StatusCode::CONFLICT
        }
        Error::Disabled { .. } | Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The one mapping from domain errors to HTTP answers: [`http_status_of`] and a JSON body
/// `{"error": message, "reason": …, "field": …}` — the same reason as the gRPC `ErrorInfo`,
/// the field at fault when there is one. An internal error's text is logged, never shown.
fn http_error(e: Error) -> Response {
    let code = http_status_of(&e);
    let details = crate::grpc::status::details_of(&e);
    let mut body = serde_json::Map::new();
    body.insert(
        "error".into(),
        crate::grpc::status::public_message(&e).into(),
    );
    if let Some(info) = details.error_info() {
        body.insert("reason".into(), info.reason.clone().into());
    }
    if let Some(v) = details
        .bad_request()
        .and_then(|b| b.field_violations.first())
    {
        body.insert("field".into(), v.field.clone().into());
    }
    (code, Json(serde_json::Value::Object(body))).into_response()
}

/// `POST /codex/tasks`: a binary `proompteng.froussard.v1.CodexTask` (or proto-JSON with
/// `content-type: application/json`) → 202 `{stage, namespace, workflowName, submittedAt,
/// duplicate}`.
async fn codex_tasks(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let principal = match compat_principal(&state, &headers, crate::auth::allowed::CODEX) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let bytes = match read_body(body, &headers, MAX_TASK_BODY).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            reject(&state, "too_large");
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is larger than {MAX_TASK_BODY} bytes"),
            );
        }
        Err(BodyError::Unreadable(e)) => {
            reject(&state, "unreadable");
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("body could not be read: {e}"),
            );
        }
    };
    if bytes.is_empty() {
        reject(&state, "empty_body");
        return json_error(
            StatusCode::BAD_REQUEST,
            "empty body: expected a proompteng.froussard.v1.CodexTask",
        );
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let decoded = if is_json {
        serde_json::from_slice(&bytes)
            .map_err(|e| e.to_string())
            .and_then(facteur_proto::codex_task_from_value)
            .map(|(task, unknown)| {
                skipped_fields(&state, &unknown);
                task
            })
    } else {
        <CodexTask as prost::Message>::decode(bytes.as_ref()).map_err(|e| e.to_string())
    };
    // Decoded, the body is not needed: a 4 MiB task is not held twice from here on.
    drop(bytes);
    let task = match decoded {
        Ok(t) => t,
        Err(e) => {
            reject(&state, "undecodable");
            let what = if is_json {
                "proto-JSON"
            } else {
                "binary protobuf"
            };
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("body is not a {what} CodexTask: {e}"),
            );
        }
    };
    match ingest(&state, task, "", &principal).await {
        Ok(a) => {
            let body = json!({
                "stage": "implementation",
                "namespace": a.namespace,
                "workflowName": a.workflow_name,
                "submittedAt": a.submitted_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "duplicate": a.duplicate,
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(e) => http_error(e),
    }
}

/// Largest accepted CommandEvent body.
const MAX_EVENT_BODY: usize = 1024 * 1024;

/// `POST /events`: a binary `proompteng.facteur.v1.CommandEvent` (what the old Discord front end
/// published) starts a run the way `CommandService.Invoke` does → 202
/// `{workflowName, namespace, correlationId}`.
async fn events(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(r) = compat_principal(&state, &headers, crate::auth::allowed::EVENTS) {
        return *r;
    }
    let bytes = match axum::body::to_bytes(body, MAX_EVENT_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is larger than {MAX_EVENT_BODY} bytes"),
            );
        }
    };
    let EventRequest {
        interaction,
        command,
        options,
        correlation_id,
    } = match event_request(&bytes) {
        Ok(r) => r,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, message),
    };
    let result = discord::run_event(&state, interaction, &command, &options).await;
    match result {
        Ok((run, _)) => {
            let correlation = if correlation_id.is_empty() {
                run.id.clone()
            } else {
                correlation_id
            };
            let body = json!({"workflowName": run.workflow_name, "namespace": run.namespace, "correlationId": correlation});
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(e) => http_error(e),
    }
}

/// What a `POST /events` body asks for, before any check that needs state.
pub struct EventRequest {
    /// The interaction it came from (not yet validated: see [`Interaction::validate`]).
    pub interaction: Interaction,
    /// The command to run.
    pub command: String,
    /// Its options, by name.
    pub options: std::collections::BTreeMap<String, String>,
    /// The producer's correlation id (may be empty).
    pub correlation_id: String,
}

/// Decode a `POST /events` body (a binary `proompteng.facteur.v1.CommandEvent`) into the
/// interaction and command it asks for; the error is the sentence a 400 answers with.
/// Pure, so it can be fuzzed (`fuzz/fuzz_targets/command_event.rs`).
pub fn event_request(bytes: &[u8]) -> Result<EventRequest, String> {
    if bytes.is_empty() {
        return Err("empty body: expected a proompteng.facteur.v1.CommandEvent".into());
    }
    let ev = <CommandEvent as prost::Message>::decode(bytes)
        .map_err(|e| format!("body is not a binary CommandEvent: {e}"))?;
    if ev.command.trim().is_empty() {
        return Err("command is required".into());
    }
    if ev.interaction_id.is_empty() && ev.correlation_id.is_empty() {
        return Err(
            "interaction_id (or correlation_id) is required: it is the idempotency key".into(),
        );
    }
    let user = ev.user.unwrap_or_default();
    let member = ev.member.unwrap_or_default();
    let interaction = Interaction {
        interaction_id: if ev.interaction_id.is_empty() {
            format!("event-{}", ev.correlation_id)
        } else {
            ev.interaction_id
        },
        application_id: ev.application_id,
        token: ev.token,
        guild_id: ev.guild_id,
        channel_id: ev.channel_id,
        user_id: if user.id.is_empty() {
            member.id
        } else {
            user.id
        },
        user_name: if user.global_name.is_empty() {
            user.username
        } else {
            user.global_name
        },
        role_ids: member.roles,
        locale: ev.locale,
        field_prefix: "",
    };
    Ok(EventRequest {
        interaction,
        command: ev.command,
        options: ev.options.into_iter().collect(),
        correlation_id: ev.correlation_id,
    })
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn only_an_outage_or_a_feature_turned_off_is_503() {
        let cases = [
            (Error::invalid("x", "bad"), 400),
            (Error::NotFound("x".into()), 404),
            (Error::PermissionDenied("x".into()), 403),
            (Error::ResourceExhausted("x".into()), 429),
            (Error::AlreadyExists("x".into()), 409),
            (Error::Aborted("x".into()), 409),
            (Error::FailedPrecondition("the run is finished".into()), 409),
            (
                Error::Disabled {
                    feature: "codex_orchestration",
                    message: "off".into(),
                },
                503,
            ),
            (
                Error::Unavailable {
                    dependency: "database",
                    message: "down".into(),
                },
                503,
            ),
            (Error::Internal("x".into()), 500),
        ];
        for (e, want) in cases {
            assert_eq!(http_status_of(&e).as_u16(), want, "{e:?}");
        }
    }
}
