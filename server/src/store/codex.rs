//! `codex_kb` persistence. A task is recorded as an idea (`github_issue`, `<repo>#<issue>`), a
//! task for its stage, and a task run keyed by the delivery id, in the same transaction as the
//! run and its dispatch: a delivery is either wholly accepted or not at all, and a replay on
//! any replica, at any time, finds the original through the unique delivery id.
//!
//! The tables differ per backend: Postgres has the `codex_kb` schema with native `uuid`,
//! `jsonb`, `timestamptz` columns (the old service's layout); SQLite has `codex_kb_*` tables
//! with text columns. Statements are built with sea-query ([`Kb`] names the table and types the
//! values per backend), so each backend gets its own placeholders; the Postgres group-commit
//! statement (`codex_batch.rs`) is the one raw statement, kept for its measured speed.

use super::codex_batch::Row;

use super::{Inserted, Store, insert_run};
use crate::domain::codex::{CodexPlan, TASK_PARAMETER};
use crate::domain::run::{NewRun, Requester, Run, RunSource, RunStatus};
use crate::domain::{Error, Result};
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, InsertStatement, IntoTableRef, LikeExpr, OnConflict, Order, Query,
    TableRef,
};
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
    /// The run's id (absent for a delivery the old service recorded without a run).
    pub run_id: Option<String>,
    /// The run's namespace (empty without a run).
    pub namespace: String,
    /// A replayed delivery's run as first recorded (its parameters carry the first task).
    pub original: Option<Run>,
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

/// Timestamps as SQLite keeps them: RFC 3339 text with microseconds (sorts as it reads).
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Reading a timestamp SQLite keeps as text.
fn parse_stamp(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
        })
        .map_err(|e| Error::Internal(format!("stored timestamp `{s}` is invalid: {e}")))
}

/// The `codex_kb` tables and their column types on one backend.
#[derive(Clone, Copy)]
struct Kb(DatabaseBackend);

/// The aliases of the joined tables in [`Kb::select`].
const TR: &str = "tr";
const TK: &str = "tk";
const IDEA: &str = "i";

fn col(table: &str, column: &str) -> Expr {
    Expr::col((Alias::new(table), Alias::new(column)))
}

impl Kb {
    fn pg(self) -> bool {
        self.0 == DatabaseBackend::Postgres
    }

    /// `codex_kb.<name>` on Postgres, `codex_kb_<name>` on SQLite.
    fn table(self, name: &str) -> TableRef {
        if self.pg() {
            (Alias::new("codex_kb"), Alias::new(name)).into_table_ref()
        } else {
            Alias::new(format!("codex_kb_{name}")).into_table_ref()
        }
    }

    fn typed(self, v: impl Into<sea_orm::Value>, pg_type: &str) -> Expr {
        if self.pg() {
            Expr::val(v).cast_as(Alias::new(pg_type))
        } else {
            Expr::val(v)
        }
    }

    /// A UUID (a `uuid` column on Postgres, text on SQLite).
    fn uuid(self, v: impl Into<String>) -> Expr {
        self.typed(v.into(), "uuid")
    }

    /// A JSON document (`jsonb` on Postgres, text on SQLite).
    fn json(self, v: impl Into<String>) -> Expr {
        self.typed(v.into(), "jsonb")
    }

    /// An instant (`timestamptz` on Postgres, [`stamp`] text on SQLite).
    fn time(self, t: DateTime<Utc>) -> Expr {
        if self.pg() {
            Expr::val(t)
        } else {
            Expr::val(stamp(t))
        }
    }

    /// `INSERT INTO <table> (…) VALUES (…) RETURNING id`, each column beside its value.
    fn insert<const N: usize>(self, table: &str, row: [(&str, Expr); N]) -> InsertStatement {
        let (columns, values): (Vec<_>, Vec<_>) =
            row.into_iter().map(|(c, v)| (Alias::new(c), v)).unzip();
        Query::insert()
            .into_table(self.table(table))
            .columns(columns)
            .values_panic(values)
            .returning(Query::returning().column(Alias::new("id")))
            .to_owned()
    }

