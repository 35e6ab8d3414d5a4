//! Runs, their event history, the dispatch outbox, and the role policies.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000001_runs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("runs")
                .if_not_exists()
                .col(string_len("id", 36).primary_key())
                .col(string_len_uniq("idempotency_key", 200))
                .col(string_len("command", 100))
                .col(string_len("source", 20))
                .col(string_len("status", 20))
                .col(string_len("requester_principal", 100).default(""))
                .col(string_len("requester_user_id", 32).default(""))
                .col(string_len("guild_id", 32).default(""))
                .col(string_len("channel_id", 32).default(""))
                .col(string_len("requester_name", 100).default(""))
                .col(string_len("namespace", 63))
                .col(string_len("workflow_template", 253))
                .col(string_len("service_account", 253).default(""))
                .col(string_len_uniq("workflow_name", 253))
                .col(string_len("workflow_uid", 64).default(""))
                .col(text("parameters"))
                .col(text("message").default(""))
                .col(string_len("progress", 32).default(""))
                .col(string_len("workflow_phase", 20).default(""))
                .col(string_len_null("parent_run_id", 36))
                .col(integer("attempts").default(0))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .col(timestamp_with_time_zone_null("started_at"))
                .col(timestamp_with_time_zone_null("finished_at"))
                .col(timestamp_with_time_zone_null("cancel_requested_at"))
                .col(string_len("cancel_mode", 10).default(""))
                .col(string_len("trace_parent", 100).default(""))
                .to_owned(),
        )
        .await?;
        for (name, cols) in [
            ("runs_status_updated_idx", &["status", "updated_at"][..]),
            ("runs_created_idx", &["created_at"][..]),
            ("runs_command_created_idx", &["command", "created_at"][..]),
            (
                "runs_requester_created_idx",
                &["requester_user_id", "created_at"][..],
            ),
            ("runs_guild_created_idx", &["guild_id", "created_at"][..]),
        ] {
            let mut idx = Index::create()
                .name(name)
                .table("runs")
                .if_not_exists()
                .to_owned();
            for c in cols {
                idx.col(*c);
            }
            m.create_index(idx).await?;
        }

        m.create_table(
            Table::create()
                .table("run_events")
                .if_not_exists()
                .col(big_pk_auto("id"))
                .col(string_len("run_id", 36))
                .col(big_integer("sequence"))
                .col(string_len("actor", 200))
                .col(string_len("kind", 40))
                .col(string_len("from_status", 20))
                .col(string_len("to_status", 20))
                .col(text("payload"))
                .col(timestamp_with_time_zone("created_at"))
                .foreign_key(
                    ForeignKey::create()
                        .name("run_events_run_fk")
                        .from("run_events", "run_id")
                        .to("runs", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("run_events_run_sequence_unique")
                .table("run_events")
                .col("run_id")
                .col("sequence")
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table("dispatches")
                .if_not_exists()
                .col(string_len("id", 36).primary_key())
                .col(string_len("run_id", 36))
                .col(string_len("kind", 20))
                .col(string_len("state", 20))
                .col(integer("attempts").default(0))
                .col(timestamp_with_time_zone("available_at"))
                .col(string_len("lease_owner", 200).default(""))
                .col(string_len("lease_token", 64).default(""))
                .col(timestamp_with_time_zone_null("lease_expires_at"))
                .col(text("last_error").default(""))
                .col(timestamp_with_time_zone_null("dead_lettered_at"))
                .col(timestamp_with_time_zone("created_at"))
                .col(timestamp_with_time_zone("updated_at"))
                .foreign_key(
                    ForeignKey::create()
                        .name("dispatches_run_fk")
                        .from("dispatches", "run_id")
                        .to("runs", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        for (name, cols) in [
            (
                "dispatches_state_available_idx",
                &["state", "available_at"][..],
            ),
            ("dispatches_run_idx", &["run_id"][..]),
        ] {
            let mut idx = Index::create()
                .name(name)
                .table("dispatches")
                .if_not_exists()
                .to_owned();
            for c in cols {
                idx.col(*c);
            }
            m.create_index(idx).await?;
        }

        m.create_table(
            Table::create()
                .table("guild_policies")
                .if_not_exists()
                .col(string_len("guild_id", 32).primary_key())
                .col(string_len("default_policy", 10))
                .col(big_integer("version").default(0))
                .col(string_len("updated_by", 200).default(""))
                .col(timestamp_with_time_zone("updated_at"))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table("role_policies")
                .if_not_exists()
                .col(string_len("guild_id", 32))
                .col(string_len("command", 100))
                .col(text("role_ids"))
                .primary_key(Index::create().col("guild_id").col("command"))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "role_policies",
            "guild_policies",
            "dispatches",
            "run_events",
            "runs",
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
