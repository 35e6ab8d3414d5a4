//! Persistence of runs, their history and their dispatches, on Postgres or SQLite (sea-orm).
//!
//! A run, its first dispatch and its first history entry are written in one transaction (the
//! outbox): no run without a dispatch, no dispatch without a run. The idempotency key is unique,
//! so a replay, on any replica and at any time, finds the original run.

pub mod adapters;
pub mod codex;
pub mod codex_batch;
pub mod dispatch;
pub mod entities;
pub mod errors;
pub mod feed;
pub mod guilds;
mod nodelay;
pub mod policy;
pub mod registrations;
pub mod retention;
pub mod templates;

use crate::domain::run::{NewRun, Requester, Run, RunEvent, RunSource, RunStatus, workflow_name};
use crate::domain::{Error, Result};
use chrono::{DateTime, Utc};
use entities::{dispatches, run_events, runs};
use facteur_config::DatabaseBackend;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, Database, DatabaseConnection, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Filter of [`Store::list_runs`].
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only this state.
    pub status: Option<RunStatus>,
    /// Only this command.
    pub command: Option<String>,
    /// Principal or Discord user id.
    pub requester: Option<String>,
    /// Guild id.
    pub guild_id: Option<String>,
    /// Cluster.
    pub cluster: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
}

/// The database of the control plane.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    backend: DatabaseBackend,
    /// Group commit of Codex submissions (Postgres only).
    codex_batch: Option<std::sync::Arc<codex_batch::Batcher>>,
}

/// Codex batches in flight at once unless configured (`database.codex_batch_slots`).
pub const DEFAULT_CODEX_BATCH_SLOTS: usize = 2;

/// Statements and deliveries written by the Codex batches of a store (Postgres).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batch statements that succeeded.
    pub statements: u64,
    /// Deliveries they carried.
    pub deliveries: u64,
}

/// Opens every connection of a Postgres pool made without any, all at the same time, in the
/// background. Each new connection costs ~90 ms here, most of it Nagle's algorithm holding
/// the second writes of the TLS handshake (sqlx gives its socket `TCP_NODELAY` only afterwards,
/// see `nodelay`), and start-up work meeting a busy pool would open them one after another.
/// Each acquire gives its connection back as soon as it is open.
fn warm_up(db: &DatabaseConnection) {
    let pool = db.get_postgres_connection_pool().clone();
    let warm = pool.options().get_max_connections() as usize;
    tokio::spawn(async move {
        futures::future::join_all((0..warm).map(|_| async {
            let _ = pool.acquire().await;
        }))
        .await;
    });
}

