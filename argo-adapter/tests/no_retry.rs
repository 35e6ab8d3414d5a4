//! The argo-adapter retries what may succeed unchanged (UNAVAILABLE, RESOURCE_EXHAUSTED,
//! ABORTED, DEADLINE_EXCEEDED) and nothing else: a report the server refuses as bad input, a
//! refused state or an internal error is sent once. Before, every database error came back
//! UNAVAILABLE and the reporter retried deterministic failures forever.

use facteur_client::{Client, ClientConfig, pb};
use facteur_proto::v1::dispatch_service_server::{DispatchService, DispatchServiceServer};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Code, Request, Response, Status};

/// A control plane whose `ReportWorkflowStatus` answers from a script, counting calls.
#[derive(Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<Vec<Code>>>,
    calls: Arc<Mutex<usize>>,
}

type Stream = Pin<Box<dyn futures::Stream<Item = Result<pb::LeaseResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DispatchService for Scripted {
    type LeaseStream = Stream;
    async fn lease(&self, _: Request<pb::LeaseRequest>) -> Result<Response<Stream>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn get_assignment(
        &self,
        _: Request<pb::GetAssignmentRequest>,
    ) -> Result<Response<pb::GetAssignmentResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn complete(
        &self,
        _: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn report_workflow_templates(
        &self,
        _: Request<pb::ReportWorkflowTemplatesRequest>,
    ) -> Result<Response<pb::ReportWorkflowTemplatesResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn report_workflow_status(
        &self,
        _: Request<pb::ReportWorkflowStatusRequest>,
    ) -> Result<Response<pb::ReportWorkflowStatusResponse>, Status> {
        *self.calls.lock().expect("calls") += 1;
        let next = {
            let mut a = self.answers.lock().expect("answers");
            if a.is_empty() { Code::Ok } else { a.remove(0) }
        };
        match next {
            Code::Ok => Ok(Response::new(pb::ReportWorkflowStatusResponse::default())),
            code => Err(Status::new(code, "scripted")),
        }
    }
}

async fn serve(s: Scripted) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DispatchServiceServer::new(s))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn report(i: usize) -> pb::ReportWorkflowStatusRequest {
    pb::ReportWorkflowStatusRequest {
        namespace: "argo-workflows".into(),
        workflow_name: format!("wf-{i}"),
        phase: "Running".into(),
        source: "watch".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn deterministic_refusals_are_sent_once_and_outages_are_retried() {
    let s = Scripted::default();
    let url = serve(s.clone()).await;
    let client = Client::lazy(ClientConfig::new(url)).expect("client");
    let reporter = facteur_argo::status::Reporter::new(client, "default".into());
    let cases = [
        (vec![Code::InvalidArgument], 1),
        (vec![Code::FailedPrecondition], 1),
        (vec![Code::Internal], 1),
        (vec![Code::NotFound], 1),
        (vec![Code::AlreadyExists], 1),
        (vec![Code::Unavailable, Code::Unavailable], 3),
        (vec![Code::Aborted], 2),
        (vec![Code::DeadlineExceeded], 2),
        (vec![Code::ResourceExhausted], 2),
    ];
    for (i, (answers, want)) in cases.into_iter().enumerate() {
        *s.answers.lock().expect("answers") = answers.clone();
        *s.calls.lock().expect("calls") = 0;
        tokio::time::timeout(Duration::from_secs(10), reporter.send(report(i)))
            .await
            .expect("the reporter gives up on a refusal");
        let calls = *s.calls.lock().expect("calls");
        assert_eq!(calls, want, "{answers:?}: {calls} calls");
    }
}
