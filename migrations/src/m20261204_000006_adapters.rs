//! The argo-adapters a server heard from (`DispatchService.GetAssignment`, a heartbeat), so every
//! replica can tell which namespaces are served and which are not.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000006_adapters"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("adapters")
                .if_not_exists()
                // `<principal>/<adapter id>`, as in dispatches.lease_owner.
                .col(string_len("id", 240).primary_key())
                // JSON array of the namespaces it serves.
                .col(text("namespaces"))
                .col(integer("max_in_flight"))
                .col(timestamp_with_time_zone("connected_at"))
                .col(timestamp_with_time_zone("seen_at"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("adapters").if_exists().to_owned())
            .await
    }
}
