//! The labelled WorkflowTemplates the argo-adapters reported: one row per template, replaced per
//! cluster and namespace by each report, read by every replica to build the same catalog.

use super::Store;
use super::entities::template_commands;

use crate::domain::templates::Template;
use crate::domain::{Error, Result};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, TransactionTrait};

impl Store {
    /// Replaces the templates of `namespaces` in `cluster` with `templates` (all of which lie
    /// there), in one transaction.
    pub async fn replace_templates(
        &self,
        cluster: &str,
        namespaces: &[String],
        templates: &[Template],
        reported_by: &str,
    ) -> Result<()> {
        let now = chrono::Utc::now();
        let rows = templates
            .iter()
            .map(|t| {
                Ok(template_commands::ActiveModel {
                    cluster: Set(cluster.to_string()),
                    namespace: Set(t.namespace.clone()),
                    name: Set(t.name.clone()),
                    command: Set(t.command.clone()),
                    definition: Set(
                        serde_json::to_string(t).map_err(|e| Error::Internal(e.to_string()))?
                    ),
                    reported_by: Set(reported_by.to_string()),
                    updated_at: Set(now),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let txn = self.db.begin().await?;
        template_commands::Entity::delete_many()
            .filter(template_commands::Column::Cluster.eq(cluster))
            .filter(template_commands::Column::Namespace.is_in(namespaces.iter().cloned()))
            .exec(&txn)
            .await?;
        if !rows.is_empty() {
            template_commands::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await.map_err(Error::from)
    }

    /// Every reported template, by cluster, namespace and name.
    pub async fn templates(&self) -> Result<Vec<Template>> {
        template_commands::Entity::find()
            .order_by_asc(template_commands::Column::Cluster)
            .order_by_asc(template_commands::Column::Namespace)
            .order_by_asc(template_commands::Column::Name)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| {
                let t: Template = serde_json::from_str(&m.definition).map_err(|e| {
                    Error::Internal(format!(
                        "stored template {}/{}/{} is invalid: {e}",
                        m.cluster, m.namespace, m.name
                    ))
                })?;
                Ok(Template {
                    cluster: m.cluster,
                    ..t
                })
            })
            .collect()
    }
}
