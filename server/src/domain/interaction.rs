//! A Discord interaction as the server sees it, checked before anything is stored or keyed on
//! it. Built by the edges (`CommandService`, `POST /events`); read by the services.

use crate::domain::input::storable;
use crate::domain::run::Requester;
use crate::domain::{Error, Result};
use facteur_config::is_snowflake;

/// Widest accepted values: the columns and session fields they go to, with room for what
/// Discord sends (names ≤ 32 characters, tokens of a few hundred, locales like `en-US`).
const MAX_INTERACTION_ID: usize = 100;
const MAX_USER_NAME: usize = 100;
const MAX_TOKEN: usize = 1000;
const MAX_LOCALE: usize = 16;

/// A Discord interaction as the server sees it (from `CommandService` or `POST /events`).
#[derive(Clone, Debug, Default)]
pub struct Interaction {
    /// Interaction id: the idempotency key of what it starts.
    pub interaction_id: String,
    /// Application id.
    pub application_id: String,
    /// Interaction token (a secret).
    pub token: String,
    /// Guild.
    pub guild_id: String,
    /// Channel.
    pub channel_id: String,
    /// Member.
    pub user_id: String,
    /// Member's display name.
    pub user_name: String,
    /// Member's roles.
    pub role_ids: Vec<String>,
    /// Locale.
    pub locale: String,
    /// Where the field names of errors come from (`context.` for gRPC).
    pub field_prefix: &'static str,
}

impl Interaction {
    /// Checks everything the server will store or key on: INVALID_ARGUMENT naming the field.
    pub fn validate(self) -> Result<Self> {
        let f = |name: &str| format!("{}{name}", self.field_prefix);
        if self.interaction_id.is_empty() {
            return Err(Error::invalid(
                f("interaction_id"),
                format!("{} is required", f("interaction_id")),
            ));
        }
        storable(
            &f("interaction_id"),
            &self.interaction_id,
            MAX_INTERACTION_ID,
        )?;
        if !is_snowflake(&self.guild_id) {
            return Err(Error::invalid(
                f("guild_id"),
                format!(
                    "{} must be a guild snowflake: commands run in guilds only",
                    f("guild_id")
                ),
            ));
        }
        if !is_snowflake(&self.user_id) {
            return Err(Error::invalid(
                f("user_id"),
                format!("{} must be a snowflake", f("user_id")),
            ));
        }
        for (name, v) in [
            ("channel_id", &self.channel_id),
            ("application_id", &self.application_id),
        ] {
            if !v.is_empty() && !is_snowflake(v) {
                return Err(Error::invalid(
                    f(name),
                    format!(
                        "{} must be a snowflake (got `{}`)",
                        f(name),
                        v.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
        for (i, r) in self.role_ids.iter().enumerate() {
            if !is_snowflake(r) {
                return Err(Error::invalid(
                    format!("{}[{i}]", f("role_ids")),
                    format!("{}[{i}] must be a role snowflake", f("role_ids")),
                ));
            }
        }
        storable(&f("user_name"), &self.user_name, MAX_USER_NAME)?;
        storable(&f("token"), &self.token, MAX_TOKEN)?;
        storable(&f("locale"), &self.locale, MAX_LOCALE)?;
        Ok(self)
    }

    /// The requester of what it starts.
    pub fn requester(&self) -> Requester {
        Requester {
            principal: "discord".into(),
            user_id: self.user_id.clone(),
            guild_id: self.guild_id.clone(),
            channel_id: self.channel_id.clone(),
            display_name: self.user_name.clone(),
        }
    }

    /// The idempotency key of what it starts.
    pub fn key(&self) -> String {
        format!("discord:{}", self.interaction_id)
    }
}
