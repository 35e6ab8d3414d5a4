//! Schema migrations of the facteur control plane, for Postgres and SQLite alike.
//!
//! [`migrate`] applies every pending migration. On Postgres it first takes a transaction-scoped
//! advisory lock, so replicas starting together apply them once, one after the other.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement, TransactionTrait,
};

mod m20261123_000001_runs;
mod m20261123_000002_codex_kb;
mod m20261123_000003_audit;
mod m20261123_000004_guilds;
mod m20261203_000005_widen_columns;
mod m20261204_000006_adapters;
mod m20261205_000007_run_steps;
mod m20261205_000008_template_commands;
mod m20261205_000009_command_quotas;
mod m20261207_000010_feed_and_retention;
mod m20261207_000011_command_registrations;
mod m20261207_000012_run_decisions;
mod m20261207_000013_run_numbers;
mod m20261207_000014_clusters;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_runs::Migration),
            Box::new(m20261123_000002_codex_kb::Migration),
            Box::new(m20261123_000003_audit::Migration),
            Box::new(m20261123_000004_guilds::Migration),
            Box::new(m20261203_000005_widen_columns::Migration),
            Box::new(m20261204_000006_adapters::Migration),
            Box::new(m20261205_000007_run_steps::Migration),
            Box::new(m20261205_000008_template_commands::Migration),
            Box::new(m20261205_000009_command_quotas::Migration),
            Box::new(m20261207_000010_feed_and_retention::Migration),
            Box::new(m20261207_000011_command_registrations::Migration),
            Box::new(m20261207_000012_run_decisions::Migration),
            Box::new(m20261207_000013_run_numbers::Migration),
            Box::new(m20261207_000014_clusters::Migration),
        ]
    }
}

/// Arbitrary but fixed key of the migration advisory lock ("facteur" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x0066_6163_7465_7572;

/// Whether the database holds exactly this build's migrations, by one query (none of the
/// migrator's table checks, no lock): what a restart finds nearly always.
async fn current(db: &DatabaseConnection) -> bool {
    let Ok(rows) = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await
    else {
        // No table yet: a fresh database.
        return false;
    };
    let mut applied: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String>("", "version").ok())
        .collect();
    let mut known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    applied.sort_unstable();
    known.sort_unstable();
    applied == known
}

/// Applies pending migrations; safe to call from several processes at once. When every one is
/// applied already, one query says so and nothing else runs.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if current(db).await {
        return Ok(());
    }
    match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            // The lock lives on the transaction's connection while the migrator runs on others
            // from the pool; it is released by commit, or by the connection dying.
            let lock = db.begin().await?;
            lock.execute_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [MIGRATION_LOCK_KEY.into()],
            ))
            .await?;
            let result = Migrator::up(db, None).await;
            lock.commit().await?;
            result
        }
        _ => Migrator::up(db, None).await,
    }
}
