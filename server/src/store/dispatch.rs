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
    Dispatch, DispatchChange, DispatchKind, DispatchPolicy, DispatchState, Leased, Outcome,
    StatusReport, Transition, on_cancel, on_lease, on_outcome, on_report, on_requeue,
};
use crate::domain::run::{Run, RunSource, RunStatus};
use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

/// What `lease_next` found.
#[derive(Debug)]
pub enum LeaseOutcome {
    /// A job for the caller.
    Leased(Box<Leased>),
    /// Nothing due; the earliest time something becomes due, if known.
    Idle {
        /// Earliest `available_at` of a pending job or `lease_expires_at` of a leased one.
        next_due: Option<DateTime<Utc>>,
    },
}

/// Candidates examined per lease call; losing a race simply moves to the next one.
const LEASE_CANDIDATES: u64 = 16;

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
        .await
        .map_err(errors::db)?
        .map(run_from_model)
        .transpose()?
        .ok_or_else(|| Error::NotFound(format!("no run `{id}`")))
}

/// Locks the run row for the rest of the transaction and reads it: the first statement of every
/// transaction that changes a run or its dispatches. With `skip_locked`, a run another
/// transaction holds gives `None` (Postgres; SQLite waits for the write lock).
async fn lock_run(txn: &DatabaseTransaction, id: &str, skip_locked: bool) -> Result<Option<Run>> {
    if txn.get_database_backend() == DatabaseBackend::Sqlite {
        // Deferred SQLite transactions take the write lock on their first write: take it now,
        // so that a read is never followed by a lock upgrade that another writer refuses.
        runs::Entity::update_many()
            .col_expr(runs::Column::Id, Expr::col(runs::Column::Id))
            .filter(runs::Column::Id.eq(id))
            .exec(txn)
            .await
            .map_err(errors::db)?;
    }
    let q = runs::Entity::find_by_id(id.to_string());
    let q = if skip_locked {
        q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
    } else {
        q.lock_exclusive()
    };
    q.one(txn)
        .await
        .map_err(errors::db)?
        .map(run_from_model)
        .transpose()
}

async fn lock_dispatch(txn: &DatabaseTransaction, id: &str) -> Result<Option<Dispatch>> {
    dispatches::Entity::find_by_id(id.to_string())
        .lock_exclusive()
        .one(txn)
        .await
        .map_err(errors::db)?
        .map(dispatch_from_model)
        .transpose()
}

