//! `codex_kb` persistence. A task is recorded as an idea (`github_issue`, `<repo>#<issue>`), a
//! task for its stage, and a task run keyed by the delivery id, in the same transaction as the
//! run and its dispatch: a delivery is either wholly accepted or not at all, and a replay on
//! any replica, at any time, finds the original through the unique delivery id.
//!
//! The SQL is written per backend: Postgres uses the `codex_kb` schema and native `uuid`,
//! `jsonb`, `timestamptz` columns (the old service's layout); SQLite uses `codex_kb_*` tables
//! with text columns.

use super::codex_batch::Row;
use super::errors;
use super::{Inserted, Store, insert_run, portable as stmt};
use crate::domain::codex::CodexPlan;
use crate::domain::run::{NewRun, Requester, Run, RunSource, RunStatus};
use crate::domain::{Error, Result};
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, QueryResult, TransactionTrait};

/// What a submission recorded (or found, for a replay).
#[derive(Clone, Debug)]
pub struct CodexAccepted {
    /// `ideas.id`.
    pub idea_id: String,
    /// `tasks.id`.
    pub task_id: String,
    /// `task_runs.id`.
    pub task_run_id: String,
    /// The run (absent for a delivery the old service recorded without one).
    pub run: Option<Run>,
    /// When the delivery was first accepted.
    pub submitted_at: DateTime<Utc>,
    /// The delivery id had been accepted before.
    pub duplicate: bool,
    /// `task_runs.external_run_id` (the Workflow name).
    pub workflow_name: String,
}

/// A task run as listed.
#[derive(Clone, Debug)]
pub struct CodexRecord {
    /// `ideas.id`.
    pub idea_id: String,
    /// `tasks.id`.
    pub task_id: String,
    /// `task_runs.id`.
    pub task_run_id: String,
    /// Delivery id.
    pub delivery_id: String,
    /// `owner/name`.
    pub repository: String,
    /// Issue number.
    pub issue_number: i64,
    /// Stage.
    pub stage: String,
    /// `task_runs.status`.
    pub status: String,
    /// The run.
    pub run: Option<Run>,
    /// `task_runs.created_at`.
    pub created_at: DateTime<Utc>,
}

/// Idempotency key of the run of a delivery.
pub fn run_key(delivery_id: &str) -> String {
    format!("codex:{delivery_id}")
}

fn pg(backend: DatabaseBackend) -> bool {
    backend == DatabaseBackend::Postgres
}

/// Table name per backend.
fn t(backend: DatabaseBackend, table: &str) -> String {
    if pg(backend) {
        format!("codex_kb.{table}")
    } else {
        format!("codex_kb_{table}")
    }
}

/// Timestamps as bound values: text everywhere (cast on Postgres), RFC 3339 with microseconds.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Reading a timestamp column selected as text.
fn parse_stamp(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
        })
        .map_err(|e| Error::Internal(format!("stored timestamp `{s}` is invalid: {e}")))
}

/// `created_at` selected as RFC 3339 text on both backends.
fn ts_text(backend: DatabaseBackend, col: &str) -> String {
    if pg(backend) {
        format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    } else {
        col.to_string()
    }
}

fn get(row: &QueryResult, col: &str) -> Result<String> {
    row.try_get::<String>("", col)
        .map_err(|e| Error::Internal(format!("reading {col}: {e}")))
}

