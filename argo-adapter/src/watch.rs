//! Watches the Workflows facteur manages in one namespace and reports every phase change.
//! kube-runtime's watcher re-lists after a reconnect (InitApply events): that resync catches
//! whatever changed while the watch was down. Errors are retried with backoff, forever.

use crate::status::{MANAGED_SELECTOR, Reporter, report_of};
use crate::workflows::Workflows;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown`.
pub async fn run(
    workflows: Workflows,
    namespace: String,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = workflows.api(&namespace);
    let stream =
        watcher(api, watcher::Config::default().labels(MANAGED_SELECTOR)).default_backoff();
    tokio::pin!(stream);
    tracing::info!(namespace = %namespace, "watching workflows");
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = stream.next() => ev,
        };
        match ev {
            Some(Ok(watcher::Event::Apply(obj))) => {
                if let Some(r) = report_of(&obj, "watch") {
                    reporter.send(r).await;
                }
            }
            Some(Ok(watcher::Event::InitApply(obj))) => {
                if let Some(r) = report_of(&obj, "resync") {
                    reporter.send(r).await;
                }
            }
            Some(Ok(watcher::Event::Init)) => {
                tracing::debug!(namespace = %namespace, "watch (re)listing")
            }
            Some(Ok(watcher::Event::InitDone)) => {
                tracing::debug!(namespace = %namespace, "watch resynced")
            }
            Some(Ok(watcher::Event::Delete(_))) => {}
            Some(Err(e)) => {
                tracing::warn!(namespace = %namespace, error = %e, "workflow watch error; retrying with backoff")
            }
            None => return Err(anyhow::anyhow!("workflow watch of {namespace} ended")),
        }
    }
}