/// Appends one history entry (call after updating the run row in the same transaction).
async fn append_event<C: ConnectionTrait>(
    c: &C,
    run_id: &str,
    actor: &str,
    kind: &str,
    from: RunStatus,
    to: RunStatus,
    payload: serde_json::Value,
) -> Result<()> {
    let max: Option<Option<i64>> = run_events::Entity::find()
        .filter(run_events::Column::RunId.eq(run_id))
        .select_only()
        .column_as(run_events::Column::Sequence.max(), "m")
        .into_tuple()
        .one(c)
        .await
        .map_err(errors::db)?;
    let seq = max.flatten().unwrap_or(0) + 1;
    run_events::Entity::insert(run_events::ActiveModel {
        run_id: Set(run_id.to_string()),
        sequence: Set(seq),
        actor: Set(actor.to_string()),
        kind: Set(kind.to_string()),
        from_status: Set(from.as_str().into()),
        to_status: Set(to.as_str().into()),
        payload: Set(payload.to_string()),
        created_at: Set(Utc::now()),
        ..Default::default()
    })
    .exec_without_returning(c)
    .await
    .map_err(errors::db)?;
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

/// The lease a [`DispatchChange::Lease`] hands out.
struct NewLease<'a> {
    owner: &'a str,
    token: &'a str,
    expires: DateTime<Utc>,
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
    lease: Option<NewLease<'_>>,
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
            DispatchChange::Lease => {
                let l = lease.ok_or_else(|| Error::Internal("a lease without a token".into()))?;
                q.col_expr(
                    dispatches::Column::Attempts,
                    Expr::col(dispatches::Column::Attempts).add(1),
                )
                .col_expr(dispatches::Column::LeaseOwner, Expr::value(l.owner))
                .col_expr(dispatches::Column::LeaseToken, Expr::value(l.token))
                .col_expr(
                    dispatches::Column::LeaseExpiresAt,
                    Expr::value(Some(l.expires)),
                )
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
        if matches!(change, DispatchChange::Lease) {
            // Still due: a retry's backoff or another adapter's live lease is not jumped over.
            q = match d.state {
                DispatchState::Pending => q.filter(dispatches::Column::AvailableAt.lte(now)),
                _ => q.filter(dispatches::Column::LeaseExpiresAt.lte(now)),
            };
        }
        let won = q
            .filter(dispatches::Column::Id.eq(d.id.as_str()))
            .filter(dispatches::Column::State.eq(d.state.as_str()))
            .filter(dispatches::Column::LeaseToken.eq(d.lease_token.as_str()))
            .exec(txn)
            .await
            .map_err(errors::db)?
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
            );
    }
    let won = q
        .filter(runs::Column::Id.eq(run.id.as_str()))
        .filter(runs::Column::Status.eq(run.status.as_str()))
        .exec(txn)
        .await
        .map_err(errors::db)?
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
        .await
        .map_err(errors::db)?;
    }
    if t.close_open_jobs {
        others(&[DispatchState::Pending, DispatchState::Dead])
            .col_expr(
                dispatches::Column::State,
                Expr::value(DispatchState::Cancelled.as_str()),
            )
            .exec(txn)
            .await
            .map_err(errors::db)?;
    }
    if let Some(kind) = t.new_job {
        dispatches::Entity::insert(super::pending_dispatch(&run.id, kind.as_str(), now))
            .exec_without_returning(txn)
            .await
            .map_err(errors::db)?;
    }
    if let Some((kind, payload)) = &t.event {
        append_event(txn, &run.id, actor, kind, run.status, t.to, payload.clone()).await?;
    }
    Ok(())
}

impl Store {
    async fn begin(&self) -> Result<DatabaseTransaction> {
        self.db.begin().await.map_err(errors::db)
    }

    /// A dispatch by id.
    pub async fn get_dispatch(&self, id: &str) -> Result<Option<Dispatch>> {
        dispatches::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(errors::db)?
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
            .await
            .map_err(errors::db)?
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
            .map_err(errors::db)
    }

