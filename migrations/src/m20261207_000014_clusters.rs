//! Several clusters: a run targets a cluster and a namespace, an adapter drives one cluster, and
//! a template is reported with its cluster (the same namespace and name in two clusters are two
//! templates). What exists belongs to the cluster `default`, the one cluster of a deployment
//! without `clusters:`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000014_clusters"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let statements: Vec<String> = match db.get_database_backend() {
            DatabaseBackend::Postgres => [
                "ALTER TABLE runs ADD COLUMN cluster varchar(63) NOT NULL DEFAULT 'default'",
                "ALTER TABLE adapters ADD COLUMN cluster varchar(63) NOT NULL DEFAULT 'default'",
                "ALTER TABLE template_commands ADD COLUMN cluster varchar(63) NOT NULL DEFAULT 'default'",
                "ALTER TABLE template_commands DROP CONSTRAINT template_commands_pkey",
                "ALTER TABLE template_commands ADD PRIMARY KEY (cluster, namespace, name)",
            ]
            .map(String::from)
            .to_vec(),
            // SQLite cannot change a primary key in place: the table is built anew, its rows
            // kept.
            _ => [
                "ALTER TABLE runs ADD COLUMN cluster TEXT NOT NULL DEFAULT 'default'",
                "ALTER TABLE adapters ADD COLUMN cluster TEXT NOT NULL DEFAULT 'default'",
                "ALTER TABLE template_commands RENAME TO template_commands_v13",
                "CREATE TABLE template_commands (cluster TEXT NOT NULL, namespace varchar(253) NOT NULL, \
                 name varchar(253) NOT NULL, command varchar(253) NOT NULL, definition text NOT NULL, \
                 reported_by varchar(240) NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (cluster, namespace, name))",
                "INSERT INTO template_commands (cluster, namespace, name, command, definition, reported_by, updated_at) \
                 SELECT 'default', namespace, name, command, definition, reported_by, updated_at FROM template_commands_v13",
                "DROP TABLE template_commands_v13",
            ]
            .map(String::from)
            .to_vec(),
        };
        for s in statements {
            db.execute_unprepared(&s).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            DatabaseBackend::Postgres => &[
                "DELETE FROM template_commands WHERE cluster <> 'default'",
                "ALTER TABLE template_commands DROP CONSTRAINT template_commands_pkey",
                "ALTER TABLE template_commands ADD PRIMARY KEY (namespace, name)",
                "ALTER TABLE template_commands DROP COLUMN cluster",
                "ALTER TABLE adapters DROP COLUMN cluster",
                "ALTER TABLE runs DROP COLUMN cluster",
            ],
            _ => &[
                "ALTER TABLE template_commands RENAME TO template_commands_v14",
                "CREATE TABLE template_commands (namespace varchar(253) NOT NULL, \
                 name varchar(253) NOT NULL, command varchar(253) NOT NULL, definition text NOT NULL, \
                 reported_by varchar(240) NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (namespace, name))",
                "INSERT INTO template_commands SELECT namespace, name, command, definition, reported_by, updated_at \
                 FROM template_commands_v14 WHERE cluster = 'default'",
                "DROP TABLE template_commands_v14",
                "ALTER TABLE adapters DROP COLUMN cluster",
                "ALTER TABLE runs DROP COLUMN cluster",
            ],
        };
        for s in statements {
            db.execute_unprepared(s).await?;
        }
        Ok(())
    }
}
