//! `facteur.v1.CodexService`: decodes, calls [`crate::service::codex`], maps errors.

use super::convert;
use crate::auth::Principal;
use crate::domain::codex::Rejection;
use crate::domain::{Error, Result};
use crate::service::codex::{ingest, reject};
use crate::state::AppState;
use crate::store::codex::CodexRecord;
use facteur_proto::v1 as pb;
use pb::codex_service_server::CodexService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `facteur.v1.CodexService`.
#[derive(Clone)]
pub struct CodexApi(pub Arc<AppState>);

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
            return Err(Status::from(Error::invalid("task", "task is required")));
        };
        let a = ingest(&self.0, task, &r.delivery_id, &principal.name).await?;
        Ok(Response::new(pb::SubmitTaskResponse {
            idea_id: a.idea_id,
            task_id: a.task_id,
            task_run_id: a.task_run_id,
            run_id: a.run_id.unwrap_or_default(),
            stage: "implementation".into(),
            namespace: a.namespace,
            workflow_name: a.workflow_name,
            submitted_at: Some(convert::ts(a.submitted_at)),
            duplicate: a.duplicate,
        }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        use crate::service::codex::{TaskKey, find};
        let r = match &req.get_ref().key {
            Some(pb::get_task_request::Key::TaskRunId(id)) => {
                find(&self.0, TaskKey::TaskRun(id)).await?
            }
            Some(pb::get_task_request::Key::DeliveryId(id)) => {
                find(&self.0, TaskKey::Delivery(id)).await?
            }
            None => {
                return Err(Status::from(Error::invalid(
                    "task_run_id",
                    "task_run_id or delivery_id is required",
                )));
            }
        };
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
        let page =
            crate::service::codex::list(&self.0, &r.repository, &r.status, limit, after).await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: page.items.iter().map(record).collect(),
            next_page_token: page
                .next
                .map(|(t, id)| super::admin::cursor(t, &id))
                .unwrap_or_default(),
        }))
    }
}
