//! `POST /callback`: Argo exit handlers report a Workflow's end here (bearer token). A fast
//! path only: exit handlers do not run on Terminate, so the watch stays the source of truth.
//!
//! Body (JSON): `{"namespace": "…", "workflowName": "…", "phase": "Succeeded|Failed|Error",
//! "uid": "…", "message": "…"}` (`name`/`status` accepted for `workflowName`/`phase`, as in
//! Argo's `{{workflow.name}}` / `{{workflow.status}}`).

use crate::status::Reporter;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use facteur_client::pb;
use facteur_config::Secret;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Ctx {
    token: Secret,
    reporter: Reporter,
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: Secret,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "callback endpoint listening");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(token, reporter))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// The router (public for tests).
pub fn router(token: Secret, reporter: Reporter) -> Router {
    Router::new()
        .route("/callback", post(callback))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Ctx { token, reporter })
}

async fn callback(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let ok = presented.is_some_and(|t| bool::from(t.ct_eq(ctx.token.expose().as_bytes())));
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        );
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
    };
    let field = |a: &str, b: &str| {
        v.get(a)
            .or_else(|| v.get(b))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (name, phase, namespace) = (
        field("workflowName", "name"),
        field("phase", "status"),
        field("namespace", "namespace"),
    );
    if name.is_empty() || namespace.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "namespace and workflowName are required".into(),
        );
    }
    if !["Succeeded", "Failed", "Error", "Running"].contains(&phase.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            format!("phase `{phase}` is not one of Running, Succeeded, Failed, Error"),
        );
    }
    let report = pb::ReportWorkflowStatusRequest {
        namespace,
        workflow_name: name,
        workflow_uid: field("uid", "workflowUid"),
        phase,
        message: field("message", "message"),
        source: "callback".into(),
        ..Default::default()
    };
    ctx.reporter.send(report).await;
    (StatusCode::ACCEPTED, String::new())
}
