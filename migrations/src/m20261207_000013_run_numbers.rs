//! A number per run, unique and increasing in one deployment (`#1234` on cards): a handle people
//! can type, where the first characters of a UUIDv7 (a millisecond timestamp) are shared by every
//! run started within about a minute. Postgres allocates it from a sequence (a `bigserial`
//! column: every insert, the Codex batch's included, gets one); SQLite, whose writes are
//! serialised, takes the highest number plus one inside the inserting transaction. Runs that
//! exist get numbers in the order they were created.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000013_run_numbers"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            DatabaseBackend::Postgres => &[
                // Numbers for existing rows in creation order, then the sequence goes on.
                "CREATE SEQUENCE runs_number_seq AS bigint",
                "ALTER TABLE runs ADD COLUMN number bigint",
                "UPDATE runs SET number = n.rn FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS rn FROM runs) n WHERE runs.id = n.id",
                "SELECT setval('runs_number_seq', COALESCE((SELECT max(number) FROM runs), 0) + 1, false)",
                "ALTER TABLE runs ALTER COLUMN number SET DEFAULT nextval('runs_number_seq')",
                "ALTER TABLE runs ALTER COLUMN number SET NOT NULL",
                "ALTER SEQUENCE runs_number_seq OWNED BY runs.number",
                "CREATE UNIQUE INDEX runs_number ON runs (number)",
            ],
            _ => &[
                "ALTER TABLE runs ADD COLUMN number INTEGER",
                "UPDATE runs SET number = n.rn FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS rn FROM runs) AS n WHERE runs.id = n.id",
                "CREATE UNIQUE INDEX runs_number ON runs (number)",
            ],
        };
        for s in statements {
            db.execute_unprepared(s).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS runs_number")
            .await?;
        m.alter_table(
            Table::alter()
                .table("runs")
                .drop_column("number")
                .to_owned(),
        )
        .await?;
        if db.get_database_backend() == DatabaseBackend::Postgres {
            db.execute_unprepared("DROP SEQUENCE IF EXISTS runs_number_seq")
                .await?;
        }
        Ok(())
    }
}
