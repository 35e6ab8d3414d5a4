//! The gRPC edge: the four `facteur.v1` services, translating protobuf to domain calls.
//! Handlers hold no business rule; errors map to codes in [`status`].

pub mod admin;
pub mod codex;
pub mod convert;
pub mod dispatch;
pub mod layer;
pub mod status;

pub use admin::AdminApi;
pub use codex::CodexApi;
pub use dispatch::DispatchApi;

use crate::state::AppState;
use facteur_proto::v1 as pb;
use pb::command_service_server::CommandService;
use status::not_yet;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const ISSUE_DISCORD: u32 = 5;

/// `facteur.v1.CommandService`.
#[derive(Clone)]
pub struct CommandApi(pub Arc<AppState>);

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
