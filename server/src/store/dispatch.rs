//! The dispatch outbox: leasing, completion, retries with backoff, dead letters, and the
//! monotonic status reports that move runs forward.
//!
//! The rules are pure functions in [`crate::domain::dispatch`]; this module reads what they
//! need and applies the [`Transition`] they return. Every transaction that touches a run and
//! its dispatches takes the same locks in the same order: the run row first (`SELECT … FOR
//! UPDATE` on Postgres, `SKIP LOCKED` when leasing; a write on SQLite, which takes the database
//! write lock at once), then the dispatch row. The decision is made on the locked rows, and
//! applied with a compare-and-set on each; the history entry is written only when both won, and
//! a lost compare-and-set aborts the transaction. Deadlocks and serialization failures that
//! still happen are run again a bounded number of times ([`errors::retry_aborted`]).

use super::entities::{dispatches, run_events, runs};
use super::errors;
use super::{Store, run_from_model};
pub use crate::domain::dispatch::CompleteEffect;
use crate::domain::dispatch::{
    Dispatch, DispatchKind, DispatchPolicy, DispatchState, Leased, Outcome, StatusReport,
};
use crate::domain::machine::{
    DispatchChange, RunChange, Transition, on_cancel, on_lease, on_outcome, on_report, on_requeue,
};
use crate::domain::run::{Run, RunSource, RunStatus};
use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

/// What `lease_batch` found.
#[derive(Debug)]
pub enum LeaseOutcome {
    /// Jobs for the caller (none: candidates there were, but settled otherwise or taken
    /// meanwhile; look again).
    Leased(Vec<Leased>),
    /// Nothing due; the earliest time something becomes due, if known.
    Idle {
        /// Earliest `available_at` of a pending job or `lease_expires_at` of a leased one.
        next_due: Option<DateTime<Utc>>,
    },
}

fn dispatch_from_model(m: dispatches::Model) -> Result<Dispatch> {
    Ok(Dispatch {
        kind: DispatchKind::parse(&m.kind).ok_or_else(|| {
            Error::Internal(format!("stored dispatch kind `{}` is invalid", m.kind))
        })?,
        state: DispatchState::parse(&m.state).ok_or_else(|| {
            Error::Internal(format!("stored dispatch state `{}` is invalid", m.state))
        })?,
        id: m.id,
        run_id: m.run_id,
        attempts: nonneg(m.attempts),
        lease_token: m.lease_token,
        lease_expires_at: m.lease_expires_at,
        last_error: m.last_error,
        dead_lettered_at: m.dead_lettered_at,
    })
}

async fn load_run<C: ConnectionTrait>(c: &C, id: &str) -> Result<Run> {
    runs::Entity::find_by_id(id.to_string())
        .one(c)
        .await?
        .map(run_from_model)
        .transpose()?
        .ok_or_else(|| Error::NotFound(format!("no run `{id}`")))
}