impl Store {
    /// Connects (creating the SQLite file if needed). Does not migrate.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> Result<Store> {
        let backend = if url.starts_with("sqlite:") {
            DatabaseBackend::Sqlite
        } else {
            DatabaseBackend::Postgres
        };
        let mut opts = ConnectOptions::new(url.to_string());
        opts.max_connections(max_connections)
            // Postgres: the whole pool stays open (opened together at start, see `warm_up`;
            // reopened by the pool's own maintenance task when one is closed), so no request
            // waits for a new connection's ~90 ms handshake under load.
            .min_connections(if backend == DatabaseBackend::Postgres {
                max_connections
            } else {
                1
            })
            .connect_timeout(connect_timeout)
            .acquire_timeout(connect_timeout)
            // Statements are not logged: parameters could carry user data.
            .sqlx_logging(false)
            // A ping before every acquire doubles the round trips of a short query; ping only
            // connections idle long enough to have been cut (database restart, proxy timeout).
            .test_before_acquire_if_idle_for(Duration::from_secs(30))
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
        if backend == DatabaseBackend::Postgres {
            let port =
                <sea_orm::sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
                    .map(|o| o.get_port())
                    .unwrap_or(5432);
            opts.map_sqlx_postgres_pool_opts(move |o| {
                o.after_connect(move |_, _| {
                    Box::pin(async move {
                        nodelay::set_on_sockets_to(port);
                        Ok(())
                    })
                })
            });
        }
        if backend == DatabaseBackend::Postgres {
            // The pool is made without a connection; `warm_up` opens the first ones together.
            opts.connect_lazy(true);
        }
        let db = Database::connect(opts).await?;
        if backend == DatabaseBackend::Postgres {
            warm_up(&db);
            // As a connecting pool would: the database answers, or this fails now.
            db.ping().await?;
        }
        let codex_batch = (backend == DatabaseBackend::Postgres)
            .then(|| codex_batch::Batcher::new(&db, DEFAULT_CODEX_BATCH_SLOTS));
        Ok(Store {
            db,
            backend,
            codex_batch,
        })
    }

    /// What the Codex batches wrote so far (zero on SQLite).
    pub fn codex_batch_stats(&self) -> BatchStats {
        self.codex_batch
            .as_ref()
            .map(|b| b.stats())
            .unwrap_or_default()
    }

    /// At most `slots` Codex batch statements in flight (Postgres; see [`codex_batch`]).
    pub fn with_codex_batch_slots(mut self, slots: usize) -> Store {
        if self.codex_batch.is_some() {
            self.codex_batch = Some(codex_batch::Batcher::new(&self.db, slots));
        }
        self
    }

    /// Applies pending migrations (under an advisory lock on Postgres).
    pub async fn migrate(&self) -> Result<()> {
        facteur_migrations::migrate(&self.db)
            .await
            .map_err(Error::from)
    }

    /// `postgres` or `sqlite`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            DatabaseBackend::Postgres => "postgres",
            DatabaseBackend::Sqlite => "sqlite",
        }
    }

    /// The underlying connection (for tests and later stores sharing the pool).
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Round trip to the database.
    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await.map_err(Error::from)
    }

    /// Closes the pool.
    pub async fn close(self) {
        if let Some(b) = &self.codex_batch {
            b.release_held();
        }
        let _ = self.db.close().await;
    }

    /// Persists a run with its create dispatch and its `created` event in one transaction.
    /// Returns the run and whether it already existed under the same idempotency key.
    pub async fn create_run(&self, new: NewRun, actor: &str) -> Result<(Run, bool)> {
        check_key(&new.idempotency_key)?;
        if let Some(existing) = self.run_by_key(&new.idempotency_key).await? {
            return Ok((existing, true));
        }
        let id = uuid::Uuid::now_v7();
        let txn = self.db.begin().await?;
        match insert_run(&txn, id, &new, actor, Utc::now()).await {
            Ok(()) => {}
            Err(Inserted::Duplicate(e)) => {
                let _ = txn.rollback().await;
                // Another replica or request won the race for this key: answer with its run.
                return match self.run_by_key(&new.idempotency_key).await? {
                    Some(existing) => Ok((existing, true)),
                    None => Err(Error::Internal(format!(
                        "run insert conflicted but no run has key: {e}"
                    ))),
                };
            }
            Err(Inserted::Failed(e)) => return Err(e),
        }
        txn.commit().await?;
        let run = self
            .get_run(&id.to_string())
            .await?
            .ok_or_else(|| Error::Internal("run vanished after commit".into()))?;
        Ok((run, false))
    }

    /// A run by id.
    pub async fn get_run(&self, id: &str) -> Result<Option<Run>> {
        let m = runs::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await?;
        m.map(run_from_model).transpose()
    }

    /// Ids (with numbers) of the runs a handle names, at most `limit`: the run numbered
    /// `number`, or those whose id starts with `prefix` (lower-case hex and dashes, checked by
    /// the caller); only runs of `guild` when one is given.
    pub async fn runs_by_handle(
        &self,
        handle: &crate::domain::run::Handle,
        guild: Option<&str>,
        limit: u64,
    ) -> Result<Vec<(String, i64)>> {
        use crate::domain::run::Handle;
        let mut q = runs::Entity::find()
            .select_only()
            .column(runs::Column::Id)
            .column(runs::Column::Number);
        q = match handle {
            Handle::Id(id) => q.filter(runs::Column::Id.eq(id.as_str())),
            Handle::Number(n) => q.filter(runs::Column::Number.eq(*n)),
            // Only [0-9a-f-] reach here: nothing LIKE would read as a wildcard.
            Handle::Prefix(p) => q
                .filter(runs::Column::Id.like(format!("{p}%")))
                .order_by_asc(runs::Column::Id),
        };
        if let Some(g) = guild {
            q = q.filter(runs::Column::GuildId.eq(g));
        }
        let rows: Vec<(String, Option<i64>)> = q.limit(limit).into_tuple().all(&self.db).await?;
        Ok(rows
            .into_iter()
            .map(|(id, n)| (id, n.unwrap_or_default()))
            .collect())
    }

    /// A run by idempotency key.
    pub async fn run_by_key(&self, key: &str) -> Result<Option<Run>> {
        let m = runs::Entity::find()
            .filter(runs::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?;
        m.map(run_from_model).transpose()
    }

    /// A run's history, oldest first.
    pub async fn run_events(&self, run_id: &str) -> Result<Vec<RunEvent>> {
        run_events::Entity::find()
            .filter(run_events::Column::RunId.eq(run_id))
            .order_by_asc(run_events::Column::Sequence)
            .all(&self.db)
            .await?
            .into_iter()
            .map(event_from_model)
            .collect()
    }

    /// Runs newest first, after the keyset cursor `after` (`created_at` and id of the last one).
    pub async fn list_runs(
        &self,
        f: &RunFilter,
        limit: u64,
        after: Option<(DateTime<Utc>, String)>,
    ) -> Result<Vec<Run>> {
        let mut q = runs::Entity::find();
        if let Some(s) = f.status {
            q = q.filter(runs::Column::Status.eq(s.as_str()));
        }
        if let Some(c) = &f.command {
            q = q.filter(runs::Column::Command.eq(c.as_str()));
        }
        if let Some(r) = &f.requester {
            q = q.filter(
                sea_orm::Condition::any()
                    .add(runs::Column::RequesterPrincipal.eq(r.as_str()))
                    .add(runs::Column::RequesterUserId.eq(r.as_str())),
            );
        }
        if let Some(g) = &f.guild_id {
            q = q.filter(runs::Column::GuildId.eq(g.as_str()));
        }
        if let Some(c) = &f.cluster {
            q = q.filter(runs::Column::Cluster.eq(c.as_str()));
        }
        if let Some(t) = f.created_after {
            q = q.filter(runs::Column::CreatedAt.gte(t));
        }
        if let Some(t) = f.created_before {
            q = q.filter(runs::Column::CreatedAt.lt(t));
        }
        if let Some((t, id)) = after {
            q = q.filter(
                sea_orm::Condition::any()
                    .add(runs::Column::CreatedAt.lt(t))
                    .add(
                        sea_orm::Condition::all()
                            .add(runs::Column::CreatedAt.eq(t))
                            .add(runs::Column::Id.lt(id)),
                    ),
            );
        }
        q.order_by_desc(runs::Column::CreatedAt)
            .order_by_desc(runs::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(run_from_model)
            .collect()
    }

    /// History entries of runs started from Discord after `cursor`, in feed order: the change
    /// feed behind `CommandService.WatchRuns`. It cannot skip an entry whatever order the
    /// transactions commit in (see [`feed`]).
    pub async fn discord_changes_after(
        &self,
        cursor: feed::FeedCursor,
        limit: u64,
    ) -> Result<Vec<feed::FeedEntry>> {
        feed::discord_after(&self.db, cursor, limit).await
    }

    /// Where a watcher without a cursor starts: after everything final now.
    pub async fn feed_now(&self) -> Result<feed::FeedCursor> {
        feed::now(&self.db).await
    }

    /// Seconds the oldest writing transaction has been open (how long it holds the feed back).
    pub async fn feed_held_back_seconds(&self) -> Result<f64> {
        feed::held_back_seconds(&self.db).await
    }

    /// Number of dispatches of a run (the outbox invariant: every run has at least one).
    pub async fn dispatch_count(&self, run_id: &str) -> Result<u64> {
        dispatches::Entity::find()
            .filter(dispatches::Column::RunId.eq(run_id))
            .count(&self.db)
            .await
            .map_err(Error::from)
    }
}

/// Why [`insert_run`] did not insert.
pub(crate) enum Inserted {
    /// The idempotency key (or Workflow name) is taken.
    Duplicate(DbErr),
    /// Anything else.
    Failed(Error),
}

/// Details of a run's first history entry.
pub(crate) fn created_payload(new: &NewRun) -> serde_json::Value {
    serde_json::json!({
        "source": new.source.as_str(),
        "command": new.command,
        "workflow_template": new.workflow_template,
        "cluster": new.cluster,
        "namespace": new.namespace,
        "parent_run_id": new.parent_run_id,
    })
}

/// A run's parameters as stored (JSON): those [`codex::derived_parameters`] names are left out,
/// listed under [`codex::DERIVED_PARAMETERS`], and made again when the run is read.
pub(crate) fn stored_parameters(new: &NewRun) -> Result<String> {
    use crate::domain::codex;
    let left_out = codex::derived_parameters(new.source, &new.parameters);
    let listed = left_out.join(",");
    let kept = new
        .parameters
        .iter()
        .filter(|(k, _)| !left_out.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain((!listed.is_empty()).then_some((codex::DERIVED_PARAMETERS, listed.as_str())));
    let kept: BTreeMap<&str, &str> = kept.collect();
    serde_json::to_string(&kept).map_err(|e| Error::Internal(format!("parameters: {e}")))
}

/// A new job for a run, due now.
pub(crate) fn pending_dispatch(
    run_id: &str,
    kind: &str,
    now: DateTime<Utc>,
) -> dispatches::ActiveModel {
    dispatches::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        run_id: Set(run_id.to_string()),
        kind: Set(kind.into()),
        state: Set(crate::domain::dispatch::DispatchState::Pending
            .as_str()
            .into()),
        attempts: Set(0),
        available_at: Set(now),
        lease_owner: Set(String::new()),
        lease_token: Set(String::new()),
        lease_expires_at: Set(None),
        last_error: Set(String::new()),
        dead_lettered_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

/// Width of `runs.idempotency_key` (callers' own keys are held to
/// [`crate::domain::run::MAX_IDEMPOTENCY_KEY`], leaving room for prefixes).
const KEY_COLUMN: usize = 255;

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(
            "idempotency_key",
            "idempotency key is required",
        ));
    }
    crate::domain::input::storable("idempotency key", key, KEY_COLUMN)
}

