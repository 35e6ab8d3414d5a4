//! Role policies and the audit trail. The configuration's `role_map` seeds the global policy
//! (guild `""`) once; `SetPolicy` replaces a guild's policy live (optimistic concurrency on its
//! version), and every change and every denial is written to `audit_events`.

use super::Store;
use super::entities::{audit_events, command_quotas, guild_policies, role_policies, runs};
use super::errors;
use crate::domain::policy::{DefaultPolicy, GuildPolicy, Quota, Usage};
use crate::domain::{Error, Result};
use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use std::collections::BTreeMap;

impl Store {
    /// Writes one audit entry on `c`.
    pub async fn audit_on<C: ConnectionTrait>(
        c: &C,
        guild_id: &str,
        actor: &str,
        kind: &str,
        subject: &str,
        payload: serde_json::Value,
    ) -> Result<()> {
        audit_events::Entity::insert(audit_events::ActiveModel {
            guild_id: Set(guild_id.to_string()),
            actor: Set(actor.to_string()),
            kind: Set(kind.to_string()),
            subject: Set(subject.to_string()),
            payload: Set(payload.to_string()),
            created_at: Set(Utc::now()),
            ..Default::default()
        })
        .exec_without_returning(c)
        .await?;
        Ok(())
    }

    /// Writes one audit entry.
    pub async fn audit(
        &self,
        guild_id: &str,
        actor: &str,
        kind: &str,
        subject: &str,
        payload: serde_json::Value,
    ) -> Result<()> {
        Self::audit_on(&self.db, guild_id, actor, kind, subject, payload).await
    }