/// On SQLite, takes the database write lock now (a write of run `id`, or of no row): deferred
/// SQLite transactions take it on their first write, and a read followed by a lock upgrade that
/// another writer refuses would fail. Nothing on Postgres, whose transactions lock rows.
async fn sqlite_write_lock(txn: &DatabaseTransaction, id: &str) -> Result<()> {
    if txn.get_database_backend() == DatabaseBackend::Sqlite {
        runs::Entity::update_many()
            .col_expr(runs::Column::Id, Expr::col(runs::Column::Id))
            .filter(runs::Column::Id.eq(id))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Locks the run row for the rest of the transaction and reads it: the first statement of every
/// transaction that changes one run or its dispatches.
async fn lock_run(txn: &DatabaseTransaction, id: &str) -> Result<Option<Run>> {
    sqlite_write_lock(txn, id).await?;
    runs::Entity::find_by_id(id.to_string())
        .lock_exclusive()
        .one(txn)
        .await?
        .map(run_from_model)
        .transpose()
}

async fn lock_dispatch(txn: &DatabaseTransaction, id: &str) -> Result<Option<Dispatch>> {
    dispatches::Entity::find_by_id(id.to_string())
        .lock_exclusive()
        .one(txn)
        .await?
        .map(dispatch_from_model)
        .transpose()
}

/// A history entry to append.
struct NewEvent<'a> {
    run_id: &'a str,
    actor: &'a str,
    kind: &'a str,
    from: RunStatus,
    to: RunStatus,
    payload: &'a serde_json::Value,
}

/// Appends history entries (call after updating their runs in the same transaction, which
/// holds their locks): one statement reads each run's last sequence number, one inserts them all.
async fn append_events<C: ConnectionTrait>(c: &C, events: &[NewEvent<'_>]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<&str> = events.iter().map(|e| e.run_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let last: Vec<(String, Option<i64>)> = run_events::Entity::find()
        .filter(run_events::Column::RunId.is_in(ids))
        .select_only()
        .column(run_events::Column::RunId)
        .column_as(run_events::Column::Sequence.max(), "m")
        .group_by(run_events::Column::RunId)
        .into_tuple()
        .all(c)
        .await?;
    let mut next: std::collections::HashMap<String, i64> = last
        .into_iter()
        .map(|(id, m)| (id, m.unwrap_or(0)))
        .collect();
    let created = Utc::now();
    let rows = events.iter().map(|e| {
        let seq = next.entry(e.run_id.to_string()).or_insert(0);
        *seq += 1;
        run_events::ActiveModel {
            run_id: Set(e.run_id.to_string()),
            sequence: Set(*seq),
            actor: Set(e.actor.to_string()),
            kind: Set(e.kind.to_string()),
            from_status: Set(e.from.as_str().into()),
            to_status: Set(e.to.as_str().into()),
            payload: Set(e.payload.to_string()),
            created_at: Set(created),
            ..Default::default()
        }
    });
    run_events::Entity::insert_many(rows)
        .exec_without_returning(c)
        .await?;
    Ok(())
}

/// `run` as `t` leaves it (what the database holds once `t` is applied): no read-back needed.
fn after(run: &Run, t: &Transition, now: DateTime<Utc>) -> Run {
    let mut r = run.clone();
    let c = &t.run;
    r.status = t.to;
    r.updated_at = now;
    if let Some(v) = &c.message {
        r.message = v.clone();
    }
    if let Some(v) = c.attempts {
        r.attempts = v;
    }
    if let Some(v) = &c.workflow_uid {
        r.workflow_uid = v.clone();
    }
    if let Some(v) = &c.progress {
        r.progress = v.clone();
    }
    if let Some(v) = &c.workflow_phase {
        r.workflow_phase = v.clone();
    }
    if c.started_at.is_some() {
        r.started_at = c.started_at;
    }
    if c.finished_at.is_some() {
        r.finished_at = c.finished_at;
    }
    if let Some((_, at)) = c.cancel_requested {
        r.cancel_requested_at = Some(at);
    }
    if let Some(v) = &c.steps {
        r.steps = v.clone();
    }
    r
}

/// A lost compare-and-set: the rows changed under a transaction that had locked them (only
/// possible without row locks) or the caller's view was stale.
fn lost(what: &str) -> Error {
    Error::Aborted(format!(
        "{what} changed while it was being updated; try again"
    ))
}

/// Applies `t` to `run` (and `d`) inside `txn`, which has locked both. Each update is a
/// compare-and-set on the state that was read; if one loses, nothing is written (the caller
/// rolls back) and ABORTED is returned.
async fn apply(
    txn: &DatabaseTransaction,
    run: &Run,
    d: Option<&Dispatch>,
    t: &Transition,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    apply_rows(txn, run, d, t, now).await?;
    append_events(txn, event_of(run, t, actor).as_slice()).await
}

/// The history entry `t` writes, if any.
fn event_of<'a>(run: &'a Run, t: &'a Transition, actor: &'a str) -> Option<NewEvent<'a>> {
    t.event.as_ref().map(|(kind, payload)| NewEvent {
        run_id: &run.id,
        actor,
        kind,
        from: run.status,
        to: t.to,
        payload,
    })
}

