//! Applies retention ([`crate::domain::retention`]) in small batches: each batch is one short
//! transaction over at most `batch` rows found through an index (`runs_finished_idx`,
//! `audit_events_created_idx`), so no lock is held long and no table is rewritten. A run goes
//! with its history entries and dispatches in the same transaction. On Postgres the runs of a
//! batch are taken `FOR UPDATE SKIP LOCKED`: a run another transaction holds is left for the
//! next pass, and two replicas pruning at once split the work.

use super::Store;
use super::entities::{audit_events, dispatches, run_events, runs};
use crate::domain::Result;
use crate::domain::retention::{Cutoffs, Pruned, prunable_statuses};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

fn final_statuses() -> Vec<&'static str> {
    prunable_statuses()
        .into_iter()
        .map(|s| s.as_str())
        .collect()
}

fn prunable_runs(cutoff: DateTime<Utc>) -> sea_orm::Select<runs::Entity> {
    runs::Entity::find()
        .filter(runs::Column::FinishedAt.lt(cutoff))
        .filter(runs::Column::Status.is_in(final_statuses()))
}

impl Store {
    /// One batch of finished runs past `cutoff` with their history and dispatches; the counts.
    pub async fn prune_runs_batch(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<Pruned> {
        let txn = self.db.begin().await?;
        let mut q = prunable_runs(cutoff)
            .select_only()
            .column(runs::Column::Id)
            .order_by_asc(runs::Column::FinishedAt)
            .limit(batch as u64);
        if txn.get_database_backend() == DatabaseBackend::Postgres {
            q = q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let ids: Vec<String> = q.into_tuple().all(&txn).await?;
        if ids.is_empty() {
            let _ = txn.rollback().await;
            return Ok(Pruned::default());
        }
        let events = run_events::Entity::delete_many()
            .filter(run_events::Column::RunId.is_in(ids.clone()))
            .exec(&txn)
            .await?
            .rows_affected;
        let jobs = dispatches::Entity::delete_many()
            .filter(dispatches::Column::RunId.is_in(ids.clone()))
            .exec(&txn)
            .await?
            .rows_affected;
        let gone = runs::Entity::delete_many()
            .filter(runs::Column::Id.is_in(ids))
            .exec(&txn)
            .await?
            .rows_affected;
        txn.commit().await?;
        Ok(Pruned {
            runs: gone,
            run_events: events,
            dispatches: jobs,
            ..Default::default()
        })
    }

    /// One batch of audit entries older than `cutoff`; how many went.
    pub async fn prune_audit_batch(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<u64> {
        let ids: Vec<i64> = audit_events::Entity::find()
            .select_only()
            .column(audit_events::Column::Id)
            .filter(audit_events::Column::CreatedAt.lt(cutoff))
            .order_by_asc(audit_events::Column::CreatedAt)
            .limit(batch as u64)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(audit_events::Entity::delete_many()
            .filter(audit_events::Column::Id.is_in(ids))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// What a pass at `cutoffs` would delete, counted without deleting.
    pub async fn prunable(&self, cutoffs: &Cutoffs) -> Result<Pruned> {
        let mut p = Pruned::default();
        if let Some(cutoff) = cutoffs.runs {
            p.runs = prunable_runs(cutoff).count(&self.db).await?;
            let ids = || {
                sea_orm::sea_query::Query::select()
                    .column(runs::Column::Id)
                    .from(runs::Entity)
                    .and_where(runs::Column::FinishedAt.lt(cutoff))
                    .and_where(runs::Column::Status.is_in(final_statuses()))
                    .to_owned()
            };
            p.run_events = run_events::Entity::find()
                .filter(run_events::Column::RunId.in_subquery(ids()))
                .count(&self.db)
                .await?;
            p.dispatches = dispatches::Entity::find()
                .filter(dispatches::Column::RunId.in_subquery(ids()))
                .count(&self.db)
                .await?;
        }
        if let Some(cutoff) = cutoffs.audit {
            p.audit_events = audit_events::Entity::find()
                .filter(audit_events::Column::CreatedAt.lt(cutoff))
                .count(&self.db)
                .await?;
        }
        if let Some(cutoff) = cutoffs.codex_task_runs {
            p.codex_task_runs = self.prunable_task_runs(cutoff).await?;
        }
        Ok(p)
    }

    /// One pass at `cutoffs`, batch after batch, until nothing is left or, per kind,
    /// `max_batches` batches have gone (a pass over a long backlog, the first after retention
    /// is switched on, is cut in passes that each end soon); `dry` only counts (everything).
    /// The counts, and whether a kind stopped at `max_batches` with more left.
    pub async fn prune(
        &self,
        cutoffs: &Cutoffs,
        batch: u32,
        max_batches: u32,
        dry: bool,
    ) -> Result<(Pruned, bool)> {
        if dry {
            return Ok((self.prunable(cutoffs).await?, false));
        }
        let batch = batch.max(1);
        let mut total = Pruned::default();
        let mut more = false;
        if let Some(cutoff) = cutoffs.runs {
            more |= drain(
                &mut total,
                batch,
                max_batches,
                |p| p.runs,
                || self.prune_runs_batch(cutoff, batch),
            )
            .await?;
        }
        if let Some(cutoff) = cutoffs.audit {
            more |= drain(
                &mut total,
                batch,
                max_batches,
                |p| p.audit_events,
                || async move {
                    Ok(Pruned {
                        audit_events: self.prune_audit_batch(cutoff, batch).await?,
                        ..Default::default()
                    })
                },
            )
            .await?;
        }
        if let Some(cutoff) = cutoffs.codex_task_runs {
            more |= drain(
                &mut total,
                batch,
                max_batches,
                |p| p.codex_task_runs,
                || async move {
                    Ok(Pruned {
                        codex_task_runs: self.prune_task_runs_batch(cutoff, batch).await?,
                        ..Default::default()
                    })
                },
            )
            .await?;
        }
        Ok((total, more))
    }
}

/// Runs `one` batch after batch, adding to `total`, until a batch deletes fewer than `batch` of
/// what `counted` reads (nothing left) or `max_batches` have run; whether it stopped at the cap.
async fn drain<F, Fut>(
    total: &mut Pruned,
    batch: u32,
    max_batches: u32,
    counted: fn(&Pruned) -> u64,
    mut one: F,
) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Pruned>>,
{
    for _ in 0..max_batches.max(1) {
        let p = one().await?;
        total.add(p);
        if counted(&p) < u64::from(batch) {
            return Ok(false);
        }
        tokio::task::yield_now().await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches of 10 from a backlog of `left`: (batches run, total deleted, stopped at the cap).
    async fn drained(left: u64, max_batches: u32) -> (u32, u64, bool) {
        let (mut left, mut calls, mut total) = (left, 0u32, Pruned::default());
        let more = drain(
            &mut total,
            10,
            max_batches,
            |p| p.runs,
            || {
                calls += 1;
                let n = left.min(10);
                left -= n;
                async move {
                    Ok(Pruned {
                        runs: n,
                        ..Default::default()
                    })
                }
            },
        )
        .await
        .expect("drain");
        (calls, total.runs, more)
    }

    #[tokio::test]
    async fn a_pass_stops_at_its_cap_and_says_more_is_left() {
        assert_eq!(drained(35, 100).await, (4, 35, false), "to the end");
        assert_eq!(
            drained(30, 100).await,
            (4, 30, false),
            "a full last batch asks once more"
        );
        assert_eq!(drained(1_000, 3).await, (3, 30, true), "capped, more left");
        assert_eq!(drained(0, 3).await, (1, 0, false), "nothing to do");
    }
}