impl Store {
    /// Records a task and starts its run, or finds the original for a replayed delivery id.
    pub async fn submit_codex(
        &self,
        plan: &CodexPlan,
        principal: &str,
        trace_parent: String,
    ) -> Result<CodexAccepted> {
        let b = self.db.get_database_backend();
        // SQLite looks the delivery up first; the Postgres batch statement does it itself.
        if self.codex_batch.is_none()
            && let Some(found) = self.codex_accepted(&plan.delivery_id).await?
        {
            return Ok(found);
        }
        // One instant for every row of the delivery (task run, run, dispatch, history), to the
        // microsecond both backends keep.
        let at = Utc::now().trunc_subsecs(6);
        let now = stamp(at);
        let run_id = uuid::Uuid::now_v7();
        let workflow_name = crate::domain::run::workflow_name(&plan.workflow_name_prefix, &run_id);
        let source_ref = format!("{}#{}", plan.repository, plan.issue_number);
        let task_meta = serde_json::json!({"repository": plan.repository, "issue_number": plan.issue_number, "delivery_id": plan.delivery_id});
        let run_meta = serde_json::json!({"facteur_run_id": run_id.to_string(), "workflow_name": workflow_name, "namespace": plan.namespace, "workflow_template": plan.workflow_template});

        let new = NewRun {
            idempotency_key: run_key(&plan.delivery_id),
            command: format!("codex:{}", plan.stage),
            source: RunSource::Codex,
            requester: Requester {
                principal: principal.to_string(),
                display_name: plan.repository.clone(),
                ..Default::default()
            },
            namespace: plan.namespace.clone(),
            workflow_template: plan.workflow_template.clone(),
            service_account: plan.service_account.clone(),
            workflow_name_prefix: plan.workflow_name_prefix.clone(),
            parameters: plan.parameters.clone(),
            parent_run_id: None,
            trace_parent,
        };
        if let Some(batcher) = &self.codex_batch {
            let params = serde_json::to_string(&new.parameters)
                .map_err(|e| Error::Internal(e.to_string()))?;
            let row = Row {
                ord: 0,
                idea_id: uuid::Uuid::new_v4().to_string(),
                source_ref,
                payload: plan.task_json.clone(),
                task_id: uuid::Uuid::new_v4().to_string(),
                stage: plan.stage.to_string(),
                task_meta: task_meta.to_string(),
                task_run_id: uuid::Uuid::new_v4().to_string(),
                workflow_name: workflow_name.clone(),
                run_meta: run_meta.to_string(),
                delivery_id: plan.delivery_id.clone(),
                run_id: run_id.to_string(),
                idem: new.idempotency_key.clone(),
                command: new.command.clone(),
                principal: principal.to_string(),
                display_name: new.requester.display_name.clone(),
                namespace: new.namespace.clone(),
                template: new.workflow_template.clone(),
                service_account: new.service_account.clone(),
                params,
                traceparent: new.trace_parent.clone(),
                dispatch_id: uuid::Uuid::now_v7().to_string(),
                event: super::created_payload(&new).to_string(),
                now: now.clone(),
            };
            let Some(w) = batcher.submit(row).await? else {
                // Recorded before, or another submission of this delivery committed first.
                return self
                    .codex_accepted(&plan.delivery_id)
                    .await?
                    .ok_or_else(|| {
                        Error::Internal("delivery conflicted but is not recorded".into())
                    });
            };
            // The run as the statement wrote it.
            let run = Run {
                id: run_id.to_string(),
                idempotency_key: new.idempotency_key,
                command: new.command,
                source: RunSource::Codex,
                status: RunStatus::Queued,
                requester: new.requester,
                namespace: new.namespace,
                workflow_template: new.workflow_template,
                service_account: new.service_account,
                workflow_name: workflow_name.clone(),
                workflow_uid: String::new(),
                parameters: new.parameters,
                message: String::new(),
                progress: String::new(),
                workflow_phase: String::new(),
                parent_run_id: None,
                attempts: 0,
                created_at: at,
                updated_at: at,
                started_at: None,
                finished_at: None,
                cancel_requested_at: None,
                trace_parent: new.trace_parent,
            };
            return Ok(CodexAccepted {
                idea_id: w.idea_id,
                task_id: w.task_id,
                task_run_id: w.task_run_id,
                submitted_at: at,
                duplicate: false,
                workflow_name,
                run: Some(run),
            });
        }
        let txn = self.db.begin().await.map_err(errors::db)?;
        let idea = txn
            .query_one_raw(stmt(
                b,
                &format!(
                    "INSERT INTO {} (id, source_type, source_ref, priority, status, risk_flags, payload, created_at, updated_at)
                     VALUES ($1::uuid, 'github_issue', $2, 0, 'received', '{{}}', $3::jsonb, $4::timestamptz, $4::timestamptz)
                     ON CONFLICT (source_type, source_ref) DO UPDATE SET payload = excluded.payload, updated_at = excluded.updated_at
                     RETURNING id::text AS id",
                    t(b, "ideas")
                ),
                vec![uuid::Uuid::new_v4().to_string().into(), source_ref.into(), plan.task_json.clone().into(), now.clone().into()],
            ))
            .await
            .map_err(errors::db)?
            .ok_or_else(|| Error::Internal("idea upsert returned nothing".into()))?;
        let idea_id = get(&idea, "id")?;
        let task = txn
            .query_one_raw(stmt(
                b,
                &format!(
                    "INSERT INTO {} (id, idea_id, stage, state, metadata, created_at, updated_at)
                     VALUES ($1::uuid, $2::uuid, $3, 'queued', $4::jsonb, $5::timestamptz, $5::timestamptz)
                     ON CONFLICT (idea_id, stage) DO UPDATE SET state = 'queued', metadata = excluded.metadata, updated_at = excluded.updated_at
                     RETURNING id::text AS id",
                    t(b, "tasks")
                ),
                vec![uuid::Uuid::new_v4().to_string().into(), idea_id.clone().into(), plan.stage.into(), task_meta.to_string().into(), now.clone().into()],
            ))
            .await
            .map_err(errors::db)?
            .ok_or_else(|| Error::Internal("task upsert returned nothing".into()))?;
        let task_id = get(&task, "id")?;
        let task_run = txn
            .query_one_raw(stmt(
                b,
                &format!(
                    "INSERT INTO {} (id, task_id, external_run_id, status, queued_at, retry_count, metadata, created_at, updated_at, delivery_id)
                     VALUES ($1::uuid, $2::uuid, $3, 'queued', $4::timestamptz, 0, $5::jsonb, $4::timestamptz, $4::timestamptz, $6)
                     ON CONFLICT (delivery_id) DO NOTHING
                     RETURNING id::text AS id",
                    t(b, "task_runs")
                ),
                vec![
                    uuid::Uuid::new_v4().to_string().into(),
                    task_id.clone().into(),
                    workflow_name.clone().into(),
                    now.clone().into(),
                    run_meta.to_string().into(),
                    plan.delivery_id.clone().into(),
                ],
            ))
            .await
            .map_err(errors::db)?;
        let Some(task_run) = task_run else {
            // Another submission of this delivery committed first.
            let _ = txn.rollback().await;
            return self
                .codex_accepted(&plan.delivery_id)
                .await?
                .ok_or_else(|| Error::Internal("delivery conflicted but is not recorded".into()));
        };
        let task_run_id = get(&task_run, "id")?;
        match insert_run(&txn, run_id, &new, principal, at).await {
            Ok(()) => {}
            Err(Inserted::Duplicate(e)) => {
                let _ = txn.rollback().await;
                return Err(Error::Internal(format!(
                    "the run of delivery `{}` exists without its task run: {e}",
                    plan.delivery_id
                )));
            }
            Err(Inserted::Failed(e)) => return Err(e),
        }
        txn.commit().await.map_err(errors::db)?;
        let run = self.get_run(&run_id.to_string()).await?;
        Ok(CodexAccepted {
            idea_id,
            task_id,
            task_run_id,
            submitted_at: at,
            duplicate: false,
            workflow_name,
            run,
        })
    }

