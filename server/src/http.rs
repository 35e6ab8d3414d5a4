//! The HTTP surface: liveness (`/healthz`, `/health`), readiness (`/readyz`, `/ready`) and
//! Prometheus metrics (`/metrics`). The compatibility endpoints join it in later issues.

use crate::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
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