/// Inserts a run, its create dispatch and its `created` event on `c` (inside the caller's
/// transaction), all created at `now`. The run row goes first, so SQLite takes the write lock at
/// once instead of failing a read-to-write upgrade under contention.
pub(crate) async fn insert_run<C: sea_orm::ConnectionTrait>(
    c: &C,
    id: uuid::Uuid,
    new: &NewRun,
    actor: &str,
    now: DateTime<Utc>,
) -> std::result::Result<(), Inserted> {
    let run = runs::ActiveModel {
        id: Set(id.to_string()),
        idempotency_key: Set(new.idempotency_key.clone()),
        command: Set(new.command.clone()),
        source: Set(new.source.as_str().into()),
        status: Set(RunStatus::Queued.as_str().into()),
        requester_principal: Set(new.requester.principal.clone()),
        requester_user_id: Set(new.requester.user_id.clone()),
        guild_id: Set(new.requester.guild_id.clone()),
        channel_id: Set(new.requester.channel_id.clone()),
        requester_name: Set(new.requester.display_name.clone()),
        cluster: Set(new.cluster.clone()),
        namespace: Set(new.namespace.clone()),
        workflow_template: Set(new.workflow_template.clone()),
        service_account: Set(new.service_account.clone()),
        workflow_name: Set(workflow_name(&new.workflow_name_prefix, &id)),
        workflow_uid: Set(String::new()),
        parameters: Set(stored_parameters(new).map_err(Inserted::Failed)?),
        message: Set(String::new()),
        progress: Set(String::new()),
        workflow_phase: Set(String::new()),
        parent_run_id: Set(new.parent_run_id.clone()),
        attempts: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        started_at: Set(None),
        finished_at: Set(None),
        cancel_requested_at: Set(None),
        cancel_mode: Set(String::new()),
        trace_parent: Set(new.trace_parent.clone()),
        current_step: Set(String::new()),
        failed_step: Set(String::new()),
        log_tail: Set(String::new()),
        approval: Set(String::new()),
        decisions: Set(String::new()),
        // Postgres: the sequence's default; SQLite: set below, under the write lock.
        number: sea_orm::ActiveValue::NotSet,
    };
    let dispatch = pending_dispatch(
        &id.to_string(),
        crate::domain::dispatch::DispatchKind::Create.as_str(),
        now,
    );
    let payload = created_payload(new);
    let event = run_events::ActiveModel {
        run_id: Set(id.to_string()),
        sequence: Set(1),
        actor: Set(actor.to_string()),
        kind: Set("created".into()),
        from_status: Set(RunStatus::Queued.as_str().into()),
        to_status: Set(RunStatus::Queued.as_str().into()),
        payload: Set(payload.to_string()),
        created_at: Set(now),
        ..Default::default()
    };

    match runs::Entity::insert(run).exec_without_returning(c).await {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(Inserted::Duplicate(e)),
        Err(e) => return Err(Inserted::Failed(errors::db(e))),
    }
    let fail = |e: DbErr| Inserted::Failed(errors::db(e));
    if c.get_database_backend() == sea_orm::DatabaseBackend::Sqlite {
        // The insert holds SQLite's one write lock: no other run can take the same number.
        c.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Sqlite,
            "UPDATE runs SET number = (SELECT COALESCE(MAX(number), 0) + 1 FROM runs) WHERE id = ?",
            [id.to_string().into()],
        ))
        .await
        .map_err(fail)?;
    }
    dispatches::Entity::insert(dispatch)
        .exec_without_returning(c)
        .await
        .map_err(fail)?;
    run_events::Entity::insert(event)
        .exec_without_returning(c)
        .await
        .map_err(fail)?;
    Ok(())
}

