//! Codex task ingestion (wire-compat.md §5), shared by `CodexService.SubmitTask` and
//! `POST /codex/tasks`: validate, plan, record and start, count.

use crate::domain::codex::{carries_task, plan, task_digest};
use crate::domain::{Error, Result};
use crate::state::AppState;
use crate::store::codex::{CodexAccepted, CodexRecord};
use facteur_proto::froussard::CodexTask;
use std::time::Instant;

/// Validates, records and starts one task; counts it. Shared by gRPC and HTTP. Takes the task:
/// once planned, it is dropped, and its proto-JSON is all that is kept (and stored).
pub async fn ingest(
    state: &AppState,
    task: CodexTask,
    delivery_override: &str,
    principal: &str,
) -> Result<CodexAccepted> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "codex_ingest",
        delivery_id = %if delivery_override.is_empty() { task.delivery_id.as_str() } else { delivery_override },
        repository = %task.repository,
        issue_number = task.issue_number,
    );
    let _guard = span.enter();
    let m = &state.metrics;
    let planned = plan(
        &task,
        delivery_override,
        &state.config,
        facteur_proto::codex_task_json,
    );
    let plan = match planned {
        Ok(p) => p,
        Err((why, e)) => {
            reject(state, why.as_str());
            tracing::info!(reason = why.as_str(), error = %e, "codex task rejected");
            return Err(e);
        }
    };
    drop(task);
    let trace_parent = facteur_runtime::telemetry::current_traceparent().unwrap_or_default();
    drop(_guard);
    let delivery_id = plan.delivery_id.clone();
    let digest = task_digest(plan.task_json.as_bytes());
    let accepted = state
        .store
        .submit_codex(plan, principal, trace_parent)
        .await?;
    if accepted.duplicate {
        m.add(crate::metrics::Metric::CodexTasksDuplicate, vec![], 1);
        // A redelivery answers with the original whatever it carries (the old service's
        // behaviour); one whose task differs from what was first recorded is counted and said.
        let differs = accepted
            .original
            .as_ref()
            .is_some_and(|r| !carries_task(&r.parameters, digest));
        if differs {
            m.add(crate::metrics::Metric::CodexTasksReplayDiffers, vec![], 1);
            tracing::warn!(delivery_id = %delivery_id, "codex task replayed with other content; answering with the original, the new content is not used");
        } else {
            tracing::info!(delivery_id = %delivery_id, "codex task replayed; answering with the original");
        }
    } else {
        m.add(crate::metrics::Metric::CodexTasksAccepted, vec![], 1);
        tracing::info!(delivery_id = %delivery_id, workflow = %accepted.workflow_name, "codex task accepted");
        state.wake_dispatchers();
    }
    m.observe(
        crate::metrics::Metric::CodexIngestDurationMs,
        vec![],
        started.elapsed(),
    );
    Ok(accepted)
}

/// Counts a refusal by reason.
pub fn reject(state: &AppState, reason: &'static str) {
    state.metrics.add(
        crate::metrics::Metric::CodexTasksRejected,
        vec![("reason", reason.to_string())],
        1,
    );
}

/// Which task run [`find`] looks up.
#[derive(Clone, Copy, Debug)]
pub enum TaskKey<'a> {
    /// By the task run's id (a UUID).
    TaskRun(&'a str),
    /// By the delivery id the producer sent.
    Delivery(&'a str),
}

/// One Codex task run: NOT_FOUND when there is none, INVALID_ARGUMENT for an empty key or a
/// task run id that is not a UUID.
pub async fn find(state: &AppState, key: TaskKey<'_>) -> Result<CodexRecord> {
    let found = match key {
        TaskKey::TaskRun(id) => state.store.codex_by_task_run(id).await?,
        TaskKey::Delivery(id) if !id.is_empty() => state.store.codex_by_delivery(id).await?,
        TaskKey::Delivery(_) => {
            return Err(Error::invalid(
                "delivery_id",
                "task_run_id or delivery_id is required",
            ));
        }
    };
    found.ok_or_else(|| Error::NotFound("no such codex task run".into()))
}

/// One page of the recorded Codex task runs (of `repository` and in `status`, when given),
/// newest first, after `after` (a previous page's key).
pub async fn list(
    state: &AppState,
    repository: &str,
    status: &str,
    limit: u64,
    after: Option<(chrono::DateTime<chrono::Utc>, String)>,
) -> Result<crate::service::Page<CodexRecord>> {
    let rows = state
        .store
        .list_codex(repository, status, limit + 1, after)
        .await?;
    Ok(crate::service::Page::of(rows, limit, |r| {
        (r.created_at, r.task_run_id.clone())
    }))
}
