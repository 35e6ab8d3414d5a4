//! Where each scope's command registration stands (a guild id, or `global`), as the
//! discord-adapters report every attempt: the last success, and the last failure with
//! Discord's error code and message and how many attempts in a row have failed.

use super::Store;
use super::entities::command_registrations as cr;

use crate::domain::Result;
use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{EntityTrait, QueryOrder};

/// One scope's registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// A guild id, or `global`.
    pub scope: String,
    /// The catalog version of the last attempt (as the reporting replica numbered it).
    pub catalog_version: i64,
    /// Commands registered by the last success.
    pub commands: i32,
    /// Why the last attempt failed (empty: it succeeded).
    pub error: String,
    /// Discord's JSON error code of that failure (50035: invalid form body), 0 when none.
    pub discord_code: i32,
    /// Attempts in a row that failed.
    pub failures: i32,
    /// When the last success was.
    pub registered_at: Option<DateTime<Utc>>,
    /// When the last attempt was reported.
    pub updated_at: DateTime<Utc>,
}

impl From<cr::Model> for Registration {
    fn from(m: cr::Model) -> Self {
        Registration {
            scope: m.scope,
            catalog_version: m.catalog_version,
            commands: m.commands,
            error: m.error,
            discord_code: m.discord_code,
            failures: m.failures,
            registered_at: m.registered_at,
            updated_at: m.updated_at,
        }
    }
}

impl Store {
    /// Records one attempt to register `scope`: a success clears the failure; a failure keeps
    /// the last success and counts one more failure in a row.
    pub async fn record_registration(
        &self,
        scope: &str,
        catalog_version: i64,
        commands: u32,
        error: &str,
        discord_code: i32,
    ) -> Result<()> {
        let now = Utc::now();
        let ok = error.is_empty();
        let row = cr::ActiveModel {
            scope: Set(scope.to_string()),
            catalog_version: Set(catalog_version),
            commands: Set(if ok { commands as i32 } else { 0 }),
            error: Set(error.to_string()),
            discord_code: Set(discord_code),
            failures: Set(if ok { 0 } else { 1 }),
            registered_at: Set(ok.then_some(now)),
            updated_at: Set(now),
        };
        let mut conflict = OnConflict::column(cr::Column::Scope);
        conflict.update_columns([
            cr::Column::CatalogVersion,
            cr::Column::Error,
            cr::Column::DiscordCode,
            cr::Column::UpdatedAt,
        ]);
        if ok {
            conflict.update_columns([
                cr::Column::Commands,
                cr::Column::Failures,
                cr::Column::RegisteredAt,
            ]);
        } else {
            conflict.value(
                cr::Column::Failures,
                Expr::col((cr::Entity, cr::Column::Failures)).add(1),
            );
        }
        cr::Entity::insert(row)
            .on_conflict(conflict)
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Every scope's registration, by scope.
    pub async fn registrations(&self) -> Result<Vec<Registration>> {
        Ok(cr::Entity::find()
            .order_by_asc(cr::Column::Scope)
            .all(&self.db)
            .await?
            .into_iter()
            .map(Registration::from)
            .collect())
    }
}
