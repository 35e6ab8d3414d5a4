//! Guilds set up for facteur (`AdminService.SetupGuild`). A set-up seeds the guild's own role
//! policy and bumps the guild's `generation`; the discord-adapter registers the catalog there
//! and reports the generation it registered, so `ListGuilds` tells an operator when it is done.

use super::Store;
use super::entities::discord_guilds;

use crate::domain::policy::{DefaultPolicy, GuildPolicy};
use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use std::collections::BTreeMap;

/// A guild set up for facteur, and where its command registration stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Guild {
    /// Guild id.
    pub guild_id: String,
    /// Bumped by every set-up.
    pub generation: i64,
    /// Who last set it up.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// The generation last registered with success (0: never).
    pub registered_generation: i64,
    /// When.
    pub registered_at: Option<DateTime<Utc>>,
    /// Commands registered by the last success.
    pub registered_commands: i32,
    /// Why the last attempt failed (empty after a success).
    pub registration_error: String,
}

impl Guild {
    /// Whether the latest set-up still waits for its registration.
    pub fn pending(&self) -> bool {
        self.registered_generation < self.generation
    }
}

impl From<discord_guilds::Model> for Guild {
    fn from(m: discord_guilds::Model) -> Guild {
        Guild {
            guild_id: m.guild_id,
            generation: m.generation,
            requested_by: m.requested_by,
            requested_at: m.requested_at,
            registered_generation: m.registered_generation,
            registered_at: m.registered_at,
            registered_commands: m.registered_commands,
            registration_error: m.registration_error,
        }
    }
}

/// What a set-up did.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The guild after set-up.
    pub guild: Guild,
    /// Its policy after set-up.
    pub policy: GuildPolicy,
    /// Whether the policy was written by this set-up.
    pub policy_seeded: bool,
}

impl Store {
    /// Sets `guild_id` up: gives it its own policy from `role_map` and `default` unless it has
    /// one (or `reseed`), and asks for the catalog's registration there (a new generation).
    pub async fn setup_guild(
        &self,
        guild_id: &str,
        actor: &str,
        role_map: &BTreeMap<String, Vec<String>>,
        default: DefaultPolicy,
        reseed: bool,
    ) -> Result<Setup> {
        let stored = self.stored_policy(guild_id).await?;
        let (policy, policy_seeded) = match stored {
            Some(p) if !reseed => (p, false),
            stored => {
                let wanted = GuildPolicy {
                    guild_id: guild_id.to_string(),
                    commands: role_map.clone(),
                    default,
                    version: 0,
                    updated_by: String::new(),
                    updated_at: None,
                    quotas: BTreeMap::new(),
                };
                let expected = stored.map_or(0, |p| p.version);
                (self.set_policy(&wanted, Some(expected), actor).await?, true)
            }
        };
        use discord_guilds::Column as C;
        let row = discord_guilds::ActiveModel {
            guild_id: Set(guild_id.to_string()),
            generation: Set(1),
            requested_by: Set(actor.to_string()),
            requested_at: Set(Utc::now()),
            registered_generation: Set(0),
            registered_at: Set(None),
            registered_commands: Set(0),
            registration_error: Set(String::new()),
        };
        // A new set-up of a known guild asks for a new registration: the next generation.
        let upsert = OnConflict::column(C::GuildId)
            .value(
                C::Generation,
                Expr::col((discord_guilds::Entity, C::Generation)).add(1),
            )
            .update_columns([C::RequestedBy, C::RequestedAt, C::RegistrationError])
            .to_owned();
        let guild: Guild = discord_guilds::Entity::insert(row)
            .on_conflict(upsert)
            .exec_with_returning(&self.db)
            .await?
            .into();
        Self::audit_on(
            &self.db,
            guild_id,
            actor,
            "guild_setup",
            "",
            serde_json::json!({"generation": guild.generation, "policy_seeded": policy_seeded}),
        )
        .await?;
        Ok(Setup {
            guild,
            policy,
            policy_seeded,
        })
    }

    /// Guilds set up, by id (`only`: that one).
    pub async fn guilds(&self, only: Option<&str>) -> Result<Vec<Guild>> {
        let mut q = discord_guilds::Entity::find().order_by_asc(discord_guilds::Column::GuildId);
        if let Some(g) = only {
            q = q.filter(discord_guilds::Column::GuildId.eq(g));
        }
        Ok(q.all(&self.db)
            .await?
            .into_iter()
            .map(Guild::from)
            .collect())
    }

    /// Records the outcome of registering `generation` in a guild. A success never moves the
    /// registered generation back; a failure is kept only for the latest generation.
    pub async fn report_guild_registration(
        &self,
        guild_id: &str,
        generation: i64,
        commands: u32,
        error: &str,
    ) -> Result<Guild> {
        use discord_guilds::Column as C;
        let q = discord_guilds::Entity::update_many().filter(C::GuildId.eq(guild_id));
        let q = if error.is_empty() {
            // A success never moves the registered generation back.
            q.col_expr(C::RegisteredGeneration, Expr::value(generation))
                .col_expr(C::RegisteredAt, Expr::value(Some(Utc::now())))
                .col_expr(C::RegisteredCommands, Expr::value(commands as i32))
                .col_expr(C::RegistrationError, Expr::value(""))
                .filter(C::RegisteredGeneration.lt(generation))
                .filter(C::Generation.gte(generation))
        } else {
            // A failure is kept only for the latest generation.
            q.col_expr(C::RegistrationError, Expr::value(error))
                .filter(C::Generation.eq(generation))
                .filter(C::RegisteredGeneration.lt(generation))
        };
        q.exec(&self.db).await?;
        self.guilds(Some(guild_id))
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound(format!("guild `{guild_id}` was never set up")))
    }
}
