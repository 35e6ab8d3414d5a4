//! The change feed's transaction column (Postgres) and the indexes retention reads by.
//!
//! `run_events.tx` records the transaction that wrote each entry (`pg_current_xact_id()`), so
//! the feed can order by `(tx, id)` and stop below the oldest transaction in flight (see
//! `facteur_server::store::feed`). The column is added with a constant default (no table
//! rewrite; existing entries read as 0, before every new one) and only then given its per-row
//! default. SQLite commits ids in their own order and needs no such column.
//!
//! Retention deletes finished runs by `finished_at` and audit entries by `created_at`; both get
//! an index so a pass reads only what it deletes. `ListRuns` by requester matches the principal
//! or the Discord user id: the principal gets the index the user id already had, so the two
//! are read by index rather than by walking every run newest first.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000010_feed_and_retention"
    }
}

const POSTGRES: &[&str] = &[
    "ALTER TABLE run_events ADD COLUMN IF NOT EXISTS tx xid8 NOT NULL DEFAULT '0'::xid8",
    "ALTER TABLE run_events ALTER COLUMN tx SET DEFAULT pg_current_xact_id()",
    "CREATE INDEX IF NOT EXISTS run_events_tx_id_idx ON run_events (tx, id)",
    "CREATE INDEX IF NOT EXISTS runs_finished_idx ON runs (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS audit_events_created_idx ON audit_events (created_at)",
    "CREATE INDEX IF NOT EXISTS runs_principal_created_idx ON runs (requester_principal, created_at)",
];

const SQLITE: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS runs_finished_idx ON runs (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS audit_events_created_idx ON audit_events (created_at)",
    "CREATE INDEX IF NOT EXISTS runs_principal_created_idx ON runs (requester_principal, created_at)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let statements = match m.get_database_backend() {
            DatabaseBackend::Postgres => POSTGRES,
            _ => SQLITE,
        };
        let db = m.get_connection();
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS runs_finished_idx")
            .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS audit_events_created_idx")
            .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS runs_principal_created_idx")
            .await?;
        if m.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared("DROP INDEX IF EXISTS run_events_tx_id_idx")
                .await?;
            db.execute_unprepared("ALTER TABLE run_events DROP COLUMN IF EXISTS tx")
                .await?;
        }
        Ok(())
    }
}
