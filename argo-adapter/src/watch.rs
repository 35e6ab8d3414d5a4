//! Watches the Workflows facteur manages in one namespace and reports every phase change.
//! kube-runtime's watcher re-lists after a reconnect (InitApply events): that resync catches
//! whatever changed while the watch was down. Errors are retried with backoff, forever.

use crate::status::{MANAGED_SELECTOR, Reporter};
use crate::workflows::Workflows;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// One Workflow watcher per namespace of the assignment, until `shutdown`.
pub async fn follow(
    workflows: Workflows,
    assigned: crate::assignment::Assigned,
    reporter: Reporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    per_namespace(assigned, shutdown, "workflow watch", move |ns, token| {
        run(workflows.clone(), ns, reporter.clone(), token)
    })
    .await
}

/// One task per namespace of the assignment, until `shutdown`: a namespace added gets its task
/// at once, one removed has its task stopped (its token cancelled). A task that fails ends it
/// all.
pub async fn per_namespace<F, Fut>(
    mut assigned: crate::assignment::Assigned,
    shutdown: CancellationToken,
    what: &'static str,
    task: F,
) -> anyhow::Result<()>
where
    F: Fn(String, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut running: BTreeMap<String, CancellationToken> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let wanted = assigned.borrow_and_update().clone().unwrap_or_default();
        running.retain(|ns, token| {
            let keep = wanted.contains(ns);
            if !keep {
                tracing::info!(namespace = %ns, what, "no longer assigned: stopped");
                token.cancel();
            }
            keep
        });
        for ns in wanted {
            if !running.contains_key(&ns) {
                let token = shutdown.child_token();
                running.insert(ns.clone(), token.clone());
                tasks.spawn(task(ns, token));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = assigned.changed() => {
                if changed.is_err() {
                    // The assignment is final (an older server): nothing changes any more.
                    shutdown.cancelled().await;
                    break;
                }
            }
            Some(done) = tasks.join_next() => {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(anyhow::anyhow!("{what} panicked: {e}")),
                }
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| anyhow::anyhow!("{what} panicked: {e}"))??;
    }
    Ok(())
}

/// Watches one namespace until `shutdown`.
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
            Some(Ok(watcher::Event::Apply(obj))) => reporter.observe(&obj, "watch").await,
            Some(Ok(watcher::Event::InitApply(obj))) => reporter.observe(&obj, "resync").await,
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
