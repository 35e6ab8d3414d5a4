//! The outcome of registering the catalog with Discord, per scope (a guild id, or `global`):
//! what the discord-adapters reported after each attempt, so that `facteurctl status` shows a
//! registration Discord refused (its error code and message) for every scope, the adapter's own
//! included, and how many attempts in a row have failed.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000011_command_registrations"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("command_registrations")
                .if_not_exists()
                .col(string_len("scope", 32).primary_key())
                .col(big_integer("catalog_version"))
                .col(integer("commands"))
                .col(text("error"))
                .col(integer("discord_code"))
                .col(integer("failures"))
                .col(timestamp_with_time_zone_null("registered_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table("command_registrations")
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