    /// Leases the next due job to `owner` (a pending one whose time has come, or a leased one
    /// whose lease expired), for runs in `namespaces` (empty: any).
    pub async fn lease_next(
        &self,
        owner: &str,
        namespaces: &[String],
        policy: &DispatchPolicy,
    ) -> Result<LeaseOutcome> {
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
        if !namespaces.is_empty() {
            // In the query, so jobs for namespaces this adapter does not serve never crowd out
            // the ones it does.
            candidates = candidates.filter(
                dispatches::Column::RunId.in_subquery(
                    sea_orm::sea_query::Query::select()
                        .column(runs::Column::Id)
                        .from(runs::Entity)
                        .and_where(runs::Column::Namespace.is_in(namespaces.iter().cloned()))
                        .to_owned(),
                ),
            );
        }
        let candidates = candidates
            .order_by_asc(dispatches::Column::AvailableAt)
            .limit(LEASE_CANDIDATES)
            .all(&self.db)
            .await
            .map_err(errors::db)?;
        for c in candidates {
            match self.try_lease(&c, owner, namespaces, policy).await {
                Ok(Some(leased)) => return Ok(LeaseOutcome::Leased(Box::new(leased))),
                Ok(None) => {}
                // Another transaction kept changing this one: the next candidate will do.
                Err(Error::Aborted(m)) => tracing::debug!(error = %m, "lease candidate skipped"),
                Err(e) => return Err(e),
            }
        }
        Ok(LeaseOutcome::Idle {
            next_due: self.next_due().await?,
        })
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let pending: Option<Option<DateTime<Utc>>> = dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(DispatchState::Pending.as_str()))
            .select_only()
            .column_as(dispatches::Column::AvailableAt.min(), "m")
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(errors::db)?;
        let leased: Option<Option<DateTime<Utc>>> = dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(DispatchState::Leased.as_str()))
            .select_only()
            .column_as(dispatches::Column::LeaseExpiresAt.min(), "m")
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(errors::db)?;
        Ok([pending.flatten(), leased.flatten()]
            .into_iter()
            .flatten()
            .min())
    }

    async fn try_lease(
        &self,
        c: &dispatches::Model,
        owner: &str,
        namespaces: &[String],
        policy: &DispatchPolicy,
    ) -> Result<Option<Leased>> {
        let txn = self.begin().await?;
        // Run first, then the dispatch: the lock order of every transaction here. A run that
        // another transaction holds (a cancel, a report) is skipped, not waited for. The
        // dispatch is taken by a compare-and-set on the state and token the candidate was read
        // with: if another adapter, a completion or a cancel changed it since, it is skipped.
        let Some(run) = lock_run(&txn, &c.run_id, true).await? else {
            let _ = txn.rollback().await;
            return Ok(None);
        };
        if !namespaces.is_empty() && !namespaces.contains(&run.namespace) {
            let _ = txn.rollback().await;
            return Ok(None);
        }
        let d = dispatch_from_model(c.clone())?;
        let now = Utc::now();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expires = now
            + chrono::Duration::from_std(policy.lease)
                .unwrap_or_else(|_| chrono::Duration::seconds(30));
        let t = on_lease(&d, &run, policy, owner, expires);
        let lease = NewLease {
            owner,
            token: &token,
            expires,
        };
        let actor = if t.dispatch == Some(DispatchChange::Lease) {
            owner
        } else {
            "dispatcher"
        };
        if let Err(e) = apply(&txn, &run, Some(&d), &t, actor, Some(lease), now).await {
            let _ = txn.rollback().await;
            return Err(e);
        }
        txn.commit().await.map_err(errors::db)?;
        if t.dispatch != Some(DispatchChange::Lease) {
            return Ok(None);
        }
        let run = after(&run, &t, now);
        let redelivered = d.state == DispatchState::Leased;
        let dispatch = Dispatch {
            state: DispatchState::Leased,
            attempts: d.attempts + 1,
            lease_token: token,
            lease_expires_at: Some(expires),
            dead_lettered_at: None,
            ..d
        };
        Ok(Some(Leased {
            dispatch,
            run,
            redelivered,
        }))
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
                let run = lock_run(&txn, &run_id, false)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("no run `{run_id}`")))?;
                let d = lock_dispatch(&txn, dispatch_id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("no dispatch `{dispatch_id}`")))?;
                let now = Utc::now();
                let (t, said) = decide(&d, &run, now)?;
                let run = match &t {
                    Some(t) => {
                        apply(&txn, &run, Some(&d), t, actor, None, now).await?;
                        after(&run, t, now)
                    }
                    None => run,
                };
                Ok::<_, Error>((run, said))
            }
            .await;
            match result {
                Ok(done) => {
                    txn.commit().await.map_err(errors::db)?;
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
                let run = lock_run(&txn, run_id, false)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("no run `{run_id}`")))?;
                let Some(t) = decide(&run)? else {
                    return Ok::<_, Error>((run, false));
                };
                let now = Utc::now();
                apply(&txn, &run, None, &t, actor, None, now).await?;
                Ok((after(&run, &t, now), true))
            }
            .await;
            match result {
                Ok((run, true)) => {
                    txn.commit().await.map_err(errors::db)?;
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
                .one(&self.db)
                .await
                .map_err(errors::db)?
                .map(|m| m.id)
                .ok_or_else(|| {
                    Error::NotFound(format!("no run has workflow `{}`", r.workflow_name))
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
        actor: &str,
    ) -> Result<Run> {
        self.change_run(run_id, actor, |run| {
            crate::domain::dispatch::on_decision(run, node, decision.clone(), Utc::now()).map(Some)
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
            .await
            .map_err(errors::db)?;
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