    /// A UUID column read back as text.
    fn id(self, row: &QueryResult, column: &str) -> Result<String> {
        let read = if self.pg() {
            row.try_get::<uuid::Uuid>("", column).map(|u| u.to_string())
        } else {
            row.try_get::<String>("", column)
        };
        read.map_err(|e| Error::Internal(format!("reading {column}: {e}")))
    }

    /// The id a `RETURNING id` gave, if a row was written.
    fn returned_id(self, row: Option<QueryResult>) -> Result<Option<String>> {
        row.map(|r| self.id(&r, "id")).transpose()
    }

    fn at(self, row: &QueryResult, column: &str) -> Result<DateTime<Utc>> {
        if self.pg() {
            row.try_get::<DateTime<Utc>>("", column)
                .map_err(|e| Error::Internal(format!("reading {column}: {e}")))
        } else {
            parse_stamp(&text(row, column)?)
        }
    }

    /// Task runs with their task and idea: `tr`, `tk`, `i`.
    fn select(self) -> sea_orm::sea_query::SelectStatement {
        let mut q = Query::select();
        q.expr_as(col(TR, "id"), Alias::new("task_run_id"))
            .expr_as(col(TR, "task_id"), Alias::new("task_id"))
            .expr_as(col(TK, "idea_id"), Alias::new("idea_id"))
            .expr_as(col(TR, "delivery_id"), Alias::new("delivery_id"))
            .expr_as(col(TR, "status"), Alias::new("status"))
            .expr_as(col(TK, "stage"), Alias::new("stage"))
            .expr_as(col(IDEA, "source_ref"), Alias::new("source_ref"))
            .expr_as(col(TR, "created_at"), Alias::new("created_at"))
            .from(self.table("task_runs").alias(Alias::new(TR)))
            .inner_join(
                self.table("tasks").alias(Alias::new(TK)),
                col(TK, "id").eq(col(TR, "task_id")),
            )
            .inner_join(
                self.table("ideas").alias(Alias::new(IDEA)),
                col(IDEA, "id").eq(col(TK, "idea_id")),
            );
        q
    }
}

fn text(row: &QueryResult, column: &str) -> Result<String> {
    row.try_get::<String>("", column)
        .map_err(|e| Error::Internal(format!("reading {column}: {e}")))
}

