//! The argo-adapter (`facteur-argo`): thin, stateless, several replicas at once.
//!
//! ```text
//!  facteur server ──Lease stream──▶ leaser ──create/patch──▶ Kubernetes API (Workflow objects)
//!        ▲                            │                              │
//!        └──── Complete ◀─────────────┘                              │ watch (label selector)
//!        └──── ReportWorkflowStatus ◀── watcher ◀────────────────────┘
//!        └──── ReportWorkflowStatus ◀── callback (Argo exit handlers, a fast path only)
//! ```
//!
//! Leases make each job go to one adapter; the Workflow name derived from the run id makes a
//! repeated create answer AlreadyExists, which counts as success. The watch is the source of
//! truth for status: it resumes with backoff and re-lists after reconnecting, so nothing missed
//! while disconnected is lost; the server ignores any report that would move a run backwards.

pub mod assignment;
pub mod callback;
pub mod kubeconfig;
pub mod leaser;
pub mod lint;
pub mod status;
pub mod templates;
pub mod watch;
pub mod workflows;

use facteur_client::Client;
use facteur_config::Config;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Reconnect backoff to the server and to the Kubernetes API.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
/// Cap of the reconnect backoff.
pub const BACKOFF_CAP: Duration = Duration::from_secs(15);

/// Asks the server what to serve, then runs the leaser, one Workflow watcher and one labelled
/// WorkflowTemplate watcher per assigned namespace (following changes of the assignment), and
/// (when configured) the callback endpoint, until
/// `shutdown`. A task that dies ends the whole adapter with its error.
pub async fn run(
    config: &Config,
    control: Client,
    kube: kube::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let adapter_id = adapter_id();
    let cluster = config.argo.cluster.clone();
    tracing::info!(adapter_id = %adapter_id, cluster = %cluster, narrowing = ?config.argo.namespaces, "argo-adapter starting");
    let workflows = workflows::Workflows::new(kube.clone());
    let mut tasks = tokio::task::JoinSet::new();
    // The server says where runs go; this adapter's `argo.namespaces` may only narrow that.
    let (tx, mut assigned) = tokio::sync::watch::channel(None);
    tasks.spawn(assignment::follow(
        control.clone(),
        adapter_id.clone(),
        cluster.clone(),
        config.argo.namespaces.clone(),
        config.argo.max_in_flight,
        config.watch_namespaces(),
        tx,
        shutdown.clone(),
    ));
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = assigned.wait_for(Option::is_some) => {}
    }
    tasks.spawn(templates::follow(
        workflows.clone(),
        control.clone(),
        adapter_id.clone(),
        cluster.clone(),
        assigned.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(leaser::run(
        control.clone(),
        workflows.clone(),
        adapter_id,
        cluster.clone(),
        assigned.clone(),
        config.argo.max_in_flight,
        Duration::from_secs(config.argo.shutdown_grace_seconds),
        shutdown.clone(),
    ));
    let reporter = status::Reporter::new(control.clone(), cluster)
        .with_logs(workflows.clone(), config.secrets());
    tasks.spawn(watch::follow(
        workflows.clone(),
        assigned,
        reporter.clone(),
        shutdown.clone(),
    ));
    if !config.argo.callback_token.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.argo.callback_listen_address)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (argo.callback_listen_address): {e}",
                    config.argo.callback_listen_address
                )
            })?;
        tasks.spawn(callback::serve(
            listener,
            config.argo.callback_token.clone(),
            reporter,
            shutdown.clone(),
        ));
    } else {
        tracing::info!("callback endpoint off (set argo.callback_token to enable it)");
    }
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        match done {
            // Every task runs until shutdown: one that returns before it is a task that died
            // quietly, and the adapter must not go on without it (Kubernetes restarts it).
            Ok(Ok(())) if !shutdown.is_cancelled() => {
                if result.is_ok() {
                    result = Err(anyhow::anyhow!("an adapter task ended before shutdown"));
                }
                shutdown.cancel();
            }
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if result.is_ok() {
                    result = Err(e);
                }
                shutdown.cancel();
            }
            Err(e) => {
                if result.is_ok() {
                    result = Err(anyhow::anyhow!("adapter task panicked: {e}"));
                }
                shutdown.cancel();
            }
        }
    }
    result
}

/// `<pod name>-<8 hex>`: stable enough to read in the audit trail, unique per process so a
/// restarted adapter does not inherit its predecessor's unexpired leases.
pub fn adapter_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "facteur-argo".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}
