//! Guilds: set-up (the guild recorded, its policy seeded from the role map), the list, and what
//! the discord-adapter reports of each registration of the commands.

use crate::domain::policy::DefaultPolicy;
use crate::domain::{Error, Result};
use crate::metrics::Metric;
use crate::state::AppState;
use crate::store::guilds::{Guild, Setup};

/// Longest error text of a registration kept (Discord's answers are a few hundred characters).
const MAX_REGISTRATION_ERROR: usize = 2000;

/// Sets up `guild_id` (again): bumps its generation so that its commands are registered, and
/// seeds its policy from the configured role map where it has none (or `reseed`). Wakes the
/// guild feeds.
pub async fn setup(state: &AppState, guild_id: &str, actor: &str, reseed: bool) -> Result<Setup> {
    let c = &state.config;
    let setup = state
        .store
        .setup_guild(
            guild_id,
            actor,
            &c.role_map,
            DefaultPolicy::parse(&c.discord.default_policy),
            reseed,
        )
        .await?;
    state.guilds_wake.notify_waiters();
    tracing::info!(
        guild_id,
        generation = setup.guild.generation,
        policy_seeded = setup.policy_seeded,
        by = actor,
        "guild set up"
    );
    Ok(setup)
}

/// Every set-up guild, or the one named.
pub async fn list(state: &AppState, only: Option<&str>) -> Result<Vec<Guild>> {
    state.store.guilds(only).await
}

/// What the discord-adapter says of one registration of the commands.
#[derive(Clone, Debug, Default)]
pub struct RegistrationReport {
    /// The guild registered; empty for the adapter's own scope with no guild (global commands).
    pub guild_id: String,
    /// The set-up generation it registered (from `WatchGuilds`), or 0 for the adapter's own
    /// scope (its configured guild, or global commands).
    pub generation: i64,
    /// The catalog version it registered.
    pub catalog_version: u64,
    /// How many commands it registered.
    pub commands: u32,
    /// Discord's refusal, or empty.
    pub error: String,
    /// Discord's JSON error code, or 0.
    pub discord_code: i32,
}

/// Records a registration: on the set-up guild first (a report naming a guild never set up is
/// refused and records nothing), then as the scope's last registration; a failure is counted
/// and logged. Returns the guild after the report (generation ≥ 1).
pub async fn report_registration(state: &AppState, r: RegistrationReport) -> Result<Option<Guild>> {
    if r.generation < 0 {
        return Err(Error::invalid(
            "generation",
            "generation must be one from WatchGuilds (≥ 1), or 0 for the adapter's own scope",
        ));
    }
    let error: String = r.error.chars().take(MAX_REGISTRATION_ERROR).collect();
    let scope = if r.guild_id.is_empty() {
        "global"
    } else {
        r.guild_id.as_str()
    };
    let guild = if r.generation >= 1 {
        Some(
            state
                .store
                .report_guild_registration(&r.guild_id, r.generation, r.commands, &error)
                .await?,
        )
    } else {
        None
    };
    state
        .store
        .record_registration(
            scope,
            i64::try_from(r.catalog_version).unwrap_or(i64::MAX),
            r.commands,
            &error,
            r.discord_code,
        )
        .await?;
    if error.is_empty() {
        tracing::info!(
            scope,
            generation = r.generation,
            commands = r.commands,
            "discord commands registered"
        );
    } else {
        state.metrics.add(
            Metric::DiscordRegistrationFailures,
            vec![("scope", scope.to_string())],
            1,
        );
        tracing::warn!(scope, generation = r.generation, discord_code = r.discord_code, error = %error, "discord command registration failed");
    }
    Ok(guild)
}
