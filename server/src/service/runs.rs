//! Starting, retrying and cancelling runs: one copy of each rule, whoever asks (admin gRPC,
//! Discord commands and buttons, the compatibility endpoint).

use crate::domain::dispatch::DispatchKind;
use crate::domain::input::storable;
use crate::domain::machine::check_retryable;
use crate::domain::run::{Handle, MAX_IDEMPOTENCY_KEY, NewRun, Requester, Run, RunSource};
use crate::domain::{Error, Result};
use crate::service::Page;
use crate::state::AppState;
use crate::store::RunFilter;
use chrono::{DateTime, Utc};

/// Longest reason kept with a cancellation.
const MAX_CANCEL_REASON: usize = 2000;
/// Longest reason kept with a rejection.
const MAX_DECISION_REASON: usize = 500;

/// The current span's W3C trace context, carried by a run to its Workflow.
pub fn trace_parent() -> String {
    facteur_runtime::telemetry::current_traceparent().unwrap_or_default()
}

/// A run id is a UUID (INVALID_ARGUMENT otherwise).
pub fn check_id(id: &str) -> Result<()> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| Error::invalid("run_id", format!("run_id `{id}` is not a UUID")))
}

/// The id of the run `handle` names ([`Handle`]: an id, `#1234`, or a unique prefix of 8
/// characters or more). A number or prefix is looked up among the runs of `guild` when one is
/// given (a whole id is returned as it is: the caller checks the run's guild). NOT_FOUND when
/// none; an ambiguous prefix is INVALID_ARGUMENT listing the runs it matches.
pub async fn id_of(state: &AppState, handle: &str, guild: Option<&str>) -> Result<String> {
    const SHOWN: u64 = 10;
    let h = Handle::parse(handle).map_err(|e| Error::invalid("run_id", format!("run_id: {e}")))?;
    // A whole id needs no lookup: the caller reads the run (and checks its guild) anyway.
    if let Handle::Id(id) = &h {
        return Ok(id.clone());
    }
    let found = state.store.runs_by_handle(&h, guild, SHOWN + 1).await?;
    match found.as_slice() {
        [] => Err(Error::NotFound(format!("no run `{}`", handle.trim()))),
        [(id, _)] => Ok(id.clone()),
        many => {
            let listed: Vec<String> = many
                .iter()
                .take(SHOWN as usize)
                .map(|(id, n)| format!("#{n} ({id})"))
                .collect();
            let more = if many.len() as u64 > SHOWN {
                ", …"
            } else {
                ""
            };
            Err(Error::invalid(
                "run_id",
                format!(
                    "`{}` names more than one run: {}{more}; give more of the id or the run's number",
                    handle.trim(),
                    listed.join(", ")
                ),
            ))
        }
    }
}