impl Store {
    /// Records a task and starts its run, or finds the original for a replayed delivery id.
    /// Takes the plan: its task (megabytes, maybe) goes into the statement, not copied.
    pub async fn submit_codex(
        &self,
        plan: CodexPlan,
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
        let run_meta = serde_json::json!({"facteur_run_id": run_id.to_string(), "workflow_name": workflow_name, "cluster": plan.cluster, "namespace": plan.namespace, "workflow_template": plan.workflow_template});
        let accepted = |ids: (String, String, String)| CodexAccepted {
            idea_id: ids.0,
            task_id: ids.1,
            task_run_id: ids.2,
            run_id: Some(run_id.to_string()),
            namespace: plan.namespace.clone(),
            original: None,
            submitted_at: at,
            duplicate: false,
            workflow_name: workflow_name.clone(),
        };

        // The run's parameters as stored: the plan's own, the list of those the task gives, and
        // the task itself (`TASK_PARAMETER`) — added by the Postgres statement from the
        // payload it binds once, here for SQLite.
        let mut parameters = plan.stored_parameters();
        let new = NewRun {
            idempotency_key: run_key(&plan.delivery_id),
            command: format!("codex:{}", plan.stage),
            source: RunSource::Codex,
            requester: Requester {
                principal: principal.to_string(),
                display_name: plan.repository.clone(),
                ..Default::default()
            },
            cluster: plan.cluster.clone(),
            namespace: plan.namespace.clone(),
            workflow_template: plan.workflow_template.clone(),
            service_account: plan.service_account.clone(),
            workflow_name_prefix: plan.workflow_name_prefix.clone(),
            parameters: Default::default(),
            parent_run_id: None,
            trace_parent,
        };
        if let Some(batcher) = &self.codex_batch {
            let params = serde_json::to_string(&parameters)
                .map_err(|e| Error::Internal(format!("parameters: {e}")))?;
            let event = super::created_payload(&new).to_string();
            let row = Row {
                ord: 0,
                idea_id: uuid::Uuid::new_v4().to_string(),
                source_ref,
                payload: plan.task_json,
                task_id: uuid::Uuid::new_v4().to_string(),
                stage: plan.stage.to_string(),
                task_meta: task_meta.to_string(),
                task_run_id: uuid::Uuid::new_v4().to_string(),
                workflow_name: workflow_name.clone(),
                run_meta: run_meta.to_string(),
                delivery_id: plan.delivery_id.clone(),
                run_id: run_id.to_string(),
                idem: new.idempotency_key,
                command: new.command,
                principal: principal.to_string(),
                display_name: new.requester.display_name,
                cluster: new.cluster,
                namespace: new.namespace,
                template: new.workflow_template,
                service_account: new.service_account,
                params,
                traceparent: new.trace_parent,
                dispatch_id: uuid::Uuid::now_v7().to_string(),
                event,
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
            return Ok(accepted((w.idea_id, w.task_id, w.task_run_id)));
        }
        let kb = Kb(b);
        let txn = self.db.begin().await?;
        let idea = kb
            .insert(
                "ideas",
                [
                    ("id", kb.uuid(uuid::Uuid::new_v4().to_string())),
                    ("source_type", Expr::val("github_issue")),
                    ("source_ref", Expr::val(source_ref)),
                    ("priority", Expr::val(0)),
                    ("status", Expr::val("received")),
                    ("risk_flags", kb.json("{}")),
                    ("payload", kb.json(plan.task_json.clone())),
                    ("created_at", kb.time(at)),
                    ("updated_at", kb.time(at)),
                ],
            )
            .on_conflict(
                OnConflict::columns([Alias::new("source_type"), Alias::new("source_ref")])
                    .update_columns([Alias::new("payload"), Alias::new("updated_at")])
                    .to_owned(),
            )
            .to_owned();
        let idea_id = kb
            .returned_id(txn.query_one(&idea).await?)?
            .ok_or_else(|| Error::Internal("idea upsert returned nothing".into()))?;
        drop(idea);
        let task = kb
            .insert(
                "tasks",
                [
                    ("id", kb.uuid(uuid::Uuid::new_v4().to_string())),
                    ("idea_id", kb.uuid(idea_id.clone())),
                    ("stage", Expr::val(plan.stage)),
                    ("state", Expr::val("queued")),
                    ("metadata", kb.json(task_meta.to_string())),
                    ("created_at", kb.time(at)),
                    ("updated_at", kb.time(at)),
                ],
            )
            .on_conflict(
                OnConflict::columns([Alias::new("idea_id"), Alias::new("stage")])
                    .value(Alias::new("state"), "queued")
                    .update_columns([Alias::new("metadata"), Alias::new("updated_at")])
                    .to_owned(),
            )
            .to_owned();
        let task_id = kb
            .returned_id(txn.query_one(&task).await?)?
            .ok_or_else(|| Error::Internal("task upsert returned nothing".into()))?;
        let task_run = kb
            .insert(
                "task_runs",
                [
                    ("id", kb.uuid(uuid::Uuid::new_v4().to_string())),
                    ("task_id", kb.uuid(task_id.clone())),
                    ("external_run_id", Expr::val(workflow_name.clone())),
                    ("status", Expr::val("queued")),
                    ("queued_at", kb.time(at)),
                    ("retry_count", Expr::val(0)),
                    ("metadata", kb.json(run_meta.to_string())),
                    ("created_at", kb.time(at)),
                    ("updated_at", kb.time(at)),
                    ("delivery_id", Expr::val(plan.delivery_id.clone())),
                ],
            )
            .on_conflict(
                OnConflict::column(Alias::new("delivery_id"))
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        let task_run = kb.returned_id(txn.query_one(&task_run).await?)?;
        let Some(task_run_id) = task_run else {
            // Another submission of this delivery committed first.
            let _ = txn.rollback().await;
            return self
                .codex_accepted(&plan.delivery_id)
                .await?
                .ok_or_else(|| Error::Internal("delivery conflicted but is not recorded".into()));
        };
        parameters.insert(TASK_PARAMETER.into(), plan.task_json);
        let new = NewRun { parameters, ..new };
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
        txn.commit().await?;
        Ok(accepted((idea_id, task_id, task_run_id)))
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
            run_id: r.run.as_ref().map(|run| run.id.clone()),
            namespace: r
                .run
                .as_ref()
                .map(|run| run.namespace.clone())
                .unwrap_or_default(),
            original: r.run,
            submitted_at: r.created_at,
            duplicate: true,
            workflow_name,
        }))
    }

    async fn codex_record(&self, kb: Kb, row: QueryResult) -> Result<CodexRecord> {
        let delivery_id = text(&row, "delivery_id")?;
        let source_ref = text(&row, "source_ref")?;
        let (repository, issue) = source_ref
            .rsplit_once('#')
            .unwrap_or((source_ref.as_str(), "0"));
        Ok(CodexRecord {
            idea_id: kb.id(&row, "idea_id")?,
            task_id: kb.id(&row, "task_id")?,
            task_run_id: kb.id(&row, "task_run_id")?,
            repository: repository.to_string(),
            issue_number: issue.parse().unwrap_or(0),
            stage: text(&row, "stage")?,
            status: text(&row, "status")?,
            created_at: kb.at(&row, "created_at")?,
            run: self.run_by_key(&run_key(&delivery_id)).await?,
            delivery_id,
        })
    }

    async fn codex_one(&self, filter: Expr) -> Result<Option<CodexRecord>> {
        let kb = Kb(self.db.get_database_backend());
        let q = kb.select().and_where(filter).to_owned();
        match self.db.query_one(&q).await? {
            Some(row) => Ok(Some(self.codex_record(kb, row).await?)),
            None => Ok(None),
        }
    }

    /// A task run by delivery id.
    pub async fn codex_by_delivery(&self, delivery_id: &str) -> Result<Option<CodexRecord>> {
        self.codex_one(col(TR, "delivery_id").eq(delivery_id)).await
    }

    /// A task run by id.
    pub async fn codex_by_task_run(&self, id: &str) -> Result<Option<CodexRecord>> {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(Error::invalid(
                "task_run_id",
                format!("task_run_id `{id}` is not a UUID"),
            ));
        }
        let kb = Kb(self.db.get_database_backend());
        self.codex_one(col(TR, "id").eq(kb.uuid(id))).await
    }

    /// Task runs, newest first, optionally by repository and status, after a keyset cursor.
    pub async fn list_codex(
        &self,
        repository: &str,
        status: &str,
        limit: u64,
        after: Option<(DateTime<Utc>, String)>,
    ) -> Result<Vec<CodexRecord>> {
        let kb = Kb(self.db.get_database_backend());
        let mut q = kb.select();
        if !repository.is_empty() {
            // `owner/name#…`, with LIKE's wildcards in the name taken literally.
            let literal = repository
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            q.and_where(
                col(IDEA, "source_ref").like(LikeExpr::new(format!("{literal}#%")).escape('\\')),
            );
        }
        if !status.is_empty() {
            q.and_where(col(TR, "status").eq(status));
        }
        if let Some((t, id)) = after {
            q.and_where(
                col(TR, "created_at")
                    .lt(kb.time(t))
                    .or(col(TR, "created_at")
                        .eq(kb.time(t))
                        .and(col(TR, "id").lt(kb.uuid(id)))),
            );
        }
        q.order_by_expr(col(TR, "created_at"), Order::Desc)
            .order_by_expr(col(TR, "id"), Order::Desc)
            .limit(limit);
        let rows = self.db.query_all(&q).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.codex_record(kb, row).await?);
        }
        Ok(out)
    }
}

