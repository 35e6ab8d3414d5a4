//! The argo-adapters' side of runs: the lease stream, completions (and their metrics), and
//! Workflow status reports made storable.

use crate::domain::Result;
use crate::domain::assignment;
use crate::domain::dispatch::{Dispatch, Leased, Outcome, StatusReport};
use crate::domain::run::Run;
use crate::metrics::Metric;
use crate::state::AppState;
use crate::store::adapters::AdapterSeen;
use crate::store::dispatch::{CompleteEffect, Completion, LeaseOutcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// How often an adapter calls `GetAssignment` (its heartbeat).
pub const ASSIGNMENT_REFRESH: Duration = Duration::from_secs(5);
/// An adapter not heard from for this long (three heartbeats) no longer serves anything.
pub const ADAPTER_LIVE: Duration = Duration::from_secs(15);

/// What `GetAssignment` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// What the adapter serves.
    pub namespaces: Vec<String>,
    /// Every namespace this server dispatches to.
    pub dispatch: Vec<String>,
}

/// The cluster an adapter acts for: the one it names (empty: `default`), allowed to its token
/// ([`assignment::adapter_cluster`]) and one this server dispatches to (else NOT_FOUND naming
/// those it does).
pub fn adapter_cluster(state: &AppState, bound: Option<&str>, named: &str) -> Result<String> {
    let cluster = assignment::adapter_cluster(bound, named)?;
    if state.catalog.clusters().contains(&cluster) {
        return Ok(cluster);
    }
    Err(crate::domain::Error::NotFound(format!(
        "this server dispatches to no cluster `{}` (clusters: {}); set the adapter's argo.cluster to one of them, or add it to the server's clusters",
        facteur_config::discord::clip(&cluster, 63),
        state.catalog.clusters().join(", ")
    )))
}

/// Records a heartbeat of adapter `owner` of `cluster` and tells it what to serve: everything
/// this server dispatches to in that cluster, narrowed by the adapter's own list.
pub async fn assignment(
    state: &AppState,
    owner: &str,
    cluster: &str,
    narrowing: &[String],
    max_in_flight: u32,
) -> Result<Assignment> {
    let dispatch = assignment::dispatch_namespaces(&state.config, &state.catalog, cluster);
    let namespaces = assignment::assign(&dispatch, narrowing);
    state
        .store
        .adapter_heartbeat(owner, cluster, &namespaces, max_in_flight)
        .await?;
    Ok(Assignment {
        namespaces,
        dispatch,
    })
}

/// Who serves what, as every replica sees it.
#[derive(Clone, Debug)]
pub struct Served {
    /// Adapters heard from within [`ADAPTER_LIVE`].
    pub adapters: Vec<AdapterSeen>,
    /// Namespaces none of them serves.
    pub unserved: Vec<assignment::Unserved>,
    /// Runs waiting longer than `dispatcher.strand_after_seconds` in those.
    pub stranded: u64,
    /// Each cluster, in the configuration's order.
    pub clusters: Vec<ClusterView>,
}

/// One cluster as [`served`] sees it.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// Its name.
    pub name: String,
    /// Base URL of its Argo UI.
    pub ui_base_url: String,
    /// Its adapters heard from within [`ADAPTER_LIVE`].
    pub adapters: u32,
    /// The namespaces they serve.
    pub namespaces: Vec<String>,
    /// When one of them was last heard from.
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Runs waiting to be dispatched there.
    pub queued_runs: u64,
    /// Runs stranded there.
    pub stranded_runs: u64,
}

/// The adapters, the unserved namespaces and the stranded runs; also sets their metrics.
/// One page of the dead letters, newest first, after `after` (a previous page's key), each
/// with its run.
pub async fn dead_letters(
    state: &AppState,
    limit: u64,
    after: Option<(chrono::DateTime<chrono::Utc>, String)>,
) -> Result<crate::service::Page<(Dispatch, Run)>> {
    let rows = state.store.list_dead_letters(limit + 1, after).await?;
    Ok(crate::service::Page::of(rows, limit, |(d, _)| {
        (d.dead_lettered_at.unwrap_or_default(), d.id.clone())
    }))
}

