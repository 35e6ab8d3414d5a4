//! Applies retention ([`crate::domain::retention`]) in small batches: each batch is one short
//! transaction over at most `batch` rows found through an index (`runs_finished_idx`,
//! `audit_events_created_idx`), so no lock is held long and no table is rewritten. A run goes
//! with its history entries and dispatches in the same transaction. On Postgres the runs of a
//! batch are taken `FOR UPDATE SKIP LOCKED`: a run another transaction holds is left for the
//! next pass, and two replicas pruning at once split the work.

use super::entities::{audit_events, dispatches, run_events, runs};
use super::{Store, errors};
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
        let txn = self.db.begin().await.map_err(errors::db)?;
        let mut q = prunable_runs(cutoff)
            .select_only()
            .column(runs::Column::Id)
            .order_by_asc(runs::Column::FinishedAt)
            .limit(batch as u64);
        if txn.get_database_backend() == DatabaseBackend::Postgres {
            q = q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let ids: Vec<String> = q.into_tuple().all(&txn).await.map_err(errors::db)?;
        if ids.is_empty() {
            let _ = txn.rollback().await;
            return Ok(Pruned::default());
        }
        let events = run_events::Entity::delete_many()
            .filter(run_events::Column::RunId.is_in(ids.clone()))
            .exec(&txn)
            .await
            .map_err(errors::db)?
            .rows_affected;
        let jobs = dispatches::Entity::delete_many()
            .filter(dispatches::Column::RunId.is_in(ids.clone()))
            .exec(&txn)
            .await
            .map_err(errors::db)?
            .rows_affected;
        let gone = runs::Entity::delete_many()
            .filter(runs::Column::Id.is_in(ids))
            .exec(&txn)
            .await
            .map_err(errors::db)?
            .rows_affected;
        txn.commit().await.map_err(errors::db)?;
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
            .await
            .map_err(errors::db)?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(audit_events::Entity::delete_many()
            .filter(audit_events::Column::Id.is_in(ids))
            .exec(&self.db)
            .await
            .map_err(errors::db)?
            .rows_affected)
    }

    /// What a pass at `cutoffs` would delete, counted without deleting.
    pub async fn prunable(&self, cutoffs: &Cutoffs) -> Result<Pruned> {
        let mut p = Pruned::default();
        if let Some(cutoff) = cutoffs.runs {
            p.runs = prunable_runs(cutoff)
                .count(&self.db)
                .await
                .map_err(errors::db)?;
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
                .await
                .map_err(errors::db)?;
            p.dispatches = dispatches::Entity::find()
                .filter(dispatches::Column::RunId.in_subquery(ids()))
                .count(&self.db)
                .await
                .map_err(errors::db)?;
        }
        if let Some(cutoff) = cutoffs.audit {
            p.audit_events = audit_events::Entity::find()
                .filter(audit_events::Column::CreatedAt.lt(cutoff))
                .count(&self.db)
                .await
                .map_err(errors::db)?;
        }
        if let Some(cutoff) = cutoffs.codex_task_runs {
            p.codex_task_runs = self.prunable_task_runs(cutoff).await?;
        }
        Ok(p)
    }

    /// One whole pass at `cutoffs`, batch after batch until nothing is left; `dry` only counts.
    pub async fn prune(&self, cutoffs: &Cutoffs, batch: u32, dry: bool) -> Result<Pruned> {
        if dry {
            return self.prunable(cutoffs).await;
        }
        let batch = batch.max(1);
        let mut total = Pruned::default();
        if let Some(cutoff) = cutoffs.runs {
            loop {
                let p = self.prune_runs_batch(cutoff, batch).await?;
                total.add(p);
                if p.runs < batch as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if let Some(cutoff) = cutoffs.audit {
            loop {
                let n = self.prune_audit_batch(cutoff, batch).await?;
                total.audit_events += n;
                if n < batch as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if let Some(cutoff) = cutoffs.codex_task_runs {
            loop {
                let n = self.prune_task_runs_batch(cutoff, batch).await?;
                total.codex_task_runs += n;
                if n < batch as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(total)
    }
}