    /// Audit entries of a guild, newest first: (actor, kind, subject, payload).
    pub async fn audit_events(
        &self,
        guild_id: &str,
        limit: u64,
    ) -> Result<Vec<(String, String, String, serde_json::Value)>> {
        let rows = audit_events::Entity::find()
            .filter(audit_events::Column::GuildId.eq(guild_id))
            .order_by_desc(audit_events::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let payload = serde_json::from_str(&r.payload).unwrap_or_default();
                (r.actor, r.kind, r.subject, payload)
            })
            .collect())
    }

    /// Seeds the global policy from the configuration, unless one is stored already (a live
    /// `SetPolicy` is never overwritten by a restart).
    pub async fn seed_policy(
        &self,
        role_map: &BTreeMap<String, Vec<String>>,
        default: DefaultPolicy,
    ) -> Result<()> {
        if self.stored_policy("").await?.is_some() {
            return Ok(());
        }
        let p = GuildPolicy {
            guild_id: String::new(),
            commands: role_map.clone(),
            default,
            version: 0,
            updated_by: "configuration".into(),
            updated_at: None,
            quotas: BTreeMap::new(),
        };
        match self.set_policy(&p, Some(0), "configuration").await {
            Ok(_) | Err(Error::FailedPrecondition(_)) => Ok(()), // another replica seeded it first
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn stored_policy(&self, guild_id: &str) -> Result<Option<GuildPolicy>> {
        let Some(head) = guild_policies::Entity::find_by_id(guild_id.to_string())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let rows = role_policies::Entity::find()
            .filter(role_policies::Column::GuildId.eq(guild_id))
            .all(&self.db)
            .await?;
        let mut commands = BTreeMap::new();
        for r in rows {
            commands.insert(
                r.command,
                serde_json::from_str(&r.role_ids)
                    .map_err(|e| Error::Internal(format!("stored role ids: {e}")))?,
            );
        }
        let quotas = command_quotas::Entity::find()
            .filter(command_quotas::Column::GuildId.eq(guild_id))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|q| {
                let limit = |v: Option<i32>| v.map(|n| u32::try_from(n).unwrap_or(0));
                (
                    q.command,
                    Quota {
                        max_concurrent: limit(q.max_concurrent),
                        max_per_hour: limit(q.max_per_hour),
                    },
                )
            })
            .collect();
        Ok(Some(GuildPolicy {
            quotas,
            guild_id: guild_id.to_string(),
            commands,
            default: DefaultPolicy::parse(&head.default_policy),
            version: head.version,
            updated_by: head.updated_by,
            updated_at: Some(head.updated_at),
        }))
    }

    /// The quotas in force for each of `guilds` (its own policy's if it has one, else the global
    /// policy's), in two statements whatever the number of guilds: what `GetStatus` reads for
    /// every guild that ran something in the last hour.
    pub async fn quotas_in_force(
        &self,
        guilds: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<String, Quota>>> {
        let mut wanted: Vec<String> = guilds.to_vec();
        wanted.push(String::new());
        let stored: std::collections::BTreeSet<String> = guild_policies::Entity::find()
            .filter(guild_policies::Column::GuildId.is_in(wanted.clone()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|h| h.guild_id)
            .collect();
        let mut quotas: BTreeMap<String, BTreeMap<String, Quota>> = BTreeMap::new();
        for q in command_quotas::Entity::find()
            .filter(command_quotas::Column::GuildId.is_in(wanted))
            .all(&self.db)
            .await?
        {
            let limit = |v: Option<i32>| v.map(|n| u32::try_from(n).unwrap_or(0));
            quotas.entry(q.guild_id).or_default().insert(
                q.command,
                Quota {
                    max_concurrent: limit(q.max_concurrent),
                    max_per_hour: limit(q.max_per_hour),
                },
            );
        }
        let global = quotas.get("").cloned().unwrap_or_default();
        Ok(guilds
            .iter()
            .map(|g| {
                let own = if stored.contains(g) {
                    quotas.get(g).cloned().unwrap_or_default()
                } else {
                    global.clone()
                };
                (g.clone(), own)
            })
            .collect())
    }

    /// The policy in force for a guild: its own if set, else the global one (version 0).
    pub async fn policy_for(&self, guild_id: &str) -> Result<GuildPolicy> {
        if let Some(p) = self.stored_policy(guild_id).await? {
            return Ok(p);
        }
        let global = self.stored_policy("").await?.unwrap_or(GuildPolicy {
            guild_id: String::new(),
            commands: BTreeMap::new(),
            default: DefaultPolicy::Allow,
            version: 0,
            updated_by: String::new(),
            updated_at: None,
            quotas: BTreeMap::new(),
        });
        Ok(GuildPolicy {
            guild_id: guild_id.to_string(),
            version: 0,
            ..global
        })
    }

    /// Replaces a guild's policy. `expected_version`: fail unless the stored version is this
    /// (0: none stored yet). Audited with the old and the new policy.
    pub async fn set_policy(
        &self,
        p: &GuildPolicy,
        expected_version: Option<i64>,
        actor: &str,
    ) -> Result<GuildPolicy> {
        p.validate()?;
        let before = self.stored_policy(&p.guild_id).await?;
        let current = before.as_ref().map_or(0, |b| b.version);
        if let Some(v) = expected_version
            && v != current
        {
            return Err(Error::FailedPrecondition(format!(
                "policy of guild `{}` is at version {current}, not {v}; read it again",
                p.guild_id
            )));
        }
        let now = Utc::now();
        let txn = self.db.begin().await?;
        // Compare-and-set on the version: concurrent writers cannot both win.
        let changed = if before.is_some() {
            guild_policies::Entity::update_many()
                .col_expr(
                    guild_policies::Column::DefaultPolicy,
                    Expr::value(p.default.as_str()),
                )
                .col_expr(
                    guild_policies::Column::Version,
                    Expr::col(guild_policies::Column::Version).add(1),
                )
                .col_expr(guild_policies::Column::UpdatedBy, Expr::value(actor))
                .col_expr(guild_policies::Column::UpdatedAt, Expr::value(now))
                .filter(guild_policies::Column::GuildId.eq(p.guild_id.as_str()))
                .filter(guild_policies::Column::Version.eq(current))
                .exec(&txn)
                .await?
                .rows_affected
        } else {
            let row = guild_policies::ActiveModel {
                guild_id: Set(p.guild_id.clone()),
                default_policy: Set(p.default.as_str().into()),
                version: Set(1),
                updated_by: Set(actor.to_string()),
                updated_at: Set(now),
            };
            match guild_policies::Entity::insert(row)
                .exec_without_returning(&txn)
                .await
            {
                Ok(n) => n,
                Err(e) if super::is_unique_violation(&e) => 0,
                Err(e) => return Err(errors::db(e)),
            }
        };
        if changed != 1 {
            let _ = txn.rollback().await;
            return Err(Error::FailedPrecondition(format!(
                "policy of guild `{}` changed concurrently; read it again",
                p.guild_id
            )));
        }
        role_policies::Entity::delete_many()
            .filter(role_policies::Column::GuildId.eq(p.guild_id.as_str()))
            .exec(&txn)
            .await?;
        command_quotas::Entity::delete_many()
            .filter(command_quotas::Column::GuildId.eq(p.guild_id.as_str()))
            .exec(&txn)
            .await?;
        for (command, q) in &p.quotas {
            let limit = |v: Option<u32>| v.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
            command_quotas::Entity::insert(command_quotas::ActiveModel {
                guild_id: Set(p.guild_id.clone()),
                command: Set(command.clone()),
                max_concurrent: Set(limit(q.max_concurrent)),
                max_per_hour: Set(limit(q.max_per_hour)),
            })
            .exec_without_returning(&txn)
            .await?;
        }
        for (command, roles) in &p.commands {
            let roles = serde_json::to_string(roles).map_err(|e| Error::Internal(e.to_string()))?;
            role_policies::Entity::insert(role_policies::ActiveModel {
                guild_id: Set(p.guild_id.clone()),
                command: Set(command.clone()),
                role_ids: Set(roles),
            })
            .exec_without_returning(&txn)
            .await?;
        }
        let payload = serde_json::json!({
            "before": before.as_ref().map(|b| serde_json::json!({"commands": b.commands, "default": b.default.as_str(), "version": b.version})),
            "after": {"commands": p.commands, "default": p.default.as_str(), "version": current + 1},
        });
        Self::audit_on(&txn, &p.guild_id, actor, "policy_set", "", payload).await?;
        txn.commit().await?;
        self.policy_for(&p.guild_id).await
    }
}

/// A run as a quota counts it: (status, created).
/// Run states a quota counts as not yet ended.
const ACTIVE: [&str; 4] = ["queued", "dispatching", "submitted", "running"];

/// What starting a run within a quota came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Quoted {
    /// Started (or found, on a replay).
    Started(Box<crate::domain::Run>, bool),
    /// Refused: the limit hit, and the message for the member.
    Refused(crate::domain::policy::Limit, String),
}

impl Store {
    /// A guild's runs of `command`, as a quota counts them, on `c`; the ended runs of the hour
    /// only where `per_hour` asks (a quota of concurrent runs alone reads the active ones, a
    /// bounded set, and never the hour's history).
    async fn usage_on<C: ConnectionTrait>(
        c: &C,
        guild_id: &str,
        command: &str,
        now: chrono::DateTime<Utc>,
        per_hour: bool,
    ) -> Result<Usage> {
        let hour_ago = now - chrono::Duration::hours(1);
        let of = |active| {
            tallies(active, hour_ago)
                .filter(runs::Column::GuildId.eq(guild_id))
                .filter(runs::Column::Command.eq(command))
        };
        let active: Option<Tally> = of(true).into_model().one(c).await?;
        let ended: Option<Tally> = if per_hour {
            of(false).into_model().one(c).await?
        } else {
            None
        };
        Ok(usage(active.as_ref(), ended.as_ref()))
    }

    /// Starts `new` if the quota of its guild and command allows one more, deciding and
    /// inserting in one transaction that holds the quota's lock (two starts cannot both take
    /// the last place, on any replica). A replay of a started key is answered with its run.
    pub async fn create_run_within(
        &self,
        new: crate::domain::NewRun,
        actor: &str,
        quota: &crate::domain::policy::Quota,
    ) -> Result<Quoted> {
        if quota.is_unlimited() {
            let (run, duplicate) = self.create_run(new, actor).await?;
            return Ok(Quoted::Started(Box::new(run), duplicate));
        }
        if let Some(existing) = self.run_by_key(&new.idempotency_key).await? {
            return Ok(Quoted::Started(Box::new(existing), true));
        }
        let (guild, command) = (new.requester.guild_id.clone(), new.command.clone());
        let txn = self.db.begin().await?;
        let b = txn.get_database_backend();
        let lock = if b == sea_orm::DatabaseBackend::Postgres {
            sea_orm::Statement::from_sql_and_values(
                b,
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                [format!("facteur-quota:{guild}/{command}").into()],
            )
        } else {
            // SQLite: take the write lock before reading, as run transactions do.
            sea_orm::Statement::from_string(
                b,
                "UPDATE command_quotas SET guild_id = guild_id WHERE 1 = 0",
            )
        };
        txn.execute_raw(lock).await?;
        let now = Utc::now();
        let usage =
            Self::usage_on(&txn, &guild, &command, now, quota.max_per_hour.is_some()).await?;
        if let Err((limit, message)) =
            crate::domain::policy::check_quota(&command, quota, &usage, now)
        {
            let _ = txn.rollback().await;
            return Ok(Quoted::Refused(limit, message));
        }
        let id = uuid::Uuid::now_v7();
        match super::insert_run(&txn, id, &new, actor, now).await {
            Ok(()) => {}
            Err(super::Inserted::Duplicate(_)) => {
                let _ = txn.rollback().await;
                let (run, duplicate) = self.create_run(new, actor).await?;
                return Ok(Quoted::Started(Box::new(run), duplicate));
            }
            Err(super::Inserted::Failed(e)) => return Err(e),
        }
        txn.commit().await?;
        let run = self
            .get_run(&id.to_string())
            .await?
            .ok_or_else(|| Error::Internal("run vanished after commit".into()))?;
        Ok(Quoted::Started(Box::new(run), false))
    }

    /// Every guild's use of every command that runs now or, for the commands in `hourly` (those
    /// with an hourly limit somewhere), ran in the last hour: (guild, command, usage). The
    /// ended runs of the hour are read for those commands only: at a steady rate of runs they
    /// are thousands of rows, and a quota of concurrent runs alone needs none of them.
    pub async fn quota_usage(
        &self,
        hourly: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<(String, String, Usage)>> {
        let hour_ago = Utc::now() - chrono::Duration::hours(1);
        let of = |active| tallies(active, hour_ago).filter(runs::Column::GuildId.ne(""));
        let mut by: BTreeMap<(String, String), [Option<Tally>; 2]> = BTreeMap::new();
        let mut reads = vec![(0, of(true))];
        if !hourly.is_empty() {
            reads.push((
                1,
                of(false).filter(runs::Column::Command.is_in(hourly.iter().cloned())),
            ));
        }
        for (i, q) in reads {
            let rows: Vec<Tally> = q.into_model().all(&self.db).await?;
            for t in rows {
                let key = (t.guild_id.clone(), t.command.clone());
                by.entry(key).or_default()[i] = Some(t);
            }
        }
        Ok(by
            .into_iter()
            .map(|((g, c), [a, e])| (g, c, usage(a.as_ref(), e.as_ref())))
            .collect())
    }

    /// The commands to which some guild's policy (or the global one) gives an hourly limit.
    pub async fn hourly_limited(&self) -> Result<std::collections::BTreeSet<String>> {
        Ok(command_quotas::Entity::find()
            .filter(command_quotas::Column::MaxPerHour.is_not_null())
            .all(&self.db)
            .await?
            .into_iter()
            .map(|q| q.command)
            .collect())
    }
}

/// One (guild, command)'s runs as a quota counts them, aggregated by the database: how many,
/// how many of them started within the hour, and the oldest of those.
#[derive(Debug, sea_orm::FromQueryResult)]
struct Tally {
    guild_id: String,
    command: String,
    n: i64,
    in_hour: i64,
    oldest: Option<chrono::DateTime<Utc>>,
}

/// [`Tally`] per guild and command of the active runs (`active`), or of the ended ones started
/// within the hour. Two index reads rather than one `status IN … OR created_at > …`, which no
/// index serves and which reads every run of a command (months of them); aggregated where
/// they are read, so no row of the hour's runs leaves the database.
fn tallies(
    active: bool,
    hour_ago: chrono::DateTime<Utc>,
) -> sea_orm::Select<super::entities::runs::Entity> {
    let recent = || Expr::col(runs::Column::CreatedAt).gt(hour_ago);
    let q = runs::Entity::find()
        .select_only()
        .column(runs::Column::GuildId)
        .column(runs::Column::Command)
        .expr_as(Expr::col(runs::Column::Id).count(), "n")
        .expr_as(
            Func::coalesce([
                Expr::from(Func::sum(Expr::case(recent(), 1).finally(0))),
                Expr::val(0),
            ]),
            "in_hour",
        )
        .expr_as(
            Func::min(Expr::case(recent(), Expr::col(runs::Column::CreatedAt))),
            "oldest",
        )
        .group_by(runs::Column::GuildId)
        .group_by(runs::Column::Command);
    if active {
        q.filter(runs::Column::Status.is_in(ACTIVE))
    } else {
        q.filter(runs::Column::Status.is_not_in(ACTIVE))
            .filter(runs::Column::CreatedAt.gt(hour_ago))
    }
}

/// The usage of one guild's command from its two tallies.
fn usage(active: Option<&Tally>, ended: Option<&Tally>) -> Usage {
    let n = |t: Option<&Tally>, f: fn(&Tally) -> i64| u64::try_from(t.map_or(0, f)).unwrap_or(0);
    Usage {
        active: n(active, |t| t.n),
        last_hour: n(active, |t| t.in_hour) + n(ended, |t| t.in_hour),
        oldest_in_hour: [active, ended]
            .into_iter()
            .flatten()
            .filter_map(|t| t.oldest)
            .min(),
    }
}
