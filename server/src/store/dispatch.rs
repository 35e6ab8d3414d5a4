//! The dispatch outbox: leasing, completion, retries with backoff, dead letters, and the
//! monotonic status reports that move runs forward.
//!
//! Concurrency: every state change is a compare-and-set `UPDATE … WHERE <expected state>`, and
//! it is the first statement of its transaction, so on Postgres it takes the row lock and on
//! SQLite the write lock at once. Two replicas or adapters racing for one dispatch or one run
//! cannot both win; the loser re-reads and moves on. History entries are appended after the run
//! row is updated in the same transaction, so their sequence numbers never collide.

use super::entities::{dispatches, run_events, runs};
use super::{Store, dispatch_kind, dispatch_state, run_from_model};
use crate::domain::dispatch::{
    Dispatch, DispatchKind, DispatchPolicy, Leased, Outcome, StatusReport,
};
use crate::domain::run::{Run, RunSource, RunStatus};
use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
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

/// What a `Complete` did, for metrics and wake-ups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompleteEffect {
    /// The Workflow exists now; the run was accepted this long ago.
    Submitted(std::time::Duration),
    /// A stop or terminate patch went through.
    ShutdownSent,
    /// The attempt failed and will be retried.
    RetryScheduled,
    /// The attempt failed for the last time.
    DeadLettered,
    /// The run had been cancelled before the Workflow existed; nothing more to do.
    Cancelled,
    /// Repeated call for an already completed dispatch: nothing changed.
    AlreadyDone,
}

/// Candidates examined per lease call; losing a race simply moves to the next one.
const LEASE_CANDIDATES: u64 = 16;

