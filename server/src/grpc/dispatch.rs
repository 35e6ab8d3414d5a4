//! `facteur.v1.DispatchService`: leases, completions and status reports from argo-adapters.

use super::{BoxStream, convert};
use crate::auth::Principal;
use crate::domain::Error;
use crate::domain::dispatch::{DispatchKind, Leased, Outcome, StatusReport};
use crate::domain::templates::{Template, TemplateParameter};
use crate::service::{dispatch, templates};
use crate::state::AppState;
use facteur_proto::v1 as pb;
use pb::dispatch_service_server::DispatchService;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// `facteur.v1.DispatchService`.
#[derive(Clone)]
pub struct DispatchApi(pub Arc<AppState>);

const DEFAULT_IN_FLIGHT: u32 = 16;
const MAX_IN_FLIGHT: u32 = 256;

/// An adapter id as `Lease` and `GetAssignment` take it.
fn adapter_id(raw: &str) -> Result<&str, Status> {
    let id = raw.trim();
    if id.is_empty() || id.len() > 100 {
        return Err(Status::from(Error::invalid(
            "adapter_id",
            "adapter_id is required (1 to 100 characters, e.g. the pod name)",
        )));
    }
    Ok(id)
}

/// `max_in_flight` as asked (0: the default), capped.
fn in_flight(asked: u32) -> u32 {
    if asked == 0 {
        DEFAULT_IN_FLIGHT
    } else {
        asked.min(MAX_IN_FLIGHT)
    }
}