/// A run by id, number or unique id prefix (NOT_FOUND naming it).
pub async fn get(state: &AppState, handle: &str) -> Result<Run> {
    let id = id_of(state, handle, None).await?;
    state
        .store
        .get_run(&id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no run `{}`", handle.trim())))
}

/// A run (by any handle, as [`get`]) with its history, oldest first.
pub async fn with_history(
    state: &AppState,
    handle: &str,
) -> Result<(Run, Vec<crate::domain::RunEvent>)> {
    let run = get(state, handle).await?;
    let events = state.store.run_events(&run.id).await?;
    Ok((run, events))
}

/// Validates `values` for `command` ([`crate::domain::catalog::Catalog::resolve`]); values
/// it refuses are counted (`facteur_values_refused_total{command, rule}`) and audited in
/// `guild_id` as `value_refused` by `actor`, with each option and rule and `context` (who,
/// which interaction), never the values themselves.
pub async fn resolve(
    state: &AppState,
    command: &str,
    values: &std::collections::BTreeMap<String, String>,
    guild_id: &str,
    actor: &str,
    context: serde_json::Value,
) -> Result<crate::domain::catalog::Resolved> {
    resolve_in(state, command, values, "", guild_id, actor, context).await
}

/// [`resolve`] in the cluster `cluster` asks for (empty: the command's own).
pub async fn resolve_in(
    state: &AppState,
    command: &str,
    values: &std::collections::BTreeMap<String, String>,
    cluster: &str,
    guild_id: &str,
    actor: &str,
    context: serde_json::Value,
) -> Result<crate::domain::catalog::Resolved> {
    match state.catalog.resolve_in(command, values, cluster) {
        Err(Error::Refused(r)) => Err(refused(state, r, command, guild_id, actor, context).await),
        other => other,
    }
}

/// Counts and audits values refused for `command` ([`resolve`], [`decide`]) and gives the
/// error back.
async fn refused(
    state: &AppState,
    refusals: crate::domain::input::Refusals,
    command: &str,
    guild_id: &str,
    actor: &str,
    mut context: serde_json::Value,
) -> Error {
    for r in &refusals.0 {
        state.metrics.add(
            crate::metrics::Metric::ValuesRefused,
            vec![
                ("command", command.to_string()),
                ("rule", r.rule.as_str().to_string()),
            ],
            1,
        );
    }
    context["refused"] = refusals
        .0
        .iter()
        .map(|r| serde_json::json!({"option": r.option, "rule": r.rule.as_str()}))
        .collect();
    if let Err(e) = state
        .store
        .audit(guild_id, actor, "value_refused", command, context)
        .await
    {
        tracing::warn!(error = %e, command, "a refused value could not be audited");
    }
    tracing::info!(command, actor, refused = refusals.0.len(), "values refused");
    Error::Refused(refusals)
}

/// Records a new run (idempotent on its key) and wakes the lease streams. Returns the run and
/// whether it was a replay.
/// One page of the runs `filter` selects, newest first, after `after` (a previous page's key).
pub async fn list(
    state: &AppState,
    filter: &RunFilter,
    limit: u64,
    after: Option<(DateTime<Utc>, String)>,
) -> Result<Page<Run>> {
    if let Some(c) = &filter.cluster
        && !state.catalog.clusters().contains(c)
    {
        return Err(Error::invalid(
            "cluster",
            format!(
                "unknown cluster `{}`; known: {}",
                facteur_config::discord::clip(c, 63),
                state.catalog.clusters().join(", ")
            ),
        ));
    }
    let rows = state.store.list_runs(filter, limit + 1, after).await?;
    Ok(Page::of(rows, limit, |r| (r.created_at, r.id.clone())))
}

/// The StartRun flow: `command` with `params` resolved against the catalog and started for
/// an admin `principal`, keyed on `idempotency_key` (a fresh one when empty: no replay).
pub async fn start_admin(
    state: &AppState,
    command: &str,
    params: &std::collections::BTreeMap<String, String>,
    cluster: &str,
    idempotency_key: &str,
    principal: &str,
) -> Result<(Run, bool)> {
    let context = serde_json::json!({"principal": principal, "source": "admin"});
    let resolved = resolve_in(state, command, params, cluster, "", principal, context).await?;
    let key = key_or(idempotency_key, || {
        format!("admin:{}", uuid::Uuid::new_v4())
    })?;
    let requester = Requester {
        principal: principal.to_string(),
        display_name: principal.to_string(),
        ..Default::default()
    };
    let new = resolved.into_run(key, RunSource::Admin, requester, trace_parent());
    start(state, new, principal).await
}

pub async fn start(state: &AppState, new: NewRun, actor: &str) -> Result<(Run, bool)> {
    let asked = new.clone();
    let (run, duplicate) = state.store.create_run(new, actor).await?;
    if duplicate {
        asked.check_replay_of(&run)?;
    } else {
        tracing::info!(run_id = %run.id, command = %run.command, source = run.source.as_str(), actor, "run accepted");
        state.wake_dispatchers();
    }
    Ok((run, duplicate))
}

/// The new run that retries `old`, if `old` is finished (FAILED_PRECONDITION otherwise).
pub fn retry_of(old: &Run, idempotency_key: String, requester: Requester) -> Result<NewRun> {
    check_retryable(old)?;
    Ok(NewRun::retry_of(
        old,
        idempotency_key,
        requester,
        trace_parent(),
    ))
}

/// Starts a new run with what `old` ran, if `old` is finished.
/// The RetryRun flow: the run `handle` names started again for an admin `principal`, with the
/// same command and parameters, keyed on `idempotency_key` (a fresh one when empty).
pub async fn retry_as(
    state: &AppState,
    handle: &str,
    idempotency_key: &str,
    principal: &str,
) -> Result<(Run, bool)> {
    let old = get(state, handle).await?;
    let key = key_or(idempotency_key, || {
        format!("retry:{}:{}", old.id, uuid::Uuid::new_v4())
    })?;
    let requester = Requester {
        principal: principal.to_string(),
        ..old.requester.clone()
    };
    start(state, retry_of(&old, key, requester)?, principal).await
}

/// The caller's idempotency key, checked, or `default()` when it gave none.
fn key_or(given: &str, default: impl FnOnce() -> String) -> Result<String> {
    if given.is_empty() {
        return Ok(default());
    }
    storable("idempotency_key", given, MAX_IDEMPOTENCY_KEY)?;
    Ok(given.to_string())
}

/// Cancels a run (at once while queued; by a stop or terminate job once its Workflow may exist).
pub async fn cancel(
    state: &AppState,
    run_id: &str,
    kind: DispatchKind,
    actor: &str,
    reason: &str,
) -> Result<Run> {
    storable("reason", reason, MAX_CANCEL_REASON)?;
    let run = state.store.cancel_run(run_id, kind, actor, reason).await?;
    state.wake_dispatchers();
    Ok(run)
}

/// Records a decision on the suspend step `run` waits at (`node`: its id or name, or empty),
/// its values checked by the catalog's rules for the command
/// ([`crate::domain::catalog::Catalog::check_supplied`]; refusals counted and audited in
/// `guild_id` with `context`, as [`resolve`] does), and wakes the adapters: one applies it.
pub async fn decide(
    state: &AppState,
    run: &Run,
    node: &str,
    decision: crate::domain::run::Decision,
    actor: &str,
    guild_id: &str,
    context: serde_json::Value,
) -> Result<Run> {
    storable("reason", &decision.reason, MAX_DECISION_REASON)?;
    let catalog = &state.catalog;
    let command = run.command.as_str();
    let supplied = |a: &crate::domain::run::Approval,
                    v: &std::collections::BTreeMap<String, String>| {
        catalog.check_supplied(command, a, v)
    };
    let run = match state
        .store
        .decide(&run.id, node, decision, &supplied, actor)
        .await
    {
        Err(Error::Refused(r)) => {
            return Err(refused(state, r, command, guild_id, actor, context).await);
        }
        other => other?,
    };
    state.wake_dispatchers();
    Ok(run)
}

/// Puts a dead-lettered job back in the queue.
pub async fn requeue(state: &AppState, dispatch_id: &str, actor: &str) -> Result<Run> {
    let run = state.store.requeue_dead_letter(dispatch_id, actor).await?;
    state.wake_dispatchers();
    Ok(run)
}
