//! WorkflowTemplates labelled `facteur.proompteng.ai/command`, as the argo-adapters report them
//! (`DispatchService.ReportWorkflowTemplates`): every replica builds the same catalog from this
//! table, and a restarted server has them before any adapter reports again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000008_template_commands"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("template_commands")
                .if_not_exists()
                .col(string_len("namespace", 253))
                .col(string_len("name", 253))
                // The label's value: the command name.
                .col(string_len("command", 253))
                // The reported template (facteur_proto WorkflowTemplateCommand as JSON).
                .col(text("definition"))
                // `<principal>/<adapter id>` of the last report.
                .col(string_len("reported_by", 240))
                .col(timestamp_with_time_zone("updated_at"))
                .primary_key(Index::create().col("namespace").col("name"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("template_commands")
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