pub async fn served(state: &AppState) -> Result<Served> {
    let now = chrono::Utc::now();
    let live = chrono::Duration::from_std(ADAPTER_LIVE).unwrap_or_default();
    let adapters = state.store.adapters_seen(now - live).await?;
    let queued = state.store.queued_by_place().await?;
    let dispatch = assignment::dispatch_places(&state.config, &state.catalog);
    let sets: Vec<(String, Vec<String>)> = adapters
        .iter()
        .map(|a| (a.cluster.clone(), a.namespaces.clone()))
        .collect();
    let unserved = assignment::unserved(&dispatch, &sets, &queued);
    let after = chrono::Duration::seconds(
        i64::try_from(state.config.dispatcher.strand_after_seconds).unwrap_or(i64::MAX),
    );
    let stranded = assignment::stranded(&unserved, now, after);
    let m = &state.metrics;
    m.set_gauge(Metric::AdaptersConnected, vec![], adapters.len() as f64);
    m.set_gauge(Metric::UnservedNamespaces, vec![], unserved.len() as f64);
    // The configured clusters, then any other that runs still wait in (one taken out of the
    // configuration): their stranded runs stay visible.
    let mut listed = state.config.clusters();
    for u in &unserved {
        if !listed.iter().any(|c| c.name == u.cluster) {
            listed.push(facteur_config::ClusterConfig {
                name: u.cluster.clone(),
                ..Default::default()
            });
        }
    }
    let mut clusters = Vec::new();
    for c in listed {
        let mine = |a: &&AdapterSeen| a.cluster == c.name;
        let mut namespaces: Vec<String> = adapters
            .iter()
            .filter(mine)
            .flat_map(|a| a.namespaces.clone())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        let stranded_runs =
            assignment::stranded(unserved.iter().filter(|u| u.cluster == c.name), now, after);
        m.set_gauge(
            Metric::StrandedRuns,
            vec![("cluster", c.name.clone())],
            stranded_runs as f64,
        );
        clusters.push(ClusterView {
            adapters: adapters.iter().filter(mine).count() as u32,
            namespaces,
            last_seen_at: adapters.iter().filter(mine).map(|a| a.seen_at).max(),
            queued_runs: queued
                .iter()
                .filter(|(p, _)| p.cluster == c.name)
                .map(|(_, q)| q.runs)
                .sum(),
            stranded_runs,
            name: c.name,
            ui_base_url: c.ui_base_url,
        });
    }
    Ok(Served {
        adapters,
        unserved,
        stranded,
        clusters,
    })
}

/// Looks at who serves what every `interval` until `shutdown`, so the metrics stay current and
/// stranded runs are logged (once each time their number changes).
pub async fn watch_served(state: Arc<AppState>, interval: Duration) {
    let mut last = 0;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match served(&state).await {
            Ok(s) if s.stranded != last => {
                if s.stranded > 0 {
                    let namespaces: Vec<String> = s
                        .unserved
                        .iter()
                        .filter(|u| u.queued.runs > 0)
                        .map(|u| format!("{}/{}", u.cluster, u.namespace))
                        .collect();
                    tracing::warn!(stranded_runs = s.stranded, namespaces = ?namespaces, adapters = s.adapters.len(), "runs wait in namespaces that no argo-adapter serves (AdminService.GetStatus lists them)");
                } else {
                    tracing::info!("no run waits in an unserved namespace any more");
                }
                last = s.stranded;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "could not look at who serves what"),
        }
    }
}

/// Longest wait between two looks at the queue when nothing woke the stream: bounds how late
/// an expired lease, a retry whose backoff ended, or a job created on another replica is seen.
const IDLE_RECHECK: Duration = Duration::from_millis(500);

/// Jobs for adapter `owner` of `cluster` (at most `max` held at once), for runs there in
/// `namespaces` (empty: any), until the receiver is dropped or the server shuts down.
pub fn lease_stream(
    state: Arc<AppState>,
    owner: String,
    cluster: String,
    namespaces: Vec<String>,
    max: u32,
) -> mpsc::Receiver<Leased> {
    let (tx, rx) = mpsc::channel(max as usize);
    let span = tracing::info_span!("lease_stream", owner = %owner, cluster = %cluster);
    tokio::spawn(lease_loop(state, owner, cluster, namespaces, max, tx).instrument(span));
    rx
}

