//! Group commit of Codex submissions on Postgres.
//!
//! While nothing waits and fewer than `slots` statements are in flight, a submission writes its
//! own delivery at once, in its own task, with [`SUBMIT_ONE`] (no timer, no hand-off, no added
//! latency). Submissions arriving while every slot is busy wait in a queue and go together into
//! the next statement, [`SUBMIT_BATCH`]. Either statement writes everything (the look-up of the
//! delivery ids, the idea and task upserts, the task runs, runs, dispatches and first history
//! entries) and returns the ids, so a delivery costs one round trip and a share of one commit
//! instead of three round trips and a commit of its own. Under load Postgres does much less
//! work per delivery; alone, a delivery is one statement with its values bound one by one
//! (cheaper for Postgres than a batch of one: no JSON document to parse, no sorts, no joins).
//!
//! Two deliveries of one `<repo>#<issue>` (or one delivery id) never share a batch: an upsert
//! may not touch a row twice in one statement. The later one waits for the next batch, where
//! the first one's rows exist. A failed batch is retried one delivery at a time, so a delivery
//! that cannot be written (or a deadlock between batches) fails only its own submission.

use super::BatchStats;

use crate::domain::{Error, Result, codex};
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::{PgArguments, PgPool, PgRow, Postgres};
use sea_orm::sqlx::{self, Row as _};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most deliveries in one statement.
pub const MAX_BATCH: usize = 64;
/// Most bytes of rows (as JSON) in one statement. Statements larger than one TLS record rely on
/// `TCP_NODELAY` (see `store::nodelay`).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// One delivery's rows, as bound (a JSON object of the recordset `$1`).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Position in the batch (set when the batch is taken).
    pub ord: usize,
    /// New `ideas.id` (kept only if the idea is new).
    pub idea_id: String,
    /// `<repo>#<issue>`.
    pub source_ref: String,
    /// The task as proto-JSON, as rendered once: `ideas.payload`, and the run's parameters'
    /// `facteur:task` (the statement puts it there; bound once, not twice).
    pub payload: String,
    /// New `tasks.id`.
    pub task_id: String,
    /// Stage.
    pub stage: String,
    /// `tasks.metadata` (JSON text).
    #[serde(serialize_with = "raw_json")]
    pub task_meta: String,
    /// New `task_runs.id`.
    pub task_run_id: String,
    /// The Workflow name.
    pub workflow_name: String,
    /// `task_runs.metadata` (JSON text).
    #[serde(serialize_with = "raw_json")]
    pub run_meta: String,
    /// The delivery id.
    pub delivery_id: String,
    /// New run id.
    pub run_id: String,
    /// The run's idempotency key.
    pub idem: String,
    /// The run's command.
    pub command: String,
    /// Requester principal.
    pub principal: String,
    /// Requester display name.
    pub display_name: String,
    /// Cluster.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// WorkflowTemplate.
    pub template: String,
    /// Service account.
    pub service_account: String,
    /// Parameters as stored but for the task (JSON text), which the statement adds.
    pub params: String,
    /// W3C traceparent.
    pub traceparent: String,
    /// New dispatch id.
    pub dispatch_id: String,
    /// First history entry's payload (JSON text).
    pub event: String,
    /// Acceptance time (RFC 3339).
    pub now: String,
}

/// Writes a JSON text into the batch document as it is (no parse into a tree, no escaping).
fn raw_json<S: serde::Serializer>(text: &str, ser: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    let raw: &serde_json::value::RawValue = serde_json::from_str(text).map_err(S::Error::custom)?;
    raw.serialize(ser)
}

/// What a batch wrote for one delivery.
#[derive(Clone, Debug)]
pub struct Written {
    /// `ideas.id`.
    pub idea_id: String,
    /// `tasks.id`.
    pub task_id: String,
    /// `task_runs.id`.
    pub task_run_id: String,
}

