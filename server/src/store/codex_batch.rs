//! Group commit of Codex submissions on Postgres.
//!
//! Every new delivery goes through a queue. While fewer than `slots` batches are in flight, a
//! submission starts one at once (alone, if nothing else waits: no timer, no added latency);
//! submissions arriving while every slot is busy wait in the queue and go together into the next
//! statement. One statement writes a whole batch (the look-up of the delivery ids, the idea and
//! task upserts, the task runs, runs, dispatches and first history entries) and returns the
//! ids, so a delivery costs one round trip and a share of one commit instead of three
//! round trips and a commit of its own. Under load Postgres does much less work per delivery;
//! alone, a delivery is one statement.
//!
//! Two deliveries of one `<repo>#<issue>` (or one delivery id) never share a batch: an upsert
//! may not touch a row twice in one statement. The later one waits for the next batch, where
//! the first one's rows exist. A failed batch is retried one delivery at a time, so a delivery
//! that cannot be written (or a deadlock between batches) fails only its own submission.

use super::BatchStats;
use crate::domain::{Error, Result};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement, Value};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The task as proto-JSON (`ideas.payload`).
    pub payload: serde_json::Value,
    /// New `tasks.id`.
    pub task_id: String,
    /// Stage.
    pub stage: String,
    /// `tasks.metadata`.
    pub task_meta: serde_json::Value,
    /// New `task_runs.id`.
    pub task_run_id: String,
    /// The Workflow name.
    pub workflow_name: String,
    /// `task_runs.metadata`.
    pub run_meta: serde_json::Value,
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
    /// Namespace.
    pub namespace: String,
    /// WorkflowTemplate.
    pub template: String,
    /// Service account.
    pub service_account: String,
    /// Parameters as stored (JSON text).
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

/// The batch statement. `$1`: a JSON array of [`Row`]s.
pub const SUBMIT_BATCH: &str = "WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(ord int, idea_id uuid, source_ref text, payload jsonb,
        task_id uuid, stage text, task_meta jsonb, task_run_id uuid, workflow_name text, run_meta jsonb,
        delivery_id text, run_id text, idem text, command text, principal text, display_name text,
        namespace text, template text, service_account text, params text, traceparent text,
        dispatch_id text, event text, now timestamptz)),
fresh AS (
    SELECT input.* FROM input LEFT JOIN LATERAL (
        SELECT true AS found FROM codex_kb.task_runs seen WHERE seen.delivery_id = input.delivery_id LIMIT 1
    ) recorded ON true
    WHERE recorded.found IS NULL),
idea AS (
    INSERT INTO codex_kb.ideas (id, source_type, source_ref, priority, status, risk_flags, payload, created_at, updated_at)
    SELECT idea_id, 'github_issue', source_ref, 0, 'received', '{}', payload, now, now FROM fresh ORDER BY source_ref
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
        cancel_requested_at, cancel_mode, trace_parent)
    SELECT f.run_id, f.idem, f.command, 'codex', 'queued', f.principal, '', '', '', f.display_name, f.namespace,
        f.template, f.service_account, f.workflow_name, '', f.params, '', '', '', NULL, 0, f.now, f.now, NULL, NULL,
        NULL, '', f.traceparent
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
    db: DatabaseConnection,
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
    pub fn new(db: DatabaseConnection, slots: usize) -> Arc<Batcher> {
        Arc::new(Batcher {
            db,
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
        let (done, wait) = oneshot::channel();
        let size = approx_size(&row);
        self.lock().push_back(Pending { row, size, done });
        self.start();
        wait.await
            .map_err(|_| Error::Internal("the codex batch was abandoned".into()))?
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
        for (i, p) in batch.iter_mut().enumerate() {
            p.row.ord = i;
        }
        match self.write(&batch).await {
            Ok(mut written) => {
                for (i, p) in batch.into_iter().enumerate() {
                    let _ = p.done.send(Ok(written.remove(&i)));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(p) = batch.pop() {
                    let _ = p.done.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, deliveries = batch.len(), "codex batch failed; writing its deliveries one by one");
                for mut p in batch {
                    p.row.ord = 0;
                    let one = std::slice::from_ref(&p);
                    let result = self.write(one).await.map(|mut w| w.remove(&0));
                    let _ = p.done.send(result);
                }
            }
        }
    }

    /// One statement for `batch`; what it wrote, by position.
    async fn write(&self, batch: &[Pending]) -> Result<HashMap<usize, Written>> {
        let rows: Vec<&Row> = batch.iter().map(|p| &p.row).collect();
        let json = serde_json::to_string(&rows).map_err(|e| Error::Internal(e.to_string()))?;
        let stmt = Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            SUBMIT_BATCH,
            vec![Value::from(json)],
        );
        let result = self.db.query_all_raw(stmt).await.map_err(Error::database)?;
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.deliveries
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut written = HashMap::with_capacity(result.len());
        for r in result {
            let ord: i32 = r.try_get("", "ord").map_err(Error::database)?;
            let text = |col: &str| {
                r.try_get::<String>("", col)
                    .map_err(|e| Error::Internal(format!("reading {col}: {e}")))
            };
            written.insert(
                usize::try_from(ord).unwrap_or(usize::MAX),
                Written {
                    idea_id: text("idea_id")?,
                    task_id: text("task_id")?,
                    task_run_id: text("task_run_id")?,
                },
            );
        }
        Ok(written)
    }
}

/// Bytes a row adds to the statement, near enough: the parameters carry the task (as
/// `rawEvent` and `eventBody`), the payload is the task once more.
fn approx_size(row: &Row) -> usize {
    1024 + 2 * row.params.len() + row.event.len()
}
