//! sea-orm entities of the facteur tables (created by `facteur-migrations`).
#![allow(missing_docs)] // generated-style entity modules: the columns are documented in the migration

pub mod runs {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "runs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub idempotency_key: String,
        pub command: String,
        pub source: String,
        pub status: String,
        pub requester_principal: String,
        pub requester_user_id: String,
        pub guild_id: String,
        pub channel_id: String,
        pub requester_name: String,
        pub cluster: String,
        pub namespace: String,
        pub workflow_template: String,
        pub service_account: String,
        pub workflow_name: String,
        pub workflow_uid: String,
        pub parameters: String,
        pub message: String,
        pub progress: String,
        pub workflow_phase: String,
        pub parent_run_id: Option<String>,
        pub attempts: i32,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub started_at: Option<DateTimeUtc>,
        pub finished_at: Option<DateTimeUtc>,
        pub cancel_requested_at: Option<DateTimeUtc>,
        pub cancel_mode: String,
        pub trace_parent: String,
        pub current_step: String,
        pub failed_step: String,
        pub log_tail: String,
        pub approval: String,
        pub decisions: String,
        pub number: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod run_events {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "run_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub run_id: String,
        pub sequence: i64,
        pub actor: String,
        pub kind: String,
        pub from_status: String,
        pub to_status: String,
        pub payload: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod dispatches {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "dispatches")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub run_id: String,
        pub kind: String,
        pub state: String,
        pub attempts: i32,
        pub available_at: DateTimeUtc,
        pub lease_owner: String,
        pub lease_token: String,
        pub lease_expires_at: Option<DateTimeUtc>,
        pub last_error: String,
        pub dead_lettered_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit_events {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub guild_id: String,
        pub actor: String,
        pub kind: String,
        pub subject: String,
        pub payload: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod guild_policies {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "guild_policies")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub guild_id: String,
        pub default_policy: String,
        pub version: i64,
        pub updated_by: String,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod role_policies {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "role_policies")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub guild_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub command: String,
        pub role_ids: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod discord_guilds {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "discord_guilds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub guild_id: String,
        pub generation: i64,
        pub requested_by: String,
        pub requested_at: DateTimeUtc,
        pub registered_generation: i64,
        pub registered_at: Option<DateTimeUtc>,
        pub registered_commands: i32,
        pub registration_error: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod command_registrations {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "command_registrations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub scope: String,
        pub catalog_version: i64,
        pub commands: i32,
        pub error: String,
        pub discord_code: i32,
        pub failures: i32,
        pub registered_at: Option<DateTimeUtc>,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod adapters {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "adapters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub cluster: String,
        pub namespaces: String,
        pub max_in_flight: i32,
        pub connected_at: DateTimeUtc,
        pub seen_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod template_commands {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "template_commands")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub cluster: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub namespace: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub command: String,
        pub definition: String,
        pub reported_by: String,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod command_quotas {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "command_quotas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub guild_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub command: String,
        pub max_concurrent: Option<i32>,
        pub max_per_hour: Option<i32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
