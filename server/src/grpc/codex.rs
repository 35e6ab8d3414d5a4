//! `facteur.v1.CodexService`, and the ingestion path it shares with `POST /codex/tasks`.

use super::convert;
use crate::auth::Principal;
use crate::domain::Result;
use crate::domain::codex::{Rejection, plan};
use crate::state::AppState;
use crate::store::codex::{CodexAccepted, CodexRecord};
use facteur_proto::froussard::CodexTask;
use facteur_proto::v1 as pb;
use pb::codex_service_server::CodexService;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// `facteur.v1.CodexService`.
#[derive(Clone)]
pub struct CodexApi(pub Arc<AppState>);

/// Validates, records and starts one task; counts it. Shared by gRPC and HTTP.
pub async fn ingest(
    state: &AppState,
    task: &CodexTask,
    delivery_override: &str,
    principal: &str,
) -> Result<CodexAccepted> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "codex_ingest",
        delivery_id = %if delivery_override.is_empty() { task.delivery_id.as_str() } else { delivery_override },
        repository = %task.repository,
        issue_number = task.issue_number,
    );
    let _guard = span.enter();
    let m = &state.metrics;
    let planned = plan(
        task,
        delivery_override,
        &state.config,
        facteur_proto::codex_task_json,
    );
    let plan = match planned {
        Ok(p) => p,
        Err((why, e)) => {
            reject(state, why.as_str());
            tracing::info!(reason = why.as_str(), error = %e, "codex task rejected");
            return Err(e);
        }
    };
    let trace_parent = facteur_config::telemetry::current_traceparent().unwrap_or_default();
    drop(_guard);
    let accepted = state
        .store
        .submit_codex(&plan, principal, trace_parent)
        .await?;
    if accepted.duplicate {
        m.add("facteur_codex_tasks_duplicate_total", vec![], 1);
        tracing::info!(delivery_id = %plan.delivery_id, "codex task replayed; answering with the original");
    } else {
        m.add("facteur_codex_tasks_accepted_total", vec![], 1);
        tracing::info!(delivery_id = %plan.delivery_id, workflow = %accepted.workflow_name, "codex task accepted");
        state.wake_dispatchers();
    }
    m.observe(
        "facteur_codex_ingest_duration_ms",
        vec![],
        started.elapsed(),
    );
    Ok(accepted)
}

/// Counts a refusal by reason.
pub fn reject(state: &AppState, reason: &'static str) {
    state.metrics.add(
        "facteur_codex_tasks_rejected_total",
        vec![("reason", reason.to_string())],
        1,
    );
}

fn record(r: &CodexRecord) -> pb::CodexTaskRecord {
    pb::CodexTaskRecord {
        idea_id: r.idea_id.clone(),
        task_id: r.task_id.clone(),
        task_run_id: r.task_run_id.clone(),
        delivery_id: r.delivery_id.clone(),
        repository: r.repository.clone(),
        issue_number: r.issue_number,
        stage: r.stage.clone(),
        status: r.status.clone(),
        run: r.run.as_ref().map(convert::run),
        created_at: Some(convert::ts(r.created_at)),
    }
}

#[tonic::async_trait]
impl CodexService for CodexApi {
    async fn submit_task(
        &self,
        req: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let Some(task) = r.task else {
            reject(&self.0, Rejection::MissingDeliveryId.as_str());
            return Err(Status::invalid_argument("task is required"));
        };
        let a = ingest(&self.0, &task, &r.delivery_id, &principal.name).await?;
        let run = a.run.as_ref();
        Ok(Response::new(pb::SubmitTaskResponse {
            idea_id: a.idea_id,
            task_id: a.task_id,
            task_run_id: a.task_run_id,
            run_id: run.map(|r| r.id.clone()).unwrap_or_default(),
            stage: "implementation".into(),
            namespace: run.map(|r| r.namespace.clone()).unwrap_or_default(),
            workflow_name: a.workflow_name,
            submitted_at: Some(convert::ts(a.submitted_at)),
            duplicate: a.duplicate,
        }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let found = match req.into_inner().key {
            Some(pb::get_task_request::Key::TaskRunId(id)) => {
                self.0.store.codex_by_task_run(&id).await?
            }
            Some(pb::get_task_request::Key::DeliveryId(id)) if !id.is_empty() => {
                self.0.store.codex_by_delivery(&id).await?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "task_run_id or delivery_id is required",
                ));
            }
        };
        let r = found.ok_or_else(|| Status::not_found("no such codex task run"))?;
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(record(&r)),
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = req.into_inner();
        let limit = u64::from(if r.page_size == 0 {
            50
        } else {
            r.page_size.min(500)
        });
        let after = super::admin::parse_cursor(&r.page_token)?;
        let rows = self
            .0
            .store
            .list_codex(&r.repository, &r.status, limit + 1, after)
            .await?;
        let more = rows.len() as u64 > limit;
        let rows: Vec<_> = rows.into_iter().take(limit as usize).collect();
        let next_page_token = match rows.last() {
            Some(last) if more => super::admin::cursor(last.created_at, &last.task_run_id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTasksResponse {
            tasks: rows.iter().map(record).collect(),
            next_page_token,
        }))
    }
}