fn job(l: &Leased, show_logs: bool) -> pb::LeaseResponse {
    let run = &l.run;
    let kind = match l.dispatch.kind {
        DispatchKind::Create => pb::DispatchKind::Create,
        DispatchKind::Stop => pb::DispatchKind::Stop,
        DispatchKind::Terminate => pb::DispatchKind::Terminate,
        DispatchKind::Approve => pb::DispatchKind::Approve,
        DispatchKind::Reject => pb::DispatchKind::Reject,
    };
    let meta = crate::domain::workflow::metadata(run, show_logs);
    pb::LeaseResponse {
        dispatch_id: l.dispatch.id.clone(),
        run_id: run.id.clone(),
        kind: kind as i32,
        attempt: l.dispatch.attempts,
        lease_expires_at: l.dispatch.lease_expires_at.map(convert::ts),
        lease_token: l.dispatch.lease_token.clone(),
        workflow: Some(pb::WorkflowSpec {
            cluster: run.cluster.clone(),
            namespace: run.namespace.clone(),
            name: run.workflow_name.clone(),
            workflow_template: run.workflow_template.clone(),
            service_account: run.service_account.clone(),
            parameters: run
                .parameters
                .iter()
                .map(|(k, v)| pb::Parameter {
                    name: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            labels: meta.labels.into_iter().collect(),
            annotations: meta.annotations.into_iter().collect(),
        }),
        approval: matches!(
            l.dispatch.kind,
            DispatchKind::Approve | DispatchKind::Reject
        )
        .then(|| run.steps.approval.as_ref().map(convert::approval))
        .flatten(),
    }
}

#[tonic::async_trait]
impl DispatchService for DispatchApi {
    type LeaseStream = BoxStream<pb::LeaseResponse>;

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<Self::LeaseStream>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let id = adapter_id(&r.adapter_id)?;
        if self.0.config.dispatcher.disabled {
            return Err(Status::from(Error::Disabled { feature: "dispatcher", message: "dispatching is disabled on this server (dispatcher.disabled / FACTEUR_DISABLE_DISPATCHER)".into() }));
        }
        let cluster = dispatch::adapter_cluster(&self.0, principal.cluster.as_deref(), &r.cluster)?;
        let max = in_flight(r.max_in_flight);
        let owner = format!("{}/{id}", principal.name);
        let rx = dispatch::lease_stream(self.0.clone(), owner, cluster, r.namespaces, max);
        let state = self.0.clone();
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(move |l| Ok(job(&l, state.catalog.shows_logs(&l.run.command)))),
        )))
    }

    async fn get_assignment(
        &self,
        req: Request<pb::GetAssignmentRequest>,
    ) -> Result<Response<pb::GetAssignmentResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let id = adapter_id(&r.adapter_id)?;
        for (i, ns) in r.namespaces.iter().enumerate() {
            if ns.is_empty() || ns.len() > 63 {
                return Err(Status::from(Error::invalid(
                    format!("namespaces[{i}]"),
                    format!("namespaces[{i}] must be a namespace name (1 to 63 characters)"),
                )));
            }
        }
        let cluster = dispatch::adapter_cluster(&self.0, principal.cluster.as_deref(), &r.cluster)?;
        let owner = format!("{}/{id}", principal.name);
        let a = dispatch::assignment(
            &self.0,
            &owner,
            &cluster,
            &r.namespaces,
            in_flight(r.max_in_flight),
        )
        .await?;
        Ok(Response::new(pb::GetAssignmentResponse {
            namespaces: a.namespaces,
            dispatch_namespaces: a.dispatch,
            refresh_seconds: dispatch::ASSIGNMENT_REFRESH.as_secs() as u32,
        }))
    }

    async fn report_workflow_templates(
        &self,
        req: Request<pb::ReportWorkflowTemplatesRequest>,
    ) -> Result<Response<pb::ReportWorkflowTemplatesResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let id = adapter_id(&r.adapter_id)?;
        let cluster = dispatch::adapter_cluster(&self.0, principal.cluster.as_deref(), &r.cluster)?;
        let templates = r
            .templates
            .into_iter()
            .map(|t| Template {
                cluster: cluster.clone(),
                namespace: t.namespace,
                name: t.name,
                command: t.command,
                annotations: t.annotations.into_iter().collect(),
                parameters: t
                    .parameters
                    .into_iter()
                    .map(|p| TemplateParameter {
                        name: p.name,
                        description: p.description,
                        choices: p.choices,
                        has_default: p.has_default,
                        interpolated_in: p.interpolated_in,
                    })
                    .collect(),
                refused: String::new(),
            })
            .collect();
        let by = format!("{}/{id}", principal.name);
        let done = templates::report(&self.0, &by, &cluster, r.namespaces, templates).await?;
        Ok(Response::new(pb::ReportWorkflowTemplatesResponse {
            commands: done.commands as u32,
            problems: done.problems,
        }))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        if r.dispatch_id.is_empty() || r.lease_token.is_empty() {
            return Err(Status::from(Error::invalid(
                "dispatch_id",
                "dispatch_id and lease_token are required",
            )));
        }
        let outcome = match r.outcome {
            Some(pb::complete_request::Outcome::Success(s)) => Outcome::Success {
                workflow_name: s.workflow_name,
                workflow_uid: s.workflow_uid,
                already_existed: s.already_existed,
            },
            Some(pb::complete_request::Outcome::Failure(f)) => {
                if f.message.is_empty() {
                    return Err(Status::from(Error::invalid(
                        "failure.message",
                        "failure.message is required",
                    )));
                }
                Outcome::Failure {
                    message: f.message,
                    retryable: f.retryable,
                }
            }
            None => {
                return Err(Status::from(Error::invalid(
                    "outcome",
                    "outcome is required: success or failure",
                )));
            }
        };
        let run = dispatch::complete(
            &self.0,
            &r.dispatch_id,
            &r.lease_token,
            &outcome,
            &principal.name,
        )
        .await?;
        Ok(Response::new(pb::CompleteResponse {
            run_status: convert::status(run.status) as i32,
        }))
    }

    async fn report_workflow_status(
        &self,
        req: Request<pb::ReportWorkflowStatusRequest>,
    ) -> Result<Response<pb::ReportWorkflowStatusResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        if r.run_id.is_empty() && r.workflow_name.is_empty() {
            return Err(Status::from(Error::invalid(
                "run_id",
                "run_id or workflow_name is required",
            )));
        }
        if !r.run_id.is_empty() {
            crate::service::runs::check_id(&r.run_id)?;
        }
        if !["", "Pending", "Running", "Succeeded", "Failed", "Error"].contains(&r.phase.as_str()) {
            return Err(Status::from(Error::invalid(
                "phase",
                format!(
                    "phase `{}` is not an Argo Workflow phase (Pending, Running, Succeeded, Failed, Error)",
                    r.phase
                ),
            )));
        }
        let cluster = dispatch::adapter_cluster(&self.0, principal.cluster.as_deref(), &r.cluster)?;
        let time = |t: &Option<facteur_proto::Timestamp>| t.as_ref().and_then(convert::from_ts);
        let report = StatusReport {
            cluster,
            run_id: (!r.run_id.is_empty()).then(|| r.run_id.clone()),
            started_at: time(&r.started_at),
            finished_at: time(&r.finished_at),
            namespace: r.namespace,
            workflow_name: r.workflow_name,
            workflow_uid: r.workflow_uid,
            phase: r.phase,
            message: r.message,
            progress: r.progress,
            failed_node: r.failed_node,
            failed_node_message: r.failed_node_message,
            source: r.source,
            current_step: r.current_step,
            log_tail: r.log_tail,
            approval: r.approval.map(convert::waiting_step),
        };
        let (run, changed) = dispatch::report(&self.0, report, &principal.name).await?;
        Ok(Response::new(pb::ReportWorkflowStatusResponse {
            run_status: convert::status(run.status) as i32,
            changed,
        }))
    }
}
