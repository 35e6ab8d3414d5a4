//! What every handler shares.

use crate::domain::catalog::Catalog;
use crate::domain::dispatch::DispatchPolicy;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::session::SessionStore;
use crate::store::Store;
use chrono::{DateTime, Utc};
use facteur_config::Config;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Shared state of one server process.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// The database.
    pub store: Store,
    /// The session store.
    pub sessions: Arc<dyn SessionStore>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Dependency checks.
    pub health: Health,
    /// Process start.
    pub started_at: DateTime<Utc>,
    /// Cancelled when shutdown starts; server streams end on it.
    pub shutdown: CancellationToken,
    /// The command catalog.
    pub catalog: Catalog,
    /// Each cluster's Argo UI, for the links on cards.
    pub argo_ui: crate::domain::workflow::ArgoUi,
    /// Leasing and retry policy.
    pub dispatch_policy: DispatchPolicy,
    /// Woken whenever a dispatch may have become leasable (new run, retry, requeue, capacity).
    pub dispatch_wake: Notify,
    /// Woken when a guild is set up on this replica (the `WatchGuilds` streams look at once).
    pub guilds_wake: Notify,
    /// Bearer tokens (the HTTP compatibility endpoints check them too).
    pub auth: Arc<crate::auth::Authenticator>,
    /// Owner of the background tasks (restarts them; stops the process when it cannot).
    pub supervisor: Arc<facteur_runtime::supervise::Supervisor>,
    /// Completions of leased jobs waiting to be written together.
    pub completions: crate::service::completions::Completions,
}

impl AppState {
    /// Wakes every waiting lease stream of this replica.
    pub fn wake_dispatchers(&self) {
        self.dispatch_wake.notify_waiters();
    }
}
