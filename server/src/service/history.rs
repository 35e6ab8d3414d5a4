//! Upkeep of history: retention passes (in the background and on an admin's request) and the
//! change feed's lag.

use crate::domain::Result;
use crate::domain::retention::{Pruned, Retention};
use crate::metrics::Metric;
use crate::state::AppState;
use std::sync::Arc;
use std::time::Duration;

/// Batches per kind in one background pass: at the default batch of 500, 10,000 rows of each
/// kind, a few seconds of work; a longer backlog goes in the passes that follow.
const PASS_BATCHES: u32 = 20;

/// How soon the next background pass comes after one that stopped at [`PASS_BATCHES`].
const BACKLOG_PAUSE: Duration = Duration::from_secs(1);

/// One retention pass now, to the end (an admin's request); `dry` only counts.
pub async fn prune(state: &AppState, dry: bool) -> Result<Pruned> {
    Ok(pass(state, u32::MAX, dry).await?.0)
}

/// One pass of at most `max_batches` per kind; whether more is left. Deletions are counted in
/// `facteur_retention_deleted_total` and logged.
async fn pass(state: &AppState, max_batches: u32, dry: bool) -> Result<(Pruned, bool)> {
    let retention = Retention::from_config(&state.config.retention);
    let cutoffs = retention.cutoffs(chrono::Utc::now());
    let (pruned, more) = state
        .store
        .prune(
            &cutoffs,
            state.config.retention.batch_size,
            max_batches,
            dry,
        )
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
                more,
                "retention pass deleted history"
            );
        }
    }
    Ok((pruned, more))
}

/// Applies retention every `retention.interval_seconds` until shutdown (first pass at once),
/// each pass at most [`PASS_BATCHES`] batches per kind: a backlog goes in short passes a
/// second apart, so shutdown never waits for more than one of them. A pass that fails is
/// logged and tried again at the next interval; the database being down is the health
/// check's to report, not a reason to stop.
pub async fn follow(state: Arc<AppState>) -> std::result::Result<(), String> {
    let every = Duration::from_secs(state.config.retention.interval_seconds.max(1));
    loop {
        let next = match pass(&state, PASS_BATCHES, false).await {
            Ok((_, true)) => BACKLOG_PAUSE,
            Ok((_, false)) => every,
            Err(e) => {
                tracing::warn!(error = %e, "retention pass failed; trying again at the next interval");
                every
            }
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(next) => {}
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