fn dispatch_from_model(m: dispatches::Model) -> Result<Dispatch> {
    Ok(Dispatch {
        kind: DispatchKind::parse(&m.kind).ok_or_else(|| {
            Error::Internal(format!("stored dispatch kind `{}` is invalid", m.kind))
        })?,
        id: m.id,
        run_id: m.run_id,
        state: m.state,
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
        .map_err(Error::database)?
        .map(run_from_model)
        .transpose()?
        .ok_or_else(|| Error::NotFound(format!("no run `{id}`")))
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
        .map_err(Error::database)?;
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
    .map_err(Error::database)?;
    Ok(())
}

/// `UPDATE runs SET status = to, … WHERE id = run.id AND status = run.status`; true if it won.
async fn cas_run<C: ConnectionTrait>(
    c: &C,
    run: &Run,
    to: RunStatus,
    set: Vec<(runs::Column, Expr)>,
) -> Result<bool> {
    let mut q = runs::Entity::update_many()
        .col_expr(runs::Column::Status, Expr::value(to.as_str()))
        .col_expr(runs::Column::UpdatedAt, Expr::value(Utc::now()));
    for (col, e) in set {
        q = q.col_expr(col, e);
    }
    let r = q
        .filter(runs::Column::Id.eq(run.id.as_str()))
        .filter(runs::Column::Status.eq(run.status.as_str()))
        .exec(c)
        .await
        .map_err(Error::database)?;
    let won = r.rows_affected == 1;
    if won && to != run.status && run.source == RunSource::Codex {
        super::codex::sync_task_run(c, run, to).await?;
    }
    Ok(won)
}

fn terminal_fields(to: RunStatus, finished_at: Option<DateTime<Utc>>) -> Vec<(runs::Column, Expr)> {
    if to.is_terminal() {
        vec![(
            runs::Column::FinishedAt,
            Expr::value(Some(finished_at.unwrap_or_else(Utc::now))),
        )]
    } else {
        vec![]
    }
}

async fn begin(store: &Store) -> Result<DatabaseTransaction> {
    store.db.begin().await.map_err(Error::database)
}

async fn commit(t: DatabaseTransaction) -> Result<()> {
    t.commit().await.map_err(Error::database)
}

/// Sets a dispatch's state without conditions (inside a transaction that already owns it).
fn dispatch_update() -> sea_orm::UpdateMany<dispatches::Entity> {
    dispatches::Entity::update_many()
        .col_expr(dispatches::Column::UpdatedAt, Expr::value(Utc::now()))
}

impl Store {
    /// A dispatch by id.
    pub async fn get_dispatch(&self, id: &str) -> Result<Option<Dispatch>> {
        dispatches::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(Error::database)?
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
            .map_err(Error::database)?
            .into_iter()
            .map(dispatch_from_model)
            .collect()
    }

    /// Jobs `owner` holds whose lease has not expired.
    pub async fn count_leased(&self, owner: &str) -> Result<u64> {
        dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(dispatch_state::LEASED))
            .filter(dispatches::Column::LeaseOwner.eq(owner))
            .filter(dispatches::Column::LeaseExpiresAt.gt(Utc::now()))
            .count(&self.db)
            .await
            .map_err(Error::database)
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
                    .add(dispatches::Column::State.eq(dispatch_state::PENDING))
                    .add(dispatches::Column::AvailableAt.lte(now)),
            )
            .add(
                sea_orm::Condition::all()
                    .add(dispatches::Column::State.eq(dispatch_state::LEASED))
                    .add(dispatches::Column::LeaseExpiresAt.lte(now)),
            );
        let candidates = dispatches::Entity::find()
            .filter(due)
            .order_by_asc(dispatches::Column::AvailableAt)
            .limit(LEASE_CANDIDATES)
            .all(&self.db)
            .await
            .map_err(Error::database)?;
        for c in candidates {
            if let Some(leased) = self.try_lease(c, owner, namespaces, policy).await? {
                return Ok(LeaseOutcome::Leased(Box::new(leased)));
            }
        }
        Ok(LeaseOutcome::Idle {
            next_due: self.next_due().await?,
        })
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let pending: Option<Option<DateTime<Utc>>> = dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(dispatch_state::PENDING))
            .select_only()
            .column_as(dispatches::Column::AvailableAt.min(), "m")
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(Error::database)?;
        let leased: Option<Option<DateTime<Utc>>> = dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(dispatch_state::LEASED))
            .select_only()
            .column_as(dispatches::Column::LeaseExpiresAt.min(), "m")
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(Error::database)?;
        Ok([pending.flatten(), leased.flatten()]
            .into_iter()
            .flatten()
            .min())
    }

    async fn try_lease(
        &self,
        c: dispatches::Model,
        owner: &str,
        namespaces: &[String],
        policy: &DispatchPolicy,
    ) -> Result<Option<Leased>> {
        let run = load_run(&self.db, &c.run_id).await?;
        if !namespaces.is_empty() && !namespaces.contains(&run.namespace) {
            return Ok(None);
        }
        let expired_lease = c.state == dispatch_state::LEASED;
        if expired_lease && nonneg(c.attempts) >= policy.max_attempts {
            let d = dispatch_from_model(c)?;
            let msg = format!(
                "lease expired on attempt {} of {}: the adapter did not complete it",
                d.attempts, policy.max_attempts
            );
            self.dead_letter(&d, &d.lease_token, &msg, "dispatcher")
                .await?;
            return Ok(None);
        }
        let now = Utc::now();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expires = now
            + chrono::Duration::from_std(policy.lease)
                .unwrap_or_else(|_| chrono::Duration::seconds(30));
        let txn = begin(self).await?;
        let won = dispatches::Entity::update_many()
            .col_expr(
                dispatches::Column::State,
                Expr::value(dispatch_state::LEASED),
            )
            .col_expr(
                dispatches::Column::Attempts,
                Expr::col(dispatches::Column::Attempts).add(1),
            )
            .col_expr(dispatches::Column::LeaseOwner, Expr::value(owner))
            .col_expr(dispatches::Column::LeaseToken, Expr::value(token.as_str()))
            .col_expr(
                dispatches::Column::LeaseExpiresAt,
                Expr::value(Some(expires)),
            )
            .col_expr(dispatches::Column::UpdatedAt, Expr::value(now))
            .filter(dispatches::Column::Id.eq(c.id.as_str()))
            .filter(dispatches::Column::State.eq(c.state.as_str()))
            .filter(dispatches::Column::LeaseToken.eq(c.lease_token.as_str()))
            .exec(&txn)
            .await
            .map_err(Error::database)?
            .rows_affected
            == 1;
        if !won {
            let _ = txn.rollback().await;
            return Ok(None);
        }
        let attempt = nonneg(c.attempts) + 1;
        let kind = DispatchKind::parse(&c.kind).unwrap_or(DispatchKind::Create);
        let run = load_run(&txn, &c.run_id).await?;
        let to = if kind == DispatchKind::Create && run.status == RunStatus::Queued {
            RunStatus::Dispatching
        } else {
            run.status
        };
        if kind == DispatchKind::Create && run.status.is_terminal() {
            // Cannot happen through our own transitions (cancel closes the create dispatch);
            // close it rather than create a Workflow for a finished run.
            dispatch_update()
                .col_expr(
                    dispatches::Column::State,
                    Expr::value(dispatch_state::CANCELLED),
                )
                .filter(dispatches::Column::Id.eq(c.id.as_str()))
                .exec(&txn)
                .await
                .map_err(Error::database)?;
            commit(txn).await?;
            return Ok(None);
        }
        let attempts_expr = if kind == DispatchKind::Create {
            vec![(runs::Column::Attempts, Expr::value(attempt as i32))]
        } else {
            vec![]
        };
        if !cas_run(&txn, &run, to, attempts_expr).await? {
            let _ = txn.rollback().await;
            return Ok(None);
        }
        let payload = serde_json::json!({"owner": owner, "attempt": attempt, "dispatch": kind.as_str(), "lease_expires_at": expires, "after_expired_lease": expired_lease});
        append_event(&txn, &run.id, owner, "leased", run.status, to, payload).await?;
        commit(txn).await?;
        let dispatch = Dispatch {
            id: c.id,
            run_id: c.run_id,
            kind,
            state: dispatch_state::LEASED.into(),
            attempts: attempt,
            lease_token: token,
            lease_expires_at: Some(expires),
            last_error: c.last_error,
            dead_lettered_at: None,
        };
        let run = load_run(&self.db, &dispatch.run_id).await?;
        Ok(Some(Leased { dispatch, run }))
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
        let d = self
            .get_dispatch(dispatch_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no dispatch `{dispatch_id}`")))?;
        if d.state != dispatch_state::LEASED || d.lease_token != lease_token {
            if d.state == dispatch_state::DONE && matches!(outcome, Outcome::Success { .. }) {
                return Ok((
                    load_run(&self.db, &d.run_id).await?,
                    CompleteEffect::AlreadyDone,
                ));
            }
            return Err(Error::FailedPrecondition(format!(
                "dispatch `{dispatch_id}` is no longer leased with this token (state {}): its lease expired or another adapter holds it",
                d.state
            )));
        }
        match outcome {
            Outcome::Success {
                workflow_name,
                workflow_uid,
                already_existed,
            } => {
                let txn = begin(self).await?;
                if !self
                    .close_dispatch(&txn, &d, lease_token, dispatch_state::DONE, "")
                    .await?
                {
                    let _ = txn.rollback().await;
                    return Err(Error::FailedPrecondition(format!(
                        "dispatch `{dispatch_id}` changed while completing it"
                    )));
                }
                let run = load_run(&txn, &d.run_id).await?;
                let effect = if d.kind == DispatchKind::Create {
                    let payload = serde_json::json!({"workflow_name": workflow_name, "workflow_uid": workflow_uid, "already_existed": already_existed, "attempt": d.attempts});
                    let uid = vec![(
                        runs::Column::WorkflowUid,
                        Expr::value(workflow_uid.as_str()),
                    )];
                    if run.status.can_move_to(RunStatus::Submitted) {
                        cas_run(&txn, &run, RunStatus::Submitted, uid).await?;
                        append_event(
                            &txn,
                            &run.id,
                            actor,
                            "submitted",
                            run.status,
                            RunStatus::Submitted,
                            payload,
                        )
                        .await?;
                    } else {
                        // A status report got there first (or the run is further along): keep
                        // the state, record the UID.
                        cas_run(&txn, &run, run.status, uid).await?;
                        append_event(
                            &txn,
                            &run.id,
                            actor,
                            "submitted",
                            run.status,
                            run.status,
                            payload,
                        )
                        .await?;
                    }
                    CompleteEffect::Submitted(
                        (Utc::now() - run.created_at).to_std().unwrap_or_default(),
                    )
                } else {
                    cas_run(&txn, &run, run.status, vec![]).await?;
                    let payload = serde_json::json!({"shutdown": d.kind.as_str(), "workflow_name": workflow_name});
                    append_event(
                        &txn,
                        &run.id,
                        actor,
                        "shutdown_sent",
                        run.status,
                        run.status,
                        payload,
                    )
                    .await?;
                    CompleteEffect::ShutdownSent
                };
                commit(txn).await?;
                Ok((load_run(&self.db, &d.run_id).await?, effect))
            }
            Outcome::Failure { message, retryable } => {
                let run = load_run(&self.db, &d.run_id).await?;
                if d.kind == DispatchKind::Create && run.cancel_requested_at.is_some() {
                    // Cancelled while the create was in flight, and the create failed: done.
                    let txn = begin(self).await?;
                    self.close_dispatch(&txn, &d, lease_token, dispatch_state::CANCELLED, message)
                        .await?;
                    self.cancel_pending(&txn, &run.id).await?;
                    let run = load_run(&txn, &d.run_id).await?;
                    if run.status.can_move_to(RunStatus::Cancelled) {
                        cas_run(
                            &txn,
                            &run,
                            RunStatus::Cancelled,
                            terminal_fields(RunStatus::Cancelled, None),
                        )
                        .await?;
                        let payload = serde_json::json!({"reason": "cancel requested; the create failed", "error": message});
                        append_event(
                            &txn,
                            &run.id,
                            actor,
                            "cancelled",
                            run.status,
                            RunStatus::Cancelled,
                            payload,
                        )
                        .await?;
                    }
                    commit(txn).await?;
                    return Ok((
                        load_run(&self.db, &d.run_id).await?,
                        CompleteEffect::Cancelled,
                    ));
                }
                if *retryable && d.attempts < policy.max_attempts {
                    let delay = policy.backoff(d.attempts);
                    let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                    let txn = begin(self).await?;
                    let won = dispatch_update()
                        .col_expr(
                            dispatches::Column::State,
                            Expr::value(dispatch_state::PENDING),
                        )
                        .col_expr(dispatches::Column::AvailableAt, Expr::value(at))
                        .col_expr(dispatches::Column::LeaseToken, Expr::value(""))
                        .col_expr(
                            dispatches::Column::LeaseExpiresAt,
                            Expr::value(Option::<DateTime<Utc>>::None),
                        )
                        .col_expr(dispatches::Column::LastError, Expr::value(message.as_str()))
                        .filter(dispatches::Column::Id.eq(d.id.as_str()))
                        .filter(dispatches::Column::LeaseToken.eq(lease_token))
                        .exec(&txn)
                        .await
                        .map_err(Error::database)?
                        .rows_affected
                        == 1;
                    if !won {
                        let _ = txn.rollback().await;
                        return Err(Error::FailedPrecondition(format!(
                            "dispatch `{dispatch_id}` changed while completing it"
                        )));
                    }
                    let run = load_run(&txn, &d.run_id).await?;
                    let to =
                        if d.kind == DispatchKind::Create && run.status == RunStatus::Dispatching {
                            RunStatus::Queued
                        } else {
                            run.status
                        };
                    cas_run(
                        &txn,
                        &run,
                        to,
                        vec![(runs::Column::Message, Expr::value(message.as_str()))],
                    )
                    .await?;
                    let payload = serde_json::json!({"error": message, "attempt": d.attempts, "retry_at": at, "dispatch": d.kind.as_str()});
                    append_event(
                        &txn,
                        &run.id,
                        actor,
                        "dispatch_failed",
                        run.status,
                        to,
                        payload,
                    )
                    .await?;
                    commit(txn).await?;
                    Ok((
                        load_run(&self.db, &d.run_id).await?,
                        CompleteEffect::RetryScheduled,
                    ))
                } else {
                    let why = if *retryable {
                        format!(
                            "{message} (attempt {} of {})",
                            d.attempts, policy.max_attempts
                        )
                    } else {
                        format!("{message} (not retryable)")
                    };
                    self.dead_letter(&d, lease_token, &why, actor).await?;
                    Ok((
                        load_run(&self.db, &d.run_id).await?,
                        CompleteEffect::DeadLettered,
                    ))
                }
            }
        }
    }

    /// CAS on the lease token: moves a leased dispatch to `state`.
    async fn close_dispatch(
        &self,
        txn: &DatabaseTransaction,
        d: &Dispatch,
        token: &str,
        state: &str,
        error: &str,
    ) -> Result<bool> {
        let mut q = dispatch_update()
            .col_expr(dispatches::Column::State, Expr::value(state))
            .col_expr(
                dispatches::Column::LeaseExpiresAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            );
        if !error.is_empty() {
            q = q.col_expr(dispatches::Column::LastError, Expr::value(error));
        }
        let r = q
            .filter(dispatches::Column::Id.eq(d.id.as_str()))
            .filter(dispatches::Column::LeaseToken.eq(token))
            .filter(dispatches::Column::State.eq(d.state.as_str()))
            .exec(txn)
            .await
            .map_err(Error::database)?;
        Ok(r.rows_affected == 1)
    }

    /// Cancels every not-yet-run job of a run.
    async fn cancel_pending(&self, txn: &DatabaseTransaction, run_id: &str) -> Result<()> {
        dispatch_update()
            .col_expr(
                dispatches::Column::State,
                Expr::value(dispatch_state::CANCELLED),
            )
            .filter(dispatches::Column::RunId.eq(run_id))
            .filter(
                dispatches::Column::State.is_in([dispatch_state::PENDING, dispatch_state::DEAD]),
            )
            .exec(txn)
            .await
            .map_err(Error::database)?;
        Ok(())
    }

    async fn dead_letter(&self, d: &Dispatch, token: &str, why: &str, actor: &str) -> Result<()> {
        let now = Utc::now();
        let txn = begin(self).await?;
        let won = dispatch_update()
            .col_expr(dispatches::Column::State, Expr::value(dispatch_state::DEAD))
            .col_expr(dispatches::Column::DeadLetteredAt, Expr::value(Some(now)))
            .col_expr(
                dispatches::Column::LeaseExpiresAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(dispatches::Column::LastError, Expr::value(why))
            .filter(dispatches::Column::Id.eq(d.id.as_str()))
            .filter(dispatches::Column::LeaseToken.eq(token))
            .filter(dispatches::Column::State.eq(dispatch_state::LEASED))
            .exec(&txn)
            .await
            .map_err(Error::database)?
            .rows_affected
            == 1;
        if !won {
            let _ = txn.rollback().await;
            return Ok(());
        }
        let run = load_run(&txn, &d.run_id).await?;
        let to =
            if d.kind == DispatchKind::Create && run.status.can_move_to(RunStatus::DeadLettered) {
                RunStatus::DeadLettered
            } else {
                run.status
            };
        cas_run(
            &txn,
            &run,
            to,
            vec![(runs::Column::Message, Expr::value(why))],
        )
        .await?;
        let payload = serde_json::json!({"error": why, "attempts": d.attempts, "dispatch": d.kind.as_str(), "dispatch_id": d.id});
        append_event(
            &txn,
            &run.id,
            actor,
            "dead_lettered",
            run.status,
            to,
            payload,
        )
        .await?;
        commit(txn).await
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
                .map_err(Error::database)?
                .map(|m| m.id)
                .ok_or_else(|| {
                    Error::NotFound(format!("no run has workflow `{}`", r.workflow_name))
                })?,
        };
        for _ in 0..8 {
            let run = load_run(&self.db, &run_id).await?;
            if !r.workflow_name.is_empty() && r.workflow_name != run.workflow_name {
                return Err(Error::InvalidArgument(format!(
                    "workflow `{}` does not belong to run `{run_id}` (its workflow is `{}`)",
                    r.workflow_name, run.workflow_name
                )));
            }
            let mut target = RunStatus::from_argo_phase(&r.phase);
            if run.cancel_requested_at.is_some()
                && matches!(target, Some(RunStatus::Failed | RunStatus::Error))
            {
                target = Some(RunStatus::Cancelled);
            }
            let message = if r.failed_node_message.is_empty() {
                r.message.clone()
            } else if r.message.is_empty() {
                format!("{}: {}", r.failed_node, r.failed_node_message)
            } else {
                format!(
                    "{} ({}: {})",
                    r.message, r.failed_node, r.failed_node_message
                )
            };
            let mut fields = vec![
                (runs::Column::Message, Expr::value(message.as_str())),
                (runs::Column::Progress, Expr::value(r.progress.as_str())),
                (runs::Column::WorkflowPhase, Expr::value(r.phase.as_str())),
            ];
            if run.workflow_uid.is_empty() && !r.workflow_uid.is_empty() {
                fields.push((
                    runs::Column::WorkflowUid,
                    Expr::value(r.workflow_uid.as_str()),
                ));
            }
            if run.started_at.is_none() && r.started_at.is_some() {
                fields.push((runs::Column::StartedAt, Expr::value(r.started_at)));
            }
            match target {
                Some(to) if run.status.can_move_to(to) => {
                    fields.extend(terminal_fields(to, r.finished_at));
                    let txn = begin(self).await?;
                    if !cas_run(&txn, &run, to, fields).await? {
                        let _ = txn.rollback().await;
                        continue;
                    }
                    // The Workflow exists: its create job is done whatever the adapter said.
                    dispatch_update()
                        .col_expr(dispatches::Column::State, Expr::value(dispatch_state::DONE))
                        .col_expr(
                            dispatches::Column::LeaseExpiresAt,
                            Expr::value(Option::<DateTime<Utc>>::None),
                        )
                        .filter(dispatches::Column::RunId.eq(run.id.as_str()))
                        .filter(dispatches::Column::Kind.eq(dispatch_kind::CREATE))
                        .filter(dispatches::Column::State.is_in([
                            dispatch_state::PENDING,
                            dispatch_state::LEASED,
                            dispatch_state::DEAD,
                        ]))
                        .exec(&txn)
                        .await
                        .map_err(Error::database)?;
                    if to.is_terminal() {
                        self.cancel_pending(&txn, &run.id).await?;
                    }
                    let payload = serde_json::json!({
                        "phase": r.phase, "message": r.message, "progress": r.progress,
                        "failed_node": r.failed_node, "failed_node_message": r.failed_node_message,
                        "started_at": r.started_at, "finished_at": r.finished_at, "source": r.source,
                    });
                    append_event(&txn, &run.id, actor, "status", run.status, to, payload).await?;
                    commit(txn).await?;
                    return Ok((load_run(&self.db, &run_id).await?, true));
                }
                Some(to)
                    if to == run.status && !to.is_terminal() && run.workflow_phase != r.phase =>
                {
                    // A new Argo phase within the same run state (Pending after the create was
                    // completed): history records it.
                    let txn = begin(self).await?;
                    if !cas_run(&txn, &run, to, fields).await? {
                        let _ = txn.rollback().await;
                        continue;
                    }
                    let payload = serde_json::json!({"phase": r.phase, "message": r.message, "progress": r.progress, "source": r.source});
                    append_event(&txn, &run.id, actor, "status", run.status, to, payload).await?;
                    commit(txn).await?;
                    return Ok((load_run(&self.db, &run_id).await?, true));
                }
                Some(to)
                    if to == run.status
                        && !to.is_terminal()
                        && (run.progress != r.progress || run.message != message) =>
                {
                    // Same phase, news inside it (progress): update in place, no history entry.
                    if !cas_run(&self.db, &run, to, fields).await? {
                        continue;
                    }
                    return Ok((load_run(&self.db, &run_id).await?, true));
                }
                _ => return Ok((run, false)),
            }
        }
        Err(Error::Unavailable {
            dependency: "database",
            message: format!("run `{run_id}` kept changing under the report"),
        })
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
        for _ in 0..8 {
            let run = load_run(&self.db, run_id).await?;
            let payload = serde_json::json!({"reason": reason, "mode": kind.as_str()});
            match run.status {
                s if s.is_terminal() => {
                    return Err(Error::FailedPrecondition(format!(
                        "run `{run_id}` is already {s}; nothing to cancel"
                    )));
                }
                RunStatus::Queued | RunStatus::DeadLettered => {
                    let txn = begin(self).await?;
                    if !cas_run(
                        &txn,
                        &run,
                        RunStatus::Cancelled,
                        terminal_fields(RunStatus::Cancelled, None),
                    )
                    .await?
                    {
                        let _ = txn.rollback().await;
                        continue;
                    }
                    self.cancel_pending(&txn, run_id).await?;
                    append_event(
                        &txn,
                        run_id,
                        actor,
                        "cancelled",
                        run.status,
                        RunStatus::Cancelled,
                        payload,
                    )
                    .await?;
                    commit(txn).await?;
                }
                _ if run.cancel_requested_at.is_some() => return Ok(run),
                _ => {
                    let now = Utc::now();
                    let txn = begin(self).await?;
                    let fields = vec![
                        (runs::Column::CancelRequestedAt, Expr::value(Some(now))),
                        (runs::Column::CancelMode, Expr::value(kind.as_str())),
                    ];
                    if !cas_run(&txn, &run, run.status, fields).await? {
                        let _ = txn.rollback().await;
                        continue;
                    }
                    dispatches::Entity::insert(super::pending_dispatch(run_id, kind.as_str(), now))
                        .exec_without_returning(&txn)
                        .await
                        .map_err(Error::database)?;
                    append_event(
                        &txn,
                        run_id,
                        actor,
                        "cancel_requested",
                        run.status,
                        run.status,
                        payload,
                    )
                    .await?;
                    commit(txn).await?;
                }
            }
            return load_run(&self.db, run_id).await;
        }
        Err(Error::Unavailable {
            dependency: "database",
            message: format!("run `{run_id}` kept changing under the cancel"),
        })
    }

    /// Puts a dead-lettered job back in the queue with fresh attempts.
    pub async fn requeue_dead_letter(&self, dispatch_id: &str, actor: &str) -> Result<Run> {
        let d = self
            .get_dispatch(dispatch_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no dispatch `{dispatch_id}`")))?;
        if d.state != dispatch_state::DEAD {
            return Err(Error::FailedPrecondition(format!(
                "dispatch `{dispatch_id}` is {}, not dead-lettered",
                d.state
            )));
        }
        let txn = begin(self).await?;
        let won = dispatch_update()
            .col_expr(
                dispatches::Column::State,
                Expr::value(dispatch_state::PENDING),
            )
            .col_expr(dispatches::Column::Attempts, Expr::value(0))
            .col_expr(dispatches::Column::AvailableAt, Expr::value(Utc::now()))
            .col_expr(dispatches::Column::LeaseToken, Expr::value(""))
            .col_expr(
                dispatches::Column::DeadLetteredAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(dispatches::Column::Id.eq(dispatch_id))
            .filter(dispatches::Column::State.eq(dispatch_state::DEAD))
            .exec(&txn)
            .await
            .map_err(Error::database)?
            .rows_affected
            == 1;
        if !won {
            let _ = txn.rollback().await;
            return Err(Error::FailedPrecondition(format!(
                "dispatch `{dispatch_id}` changed while requeueing it"
            )));
        }
        let run = load_run(&txn, &d.run_id).await?;
        let to = if run.status == RunStatus::DeadLettered {
            RunStatus::Queued
        } else {
            run.status
        };
        cas_run(
            &txn,
            &run,
            to,
            vec![(runs::Column::Attempts, Expr::value(0))],
        )
        .await?;
        let payload =
            serde_json::json!({"dispatch_id": dispatch_id, "previous_error": d.last_error});
        append_event(&txn, &run.id, actor, "requeued", run.status, to, payload).await?;
        commit(txn).await?;
        load_run(&self.db, &d.run_id).await
    }

    /// Dead-lettered jobs, newest first, after the keyset cursor `after`.
    pub async fn list_dead_letters(
        &self,
        limit: u64,
        after: Option<(DateTime<Utc>, String)>,
    ) -> Result<Vec<(Dispatch, Run)>> {
        let mut q =
            dispatches::Entity::find().filter(dispatches::Column::State.eq(dispatch_state::DEAD));
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
            .map_err(Error::database)?;
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
