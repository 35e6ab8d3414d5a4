//! Role policies: the one in force for a guild, and replacing it (checked by the domain,
//! versioned by the store, logged here).

use crate::domain::Result;
use crate::domain::policy::{DefaultPolicy, GuildPolicy, Quota, commands_from, quotas_from};
use crate::state::AppState;

/// The policy in force for `guild_id`: its own, else the global one (`""`).
pub async fn get(state: &AppState, guild_id: &str) -> Result<GuildPolicy> {
    state.store.policy_for(guild_id).await
}

/// A policy as an admin writes it, before any check.
#[derive(Clone, Debug, Default)]
pub struct PolicyChange {
    /// The guild, or empty for the global policy.
    pub guild_id: String,
    /// (command, roles that may run it), in the order given.
    pub commands: Vec<(String, Vec<String>)>,
    /// (command, quota), in the order given.
    pub quotas: Vec<(String, Quota)>,
    /// The default for commands not listed; `None` keeps the one in force.
    pub default: Option<DefaultPolicy>,
    /// Replace only if the stored version is this one (`None`: whatever it is).
    pub expected_version: Option<i64>,
}

/// Replaces a guild's policy (or the global one) as `actor`: every rule checked before anything
/// is written; a stale `expected_version` is ABORTED and changes nothing.
pub async fn set(state: &AppState, change: PolicyChange, actor: &str) -> Result<GuildPolicy> {
    let commands = commands_from(change.commands)?;
    let quotas = quotas_from(change.quotas)?;
    let default = match change.default {
        Some(d) => d,
        None => state.store.policy_for(&change.guild_id).await?.default,
    };
    let policy = GuildPolicy {
        quotas,
        guild_id: change.guild_id,
        commands,
        default,
        version: 0,
        updated_by: actor.to_string(),
        updated_at: None,
    };
    let stored = state
        .store
        .set_policy(&policy, change.expected_version, actor)
        .await?;
    tracing::info!(guild_id = %stored.guild_id, version = stored.version, principal = %actor, "role policy replaced");
    Ok(stored)
}
