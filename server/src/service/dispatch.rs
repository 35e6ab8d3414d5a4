//! The argo-adapters' side of runs: the lease stream, completions (and their metrics), and
//! Workflow status reports made storable.

use crate::domain::Result;
use crate::domain::dispatch::{Leased, Outcome, StatusReport};
use crate::domain::run::Run;
use crate::state::AppState;
use crate::store::dispatch::{CompleteEffect, LeaseOutcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// Longest wait between two looks at the queue when nothing woke the stream: bounds how late
/// an expired lease, a retry whose backoff ended, or a job created on another replica is seen.
const IDLE_RECHECK: Duration = Duration::from_millis(500);

/// Jobs for adapter `owner` (at most `max` held at once), for runs in `namespaces` (empty:
/// any), until the receiver is dropped or the server shuts down.
pub fn lease_stream(
    state: Arc<AppState>,
    owner: String,
    namespaces: Vec<String>,
    max: u32,
) -> mpsc::Receiver<Leased> {
    let (tx, rx) = mpsc::channel(max as usize);
    let span = tracing::info_span!("lease_stream", owner = %owner);
    tokio::spawn(lease_loop(state, owner, namespaces, max, tx).instrument(span));
    rx
}

async fn lease_loop(
    state: Arc<AppState>,
    owner: String,
    namespaces: Vec<String>,
    max: u32,
    tx: mpsc::Sender<Leased>,
) {
    tracing::info!(owner = %owner, max_in_flight = max, "adapter leasing");
    loop {
        let notified = state.dispatch_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut wait = IDLE_RECHECK;
        match state.store.count_leased(&owner).await {
            Ok(held) if held < u64::from(max) => match state
                .store
                .lease_next(&owner, &namespaces, &state.dispatch_policy)
                .await
            {
                Ok(LeaseOutcome::Leased(l)) => {
                    tracing::info!(run_id = %l.run.id, dispatch = l.dispatch.kind.as_str(), attempt = l.dispatch.attempts, owner = %owner, "dispatch leased");
                    if tx.send(*l).await.is_err() {
                        // The adapter is gone; the lease expires and the job goes to another one.
                        break;
                    }
                    continue;
                }
                Ok(LeaseOutcome::Idle { next_due }) => {
                    if let Some(due) = next_due {
                        wait = (due - chrono::Utc::now())
                            .to_std()
                            .unwrap_or(Duration::ZERO)
                            .min(IDLE_RECHECK);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leasing failed; retrying");
                }
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot count leases; retrying"),
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => break,
            _ = state.shutdown.cancelled() => break,
        }
    }
    tracing::info!(owner = %owner, "adapter lease stream ended");
}

/// Records how a leased job ended; counts it.
pub async fn complete(
    state: &AppState,
    dispatch_id: &str,
    lease_token: &str,
    outcome: &Outcome,
    actor: &str,
) -> Result<Run> {
    let (run, effect) = state
        .store
        .complete_dispatch(
            dispatch_id,
            lease_token,
            outcome,
            &state.dispatch_policy,
            actor,
        )
        .await?;
    let m = &state.metrics;
    match effect {
        CompleteEffect::Submitted(latency) => {
            m.add(crate::metrics::Metric::CommandEventsProcessed, vec![], 1);
            m.observe(
                crate::metrics::Metric::CommandEventsDurationMs,
                vec![],
                latency,
            );
        }
        CompleteEffect::RetryScheduled => {
            m.add(crate::metrics::Metric::CommandEventsFailed, vec![], 1)
        }
        CompleteEffect::DeadLettered => {
            m.add(crate::metrics::Metric::CommandEventsFailed, vec![], 1);
            m.add(crate::metrics::Metric::CommandEventsDlq, vec![], 1);
            tracing::warn!(run_id = %run.id, dispatch_id, "dispatch dead-lettered");
        }
        CompleteEffect::ShutdownSent | CompleteEffect::Cancelled | CompleteEffect::AlreadyDone => {}
    }
    tracing::info!(run_id = %run.id, status = %run.status, effect = ?effect, "dispatch completed");
    state.wake_dispatchers();
    Ok(run)
}

/// Longest Workflow message kept (Argo's can be whole stack traces).
const MAX_MESSAGE: usize = 4000;
/// Width of `runs.progress` (Argo's `N/M`).
const MAX_PROGRESS: usize = 32;

/// What Argo says is kept, not refused: NUL characters dropped, long texts cut.
fn storable(s: String, max: usize) -> String {
    let s = if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s
    };
    if s.len() <= max {
        return s;
    }
    s.chars().take(max).collect()
}

/// Applies a Workflow status report (monotonic). Returns the run and whether it changed.
pub async fn report(state: &AppState, r: StatusReport, actor: &str) -> Result<(Run, bool)> {
    let r = StatusReport {
        message: storable(r.message, MAX_MESSAGE),
        progress: storable(r.progress, MAX_PROGRESS),
        failed_node: storable(r.failed_node, MAX_MESSAGE),
        failed_node_message: storable(r.failed_node_message, MAX_MESSAGE),
        workflow_uid: storable(r.workflow_uid, 64),
        source: storable(r.source, 40),
        ..r
    };
    let (run, changed) = state.store.report_status(&r, actor).await?;
    if changed {
        tracing::info!(run_id = %run.id, status = %run.status, phase = %r.phase, source = %r.source, "workflow status");
        state.wake_dispatchers();
    }
    Ok((run, changed))
}