pub(crate) fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("stored {what} is invalid: {e}"))
}

pub(crate) fn run_from_model(m: runs::Model) -> Result<Run> {
    let mut parameters: BTreeMap<String, String> =
        serde_json::from_str(&m.parameters).map_err(|e| corrupt("parameters", e))?;
    crate::domain::codex::expand_parameters(&mut parameters)
        .map_err(|e| corrupt("parameters", e))?;
    Ok(Run {
        status: m.status.parse().map_err(|e| corrupt("status", e))?,
        source: m
            .source
            .parse::<RunSource>()
            .map_err(|e| corrupt("source", e))?,
        requester: Requester {
            principal: m.requester_principal,
            user_id: m.requester_user_id,
            guild_id: m.guild_id,
            channel_id: m.channel_id,
            display_name: m.requester_name,
        },
        id: m.id,
        idempotency_key: m.idempotency_key,
        command: m.command,
        cluster: m.cluster,
        namespace: m.namespace,
        workflow_template: m.workflow_template,
        service_account: m.service_account,
        workflow_name: m.workflow_name,
        workflow_uid: m.workflow_uid,
        parameters,
        message: m.message,
        progress: m.progress,
        workflow_phase: m.workflow_phase,
        parent_run_id: m.parent_run_id,
        attempts: m.attempts.max(0) as u32,
        created_at: m.created_at,
        updated_at: m.updated_at,
        started_at: m.started_at,
        finished_at: m.finished_at,
        cancel_requested_at: m.cancel_requested_at,
        trace_parent: m.trace_parent,
        number: m.number.unwrap_or_default(),
        steps: crate::domain::run::Steps {
            current: m.current_step,
            failed: m.failed_step,
            log_tail: m.log_tail,
            approval: if m.approval.is_empty() {
                None
            } else {
                Some(serde_json::from_str(&m.approval).map_err(|e| corrupt("approval", e))?)
            },
            decisions: if m.decisions.is_empty() {
                Vec::new()
            } else {
                serde_json::from_str(&m.decisions).map_err(|e| corrupt("decisions", e))?
            },
        },
    })
}

fn event_from_model(m: run_events::Model) -> Result<RunEvent> {
    Ok(RunEvent {
        sequence: m.sequence,
        from_status: m
            .from_status
            .parse()
            .map_err(|e| corrupt("event status", e))?,
        to_status: m
            .to_status
            .parse()
            .map_err(|e| corrupt("event status", e))?,
        payload: serde_json::from_str(&m.payload).map_err(|e| corrupt("event payload", e))?,
        run_id: m.run_id,
        actor: m.actor,
        kind: m.kind,
        time: m.created_at,
    })
}
