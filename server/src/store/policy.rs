//! Role policies and the audit trail. The configuration's `role_map` seeds the global policy
//! (guild `""`) once; `SetPolicy` replaces a guild's policy live (optimistic concurrency on its
//! version), and every change and every denial is written to `audit_events`.

use super::Store;
use super::entities::{audit_events, guild_policies, role_policies};
use super::errors;
use crate::domain::policy::{DefaultPolicy, GuildPolicy};
use crate::domain::{Error, Result};
use chrono::Utc;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
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
        let rows = audit_events::Entity::find()
            .filter(audit_events::Column::GuildId.eq(guild_id))
            .order_by_desc(audit_events::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(errors::db)?;
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
        };
        match self.set_policy(&p, Some(0), "configuration").await {
            Ok(_) | Err(Error::FailedPrecondition(_)) => Ok(()), // another replica seeded it first
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn stored_policy(&self, guild_id: &str) -> Result<Option<GuildPolicy>> {
        let Some(head) = guild_policies::Entity::find_by_id(guild_id.to_string())
            .one(&self.db)
            .await
            .map_err(errors::db)?
        else {
            return Ok(None);
        };
        let rows = role_policies::Entity::find()
            .filter(role_policies::Column::GuildId.eq(guild_id))
            .all(&self.db)
            .await
            .map_err(errors::db)?;
        let mut commands = BTreeMap::new();
        for r in rows {
            commands.insert(
                r.command,
                serde_json::from_str(&r.role_ids)
                    .map_err(|e| Error::Internal(format!("stored role ids: {e}")))?,
            );
        }
        Ok(Some(GuildPolicy {
            guild_id: guild_id.to_string(),
            commands,
            default: DefaultPolicy::parse(&head.default_policy),
            version: head.version,
            updated_by: head.updated_by,
            updated_at: Some(head.updated_at),
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
        let now = Utc::now();
        let txn = self.db.begin().await.map_err(errors::db)?;
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
                .await
                .map_err(errors::db)?
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
            .await
            .map_err(errors::db)?;
        for (command, roles) in &p.commands {
            let roles = serde_json::to_string(roles).map_err(|e| Error::Internal(e.to_string()))?;
            role_policies::Entity::insert(role_policies::ActiveModel {
                guild_id: Set(p.guild_id.clone()),
                command: Set(command.clone()),
                role_ids: Set(roles),
            })
            .exec_without_returning(&txn)
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
