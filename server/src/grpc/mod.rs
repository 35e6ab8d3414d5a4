//! The gRPC edge: the four `facteur.v1` services, translating protobuf to domain calls.
//! Handlers hold no business rule; errors map to codes in [`status`].

pub mod convert;
pub mod layer;
pub mod status;

use crate::auth::Principal;
use crate::state::AppState;
use crate::store::RunFilter;
use facteur_proto::v1 as pb;
use pb::admin_service_server::AdminService;
use pb::codex_service_server::CodexService;
use pb::command_service_server::CommandService;
use pb::dispatch_service_server::DispatchService;
use status::not_yet;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const ISSUE_RUNS: u32 = 3;
const ISSUE_CODEX: u32 = 4;
const ISSUE_DISCORD: u32 = 5;

/// `facteur.v1.CommandService`.
#[derive(Clone)]
pub struct CommandApi(pub Arc<AppState>);
/// `facteur.v1.CodexService`.
#[derive(Clone)]
pub struct CodexApi(pub Arc<AppState>);
/// `facteur.v1.DispatchService`.
#[derive(Clone)]
pub struct DispatchApi(pub Arc<AppState>);
/// `facteur.v1.AdminService`.
#[derive(Clone)]
pub struct AdminApi(pub Arc<AppState>);

const CATALOG: &str = "the Discord command catalog, role policy and interaction handling";

#[tonic::async_trait]
impl CommandService for CommandApi {
    async fn list_commands(
        &self,
        _: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        Err(not_yet(
            "CommandService.ListCommands",
            CATALOG,
            ISSUE_DISCORD,
        ))
    }
    async fn invoke(
        &self,
        _: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        Err(not_yet("CommandService.Invoke", CATALOG, ISSUE_DISCORD))
    }
    async fn autocomplete(
        &self,
        _: Request<pb::AutocompleteRequest>,
    ) -> Result<Response<pb::AutocompleteResponse>, Status> {
        Err(not_yet(
            "CommandService.Autocomplete",
            CATALOG,
            ISSUE_DISCORD,
        ))
    }
    async fn interact(
        &self,
        _: Request<pb::InteractRequest>,
    ) -> Result<Response<pb::InteractResponse>, Status> {
        Err(not_yet("CommandService.Interact", CATALOG, ISSUE_DISCORD))
    }
    async fn record_run_message(
        &self,
        _: Request<pb::RecordRunMessageRequest>,
    ) -> Result<Response<pb::RecordRunMessageResponse>, Status> {
        Err(not_yet(
            "CommandService.RecordRunMessage",
            "live run status in Discord",
            ISSUE_DISCORD,
        ))
    }
    type WatchRunsStream = BoxStream<pb::WatchRunsResponse>;
    async fn watch_runs(
        &self,
        _: Request<pb::WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        Err(not_yet(
            "CommandService.WatchRuns",
            "live run status in Discord",
            ISSUE_DISCORD,
        ))
    }
}

const CODEX: &str = "Codex task ingestion into codex_kb";

#[tonic::async_trait]
impl CodexService for CodexApi {
    async fn submit_task(
        &self,
        _: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        Err(not_yet("CodexService.SubmitTask", CODEX, ISSUE_CODEX))
    }
    async fn get_task(
        &self,
        _: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        Err(not_yet("CodexService.GetTask", CODEX, ISSUE_CODEX))
    }
    async fn list_tasks(
        &self,
        _: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        Err(not_yet("CodexService.ListTasks", CODEX, ISSUE_CODEX))
    }
}

const DISPATCH: &str = "run dispatch to the argo-adapter";

#[tonic::async_trait]
impl DispatchService for DispatchApi {
    type LeaseStream = BoxStream<pb::LeaseResponse>;
    async fn lease(
        &self,
        _: Request<pb::LeaseRequest>,
    ) -> Result<Response<Self::LeaseStream>, Status> {
        Err(not_yet("DispatchService.Lease", DISPATCH, ISSUE_RUNS))
    }
    async fn complete(
        &self,
        _: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        Err(not_yet("DispatchService.Complete", DISPATCH, ISSUE_RUNS))
    }
    async fn report_workflow_status(
        &self,
        _: Request<pb::ReportWorkflowStatusRequest>,
    ) -> Result<Response<pb::ReportWorkflowStatusResponse>, Status> {
        Err(not_yet(
            "DispatchService.ReportWorkflowStatus",
            "Workflow status tracking",
            ISSUE_RUNS,
        ))
    }
}

/// Default and maximum page sizes of list RPCs.
const PAGE_DEFAULT: u32 = 50;
const PAGE_MAX: u32 = 500;

fn page_size(requested: u32) -> u64 {
    u64::from(if requested == 0 {
        PAGE_DEFAULT
    } else {
        requested.min(PAGE_MAX)
    })
}