/// Keeps `task_runs.status`, `started_at` and `completed_at` in step with a Codex run; called in
/// the transaction that moves the run.
pub(crate) async fn sync_task_run<C: ConnectionTrait>(
    c: &C,
    run: &Run,
    to: RunStatus,
) -> Result<()> {
    sync_task_runs(c, &[run], to).await
}

/// [`sync_task_run`] for several runs moving to the same status, in one statement.
pub(crate) async fn sync_task_runs<C: ConnectionTrait>(
    c: &C,
    runs: &[&Run],
    to: RunStatus,
) -> Result<()> {
    let ids: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.idempotency_key.strip_prefix("codex:"))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let kb = Kb(c.get_database_backend());
    let now = Utc::now();
    let mut q = Query::update();
    q.table(kb.table("task_runs"))
        .value(Alias::new("status"), to.as_str())
        .value(Alias::new("updated_at"), kb.time(now));
    if to == RunStatus::Running || to.is_terminal() {
        // Set once: the first move to running (or straight to an end) starts it.
        q.value(
            Alias::new("started_at"),
            Expr::col(Alias::new("started_at")).if_null(kb.time(now)),
        );
    }
    if to.is_terminal() {
        q.value(Alias::new("completed_at"), kb.time(now));
    }
    q.and_where(Expr::col(Alias::new("delivery_id")).is_in(ids));
    c.execute(&q).await?;
    Ok(())
}