/// One delivery's rows in one statement, each value bound on its own: nothing if the delivery id
/// is recorded (`seen`); otherwise the idea and task upserts, the task run (nothing more if a
/// concurrent submission of the delivery id commits first), the run, its dispatch and its first
/// history entry. Returns one row; its ids are NULL when nothing was written.
///
/// `$1` idea id, `$2` source_ref, `$3` payload, `$4` now, `$5` task id, `$6` stage, `$7` task
/// metadata, `$8` task run id, `$9` workflow name, `$10` task run metadata, `$11` delivery id,
/// `$12` run id, `$13` idempotency key, `$14` command, `$15` principal, `$16` display name,
/// `$17` namespace, `$18` template, `$19` service account, `$20` parameters, `$21` traceparent,
/// `$22` dispatch id, `$23` event payload, `$24` the parameter key that keeps the task
/// ([`codex::TASK_PARAMETER`]), `$25` cluster.
pub const SUBMIT_ONE: &str = "WITH seen AS (
    SELECT 1 FROM codex_kb.task_runs WHERE delivery_id = $11 LIMIT 1),
idea AS (
    INSERT INTO codex_kb.ideas (id, source_type, source_ref, priority, status, risk_flags, payload, created_at, updated_at)
    SELECT $1::uuid, 'github_issue', $2, 0, 'received', '{}', $3::text::jsonb, $4::timestamptz, $4::timestamptz
    WHERE NOT EXISTS (SELECT 1 FROM seen)
    ON CONFLICT (source_type, source_ref) DO UPDATE SET payload = excluded.payload, updated_at = excluded.updated_at
    RETURNING id),
task AS (
    INSERT INTO codex_kb.tasks (id, idea_id, stage, state, metadata, created_at, updated_at)
    SELECT $5::uuid, idea.id, $6, 'queued', $7::jsonb, $4::timestamptz, $4::timestamptz FROM idea
    ON CONFLICT (idea_id, stage) DO UPDATE SET state = 'queued', metadata = excluded.metadata, updated_at = excluded.updated_at
    RETURNING id),
tr AS (
    INSERT INTO codex_kb.task_runs (id, task_id, external_run_id, status, queued_at, retry_count, metadata, created_at, updated_at, delivery_id)
    SELECT $8::uuid, task.id, $9, 'queued', $4::timestamptz, 0, $10::jsonb, $4::timestamptz, $4::timestamptz, $11 FROM task
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING id),
run AS (
    INSERT INTO runs (id, idempotency_key, command, source, status, requester_principal, requester_user_id, guild_id,
        channel_id, requester_name, namespace, workflow_template, service_account, workflow_name, workflow_uid, parameters,
        message, progress, workflow_phase, parent_run_id, attempts, created_at, updated_at, started_at, finished_at,
        cancel_requested_at, cancel_mode, trace_parent, cluster)
    SELECT $12, $13, $14, 'codex', 'queued', $15, '', '', '', $16, $17, $18, $19, $9, '', 
        jsonb_set($20::jsonb, ARRAY[$24::text], to_jsonb($3::text))::text, '', '', '', NULL, 0,
        $4::timestamptz, $4::timestamptz, NULL, NULL, NULL, '', $21, $25 FROM tr
    RETURNING id),
disp AS (
    INSERT INTO dispatches (id, run_id, kind, state, attempts, available_at, lease_owner, lease_token, lease_expires_at,
        last_error, dead_lettered_at, created_at, updated_at)
    SELECT $22, run.id, 'create', 'pending', 0, $4::timestamptz, '', '', NULL, '', NULL, $4::timestamptz, $4::timestamptz FROM run),
ev AS (
    INSERT INTO run_events (run_id, sequence, actor, kind, from_status, to_status, payload, created_at)
    SELECT run.id, 1, $15, 'created', 'queued', 'queued', $23, $4::timestamptz FROM run)
SELECT 0 AS ord, (SELECT id::text FROM idea) AS idea_id, (SELECT id::text FROM task) AS task_id,
    (SELECT id::text FROM tr) AS task_run_id";