async fn lease_loop(
    state: Arc<AppState>,
    owner: String,
    cluster: String,
    namespaces: Vec<String>,
    max: u32,
    tx: mpsc::Sender<Leased>,
) {
    tracing::info!(owner = %owner, cluster = %cluster, max_in_flight = max, "adapter leasing");
    loop {
        let notified = state.dispatch_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut wait = IDLE_RECHECK;
        match state.store.count_leased(&owner).await {
            Ok(held) if held < u64::from(max) => match state
                .store
                .lease_batch(
                    &owner,
                    &cluster,
                    &namespaces,
                    &state.dispatch_policy,
                    (u64::from(max) - held) as usize,
                )
                .await
            {
                Ok(LeaseOutcome::Leased(batch)) => {
                    let redelivered = batch.iter().filter(|l| l.redelivered).count();
                    if redelivered > 0 {
                        state
                            .metrics
                            .add(Metric::LeaseRedeliveries, vec![], redelivered as u64);
                    }
                    for l in batch {
                        tracing::info!(run_id = %l.run.id, dispatch = l.dispatch.kind.as_str(), attempt = l.dispatch.attempts, owner = %owner, "dispatch leased");
                        if tx.send(l).await.is_err() {
                            // The adapter is gone; the leases expire and the jobs go to another.
                            break;
                        }
                    }
                    if tx.is_closed() {
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

/// Writes waiting completions, batch after batch, until none waits. A task of its own: a
/// caller that goes away does not strand the others.
async fn write_completions(state: Arc<AppState>) {
    /// A writer that panics hands over to a new one, so completions queued behind it (and all
    /// later ones, which find `writing` set) are not stranded.
    struct HandOver(Arc<AppState>);
    impl Drop for HandOver {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                return;
            }
            tracing::error!("the completion writer panicked; starting another");
            let again = {
                let mut q = self.0.completions.lock();
                q.writing = !q.waiting.is_empty();
                q.writing
            };
            if again {
                tokio::spawn(write_completions(self.0.clone()));
            }
        }
    }
    let _hand_over = HandOver(state.clone());
    loop {
        let batch = {
            let mut q = state.completions.lock();
            let batch = q.take();
            if batch.is_empty() {
                q.writing = false;
                return;
            }
            batch
        };
        let (items, answers): (Vec<Completion>, Vec<_>) = batch.into_iter().unzip();
        let policy = &state.dispatch_policy;
        match state.store.complete_batch(&items, policy).await {
            Ok(results) => {
                for (tx, r) in answers.into_iter().zip(results) {
                    let _ = tx.send(r);
                }
            }
            // A concurrent change won somewhere in the batch: each on its own, each retried.
            Err(crate::domain::Error::Aborted(_)) => {
                for (c, tx) in items.iter().zip(answers) {
                    let r = state
                        .store
                        .complete_dispatch(
                            &c.dispatch_id,
                            &c.lease_token,
                            &c.outcome,
                            policy,
                            &c.actor,
                        )
                        .await;
                    let _ = tx.send(r);
                }
            }
            Err(e) => {
                for tx in answers {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Records how a leased job ended (with the completions that arrive meanwhile); counts it.
pub async fn complete(
    state: &Arc<AppState>,
    dispatch_id: &str,
    lease_token: &str,
    outcome: &Outcome,
    actor: &str,
) -> Result<Run> {
    let (tx, rx) = oneshot::channel();
    let start = {
        let mut q = state.completions.lock();
        q.waiting.push((
            Completion {
                dispatch_id: dispatch_id.to_string(),
                lease_token: lease_token.to_string(),
                outcome: outcome.clone(),
                actor: actor.to_string(),
            },
            tx,
        ));
        !std::mem::replace(&mut q.writing, true)
    };
    if start {
        tokio::spawn(write_completions(state.clone()).in_current_span());
    }
    let (run, effect) = rx
        .await
        .map_err(|_| crate::domain::Error::Internal("the completion writer stopped".into()))??;
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
/// Width of `runs.current_step` and `runs.failed_step` (a Kubernetes name's).
const MAX_STEP: usize = 253;
/// Longest log tail kept (a run card shows it whole).
pub const MAX_LOG_TAIL: usize = 1000;

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

/// The last `max` characters of `s`.
fn tail_chars(s: &str, max: usize) -> String {
    let n = s.chars().count();
    s.chars().skip(n.saturating_sub(max)).collect()
}

/// Applies a Workflow status report (monotonic). Returns the run and whether it changed.
pub async fn report(state: &AppState, r: StatusReport, actor: &str) -> Result<(Run, bool)> {
    let r = StatusReport {
        message: storable(r.message, MAX_MESSAGE),
        progress: storable(r.progress, MAX_PROGRESS),
        failed_node: storable(r.failed_node, MAX_STEP),
        failed_node_message: storable(r.failed_node_message, MAX_MESSAGE),
        current_step: storable(r.current_step, MAX_STEP),
        // The adapter masks what it knows; the server masks its own secrets too, and keeps the
        // end of the log (the lines that say what went wrong).
        log_tail: if r.log_tail.is_empty() {
            r.log_tail
        } else {
            let masked = facteur_config::mask_secrets(&r.log_tail, &state.config.secrets());
            tail_chars(&storable(masked, usize::MAX), MAX_LOG_TAIL)
        },
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
