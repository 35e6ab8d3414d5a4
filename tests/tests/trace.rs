//! One trace, end to end, as an OTLP backend receives it (an in-process OTLP/gRPC receiver: the
//! OpenTelemetry collector's trace service). A Discord slash command → the discord-adapter's
//! interaction span → the server's `facteur.v1.CommandService/Invoke` span → the run →
//! the argo-adapter's dispatch and Kubernetes create spans → the Workflow's `traceparent`
//! annotation: one trace id. A Codex delivery likewise, from `facteur.v1.CodexService/SubmitTask`.
//! Span names and attributes follow OpenTelemetry's RPC conventions (`rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`).
//!
//! The three components run in this one process (one tracer), talking over real gRPC and HTTP.

use facteur_client::pb;
use facteur_proto::froussard::{CodexTask, CodexTaskStage};
use facteur_tests::discord::{self, Options, Stack};
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::Adapter;
use facteur_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every span received.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = req
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().expect("spans").extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Any::StringValue(s) => s.clone(),
            Any::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

/// The trace id of a Workflow's `traceparent` annotation.
fn trace_of(workflow: &serde_json::Value) -> String {
    let tp = workflow["metadata"]["annotations"]["facteur.proompteng.ai/traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent annotation: {workflow}"))
        .to_string();
    tp.split('-').nth(1).expect("trace id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_request_to_the_workflow() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let received = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = facteur_runtime::telemetry::init_with(
        "facteur-trace-test",
        &facteur_config::TelemetryConfig::default(),
        false,
        facteur_runtime::telemetry::Exporters {
            traces: Some((facteur_runtime::telemetry::Protocol::Grpc, Some(endpoint))),
            metrics: None,
        },
    );

    let stack = Box::pin(Stack::start(Options {
        codex: true,
        ..Default::default()
    }))
    .await;
    let kube = FakeKube::start().await;
    let adapter = Adapter::start(&stack.srv.grpc_url(), &kube, "argo-workflows");

    // A slash command through the discord-adapter's endpoint.
    let body = discord::command(
        "910000000000000001",
        &[discord::DEPLOYER],
        "deploy",
        serde_json::json!([{"name": "service", "type": 3, "value": "api"}]),
    );
    let (code, answer) = stack.post(&body).await;
    assert_eq!(code, 200, "{answer}");
    wait_until("the Workflow", Duration::from_secs(20), || async {
        kube.creates().len() == 1
    })
    .await;
    let discord_trace = trace_of(&kube.creates()[0]);

    // A Codex delivery (the producer sends no trace context: the server's span is the root).
    let codex = stack.srv.client(CODEX_TOKEN).await;
    codex
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(CodexTask {
                stage: CodexTaskStage::Implementation as i32,
                prompt: "trace me".into(),
                repository: "proompteng/lab".into(),
                issue_number: 7,
                delivery_id: "trace-1".into(),
                ..Default::default()
            }),
            delivery_id: String::new(),
        })
        .await
        .expect("accepted");
    wait_until("the Codex Workflow", Duration::from_secs(20), || async {
        kube.creates().len() == 2
    })
    .await;

    adapter.drain().await.expect("drain");
    stack.srv.stop().await;
    telemetry.flush();
    let spans = received.0.lock().expect("spans").clone();
    let in_trace =
        |t: &str| -> Vec<&Span> { spans.iter().filter(|s| hex(&s.trace_id) == t).collect() };

    let names = |t: &str| -> Vec<String> { in_trace(t).iter().map(|s| s.name.clone()).collect() };
    let d = names(&discord_trace);
    for want in [
        "discord.interaction command",
        "facteur.v1.CommandService/Invoke",
        "facteur-argo dispatch create",
        "create workflows.argoproj.io",
    ] {
        assert!(
            d.iter().any(|n| n == want),
            "the slash command's trace lacks `{want}`: {d:?}"
        );
    }
    let root = in_trace(&discord_trace)
        .into_iter()
        .find(|s| s.name == "discord.interaction command")
        .expect("root");
    assert!(
        root.parent_span_id.is_empty(),
        "the interaction is the root"
    );
    let invoke = in_trace(&discord_trace)
        .into_iter()
        .find(|s| s.name == "facteur.v1.CommandService/Invoke")
        .expect("invoke");
    assert_eq!(attr(invoke, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr(invoke, "rpc.service").as_deref(),
        Some("facteur.v1.CommandService")
    );
    assert_eq!(attr(invoke, "rpc.method").as_deref(), Some("Invoke"));
    assert_eq!(attr(invoke, "rpc.grpc.status_code").as_deref(), Some("0"));

    let codex_wf = kube.creates().into_iter().find(|w| {
        w["metadata"]["labels"]["facteur.proompteng.ai/command"] == "codex-implementation"
    });
    {
        let wf = codex_wf.expect("the Codex task's Workflow");
        let t = trace_of(&wf);
        let c = names(&t);
        assert!(
            c.iter().any(|n| n == "facteur.v1.CodexService/SubmitTask"),
            "{c:?}"
        );
        assert!(
            c.iter().any(|n| n == "facteur-argo dispatch create"),
            "{c:?}"
        );
    }
    assert!(
        spans.iter().all(|s| s.name != "rpc"),
        "no span is named `rpc`"
    );
}