/// [`SUBMIT_ONE`] with the row's values bound, in order. Each value is moved into the
/// statement's buffer (sized beforehand, so it never grows and copies itself) and dropped there:
/// a task of megabytes is not held twice while it is bound.
fn submit_one(r: Row) -> Result<sqlx::query::Query<'static, Postgres, PgArguments>> {
    use sqlx::Arguments as _;
    let cluster = r.cluster;
    let values = [
        r.idea_id,
        r.source_ref,
        r.payload,
        r.now,
        r.task_id,
        r.stage,
        r.task_meta,
        r.task_run_id,
        r.workflow_name,
        r.run_meta,
        r.delivery_id,
        r.run_id,
        r.idem,
        r.command,
        r.principal,
        r.display_name,
        r.namespace,
        r.template,
        r.service_account,
        r.params,
        r.traceparent,
        r.dispatch_id,
        r.event,
    ];
    let mut args = PgArguments::default();
    // Each text is bound as its length (4 bytes) and its bytes.
    let size = values.iter().map(|v| v.len() + 4).sum::<usize>()
        + codex::TASK_PARAMETER.len()
        + 4
        + cluster.len()
        + 4;
    args.reserve(values.len() + 2, size);
    let bind_error = |e| Error::Internal(format!("binding a codex delivery: {e}"));
    for v in values {
        args.add(v).map_err(bind_error)?;
    }
    args.add(codex::TASK_PARAMETER).map_err(bind_error)?;
    args.add(cluster).map_err(bind_error)?;
    Ok(sqlx::query_with(SUBMIT_ONE, args))
}

/// The batch statement. `$1`: a JSON array of [`Row`]s; `$2`: the parameter key that keeps the
/// task ([`codex::TASK_PARAMETER`]).
pub const SUBMIT_BATCH: &str = "WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(ord int, idea_id uuid, source_ref text, payload text,
        task_id uuid, stage text, task_meta jsonb, task_run_id uuid, workflow_name text, run_meta jsonb,
        delivery_id text, run_id text, idem text, command text, principal text, display_name text,
        cluster text, namespace text, template text, service_account text, params text, traceparent text,
        dispatch_id text, event text, now timestamptz)),
fresh AS (
    SELECT input.* FROM input LEFT JOIN LATERAL (
        SELECT true AS found FROM codex_kb.task_runs seen WHERE seen.delivery_id = input.delivery_id LIMIT 1
    ) recorded ON true
    WHERE recorded.found IS NULL),
idea AS (
    INSERT INTO codex_kb.ideas (id, source_type, source_ref, priority, status, risk_flags, payload, created_at, updated_at)
    SELECT idea_id, 'github_issue', source_ref, 0, 'received', '{}', payload::jsonb, now, now FROM fresh ORDER BY source_ref
    ON CONFLICT (source_type, source_ref) DO UPDATE SET payload = excluded.payload, updated_at = excluded.updated_at
    RETURNING id, source_ref),
task AS (
    INSERT INTO codex_kb.tasks (id, idea_id, stage, state, metadata, created_at, updated_at)
    SELECT f.task_id, idea.id, f.stage, 'queued', f.task_meta, f.now, f.now
    FROM fresh f JOIN idea USING (source_ref) ORDER BY f.source_ref
    ON CONFLICT (idea_id, stage) DO UPDATE SET state = 'queued', metadata = excluded.metadata, updated_at = excluded.updated_at
    RETURNING id, idea_id, stage),
