//! What a run card shows of a Workflow beyond its phase: the step running now, the step that
//! failed, the last lines of that step's log (for commands that opt in), and the suspend step
//! waiting for approval (JSON, with the decision once taken). Empty until an argo-adapter
//! reports them; rows written before keep working unchanged.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000007_run_steps"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            string_len("current_step", 253).default("").to_owned(),
            string_len("failed_step", 253).default("").to_owned(),
            text("log_tail").default("").to_owned(),
            text("approval").default("").to_owned(),
        ] {
            m.alter_table(Table::alter().table("runs").add_column(column).to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in ["current_step", "failed_step", "log_tail", "approval"] {
            m.alter_table(Table::alter().table("runs").drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
