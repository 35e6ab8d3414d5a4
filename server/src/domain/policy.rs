//! Role policy: who may run which command in a guild. Keyed on role ids (snowflakes), never
//! names; the server is the only authority (Discord's own command permissions are a UX filter).

use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use facteur_config::{is_command_name, is_snowflake};
use std::collections::BTreeMap;

/// What a command without an entry allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Everyone.
    Allow,
    /// No one.
    Deny,
}

impl DefaultPolicy {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Deny => "deny",
        }
    }
    /// From the stored name (anything but `deny` allows, as the configuration validates it).
    pub fn parse(s: &str) -> DefaultPolicy {
        if s == "deny" {
            DefaultPolicy::Deny
        } else {
            DefaultPolicy::Allow
        }
    }
}

/// The policy of one guild (`""`: the configuration-wide default that guilds inherit).
#[derive(Clone, Debug, PartialEq)]
pub struct GuildPolicy {
    /// Guild id.
    pub guild_id: String,
    /// Command → role ids, any of which allows it.
    pub commands: BTreeMap<String, Vec<String>>,
    /// For commands without an entry.
    pub default: DefaultPolicy,
    /// Bumped by each change (0: never stored for this guild; inherited).
    pub version: i64,
    /// Who changed it last.
    pub updated_by: String,
    /// When.
    pub updated_at: Option<DateTime<Utc>>,
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allowed,
    /// Refused, with the reason and the roles that would allow it.
    Denied {
        /// Human-readable reason.
        reason: String,
        /// Role ids that would allow it (empty: none would).
        roles: Vec<String>,
    },
}

impl GuildPolicy {
    /// May a member with `member_roles` run `command`?
    pub fn decide(&self, command: &str, member_roles: &[String]) -> Decision {
        match self.commands.get(command) {
            Some(allowed) if allowed.iter().any(|r| member_roles.contains(r)) => Decision::Allowed,
            Some(allowed) => Decision::Denied {
                reason: format!(
                    "/{command} needs one of the roles {}",
                    allowed
                        .iter()
                        .map(|r| format!("<@&{r}>"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                roles: allowed.clone(),
            },
            None if self.default == DefaultPolicy::Allow => Decision::Allowed,
            None => Decision::Denied {
                reason: format!(
                    "/{command} has no role policy in this server and the default policy denies it"
                ),
                roles: vec![],
            },
        }
    }

    /// Checks the rules of the role-map schema; names every problem.
    pub fn validate(&self) -> Result<()> {
        if !self.guild_id.is_empty() && !is_snowflake(&self.guild_id) {
            return Err(Error::InvalidArgument(format!(
                "guild_id `{}` is not a snowflake",
                self.guild_id
            )));
        }
        let map = self.commands.clone();
        let problems = facteur_config::validate_role_map(&map);
        if problems.is_empty() {
            return Ok(());
        }
        let text: Vec<String> = problems
            .into_iter()
            .map(|(k, m)| format!("{}: {m}", k.replacen("role_map.", "", 1)))
            .collect();
        Err(Error::InvalidArgument(text.join("; ")))
    }
}

/// Builds a map from (command, roles) pairs, rejecting a command listed twice.
pub fn commands_from(pairs: Vec<(String, Vec<String>)>) -> Result<BTreeMap<String, Vec<String>>> {
    let mut map = BTreeMap::new();
    for (command, roles) in pairs {
        if !is_command_name(&command) {
            return Err(Error::InvalidArgument(format!(
                "command name `{command}` must match ^[a-z0-9:_-]+$"
            )));
        }
        if map.insert(command.clone(), roles).is_some() {
            return Err(Error::InvalidArgument(format!(
                "command `{command}` is listed twice"
            )));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default: DefaultPolicy) -> GuildPolicy {
        GuildPolicy {
            guild_id: "123456789012345678".into(),
            commands: [(
                "deploy".to_string(),
                vec![
                    "111111111111111111".to_string(),
                    "222222222222222222".to_string(),
                ],
            )]
            .into(),
            default,
            version: 1,
            updated_by: "test".into(),
            updated_at: None,
        }
    }

    #[test]
    fn any_listed_role_allows() {
        let p = policy(DefaultPolicy::Deny);
        assert_eq!(
            p.decide("deploy", &["222222222222222222".into()]),
            Decision::Allowed
        );
        match p.decide("deploy", &["333333333333333333".into()]) {
            Decision::Denied { reason, roles } => {
                assert!(reason.contains("<@&111111111111111111>"), "{reason}");
                assert_eq!(roles.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_decides_unlisted_commands() {
        assert_eq!(
            policy(DefaultPolicy::Allow).decide("status", &[]),
            Decision::Allowed
        );
        assert!(
            matches!(policy(DefaultPolicy::Deny).decide("status", &[]), Decision::Denied { roles, .. } if roles.is_empty())
        );
    }

    #[test]
    fn validation_follows_the_schema() {
        let mut p = policy(DefaultPolicy::Allow);
        assert!(p.validate().is_ok());
        p.commands.insert("Bad Name".into(), vec!["1".into()]);
        let Err(Error::InvalidArgument(m)) = p.validate() else {
            panic!("must fail")
        };
        assert!(m.contains("Bad Name") && m.contains("snowflake"), "{m}");
        assert!(commands_from(vec![("a".into(), vec![]), ("a".into(), vec![])]).is_err());
    }
}
