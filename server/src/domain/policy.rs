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
    /// Command → its quota in this guild (over the configured one).
    pub quotas: BTreeMap<String, Quota>,
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
            return Err(Error::invalid(
                "guild_id",
                format!("guild_id `{}` is not a snowflake", self.guild_id),
            ));
        }
        let map = self.commands.clone();
        let problems = facteur_config::validate_role_map(&map);
        if problems.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = problems
            .iter()
            .map(|(k, _)| k.replacen("role_map.", "", 1))
            .collect();
        let text: Vec<String> = keys
            .iter()
            .zip(&problems)
            .map(|(k, (_, m))| format!("{k}: {m}"))
            .collect();
        Err(Error::invalid(keys[0].clone(), text.join("; ")))
    }
}

/// How many runs of one command a guild may have: at once, and per rolling hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Runs not yet ended (queued to running).
    pub max_concurrent: Option<u32>,
    /// Runs started in the last hour.
    pub max_per_hour: Option<u32>,
}

impl Quota {
    /// No limit at all.
    pub fn is_unlimited(&self) -> bool {
        self.max_concurrent.is_none() && self.max_per_hour.is_none()
    }
}

/// A guild's runs of one command, as a quota counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Not yet ended.
    pub active: u64,
    /// Started within the last hour.
    pub last_hour: u64,
    /// The oldest of those (the hour frees up an hour after it).
    pub oldest_in_hour: Option<DateTime<Utc>>,
}

/// Which limit a refused run hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_concurrent`.
    Concurrent,
    /// `max_per_hour`.
    PerHour,
}

impl Limit {
    /// Its name in metrics and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Concurrent => "max_concurrent",
            Limit::PerHour => "max_per_hour",
        }
    }
}

/// Whether one more run of `command` fits `quota` given `usage`; a refusal names the limit and
/// says when it frees up (a Discord timestamp, shown in the reader's time zone).
pub fn check_quota(
    command: &str,
    quota: &Quota,
    usage: &Usage,
    now: DateTime<Utc>,
) -> std::result::Result<(), (Limit, String)> {
    if let Some(max) = quota.max_concurrent
        && usage.active >= u64::from(max)
    {
        return Err((
            Limit::Concurrent,
            format!(
                "/{command} is at its limit of {max} concurrent run{} in this server; it frees up when one of them ends",
                if max == 1 { "" } else { "s" }
            ),
        ));
    }
    if let Some(max) = quota.max_per_hour
        && usage.last_hour >= u64::from(max)
    {
        let frees = usage.oldest_in_hour.unwrap_or(now) + chrono::Duration::hours(1);
        return Err((
            Limit::PerHour,
            format!(
                "/{command} reached its limit of {max} run{} per hour in this server; the next one is possible <t:{}:R>",
                if max == 1 { "" } else { "s" },
                frees.timestamp()
            ),
        ));
    }
    Ok(())
}

/// Builds a map from (command, roles) pairs, rejecting a bad name or a command listed twice.
pub fn commands_from(pairs: Vec<(String, Vec<String>)>) -> Result<BTreeMap<String, Vec<String>>> {
    by_command(pairs, "commands", "")
}

/// Builds a policy's quotas from (command, quota) pairs, rejecting a bad name or a command
/// listed twice.
pub fn quotas_from(pairs: Vec<(String, Quota)>) -> Result<BTreeMap<String, Quota>> {
    by_command(pairs, "policy.quotas", "quotas: ")
}

/// A map by command name; `field` names the list in errors, `lead` starts their message.
fn by_command<T>(pairs: Vec<(String, T)>, field: &str, lead: &str) -> Result<BTreeMap<String, T>> {
    let mut map = BTreeMap::new();
    for (command, value) in pairs {
        if !is_command_name(&command) {
            return Err(Error::invalid(
                field,
                format!("{lead}command name `{command}` must match ^[a-z0-9:_-]+$"),
            ));
        }
        if map.insert(command.clone(), value).is_some() {
            return Err(Error::invalid(
                field,
                format!("{lead}command `{command}` is listed twice"),
            ));
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
            quotas: BTreeMap::new(),
        }
    }

    #[test]
    fn quotas_name_the_limit_and_when_it_frees_up() {
        let now = Utc::now();
        let q = Quota {
            max_concurrent: Some(2),
            max_per_hour: Some(3),
        };
        let fits = Usage {
            active: 1,
            last_hour: 2,
            oldest_in_hour: Some(now),
        };
        assert_eq!(check_quota("deploy", &q, &fits, now), Ok(()));
        let busy = Usage { active: 2, ..fits };
        let (limit, m) = check_quota("deploy", &q, &busy, now).expect_err("at the limit");
        assert_eq!(limit, Limit::Concurrent);
        assert!(m.contains("limit of 2 concurrent runs"), "{m}");
        let oldest = now - chrono::Duration::minutes(50);
        let hour = Usage {
            active: 0,
            last_hour: 3,
            oldest_in_hour: Some(oldest),
        };
        let (limit, m) = check_quota("deploy", &q, &hour, now).expect_err("hour used up");
        assert_eq!(limit, Limit::PerHour);
        let frees = (oldest + chrono::Duration::hours(1)).timestamp();
        assert!(m.ends_with(&format!("<t:{frees}:R>")), "{m}");
        assert_eq!(
            check_quota("deploy", &Quota::default(), &hour, now),
            Ok(()),
            "no quota, no limit"
        );
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
        let Err(Error::InvalidArgument { message: m, .. }) = p.validate() else {
            panic!("must fail")
        };
        assert!(m.contains("Bad Name") && m.contains("snowflake"), "{m}");
        assert!(commands_from(vec![("a".into(), vec![]), ("a".into(), vec![])]).is_err());
    }
}
