//! What `GetStatus` reports: the dependencies' health, who serves which namespace, the last
//! registration of the commands in each scope, and the quotas in use. Each part that needs the
//! database is left empty when the database is down: the dependencies then say why.

use crate::domain::policy::{Quota, Usage};
use crate::health::DependencyReport;
use crate::service::dispatch::Served;
use crate::state::AppState;
use crate::store::registrations::Registration;

/// The server's state as an operator reads it.
#[derive(Debug)]
pub struct Report {
    /// Every dependency, checked now.
    pub dependencies: Vec<DependencyReport>,
    /// The adapters and the namespaces none serves (`None`: the database is down).
    pub served: Option<Served>,
    /// The last registration of the commands in each scope.
    pub registrations: Vec<Registration>,
    /// (guild, command, quota, usage) of every quota in use.
    pub quota_usage: Vec<(String, String, Quota, Usage)>,
}

impl Report {
    /// Ready when every dependency is healthy.
    pub fn ready(&self) -> bool {
        self.dependencies.iter().all(|d| d.healthy)
    }
}

/// The report, read now.
pub async fn report(state: &AppState) -> Report {
    let dependencies = state.health.check().await;
    let served = crate::service::dispatch::served(state).await.ok();
    let registrations = state.store.registrations().await.unwrap_or_default();
    let quota_usage = crate::service::discord::quota_usage(state)
        .await
        .unwrap_or_default();
    Report {
        dependencies,
        served,
        registrations,
        quota_usage,
    }
}
