//! Quotas per guild and command (part of a guild's policy, changed live with `SetPolicy`):
//! at most so many runs at once, at most so many per rolling hour. A missing row falls back
//! to the command's configured quota.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000009_command_quotas"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("command_quotas")
                .if_not_exists()
                // "" for the configuration-wide policy, as in role_policies.
                .col(string_len("guild_id", 32))
                .col(string_len("command", 64))
                .col(integer_null("max_concurrent"))
                .col(integer_null("max_per_hour"))
                .primary_key(Index::create().col("guild_id").col("command"))
                .to_owned(),
        )
        .await?;
        // What the quota check counts: a guild's runs of a command, by state and by age.
        m.create_index(
            Index::create()
                .name("runs_guild_command_created")
                .table("runs")
                .col("guild_id")
                .col("command")
                .col("created_at")
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("runs_guild_command_created")
                .table("runs")
                .to_owned(),
        )
        .await?;
        m.drop_table(Table::drop().table("command_quotas").if_exists().to_owned())
            .await
    }
}
