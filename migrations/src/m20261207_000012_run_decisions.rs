//! Every decision taken on a run's suspend steps (JSON: step, approved or rejected, by whom,
//! when, values or reason), kept to the end so that the run's card tells who decided what after
//! the step resumed and after the run ended. Rows written before keep working (empty: none).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000012_run_decisions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("runs")
                .add_column(text("decisions").default("").to_owned())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("runs")
                .drop_column("decisions")
                .to_owned(),
        )
        .await
    }
}
