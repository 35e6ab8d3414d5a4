//! Guilds set up with `facteurctl guild setup`: each set-up bumps `generation`; the
//! discord-adapter registers the catalog there and reports the generation it registered.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000004_guilds"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("discord_guilds")
                .if_not_exists()
                .col(string_len("guild_id", 32).primary_key())
                .col(big_integer("generation"))
                .col(string_len("requested_by", 200))
                .col(timestamp_with_time_zone("requested_at"))
                .col(big_integer("registered_generation").default(0))
                .col(timestamp_with_time_zone_null("registered_at"))
                .col(integer("registered_commands").default(0))
                .col(text("registration_error").default(""))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("discord_guilds").if_exists().to_owned())
            .await
    }
}
