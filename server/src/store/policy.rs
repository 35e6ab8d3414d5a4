//! Role policies and the audit trail. The configuration's `role_map` seeds the global policy
//! (guild `""`) once; `SetPolicy` replaces a guild's policy live (optimistic concurrency on its
//! version), and every change and every denial is written to `audit_events`.

use super::errors;
use super::{Store, portable as stmt};
use crate::domain::policy::{DefaultPolicy, GuildPolicy};
use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, TransactionTrait};
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
        let b = c.get_database_backend();
        c.execute_raw(stmt(
            b,
            "INSERT INTO audit_events (guild_id, actor, kind, subject, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            vec![guild_id.into(), actor.into(), kind.into(), subject.into(), payload.to_string().into(), Utc::now().into()],
        ))
        .await
        .map_err(errors::db)?;
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
        let b = self.db.get_database_backend();
        let rows = self
            .db
            .query_all_raw(stmt(
                b,
                "SELECT actor, kind, subject, payload FROM audit_events WHERE guild_id = $1 ORDER BY id DESC LIMIT $2",
                vec![guild_id.into(), (limit as i64).into()],
            ))
            .await
            .map_err(errors::db)?;
        rows.iter()
            .map(|r| {
                let get = |c: &str| {
                    r.try_get::<String>("", c)
                        .map_err(|e| Error::Internal(e.to_string()))
                };
                Ok((
                    get("actor")?,
                    get("kind")?,
                    get("subject")?,
                    serde_json::from_str(&get("payload")?).unwrap_or_default(),
                ))
            })
            .collect()
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
        };
        match self.set_policy(&p, Some(0), "configuration").await {
            Ok(_) | Err(Error::FailedPrecondition(_)) => Ok(()), // another replica seeded it first
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn stored_policy(&self, guild_id: &str) -> Result<Option<GuildPolicy>> {
        let b = self.db.get_database_backend();
        let head = self
            .db
            .query_one_raw(stmt(
                b,
                "SELECT default_policy, version, updated_by, updated_at FROM guild_policies WHERE guild_id = $1",
                vec![guild_id.into()],
            ))
            .await
            .map_err(errors::db)?;
        let Some(head) = head else { return Ok(None) };
        let rows = self
            .db
            .query_all_raw(stmt(
                b,
                "SELECT command, role_ids FROM role_policies WHERE guild_id = $1",
                vec![guild_id.into()],
            ))
            .await
            .map_err(errors::db)?;
        let mut commands = BTreeMap::new();
        for r in rows {
            let command: String = r.try_get("", "command").map_err(errors::db)?;
            let roles: String = r.try_get("", "role_ids").map_err(errors::db)?;
            commands.insert(
                command,
                serde_json::from_str(&roles)
                    .map_err(|e| Error::Internal(format!("stored role ids: {e}")))?,
            );
        }
        Ok(Some(GuildPolicy {
            guild_id: guild_id.to_string(),
            commands,
            default: DefaultPolicy::parse(
                &head
                    .try_get::<String>("", "default_policy")
                    .map_err(errors::db)?,
            ),
            version: head.try_get("", "version").map_err(errors::db)?,
            updated_by: head.try_get("", "updated_by").map_err(errors::db)?,
            updated_at: head.try_get::<DateTime<Utc>>("", "updated_at").ok(),
        }))
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
        let b = self.db.get_database_backend();
        let now = Utc::now();
        let txn = self.db.begin().await.map_err(errors::db)?;
        // Compare-and-set on the version: concurrent writers cannot both win.
        let changed = if before.is_some() {
            txn.execute_raw(stmt(
                b,
                "UPDATE guild_policies SET default_policy = $1, version = version + 1, updated_by = $2, updated_at = $3 WHERE guild_id = $4 AND version = $5",
                vec![p.default.as_str().into(), actor.into(), now.into(), p.guild_id.clone().into(), current.into()],
            ))
            .await
            .map_err(errors::db)?
            .rows_affected()
        } else {
            match txn
                .execute_raw(stmt(
                    b,
                    "INSERT INTO guild_policies (guild_id, default_policy, version, updated_by, updated_at) VALUES ($1, $2, 1, $3, $4)",
                    vec![p.guild_id.clone().into(), p.default.as_str().into(), actor.into(), now.into()],
                ))
                .await
            {
                Ok(r) => r.rows_affected(),
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
        txn.execute_raw(stmt(
            b,
            "DELETE FROM role_policies WHERE guild_id = $1",
            vec![p.guild_id.clone().into()],
        ))
        .await
        .map_err(errors::db)?;
        for (command, roles) in &p.commands {
            let roles = serde_json::to_string(roles).map_err(|e| Error::Internal(e.to_string()))?;
            txn.execute_raw(stmt(
                b,
                "INSERT INTO role_policies (guild_id, command, role_ids) VALUES ($1, $2, $3)",
                vec![
                    p.guild_id.clone().into(),
                    command.clone().into(),
                    roles.into(),
                ],
            ))
            .await
            .map_err(errors::db)?;
        }
        let payload = serde_json::json!({
            "before": before.as_ref().map(|b| serde_json::json!({"commands": b.commands, "default": b.default.as_str(), "version": b.version})),
            "after": {"commands": p.commands, "default": p.default.as_str(), "version": current + 1},
        });
        Self::audit_on(&txn, &p.guild_id, actor, "policy_set", "", payload).await?;
        txn.commit().await.map_err(errors::db)?;
        self.policy_for(&p.guild_id).await
    }
}