    /// The recorded submission of a delivery id (`duplicate: true`), if any.
    async fn codex_accepted(&self, delivery_id: &str) -> Result<Option<CodexAccepted>> {
        let Some(r) = self.codex_by_delivery(delivery_id).await? else {
            return Ok(None);
        };
        let workflow_name = r
            .run
            .as_ref()
            .map(|run| run.workflow_name.clone())
            .unwrap_or_default();
        Ok(Some(CodexAccepted {
            idea_id: r.idea_id,
            task_id: r.task_id,
            task_run_id: r.task_run_id,
            run: r.run,
            submitted_at: r.created_at,
            duplicate: true,
            workflow_name,
        }))
    }

    fn codex_select(&self, filter: &str) -> String {
        let b = self.db.get_database_backend();
        format!(
            "SELECT tr.id::text AS task_run_id, tr.task_id::text AS task_id, tk.idea_id::text AS idea_id, tr.delivery_id,
                    tr.status, tk.stage, i.source_ref, {} AS created_at, tr.created_at AS created_sort
             FROM {} tr JOIN {} tk ON tk.id = tr.task_id JOIN {} i ON i.id = tk.idea_id
             WHERE {filter}",
            ts_text(b, "tr.created_at"),
            t(b, "task_runs"),
            t(b, "tasks"),
            t(b, "ideas")
        )
    }

