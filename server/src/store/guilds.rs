//! Guilds set up for facteur (`AdminService.SetupGuild`). A set-up seeds the guild's own role
//! policy and bumps the guild's `generation`; the discord-adapter registers the catalog there
//! and reports the generation it registered, so `ListGuilds` tells an operator when it is done.

use super::errors;
use super::{Store, portable as stmt};
use crate::domain::policy::{DefaultPolicy, GuildPolicy};
use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, QueryResult};
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

    fn from_row(r: &QueryResult) -> Result<Guild> {
        let e = errors::db;
        Ok(Guild {
            guild_id: r.try_get("", "guild_id").map_err(e)?,
            generation: r.try_get("", "generation").map_err(e)?,
            requested_by: r.try_get("", "requested_by").map_err(e)?,
            requested_at: r.try_get("", "requested_at").map_err(e)?,
            registered_generation: r.try_get("", "registered_generation").map_err(e)?,
            registered_at: r.try_get("", "registered_at").map_err(e)?,
            registered_commands: r.try_get("", "registered_commands").map_err(e)?,
            registration_error: r.try_get("", "registration_error").map_err(e)?,
        })
    }
}

const COLUMNS: &str = "guild_id, generation, requested_by, requested_at, registered_generation, registered_at, registered_commands, registration_error";

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
                };
                let expected = stored.map_or(0, |p| p.version);
                (self.set_policy(&wanted, Some(expected), actor).await?, true)
            }
        };
        let b = self.db.get_database_backend();
        let now = Utc::now();
        let row = self
            .db
            .query_one_raw(stmt(
                b,
                &format!(
                    "INSERT INTO discord_guilds (guild_id, generation, requested_by, requested_at, registered_generation, registered_commands, registration_error) \
                     VALUES ($1, 1, $2, $3, 0, 0, '') \
                     ON CONFLICT (guild_id) DO UPDATE SET generation = discord_guilds.generation + 1, \
                     requested_by = excluded.requested_by, requested_at = excluded.requested_at, registration_error = '' \
                     RETURNING {COLUMNS}"
                ),
                vec![guild_id.into(), actor.into(), now.into()],
            ))
            .await
            .map_err(errors::db)?
            .ok_or_else(|| Error::Internal("set-up returned no row".into()))?;
        let guild = Guild::from_row(&row)?;
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
        let b = self.db.get_database_backend();
        let (sql, values) = match only {
            Some(g) => (
                format!("SELECT {COLUMNS} FROM discord_guilds WHERE guild_id = $1"),
                vec![g.into()],
            ),
            None => (
                format!("SELECT {COLUMNS} FROM discord_guilds ORDER BY guild_id"),
                vec![],
            ),
        };
        let rows = self
            .db
            .query_all_raw(stmt(b, &sql, values))
            .await
            .map_err(errors::db)?;
        rows.iter().map(Guild::from_row).collect()
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
        let b = self.db.get_database_backend();
        let changed = if error.is_empty() {
            self.db
                .execute_raw(stmt(
                    b,
                    "UPDATE discord_guilds SET registered_generation = $1, registered_at = $2, registered_commands = $3, registration_error = '' \
                     WHERE guild_id = $4 AND registered_generation < $5 AND generation >= $6",
                    vec![
                        generation.into(),
                        Utc::now().into(),
                        (commands as i32).into(),
                        guild_id.into(),
                        generation.into(),
                        generation.into(),
                    ],
                ))
                .await
        } else {
            self.db
                .execute_raw(stmt(
                    b,
                    "UPDATE discord_guilds SET registration_error = $1 WHERE guild_id = $2 AND generation = $3 AND registered_generation < $4",
                    vec![
                        error.into(),
                        guild_id.into(),
                        generation.into(),
                        generation.into(),
                    ],
                ))
                .await
        };
        changed.map_err(errors::db)?;
        self.guilds(Some(guild_id))
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound(format!("guild `{guild_id}` was never set up")))
    }
}