tr AS (
    INSERT INTO codex_kb.task_runs (id, task_id, external_run_id, status, queued_at, retry_count, metadata, created_at, updated_at, delivery_id)
    SELECT f.task_run_id, task.id, f.workflow_name, 'queued', f.now, 0, f.run_meta, f.now, f.now, f.delivery_id
    FROM fresh f JOIN idea USING (source_ref) JOIN task ON task.idea_id = idea.id AND task.stage = f.stage
    ORDER BY f.delivery_id
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING id, delivery_id),
run AS (
    INSERT INTO runs (id, idempotency_key, command, source, status, requester_principal, requester_user_id, guild_id,
        channel_id, requester_name, namespace, workflow_template, service_account, workflow_name, workflow_uid, parameters,
        message, progress, workflow_phase, parent_run_id, attempts, created_at, updated_at, started_at, finished_at,
        cancel_requested_at, cancel_mode, trace_parent, cluster)
    SELECT f.run_id, f.idem, f.command, 'codex', 'queued', f.principal, '', '', '', f.display_name, f.namespace,
        f.template, f.service_account, f.workflow_name, '',
        jsonb_set(f.params::jsonb, ARRAY[$2::text], to_jsonb(f.payload))::text, '', '', '', NULL, 0, f.now, f.now, NULL, NULL,
        NULL, '', f.traceparent, f.cluster
    FROM fresh f JOIN tr USING (delivery_id)
    RETURNING id),
disp AS (
    INSERT INTO dispatches (id, run_id, kind, state, attempts, available_at, lease_owner, lease_token, lease_expires_at,
        last_error, dead_lettered_at, created_at, updated_at)
    SELECT f.dispatch_id, run.id, 'create', 'pending', 0, f.now, '', '', NULL, '', NULL, f.now, f.now
    FROM fresh f JOIN run ON run.id = f.run_id),
ev AS (
    INSERT INTO run_events (run_id, sequence, actor, kind, from_status, to_status, payload, created_at)
    SELECT run.id, 1, f.principal, 'created', 'queued', 'queued', f.event, f.now
    FROM fresh f JOIN run ON run.id = f.run_id)
SELECT f.ord, idea.id::text AS idea_id, task.id::text AS task_id, tr.id::text AS task_run_id
FROM fresh f JOIN idea USING (source_ref) JOIN task ON task.idea_id = idea.id AND task.stage = f.stage
    JOIN tr USING (delivery_id) JOIN run ON run.id = f.run_id";

struct Pending {
    row: Row,
    size: usize,
    done: oneshot::Sender<Result<Option<Written>>>,
}

/// The queue and the batches in flight.
pub struct Batcher {
    pool: PgPool,
    /// Connections kept between statements (at most one per slot). A connection given back to
    /// the pool costs a round trip: sqlx pings every connection it takes back.
    held: Mutex<Vec<Held>>,
    queue: Mutex<VecDeque<Pending>>,
    running: AtomicUsize,
    slots: usize,
    statements: AtomicU64,
    deliveries: AtomicU64,
}

