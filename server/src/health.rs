//! Dependency checks behind `/readyz`, `grpc.health.v1` and `AdminService.GetStatus`.
//!
//! The database and the session store are each checked with a deadline. A background loop feeds
//! the gRPC health service, so probes see NOT_SERVING while a dependency is down and SERVING again
//! as soon as it answers, without a restart.

use crate::metrics::Metrics;
use crate::session::SessionStore;
use crate::store::Store;
use facteur_runtime::supervise::Supervisor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Result of one dependency check.
#[derive(Clone, Debug)]
pub struct DependencyReport {
    /// `database`, `session_store` or `background_tasks`.
    pub name: &'static str,
    /// `postgres`, `sqlite`, `redis`, `memory`, `supervisor`.
    pub backend: &'static str,
    /// Whether it answered in time.
    pub healthy: bool,
    /// The error, when unhealthy.
    pub message: String,
    /// Round trip.
    pub latency: Duration,
}

/// The checks.
#[derive(Clone)]
pub struct Health {
    store: Store,
    sessions: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// The gRPC health service, once [`Health::publish`] attached it: every check (a `/readyz`
    /// probe too) moves it at once when the answer changes.
    reporter: Arc<std::sync::OnceLock<HealthReporter>>,
    /// What the gRPC health service says now.
    serving: Arc<std::sync::atomic::AtomicBool>,
    /// The background tasks: one that cannot be kept alive takes readiness down.
    supervisor: Arc<Supervisor>,
}

impl Health {
    /// Checks `store` and `sessions`, each within `timeout`.
    pub fn new(
        store: Store,
        sessions: Arc<dyn SessionStore>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        supervisor: Arc<Supervisor>,
    ) -> Self {
        Self {
            store,
            sessions,
            metrics,
            timeout,
            supervisor,
            reporter: Arc::default(),
            serving: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Runs both checks concurrently.
    pub async fn check(&self) -> Vec<DependencyReport> {
        let db = timed(
            "database",
            self.store.backend_name(),
            self.timeout,
            self.store.ping(),
        );
        let ss = timed(
            "session_store",
            self.sessions.backend(),
            self.timeout,
            self.sessions.ping(),
        );
        let (db, ss) = tokio::join!(db, ss);
        let tasks = DependencyReport {
            name: "background_tasks",
            backend: "supervisor",
            healthy: self.supervisor.failed().is_none(),
            message: self.supervisor.failed().unwrap_or_default().to_string(),
            latency: Duration::ZERO,
        };
        for r in [&db, &ss, &tasks] {
            self.metrics.set_gauge(
                crate::metrics::Metric::DependencyUp,
                vec![("dependency", r.name.into()), ("backend", r.backend.into())],
                if r.healthy { 1.0 } else { 0.0 },
            );
        }
        let ok = db.healthy && ss.healthy && tasks.healthy;
        let was = self.serving.swap(ok, std::sync::atomic::Ordering::AcqRel);
        if was != ok
            && let Some(reporter) = self.reporter.get()
        {
            set_status(reporter, ok).await;
        }
        vec![db, ss, tasks]
    }

    /// Checks now and publishes the result to the gRPC health service; true when all healthy.
    pub async fn publish(&self, reporter: &HealthReporter) -> bool {
        let _ = self.reporter.set(reporter.clone());
        let reports = self.check().await;
        let ok = reports.iter().all(|r| r.healthy);
        for r in reports.iter().filter(|r| !r.healthy) {
            tracing::warn!(dependency = r.name, backend = r.backend, error = %r.message, "dependency check failed");
        }
        set_status(reporter, ok).await;
        ok
    }

    /// Re-checks every `interval` until `shutdown`, logging transitions; then NOT_SERVING.
    pub async fn watch(
        self,
        reporter: HealthReporter,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut was_ok = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            let ok = self.publish(&reporter).await;
            if ok != was_ok {
                if ok {
                    tracing::info!("all dependencies healthy again: serving");
                } else {
                    tracing::warn!("a dependency is down: not serving");
                }
                was_ok = ok;
            }
        }
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    }
}

async fn set_status(reporter: &HealthReporter, ok: bool) {
    let status = if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    for name in facteur_proto::SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

async fn timed(
    name: &'static str,
    backend: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = crate::domain::Result<()>>,
) -> DependencyReport {
    let start = Instant::now();
    let (healthy, message) = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(())) => (true, String::new()),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (
            false,
            format!("{backend} did not answer within {timeout:?}"),
        ),
    };
    DependencyReport {
        name,
        backend,
        healthy,
        message,
        latency: start.elapsed(),
    }
}