/// Retention of `task_runs` (only when `retention.codex_task_runs` is set): task runs whose run
/// ended before the cutoff, by `updated_at` (the time of that last move).
impl Store {
    fn task_runs_past(kb: Kb, cutoff: DateTime<Utc>) -> sea_orm::sea_query::SelectStatement {
        let ended: Vec<&str> = crate::domain::retention::prunable_statuses()
            .into_iter()
            .map(|s| s.as_str())
            .collect();
        Query::select()
            .from(kb.table("task_runs"))
            .and_where(Expr::col(Alias::new("updated_at")).lt(kb.time(cutoff)))
            .and_where(Expr::col(Alias::new("status")).is_in(ended))
            .to_owned()
    }

    /// How many task runs a pass at `cutoff` would delete.
    pub(crate) async fn prunable_task_runs(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let kb = Kb(self.db.get_database_backend());
        let q = Self::task_runs_past(kb, cutoff)
            .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
            .to_owned();
        let row = self
            .db
            .query_one(&q)
            .await?
            .ok_or_else(|| Error::Internal("count of task runs: no row".into()))?;
        let n: i64 = row.try_get("", "n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// One batch of task runs past `cutoff`; how many went.
    pub(crate) async fn prune_task_runs_batch(
        &self,
        cutoff: DateTime<Utc>,
        batch: u32,
    ) -> Result<u64> {
        let kb = Kb(self.db.get_database_backend());
        let ids = Self::task_runs_past(kb, cutoff)
            .column(Alias::new("id"))
            .limit(batch as u64)
            .to_owned();
        let q = Query::delete()
            .from_table(kb.table("task_runs"))
            .and_where(Expr::col(Alias::new("id")).in_subquery(ids))
            .to_owned();
        Ok(self.db.execute(&q).await?.rows_affected())
    }
}