/// Keyset cursor of `ListRuns`: `<created_at unix nanos>.<run id>`.
fn parse_run_cursor(
    token: &str,
) -> Result<Option<(chrono::DateTime<chrono::Utc>, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Status::invalid_argument(format!(
            "page_token `{token}` is not a token from a previous response"
        ))
    };
    let (nanos, id) = token.split_once('.').ok_or_else(bad)?;
    let nanos: i64 = nanos.parse().map_err(|_| bad())?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(bad());
    }
    Ok(Some((
        chrono::DateTime::from_timestamp_nanos(nanos),
        id.to_string(),
    )))
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let principal = Principal::of(&req);
        tracing::debug!(principal = %principal.name, "status requested");
        let deps = self.0.health.check().await;
        Ok(Response::new(pb::GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            ready: deps.iter().all(|d| d.healthy),
            dependencies: deps
                .into_iter()
                .map(|d| pb::DependencyStatus {
                    name: d.name.into(),
                    backend: d.backend.into(),
                    healthy: d.healthy,
                    message: d.message,
                    latency_ms: d.latency.as_secs_f64() * 1000.0,
                })
                .collect(),
            started_at: Some(convert::ts(self.0.started_at)),
        }))
    }

    async fn start_run(
        &self,
        _: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        Err(not_yet("AdminService.StartRun", DISPATCH, ISSUE_RUNS))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = req.into_inner();
        let status = match pb::RunStatus::try_from(r.status) {
            Ok(pb::RunStatus::Unspecified) => None,
            Ok(s) => convert::status_from(s),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "status {} is not a RunStatus",
                    r.status
                )));
            }
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let time = |t: Option<prost_types::Timestamp>, field: &str| -> Result<_, Status> {
            t.map(|t| {
                convert::from_ts(&t)
                    .ok_or_else(|| Status::invalid_argument(format!("{field} is out of range")))
            })
            .transpose()
        };
        let filter = RunFilter {
            status,
            command: nonempty(r.command),
            requester: nonempty(r.requester),
            guild_id: nonempty(r.guild_id),
            created_after: time(r.created_after, "created_after")?,
            created_before: time(r.created_before, "created_before")?,
        };
        let limit = page_size(r.page_size);
        let after = parse_run_cursor(&r.page_token)?;
        let runs = self.0.store.list_runs(&filter, limit + 1, after).await?;
        let more = runs.len() as u64 > limit;
        let runs: Vec<_> = runs.into_iter().take(limit as usize).collect();
        let next_page_token = match runs.last() {
            Some(last) if more => format!(
                "{}.{}",
                last.created_at.timestamp_nanos_opt().unwrap_or(0),
                last.id
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(convert::run).collect(),
            next_page_token,
        }))
    }

    async fn get_run(
        &self,
        req: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let id = req.into_inner().run_id;
        if uuid::Uuid::parse_str(&id).is_err() {
            return Err(Status::invalid_argument(format!(
                "run_id `{id}` is not a UUID"
            )));
        }
        let run = self
            .0
            .store
            .get_run(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no run `{id}`")))?;
        let events = self.0.store.run_events(&id).await?;
        Ok(Response::new(pb::GetRunResponse {
            run: Some(convert::run(&run)),
            events: events.iter().map(convert::event).collect(),
        }))
    }

    async fn cancel_run(
        &self,
        _: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        Err(not_yet(
            "AdminService.CancelRun",
            "run cancellation",
            ISSUE_RUNS,
        ))
    }
    async fn retry_run(
        &self,
        _: Request<pb::RetryRunRequest>,
    ) -> Result<Response<pb::RetryRunResponse>, Status> {
        Err(not_yet("AdminService.RetryRun", "run retries", ISSUE_RUNS))
    }
    async fn get_policy(
        &self,
        _: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        Err(not_yet(
            "AdminService.GetPolicy",
            "the per-guild role policy",
            ISSUE_DISCORD,
        ))
    }
    async fn set_policy(
        &self,
        _: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        Err(not_yet(
            "AdminService.SetPolicy",
            "the per-guild role policy",
            ISSUE_DISCORD,
        ))
    }
    async fn list_dead_letters(
        &self,
        _: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Err(not_yet(
            "AdminService.ListDeadLetters",
            "dispatch dead-lettering",
            ISSUE_RUNS,
        ))
    }
    async fn requeue_dead_letter(
        &self,
        _: Request<pb::RequeueDeadLetterRequest>,
    ) -> Result<Response<pb::RequeueDeadLetterResponse>, Status> {
        Err(not_yet(
            "AdminService.RequeueDeadLetter",
            "dispatch dead-lettering",
            ISSUE_RUNS,
        ))
    }
    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(not_yet(
            "AdminService.ListSessions",
            "Discord interaction sessions",
            ISSUE_DISCORD,
        ))
    }
}
