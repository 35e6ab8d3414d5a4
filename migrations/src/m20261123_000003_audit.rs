//! The audit trail of everything that is not a run's own history: role policy changes and
//! policy denials (who, what, when, details).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000003_audit"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("audit_events")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(string_len("guild_id", 32).default(""))
                .col(string_len("actor", 200))
                .col(string_len("kind", 40))
                .col(string_len("subject", 200).default(""))
                .col(text("payload"))
                .col(timestamp_with_time_zone("created_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("audit_events_guild_created_idx")
                .table("audit_events")
                .col("guild_id")
                .col("created_at")
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("audit_events").if_exists().to_owned())
            .await
    }
}
