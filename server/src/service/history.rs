//! Upkeep of history: retention passes (in the background and on an admin's request) and the
//! change feed's lag.

use crate::domain::Result;
use crate::domain::retention::{Pruned, Retention};
use crate::metrics::Metric;
use crate::state::AppState;
use std::sync::Arc;
use std::time::Duration;

/// One retention pass now; `dry` only counts. Deletions are counted in
/// `facteur_retention_deleted_total` and logged.
pub async fn prune(state: &AppState, dry: bool) -> Result<Pruned> {
    let retention = Retention::from_config(&state.config.retention);
    let cutoffs = retention.cutoffs(chrono::Utc::now());
    let pruned = state
        .store
        .prune(&cutoffs, state.config.retention.batch_size, dry)
        .await?;
    if !dry {
        for (kind, n) in pruned.by_kind() {
            if n > 0 {
                state
                    .metrics
                    .add(Metric::RetentionDeleted, vec![("kind", kind.into())], n);
            }
        }
        if pruned != Pruned::default() {
            tracing::info!(
                runs = pruned.runs,
                run_events = pruned.run_events,
                dispatches = pruned.dispatches,
                audit_events = pruned.audit_events,
                codex_task_runs = pruned.codex_task_runs,
                "retention pass deleted history"
            );
        }
    }
    Ok(pruned)
}

/// Applies retention every `retention.interval_seconds` until shutdown (first pass at once).
/// A pass that fails is logged and tried again at the next interval; the database being down
/// is the health check's to report, not a reason to stop.
pub async fn follow(state: Arc<AppState>) -> std::result::Result<(), String> {
    let every = Duration::from_secs(state.config.retention.interval_seconds.max(1));
    loop {
        if let Err(e) = prune(&state, false).await {
            tracing::warn!(error = %e, "retention pass failed; trying again at the next interval");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// How often the feed's lag is measured.
const FEED_LAG_EVERY: Duration = Duration::from_secs(10);

/// Sets `facteur_feed_held_back_seconds` until shutdown: how long the oldest writing transaction
/// has been open, which is how far the run change feed may be held back (see `store::feed`).
pub async fn watch_feed_lag(state: Arc<AppState>) -> std::result::Result<(), String> {
    loop {
        match state.store.feed_held_back_seconds().await {
            Ok(s) => state
                .metrics
                .set_gauge(Metric::FeedHeldBackSeconds, vec![], s),
            Err(e) => tracing::debug!(error = %e, "cannot measure the feed's lag"),
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FEED_LAG_EVERY) => {}
        }
    }
}
