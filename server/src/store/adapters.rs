//! The argo-adapters heard from (`DispatchService.GetAssignment`), and the runs waiting per
//! cluster and namespace: what `AdminService.GetStatus` needs to tell served namespaces from unserved ones.
//! Every replica writes and reads the same rows, so any replica answers for all adapters.

use super::Store;
use super::entities::{adapters, dispatches};

use crate::domain::Result;
use crate::domain::assignment::{Place, Queued};
use crate::domain::dispatch::DispatchState;
use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};
use std::collections::BTreeMap;

/// Rows not heard from for this long are deleted.
const FORGET_AFTER: chrono::Duration = chrono::Duration::hours(1);

/// An adapter, as its last heartbeat described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSeen {
    /// `<principal>/<adapter id>`.
    pub id: String,
    /// The cluster it drives.
    pub cluster: String,
    /// Namespaces it serves.
    pub namespaces: Vec<String>,
    /// Jobs it accepts at once.
    pub max_in_flight: u32,
    /// First heartbeat.
    pub connected_at: DateTime<Utc>,
    /// Last heartbeat.
    pub seen_at: DateTime<Utc>,
    /// Jobs it holds under an unexpired lease.
    pub in_flight: u64,
}

impl Store {
    /// Records a heartbeat of adapter `id` serving `namespaces` of `cluster`.
    pub async fn adapter_heartbeat(
        &self,
        id: &str,
        cluster: &str,
        namespaces: &[String],
        max_in_flight: u32,
    ) -> Result<()> {
        use adapters::Column as C;
        let now = Utc::now();
        let row = adapters::ActiveModel {
            id: Set(id.to_string()),
            cluster: Set(cluster.to_string()),
            namespaces: Set(serde_json::to_string(namespaces).unwrap_or_else(|_| "[]".into())),
            max_in_flight: Set(i32::try_from(max_in_flight).unwrap_or(i32::MAX)),
            connected_at: Set(now),
            seen_at: Set(now),
        };
        adapters::Entity::insert(row)
            .on_conflict(
                OnConflict::column(C::Id)
                    .update_columns([C::Cluster, C::Namespaces, C::MaxInFlight, C::SeenAt])
                    .to_owned(),
            )
            .exec(&self.db)
            .await?;
        adapters::Entity::delete_many()
            .filter(C::SeenAt.lt(now - FORGET_AFTER))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Adapters heard from at or after `since`, by id, with the jobs each holds.
    pub async fn adapters_seen(&self, since: DateTime<Utc>) -> Result<Vec<AdapterSeen>> {
        let rows = adapters::Entity::find()
            .filter(adapters::Column::SeenAt.gte(since))
            .order_by_asc(adapters::Column::Id)
            .all(&self.db)
            .await?;
        let held: Vec<(String, i64)> = dispatches::Entity::find()
            .filter(dispatches::Column::State.eq(DispatchState::Leased.as_str()))
            .filter(dispatches::Column::LeaseExpiresAt.gt(Utc::now()))
            .select_only()
            .column(dispatches::Column::LeaseOwner)
            .column_as(dispatches::Column::Id.count(), "n")
            .group_by(dispatches::Column::LeaseOwner)
            .into_tuple()
            .all(&self.db)
            .await?;
        let held: BTreeMap<String, i64> = held.into_iter().collect();
        Ok(rows
            .into_iter()
            .map(|m| AdapterSeen {
                in_flight: held
                    .get(&m.id)
                    .map_or(0, |n| u64::try_from(*n).unwrap_or(0)),
                namespaces: serde_json::from_str(&m.namespaces).unwrap_or_default(),
                max_in_flight: u32::try_from(m.max_in_flight).unwrap_or(0),
                connected_at: m.connected_at,
                seen_at: m.seen_at,
                cluster: m.cluster,
                id: m.id,
            })
            .collect())
    }

    /// Runs waiting to be dispatched (a pending job), per cluster and namespace.
    pub async fn queued_by_place(&self) -> Result<BTreeMap<Place, Queued>> {
        let b = self.db.get_database_backend();
        let sql = format!(
            "SELECT r.cluster AS cl, r.namespace AS ns, COUNT(*) AS n, MIN(d.created_at) AS oldest \
             FROM dispatches d JOIN runs r ON r.id = d.run_id \
             WHERE d.state = '{}' GROUP BY r.cluster, r.namespace",
            DispatchState::Pending.as_str()
        );
        let rows = self
            .db
            .query_all_raw(Statement::from_string(b, sql))
            .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let cluster: String = row.try_get("", "cl")?;
            let namespace: String = row.try_get("", "ns")?;
            let n: i64 = row.try_get("", "n")?;
            let oldest: Option<DateTime<Utc>> = row.try_get("", "oldest")?;
            out.insert(
                Place { cluster, namespace },
                Queued {
                    runs: u64::try_from(n).unwrap_or(0),
                    oldest,
                },
            );
        }
        Ok(out)
    }
}