    async fn codex_record(&self, row: QueryResult) -> Result<CodexRecord> {
        let delivery_id = get(&row, "delivery_id")?;
        let source_ref = get(&row, "source_ref")?;
        let (repository, issue) = source_ref
            .rsplit_once('#')
            .unwrap_or((source_ref.as_str(), "0"));
        Ok(CodexRecord {
            idea_id: get(&row, "idea_id")?,
            task_id: get(&row, "task_id")?,
            task_run_id: get(&row, "task_run_id")?,
            repository: repository.to_string(),
            issue_number: issue.parse().unwrap_or(0),
            stage: get(&row, "stage")?,
            status: get(&row, "status")?,
            created_at: parse_stamp(&get(&row, "created_at")?)?,
            run: self.run_by_key(&run_key(&delivery_id)).await?,
            delivery_id,
        })
    }

    /// A task run by delivery id.
    pub async fn codex_by_delivery(&self, delivery_id: &str) -> Result<Option<CodexRecord>> {
        let b = self.db.get_database_backend();
        let q = stmt(
            b,
            &self.codex_select("tr.delivery_id = $1"),
            vec![delivery_id.into()],
        );
        match self.db.query_one_raw(q).await.map_err(errors::db)? {
            Some(row) => Ok(Some(self.codex_record(row).await?)),
            None => Ok(None),
        }
    }

    /// A task run by id.
    pub async fn codex_by_task_run(&self, id: &str) -> Result<Option<CodexRecord>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(Error::InvalidArgument(format!(
                "task_run_id `{id}` is not a UUID"
            )));
        }
        let b = self.db.get_database_backend();
        let q = stmt(b, &self.codex_select("tr.id = $1::uuid"), vec![id.into()]);
        match self.db.query_one_raw(q).await.map_err(errors::db)? {
            Some(row) => Ok(Some(self.codex_record(row).await?)),
            None => Ok(None),
        }
    }

    /// Task runs, newest first, optionally by repository and status, after a keyset cursor.
    pub async fn list_codex(
        &self,
        repository: &str,
        status: &str,
        limit: u64,
        after: Option<(DateTime<Utc>, String)>,
    ) -> Result<Vec<CodexRecord>> {
        let b = self.db.get_database_backend();
        // Without a cursor, start after a time later than any row (a typed value keeps the
        // Postgres cast valid; an empty string would not parse as a timestamp).
        let (after_t, after_id) = after
            .map(|(t, id)| (stamp(t), id))
            .unwrap_or_else(|| ("9999-12-31T00:00:00.000000Z".into(), String::new()));
        let filter = "($1 = '' OR i.source_ref LIKE $1 || '#%') AND ($2 = '' OR tr.status = $2)
             AND (tr.created_at < $3::timestamptz OR (tr.created_at = $3::timestamptz AND tr.id::text < $4))
             ORDER BY tr.created_at DESC, tr.id DESC LIMIT $5";
        let q = stmt(
            b,
            &self.codex_select(filter),
            vec![
                repository.into(),
                status.into(),
                after_t.into(),
                after_id.into(),
                (limit as i64).into(),
            ],
        );
        let rows = self.db.query_all_raw(q).await.map_err(errors::db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.codex_record(row).await?);
        }
        Ok(out)
    }
}

/// Keeps `task_runs.status`, `started_at` and `completed_at` in step with a Codex run; called in
/// the transaction that moves the run.
pub(crate) async fn sync_task_run<C: ConnectionTrait>(
    c: &C,
    run: &Run,
    to: crate::domain::run::RunStatus,
) -> Result<()> {
    let Some(delivery_id) = run.idempotency_key.strip_prefix("codex:") else {
        return Ok(());
    };
    let b = c.get_database_backend();
    let now = stamp(Utc::now());
    let started = to == crate::domain::run::RunStatus::Running || to.is_terminal();
    let text = format!(
        "UPDATE {} SET status = $1, updated_at = $2::timestamptz,
            started_at = CASE WHEN $3 AND started_at IS NULL THEN $2::timestamptz ELSE started_at END,
            completed_at = CASE WHEN $4 THEN $2::timestamptz ELSE completed_at END
         WHERE delivery_id = $5",
        t(b, "task_runs")
    );
    c.execute_raw(stmt(
        b,
        &text,
        vec![
            to.as_str().into(),
            now.into(),
            started.into(),
            to.is_terminal().into(),
            delivery_id.into(),
        ],
    ))
    .await
    .map_err(errors::db)?;
    Ok(())
}