/// [`apply`] without the history entry (the caller appends it, with others).
async fn apply_rows(
    txn: &DatabaseTransaction,
    run: &Run,
    d: Option<&Dispatch>,
    t: &Transition,
    now: DateTime<Utc>,
) -> Result<()> {
    if let (Some(d), Some(change)) = (d, &t.dispatch) {
        let mut q = dispatches::Entity::update_many()
            .col_expr(
                dispatches::Column::State,
                Expr::value(change.state().as_str()),
            )
            .col_expr(dispatches::Column::UpdatedAt, Expr::value(now));
        q = match change {
            // Many at once, with a token each: `record_leases`.
            DispatchChange::Lease => {
                return Err(Error::Internal(
                    "a lease is recorded by record_leases".into(),
                ));
            }
            DispatchChange::Done => q.col_expr(
                dispatches::Column::LeaseExpiresAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            ),
            DispatchChange::Retry { delay, error } => q
                .col_expr(
                    dispatches::Column::AvailableAt,
                    Expr::value(now + chrono::Duration::from_std(*delay).unwrap_or_default()),
                )
                .col_expr(dispatches::Column::LeaseToken, Expr::value(""))
                .col_expr(
                    dispatches::Column::LeaseExpiresAt,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .col_expr(dispatches::Column::LastError, Expr::value(error.as_str())),
            DispatchChange::Dead { error } => q
                .col_expr(dispatches::Column::DeadLetteredAt, Expr::value(Some(now)))
                .col_expr(
                    dispatches::Column::LeaseExpiresAt,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .col_expr(dispatches::Column::LastError, Expr::value(error.as_str())),
            DispatchChange::Cancelled { error } => {
                let q = q.col_expr(
                    dispatches::Column::LeaseExpiresAt,
                    Expr::value(Option::<DateTime<Utc>>::None),
                );
                if error.is_empty() {
                    q
                } else {
                    q.col_expr(dispatches::Column::LastError, Expr::value(error.as_str()))
                }
            }
            DispatchChange::Requeue => q
                .col_expr(dispatches::Column::Attempts, Expr::value(0))
                .col_expr(dispatches::Column::AvailableAt, Expr::value(now))
                .col_expr(dispatches::Column::LeaseToken, Expr::value(""))
                .col_expr(
                    dispatches::Column::DeadLetteredAt,
                    Expr::value(Option::<DateTime<Utc>>::None),
                ),
        };
        let won = q
            .filter(dispatches::Column::Id.eq(d.id.as_str()))
            .filter(dispatches::Column::State.eq(d.state.as_str()))
            .filter(dispatches::Column::LeaseToken.eq(d.lease_token.as_str()))
            .exec(txn)
            .await?
            .rows_affected
            == 1;
        if !won {
            return Err(lost(&format!("dispatch `{}`", d.id)));
        }
    }

    let r = &t.run;
    let mut q = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(t.to.as_str()))
        .col_expr(runs::Column::UpdatedAt, Expr::value(now));
    if let Some(v) = &r.message {
        q = q.col_expr(runs::Column::Message, Expr::value(v.as_str()));
    }
    if let Some(v) = r.attempts {
        q = q.col_expr(runs::Column::Attempts, Expr::value(v as i32));
    }
    if let Some(v) = &r.workflow_uid {
        q = q.col_expr(runs::Column::WorkflowUid, Expr::value(v.as_str()));
    }
    if let Some(v) = &r.progress {
        q = q.col_expr(runs::Column::Progress, Expr::value(v.as_str()));
    }
    if let Some(v) = &r.workflow_phase {
        q = q.col_expr(runs::Column::WorkflowPhase, Expr::value(v.as_str()));
    }
    if let Some(v) = r.started_at {
        q = q.col_expr(runs::Column::StartedAt, Expr::value(Some(v)));
    }
    if let Some(v) = r.finished_at {
        q = q.col_expr(runs::Column::FinishedAt, Expr::value(Some(v)));
    }
    if let Some((kind, at)) = r.cancel_requested {
        q = q
            .col_expr(runs::Column::CancelRequestedAt, Expr::value(Some(at)))
            .col_expr(runs::Column::CancelMode, Expr::value(kind.as_str()));
    }
    if let Some(v) = &r.steps {
        q = q
            .col_expr(runs::Column::CurrentStep, Expr::value(v.current.as_str()))
            .col_expr(runs::Column::FailedStep, Expr::value(v.failed.as_str()))
            .col_expr(runs::Column::LogTail, Expr::value(v.log_tail.as_str()))
            .col_expr(
                runs::Column::Approval,
                Expr::value(match &v.approval {
                    Some(a) => serde_json::to_string(a)
                        .map_err(|e| Error::Internal(format!("approval: {e}")))?,
                    None => String::new(),
                }),
            )
            .col_expr(
                runs::Column::Decisions,
                Expr::value(if v.decisions.is_empty() {
                    String::new()
                } else {
                    serde_json::to_string(&v.decisions)
                        .map_err(|e| Error::Internal(format!("decisions: {e}")))?
                }),
            );
    }
    let won = q
        .filter(runs::Column::Id.eq(run.id.as_str()))
        .filter(runs::Column::Status.eq(run.status.as_str()))
        .exec(txn)
        .await?
        .rows_affected
        == 1;
    if !won {
        return Err(lost(&format!("run `{}`", run.id)));
    }
    if t.to != run.status && run.source == RunSource::Codex {
        super::codex::sync_task_run(txn, run, t.to).await?;
    }

    let others = |states: &[DispatchState]| {
        dispatches::Entity::update_many()
            .col_expr(dispatches::Column::UpdatedAt, Expr::value(now))
            .col_expr(
                dispatches::Column::LeaseExpiresAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(dispatches::Column::RunId.eq(run.id.as_str()))
            .filter(dispatches::Column::State.is_in(states.iter().map(|s| s.as_str())))
    };
    if t.close_create {
        others(&[
            DispatchState::Pending,
            DispatchState::Leased,
            DispatchState::Dead,
        ])
        .col_expr(
            dispatches::Column::State,
            Expr::value(DispatchState::Done.as_str()),
        )
        .filter(dispatches::Column::Kind.eq(DispatchKind::Create.as_str()))
        .exec(txn)
        .await?;
    }
    if t.close_open_jobs {
        others(&[DispatchState::Pending, DispatchState::Dead])
            .col_expr(
                dispatches::Column::State,
                Expr::value(DispatchState::Cancelled.as_str()),
            )
            .exec(txn)
            .await?;
    }
    if let Some(kind) = t.new_job {
        dispatches::Entity::insert(super::pending_dispatch(&run.id, kind.as_str(), now))
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// The work of [`Store::lease_batch`] inside `txn`. `None`: no candidate at all; otherwise the
/// jobs leased (possibly none, when every candidate was settled otherwise or taken meanwhile).
async fn lease_in(
    txn: &DatabaseTransaction,
    owner: &str,
    cluster: &str,
    namespaces: &[String],
    policy: &DispatchPolicy,
    max: usize,
) -> Result<Option<Vec<Leased>>> {
    let pg = txn.get_database_backend() == DatabaseBackend::Postgres;
    sqlite_write_lock(txn, "").await?;
    let now = Utc::now();
    let due = sea_orm::Condition::any()
        .add(
            sea_orm::Condition::all()
                .add(dispatches::Column::State.eq(DispatchState::Pending.as_str()))
                .add(dispatches::Column::AvailableAt.lte(now)),
        )
        .add(
            sea_orm::Condition::all()
                .add(dispatches::Column::State.eq(DispatchState::Leased.as_str()))
                .add(dispatches::Column::LeaseExpiresAt.lte(now)),
        );
    let mut candidates = dispatches::Entity::find().filter(due);
    // Only the jobs of this adapter's cluster, in the query for the same reason as the
    // namespaces below (and the same scalar subquery on the run's primary key).
    let of_run = |column: runs::Column| {
        let q = sea_orm::sea_query::Query::select()
            .column((runs::Entity, column))
            .from(runs::Entity)
            .and_where(
                Expr::col((runs::Entity, runs::Column::Id))
                    .equals((dispatches::Entity, dispatches::Column::RunId)),
            )
            .to_owned();
        Expr::expr(Expr::SubQuery(None, Box::new(q.into())))
    };
    candidates = candidates.filter(of_run(runs::Column::Cluster).eq(cluster));
    if !namespaces.is_empty() {
        // In the query, so jobs for namespaces this adapter does not serve never crowd out the
        // ones it does. As a scalar subquery on the run's primary key, evaluated for each due
        // job: `run_id IN (SELECT id FROM runs WHERE namespace IN …)` let the planner read every
        // run of the namespace (a sequential scan of `runs` and an index probe of `dispatches`
        // per run, on every lease round: the soak's latencies grew with the table).
        candidates =
            candidates.filter(of_run(runs::Column::Namespace).is_in(namespaces.iter().cloned()));
    }
    let mut candidates = candidates
        .order_by_asc(dispatches::Column::AvailableAt)
        .limit(max as u64);
    if pg {
        candidates = candidates.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let candidates = candidates.all(txn).await?;
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut runs_q = runs::Entity::find()
        .filter(runs::Column::Id.is_in(candidates.iter().map(|c| c.run_id.clone())));
    if pg {
        // A run another transaction holds (a cancel, a report, a completion) is skipped, not
        // waited for; its job stays for a later pass.
        runs_q = runs_q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let mut locked: std::collections::HashMap<String, Run> = runs_q
        .all(txn)
        .await?
        .into_iter()
        .map(|m| run_from_model(m).map(|r| (r.id.clone(), r)))
        .collect::<Result<_>>()?;

    let expires = now
        + chrono::Duration::from_std(policy.lease)
            .unwrap_or_else(|_| chrono::Duration::seconds(30));
    // (run, dispatch, transition, token) of the jobs leased; the others are applied at once.
    let mut leases: Vec<(Run, Dispatch, Transition, String)> = Vec::new();
    let mut settled: Vec<(Run, Transition)> = Vec::new();
    for c in candidates {
        // `remove`: one job per run per pass (its run's state moves with the first).
        let Some(run) = locked.remove(&c.run_id) else {
            continue;
        };
        if run.cluster != cluster
            || (!namespaces.is_empty() && !namespaces.contains(&run.namespace))
        {
            continue;
        }
        let d = dispatch_from_model(c)?;
        let t = on_lease(&d, &run, policy, owner, expires);
        if in_bulk(&t, &DispatchChange::Lease) {
            leases.push((run, d, t, uuid::Uuid::new_v4().simple().to_string()));
        } else {
            apply_rows(txn, &run, Some(&d), &t, now).await?;
            settled.push((run, t));
        }
    }
    if !leases.is_empty() {
        record_leases(txn, owner, &leases, expires, now).await?;
    }
    let events: Vec<NewEvent<'_>> = leases
        .iter()
        .filter_map(|(run, _, t, _)| event_of(run, t, owner))
        .chain(
            settled
                .iter()
                .filter_map(|(run, t)| event_of(run, t, "dispatcher")),
        )
        .collect();
    append_events(txn, &events).await?;
    Ok(Some(
        leases
            .into_iter()
            .map(|(run, d, t, token)| {
                let run = after(&run, &t, now);
                Leased {
                    redelivered: d.state == DispatchState::Leased,
                    dispatch: Dispatch {
                        state: DispatchState::Leased,
                        attempts: d.attempts + 1,
                        lease_token: token,
                        lease_expires_at: Some(expires),
                        dead_lettered_at: None,
                        ..d
                    },
                    run,
                }
            })
            .collect(),
    ))
}

/// A transition [`record_runs`] can write together with others: on its run, only the status,
/// the attempt count and the Workflow UID; no other job opened or closed; the job itself
/// leased (`change` [`DispatchChange::Lease`]) or done.
fn in_bulk(t: &Transition, change: &DispatchChange) -> bool {
    t.dispatch.as_ref() == Some(change)
        && RunChange {
            attempts: None,
            workflow_uid: None,
            ..t.run.clone()
        } == RunChange::default()
        && !t.close_create
        && !t.close_open_jobs
        && t.new_job.is_none()
}

/// Writes the leases `leases` in `txn`, which holds their rows: one statement for the jobs (a
/// token each), then their runs ([`record_runs`]).
async fn record_leases(
    txn: &DatabaseTransaction,
    owner: &str,
    leases: &[(Run, Dispatch, Transition, String)],
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut token = CaseStatement::new();
    for (_, d, _, t) in leases {
        token = token.case(
            dispatches::Column::Id.eq(d.id.as_str()),
            Expr::value(t.as_str()),
        );
    }
    let won = dispatches::Entity::update_many()
        .col_expr(
            dispatches::Column::State,
            Expr::value(DispatchState::Leased.as_str()),
        )
        .col_expr(
            dispatches::Column::Attempts,
            Expr::col(dispatches::Column::Attempts).add(1),
        )
        .col_expr(dispatches::Column::LeaseOwner, Expr::value(owner))
        .col_expr(dispatches::Column::LeaseToken, token.into())
        .col_expr(
            dispatches::Column::LeaseExpiresAt,
            Expr::value(Some(expires)),
        )
        .col_expr(dispatches::Column::UpdatedAt, Expr::value(now))
        .filter(dispatches::Column::Id.is_in(leases.iter().map(|(_, d, _, _)| d.id.as_str())))
        .exec(txn)
        .await?
        .rows_affected;
    if won != leases.len() as u64 {
        return Err(lost("a leased dispatch"));
    }
    let runs: Vec<(&Run, &Transition)> = leases.iter().map(|(r, _, t, _)| (r, t)).collect();
    record_runs(txn, &runs, now).await
}

/// Writes completed jobs `done` (each leased, with a [`DispatchChange::Done`] transition) in
/// `txn`, which holds their rows: one statement for the jobs, then their runs.
async fn record_done(
    txn: &DatabaseTransaction,
    done: &[(Run, Dispatch, Transition)],
    now: DateTime<Utc>,
) -> Result<()> {
    let won = dispatches::Entity::update_many()
        .col_expr(
            dispatches::Column::State,
            Expr::value(DispatchState::Done.as_str()),
        )
        .col_expr(
            dispatches::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(dispatches::Column::UpdatedAt, Expr::value(now))
        .filter(dispatches::Column::Id.is_in(done.iter().map(|(_, d, _)| d.id.as_str())))
        .filter(dispatches::Column::State.eq(DispatchState::Leased.as_str()))
        .exec(txn)
        .await?
        .rows_affected;
    if won != done.len() as u64 {
        return Err(lost("a completed dispatch"));
    }
    let runs: Vec<(&Run, &Transition)> = done.iter().map(|(r, _, t)| (r, t)).collect();
    record_runs(txn, &runs, now).await
}

/// Writes the runs of [`in_bulk`] transitions (one per run), in `txn`, which holds them: one
/// statement for those whose status, attempt count or Workflow UID moves, and one per status
/// for the Codex task runs that follow them.
async fn record_runs(
    txn: &DatabaseTransaction,
    runs: &[(&Run, &Transition)],
    now: DateTime<Utc>,
) -> Result<()> {
    let moved: Vec<&(&Run, &Transition)> = runs
        .iter()
        .filter(|(run, t)| {
            t.to != run.status || t.run.attempts.is_some() || t.run.workflow_uid.is_some()
        })
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    let (mut status, mut attempts, mut uid) = (
        CaseStatement::new(),
        CaseStatement::new(),
        CaseStatement::new(),
    );
    for (run, t) in &moved {
        let this = runs::Column::Id.eq(run.id.as_str());
        status = status.case(this.clone(), Expr::value(t.to.as_str()));
        if let Some(a) = t.run.attempts {
            attempts = attempts.case(this.clone(), Expr::value(a as i32));
        }
        if let Some(u) = &t.run.workflow_uid {
            uid = uid.case(this, Expr::value(u.as_str()));
        }
    }
    let mut q = runs::Entity::update_many()
        .col_expr(
            runs::Column::Status,
            status.finally(Expr::col(runs::Column::Status)).into(),
        )
        .col_expr(runs::Column::UpdatedAt, Expr::value(now));
    if moved.iter().any(|(_, t)| t.run.attempts.is_some()) {
        q = q.col_expr(
            runs::Column::Attempts,
            attempts.finally(Expr::col(runs::Column::Attempts)).into(),
        );
    }
    if moved.iter().any(|(_, t)| t.run.workflow_uid.is_some()) {
        q = q.col_expr(
            runs::Column::WorkflowUid,
            uid.finally(Expr::col(runs::Column::WorkflowUid)).into(),
        );
    }
    // Each a compare-and-set on the status read, as in `apply_rows`.
    let mut cas = sea_orm::Condition::any();
    for (run, _) in &moved {
        cas = cas.add(
            sea_orm::Condition::all()
                .add(runs::Column::Id.eq(run.id.as_str()))
                .add(runs::Column::Status.eq(run.status.as_str())),
        );
    }
    let won = q.filter(cas).exec(txn).await?.rows_affected;
    if won != moved.len() as u64 {
        return Err(lost("a run"));
    }
    let mut codex: Vec<(&Run, RunStatus)> = moved
        .iter()
        .filter(|(run, t)| t.to != run.status && run.source == RunSource::Codex)
        .map(|(run, t)| (*run, t.to))
        .collect();
    codex.sort_by_key(|(_, to)| to.as_str());
    for group in codex.chunk_by(|a, b| a.1 == b.1) {
        let runs: Vec<&Run> = group.iter().map(|(r, _)| *r).collect();
        super::codex::sync_task_runs(txn, &runs, group[0].1).await?;
    }
    Ok(())
}

/// One completion for [`Store::complete_batch`].
#[derive(Clone, Debug)]
pub struct Completion {
    /// The job.
    pub dispatch_id: String,
    /// The lease it was handed out with.
    pub lease_token: String,
    /// How the attempt ended.
    pub outcome: Outcome,
    /// Who reports it.
    pub actor: String,
}

/// The work of [`Store::complete_batch`] inside `txn`.
async fn complete_in(
    txn: &DatabaseTransaction,
    items: &[Completion],
    policy: &DispatchPolicy,
) -> Result<Vec<Result<(Run, CompleteEffect)>>> {
    let pg = txn.get_database_backend() == DatabaseBackend::Postgres;
    sqlite_write_lock(txn, "").await?;
    let ids = || items.iter().map(|c| c.dispatch_id.as_str());
    let run_ids: Vec<String> = dispatches::Entity::find()
        .filter(dispatches::Column::Id.is_in(ids()))
        .select_only()
        .column(dispatches::Column::RunId)
        .distinct()
        .into_tuple()
        .all(txn)
        .await?;
    let mut q = runs::Entity::find()
        .filter(runs::Column::Id.is_in(run_ids))
        .order_by_asc(runs::Column::Id);
    if pg {
        q = q.lock_exclusive();
    }
    let mut locked: std::collections::HashMap<String, Run> = q
        .all(txn)
        .await?
        .into_iter()
        .map(|m| run_from_model(m).map(|r| (r.id.clone(), r)))
        .collect::<Result<_>>()?;
    let mut q = dispatches::Entity::find().filter(dispatches::Column::Id.is_in(ids()));
    if pg {
        q = q.lock_exclusive();
    }
    let mut jobs: std::collections::HashMap<String, Dispatch> = q
        .all(txn)
        .await?
        .into_iter()
        .map(|m| dispatch_from_model(m).map(|d| (d.id.clone(), d)))
        .collect::<Result<_>>()?;
    let now = Utc::now();
    // A run with one job in the batch may be written with the others; one with several is
    // written job by job, each seeing what the one before did.
    let mut jobs_of_run: std::collections::HashMap<&str, usize> = Default::default();
    for d in jobs.values() {
        *jobs_of_run.entry(d.run_id.as_str()).or_default() += 1;
    }
    let alone: std::collections::HashSet<String> = jobs_of_run
        .into_iter()
        .filter(|(_, n)| *n == 1)
        .map(|(id, _)| id.to_string())
        .collect();
    let mut out = Vec::with_capacity(items.len());
    let mut applied: Vec<(Run, Transition, &str)> = Vec::new();
    let mut done: Vec<(Run, Dispatch, Transition)> = Vec::new();
    for c in items {
        let Some(d) = jobs.remove(&c.dispatch_id) else {
            out.push(Err(Error::NotFound(format!(
                "no dispatch `{}`",
                c.dispatch_id
            ))));
            continue;
        };
        let Some(run) = locked.get_mut(&d.run_id) else {
            out.push(Err(Error::NotFound(format!("no run `{}`", d.run_id))));
            continue;
        };
        match on_outcome(&d, &c.lease_token, run, &c.outcome, policy, now) {
            Ok((Some(t), effect)) => {
                let before = run.clone();
                *run = after(run, &t, now);
                out.push(Ok((run.clone(), effect)));
                if alone.contains(&d.run_id) && in_bulk(&t, &DispatchChange::Done) {
                    done.push((before.clone(), d, t.clone()));
                } else {
                    apply_rows(txn, &before, Some(&d), &t, now).await?;
                }
                applied.push((before, t, c.actor.as_str()));
            }
            Ok((None, effect)) => out.push(Ok((run.clone(), effect))),
            Err(e) => out.push(Err(e)),
        }
    }
    if !done.is_empty() {
        record_done(txn, &done, now).await?;
    }
    let events: Vec<NewEvent<'_>> = applied
        .iter()
        .filter_map(|(run, t, actor)| event_of(run, t, actor))
        .collect();
    append_events(txn, &events).await?;
    Ok(out)
}

impl Store {
    async fn begin(&self) -> Result<DatabaseTransaction> {
        self.db.begin().await.map_err(Error::from)
    }

    /// A dispatch by id.
    pub async fn get_dispatch(&self, id: &str) -> Result<Option<Dispatch>> {
        dispatches::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await?
            .map(dispatch_from_model)
            .transpose()
    }

    /// Every dispatch of a run, oldest first.
    pub async fn dispatches_of(&self, run_id: &str) -> Result<Vec<Dispatch>> {
        dispatches::Entity::find()
            .filter(dispatches::Column::RunId.eq(run_id))
            .order_by_asc(dispatches::Column::CreatedAt)
            .order_by_asc(dispatches::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(dispatch_from_model)
            .collect()
    }

    /// Jobs `owner` holds whose lease has not expired.
    pub async fn count_leased(&self, owner: &str) -> Result<u64> {
        dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(DispatchState::Leased.as_str()))
            .filter(dispatches::Column::LeaseOwner.eq(owner))
            .filter(dispatches::Column::LeaseExpiresAt.gt(Utc::now()))
            .count(&self.db)
            .await
            .map_err(Error::from)
    }

    /// Leases up to `max` due jobs to `owner` (pending ones whose time has come, leased ones
    /// whose lease expired), for runs in `cluster` and `namespaces` (empty: any of the
    /// cluster's), oldest first, in one
    /// transaction: one statement claims the candidates and one their runs, both `FOR UPDATE
    /// SKIP LOCKED` on Postgres (jobs and runs another transaction holds are left to it, and
    /// concurrent adapters take disjoint jobs), one statement records the leases, one the runs
    /// they move, two the history entries. What [`on_lease`] decides otherwise for a candidate (a
    /// dead letter after its last attempt, a create for a finished run) is applied on its own in
    /// the same transaction. At most one job per run is leased per call.
    ///
    /// Lock order: this transaction takes dispatches before runs, against the run-first order
    /// of every other one, but it never waits for a lock (`SKIP LOCKED`; on SQLite it takes
    /// the database write lock first), so it cannot be part of a deadlock.
    pub async fn lease_batch(
        &self,
        owner: &str,
        cluster: &str,
        namespaces: &[String],
        policy: &DispatchPolicy,
        max: usize,
    ) -> Result<LeaseOutcome> {
        let txn = self.begin().await?;
        match lease_in(&txn, owner, cluster, namespaces, policy, max.max(1)).await {
            Ok(None) => {
                let _ = txn.rollback().await;
                Ok(LeaseOutcome::Idle {
                    next_due: self.next_due().await?,
                })
            }
            Ok(Some(leased)) => {
                txn.commit().await?;
                Ok(LeaseOutcome::Leased(leased))
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let pending: Option<Option<DateTime<Utc>>> = dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(DispatchState::Pending.as_str()))
            .select_only()
            .column_as(dispatches::Column::AvailableAt.min(), "m")
            .into_tuple()
            .one(&self.db)
            .await?;
        let leased: Option<Option<DateTime<Utc>>> = dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(DispatchState::Leased.as_str()))
            .select_only()
            .column_as(dispatches::Column::LeaseExpiresAt.min(), "m")
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok([pending.flatten(), leased.flatten()]
            .into_iter()
            .flatten()
            .min())
    }

    /// Records the outcome of a leased job.
    pub async fn complete_dispatch(
        &self,
        dispatch_id: &str,
        lease_token: &str,
        outcome: &Outcome,
        policy: &DispatchPolicy,
        actor: &str,
    ) -> Result<(Run, CompleteEffect)> {
        self.change_dispatch(dispatch_id, actor, |d, run, now| {
            on_outcome(d, lease_token, run, outcome, policy, now)
        })
        .await
    }

    /// Records the outcomes of several leased jobs in one transaction: one statement finds
    /// their runs, one locks the runs (in id order, as every batch does, so two batches never
    /// wait on each other in a cycle), one locks the jobs, then each outcome is decided by
    /// [`on_outcome`] on the locked rows and applied, and the history entries are written
    /// together. Each completion gets its own answer (a lease no longer held is refused without
    /// touching the others); an error of the database fails the whole batch, and ABORTED says
    /// to record them again one by one. A dispatch id appears at most once in `items`.
    pub async fn complete_batch(
        &self,
        items: &[Completion],
        policy: &DispatchPolicy,
    ) -> Result<Vec<Result<(Run, CompleteEffect)>>> {
        let txn = self.begin().await?;
        match complete_in(&txn, items, policy).await {
            Ok(out) => {
                txn.commit().await?;
                Ok(out)
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(e)
            }
        }
    }

    /// Runs `decide` on a dispatch and its run, both locked (run first), and applies the
    /// transition it returns, in one transaction (run again when the database aborts it).
    /// Returns the run afterwards and what `decide` said besides.
    async fn change_dispatch<F, R>(
        &self,
        dispatch_id: &str,
        actor: &str,
        decide: F,
    ) -> Result<(Run, R)>
    where
        F: Fn(&Dispatch, &Run, DateTime<Utc>) -> Result<(Option<Transition>, R)>,
    {
        errors::retry_aborted(|| async {
            let run_id = self
                .get_dispatch(dispatch_id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no dispatch `{dispatch_id}`")))?
                .run_id;
            let txn = self.begin().await?;
            let result = async {
                let run = lock_run(&txn, &run_id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("no run `{run_id}`")))?;
                let d = lock_dispatch(&txn, dispatch_id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("no dispatch `{dispatch_id}`")))?;
                let now = Utc::now();
                let (t, said) = decide(&d, &run, now)?;
                let run = match &t {
                    Some(t) => {
                        apply(&txn, &run, Some(&d), t, actor, now).await?;
                        after(&run, t, now)
                    }
                    None => run,
                };
                Ok::<_, Error>((run, said))
            }
            .await;
            match result {
                Ok(done) => {
                    txn.commit().await?;
                    Ok(done)
                }
                Err(e) => {
                    let _ = txn.rollback().await;
                    Err(e)
                }
            }
        })
        .await
    }

    /// Runs `decide` on the locked run and applies what it returns, in one transaction (run
    /// again when the database aborts it). Returns the run afterwards and whether it changed.
    async fn change_run<F>(&self, run_id: &str, actor: &str, decide: F) -> Result<(Run, bool)>
    where
        F: Fn(&Run) -> Result<Option<Transition>>,
    {
        errors::retry_aborted(|| async {
            let txn = self.begin().await?;
            let result = async {
                let run = lock_run(&txn, run_id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("no run `{run_id}`")))?;
                let Some(t) = decide(&run)? else {
                    return Ok::<_, Error>((run, false));
                };
                let now = Utc::now();
                apply(&txn, &run, None, &t, actor, now).await?;
                Ok((after(&run, &t, now), true))
            }
            .await;
            match result {
                Ok((run, true)) => {
                    txn.commit().await?;
                    Ok((run, true))
                }
                Ok((run, false)) => {
                    let _ = txn.rollback().await;
                    Ok((run, false))
                }
                Err(e) => {
                    let _ = txn.rollback().await;
                    Err(e)
                }
            }
        })
        .await
    }

    /// Applies a Workflow status report. Monotonic: a report that would move the run backwards
    /// (late, repeated, out of order) changes nothing. Returns the run and whether it changed.
    pub async fn report_status(&self, r: &StatusReport, actor: &str) -> Result<(Run, bool)> {
        let run_id = match &r.run_id {
            Some(id) => id.clone(),
            None => runs::Entity::find()
                .filter(runs::Column::WorkflowName.eq(r.workflow_name.as_str()))
                .filter(runs::Column::Cluster.eq(r.cluster.as_str()))
                .one(&self.db)
                .await?
                .map(|m| m.id)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "no run has workflow `{}` in cluster `{}`",
                        r.workflow_name, r.cluster
                    ))
                })?,
        };
        self.change_run(&run_id, actor, |run| on_report(run, r, Utc::now()))
            .await
    }

    /// Cancels a run: queued or dead-lettered ones at once; one whose Workflow may exist by a
    /// `stop` or `terminate` job (the run becomes `cancelled` when Argo reports the end).
    pub async fn cancel_run(
        &self,
        run_id: &str,
        kind: DispatchKind,
        actor: &str,
        reason: &str,
    ) -> Result<Run> {
        self.change_run(run_id, actor, |run| {
            on_cancel(run, kind, reason, Utc::now())
        })
        .await
        .map(|(run, _)| run)
    }

    /// Records a decision on the suspend step `run_id` waits at, and the job applying it.
    pub async fn decide(
        &self,
        run_id: &str,
        node: &str,
        decision: crate::domain::run::Decision,
        supplied: &crate::domain::machine::SuppliedCheck<'_>,
        actor: &str,
    ) -> Result<Run> {
        self.change_run(run_id, actor, |run| {
            crate::domain::machine::on_decision(run, node, decision.clone(), supplied, Utc::now())
                .map(Some)
        })
        .await
        .map(|(run, _)| run)
    }

    /// Puts a dead-lettered job back in the queue with fresh attempts.
    pub async fn requeue_dead_letter(&self, dispatch_id: &str, actor: &str) -> Result<Run> {
        self.change_dispatch(dispatch_id, actor, |d, run, _| {
            on_requeue(d, run).map(|t| (Some(t), ()))
        })
        .await
        .map(|(run, ())| run)
    }

    /// Dead-lettered jobs, newest first, after the keyset cursor `after`.
    pub async fn list_dead_letters(
        &self,
        limit: u64,
        after: Option<(DateTime<Utc>, String)>,
    ) -> Result<Vec<(Dispatch, Run)>> {
        let mut q = dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(DispatchState::Dead.as_str()));
        if let Some((t, id)) = after {
            q = q.filter(
                sea_orm::Condition::any()
                    .add(dispatches::Column::DeadLetteredAt.lt(t))
                    .add(
                        sea_orm::Condition::all()
                            .add(dispatches::Column::DeadLetteredAt.eq(t))
                            .add(dispatches::Column::Id.lt(id)),
                    ),
            );
        }
        let rows = q
            .order_by_desc(dispatches::Column::DeadLetteredAt)
            .order_by_desc(dispatches::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for m in rows {
            let d = dispatch_from_model(m)?;
            let run = load_run(&self.db, &d.run_id).await?;
            out.push((d, run));
        }
        Ok(out)
    }
}

fn nonneg(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}