impl fmt::Debug for Batcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("slots", &self.slots)
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// At most `slots` statements in flight (at least one).
    pub fn new(db: &DatabaseConnection, slots: usize) -> Arc<Batcher> {
        Arc::new(Batcher {
            pool: db.get_postgres_connection_pool().clone(),
            held: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
            running: AtomicUsize::new(0),
            slots: slots.max(1),
            statements: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
        })
    }

    /// Statements that succeeded and the deliveries they carried.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            statements: self.statements.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
        }
    }

    /// Writes one delivery's rows with whatever else is waiting. `None`: the delivery id was
    /// already recorded (or another submission of it won), nothing was written for this one.
    pub async fn submit(self: &Arc<Self>, row: Row) -> Result<Option<Written>> {
        // Nothing waits and a slot is free: write it now, here. (A submission queued meanwhile
        // is started when the slot is given back.)
        if self.lock().is_empty() && self.acquire() {
            let _slot = Slot(self);
            return self.write_one(row).await.inspect_err(|e| self.outage(e));
        }
        let (done, wait) = oneshot::channel();
        let size = approx_size(&row);
        self.lock().push_back(Pending { row, size, done });
        self.start();
        wait.await
            .map_err(|_| Error::Internal("the codex batch was abandoned".into()))?
    }

    /// After a write found the database unavailable: the deliveries queued meanwhile are
    /// answered with the same error at once (their producers retry), instead of each waiting
    /// out a connection attempt of its own.
    fn outage(&self, e: &Error) {
        if !matches!(e, Error::Unavailable { .. }) {
            return;
        }
        let queued: Vec<Pending> = self.lock().drain(..).collect();
        for p in queued {
            let _ = p.done.send(Err(Self::same(e)));
        }
    }

    fn held_pop(&self) -> Option<Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn held_push(&self, h: Held) {
        // A closing pool waits for every connection: none is kept once it closes.
        if !self.pool.is_closed() {
            self.held.lock().unwrap_or_else(|p| p.into_inner()).push(h);
        }
    }

    /// Gives the kept connections back to the pool (before it closes).
    pub fn release_held(&self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot if one is free.
    fn acquire(&self) -> bool {
        self.running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.slots).then_some(n + 1)
            })
            .is_ok()
    }

    fn start(self: &Arc<Self>) {
        if self.acquire() {
            // A task of its own: the batch finishes even if the submission that started it is
            // cancelled (its caller went away), since the others depend on it.
            tokio::spawn(self.clone().drain());
        }
    }

    async fn drain(self: Arc<Self>) {
        loop {
            let batch = self.take();
            if batch.is_empty() {
                self.running.fetch_sub(1, Ordering::SeqCst);
                // A submission queued after `take` may have found every slot busy.
                if self.lock().is_empty() || !self.acquire() {
                    return;
                }
                continue;
            }
            self.run(batch).await;
        }
    }

    /// The next batch: queued deliveries in order, none sharing a delivery id or an idea with
    /// another, within [`MAX_BATCH`] and [`MAX_BATCH_BYTES`].
    fn take(&self) -> Vec<Pending> {
        let mut queue = self.lock();
        let mut batch = Vec::new();
        let mut refs = HashSet::new();
        let mut ids = HashSet::new();
        let mut bytes = 0;
        let mut kept = VecDeque::new();
        while let Some(p) = queue.pop_front() {
            let size = p.size;
            let full =
                batch.len() >= MAX_BATCH || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES);
            if full {
                queue.push_front(p);
                break;
            }
            if refs.contains(&p.row.source_ref) || ids.contains(&p.row.delivery_id) {
                kept.push_back(p);
                continue;
            }
            refs.insert(p.row.source_ref.clone());
            ids.insert(p.row.delivery_id.clone());
            bytes += size;
            batch.push(p);
        }
        while let Some(p) = kept.pop_back() {
            queue.push_front(p);
        }
        batch
    }

    async fn run(&self, mut batch: Vec<Pending>) {
        if batch.len() == 1 {
            let p = batch.remove(0);
            let result = self.write_one(p.row).await;
            if let Err(e) = &result {
                self.outage(e);
            }
            let _ = p.done.send(result);
            return;
        }
        for (i, p) in batch.iter_mut().enumerate() {
            p.row.ord = i;
        }
        let rows: Vec<&Row> = batch.iter().map(|p| &p.row).collect();
        let result = self.write_many(&rows).await;
        drop(rows);
        match result {
            Ok(mut written) => {
                for (i, p) in batch.into_iter().enumerate() {
                    let _ = p.done.send(Ok(written.remove(&i)));
                }
            }
            Err(e) if matches!(e, Error::Unavailable { .. }) => {
                // The database is not there: every delivery of the batch, and every one queued
                // behind it, is answered now rather than after a connection wait of its own.
                self.outage(&e);
                for p in batch {
                    let _ = p.done.send(Err(Self::same(&e)));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, deliveries = batch.len(), "codex batch failed; writing its deliveries one by one");
                for p in batch {
                    let result = self.write_one(p.row).await;
                    let _ = p.done.send(result);
                }
            }
        }
    }

    /// The same answer for another delivery of a failed batch.
    fn same(e: &Error) -> Error {
        match e {
            Error::Unavailable {
                dependency,
                message,
            } => Error::Unavailable {
                dependency,
                message: message.clone(),
            },
            other => Error::Internal(other.to_string()),
        }
    }

    /// One delivery, alone ([`SUBMIT_ONE`], which answers at position 0); `None` if it was
    /// recorded before.
    async fn write_one(&self, row: Row) -> Result<Option<Written>> {
        let size = approx_size(&row);
        let mut written = self.execute(submit_one(row)?, size, 1).await?;
        Ok(written.remove(&0))
    }

    /// Several deliveries in one [`SUBMIT_BATCH`] statement; what it wrote, by position.
    async fn write_many(&self, batch: &[&Row]) -> Result<HashMap<usize, Written>> {
        let json = serde_json::to_string(batch).map_err(|e| Error::Internal(e.to_string()))?;
        let size = batch.iter().map(|r| approx_size(r)).sum();
        let query = sqlx::query(SUBMIT_BATCH)
            .bind(json)
            .bind(codex::TASK_PARAMETER);
        self.execute(query, size, batch.len()).await
    }

    /// Runs one submission statement of about `size` bytes for `deliveries` deliveries; what it
    /// wrote, by position.
    async fn execute(
        &self,
        query: sqlx::query::Query<'_, Postgres, PgArguments>,
        size: usize,
        deliveries: usize,
    ) -> Result<HashMap<usize, Written>> {
        let held = self.held_pop();
        let mut held = match held {
            Some(h) => h,
            None => Held {
                conn: self.pool.acquire().await?,
                since: Instant::now(),
            },
        };
        // On an error (or if this future is dropped) the connection goes back to the pool,
        // which tests it and closes it if it is broken.
        let result: Vec<PgRow> = query.fetch_all(&mut *held.conn).await?;
        if size > KEEP_AFTER_AT_MOST {
            // sqlx keeps a connection's buffers as large as the largest message it carried:
            // after a statement this large the connection is closed rather than kept, so the
            // memory a large delivery took is given back with it.
            tokio::spawn(held.conn.close());
        } else if held.since.elapsed() < HOLD_AT_MOST {
            self.held_push(held);
        }
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.deliveries
            .fetch_add(deliveries as u64, Ordering::Relaxed);
        let mut written = HashMap::with_capacity(result.len());
        for r in result {
            let ord: i32 = r.try_get("ord")?;
            let text = |col: &str| {
                r.try_get::<Option<String>, _>(col)
                    .map_err(|e| Error::Internal(format!("reading {col}: {e}")))
            };
            // SUBMIT_ONE answers NULLs when the delivery was recorded before.
            let Some(task_run_id) = text("task_run_id")? else {
                continue;
            };
            let missing =
                |col: &str| Error::Internal(format!("{col} missing for a written task run"));
            written.insert(
                usize::try_from(ord).unwrap_or(usize::MAX),
                Written {
                    idea_id: text("idea_id")?.ok_or_else(|| missing("idea_id"))?,
                    task_id: text("task_id")?.ok_or_else(|| missing("task_id"))?,
                    task_run_id,
                },
            );
        }
        Ok(written)
    }
}

/// How long a connection is kept before it goes back to the pool (which then applies its
/// lifetime and idle rules to it).
const HOLD_AT_MOST: Duration = Duration::from_secs(300);

/// The largest statement (bytes, near enough) after which a connection is kept.
const KEEP_AFTER_AT_MOST: usize = 1024 * 1024;

/// A pool connection kept by the batcher between statements.
struct Held {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

/// A slot taken by a submission writing its own delivery: given back when the write ends or is
/// abandoned (its caller went away), then whatever queued meanwhile is started.
struct Slot<'a>(&'a Arc<Batcher>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        if !self.0.lock().is_empty() {
            self.0.start();
        }
    }
}

/// Bytes a row adds to the statement, near enough: the parameters carry the task (as
/// `rawEvent`), the payload is the task once more.
fn approx_size(row: &Row) -> usize {
    1024 + row.params.len() + row.payload.len() + row.event.len()
}
