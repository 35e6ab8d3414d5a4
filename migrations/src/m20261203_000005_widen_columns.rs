//! Columns too narrow for real data: `runs.requester_name` holds a Codex task's repository (a
//! GitHub `owner/name` can be 140 characters), and `runs.idempotency_key` holds `codex:` and a
//! delivery id of up to 200. Widening a `varchar` keeps every row and every reader (the old
//! service's included) as they are; Postgres does it without rewriting the table. SQLite does
//! not enforce `varchar` widths, so there is nothing to do there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000005_widen_columns"
    }
}

const UP: &[&str] = &[
    "ALTER TABLE runs ALTER COLUMN requester_name TYPE varchar(200)",
    "ALTER TABLE runs ALTER COLUMN idempotency_key TYPE varchar(255)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        if db.get_database_backend() == DatabaseBackend::Postgres {
            for s in UP {
                db.execute_unprepared(s).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        // Narrowing could fail on rows written since; the wider columns stay.
        Ok(())
    }
}
