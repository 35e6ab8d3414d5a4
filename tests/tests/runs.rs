//! Runs end to end: server → argo-adapter (kube-rs) → fake Kubernetes API → status back.

use facteur_client::pb;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::{Adapter, admin};
use facteur_tests::*;
use serde_json::json;
use std::time::Duration;
use tonic::Code;

const NS: &str = "argo-workflows";
const WAIT: Duration = Duration::from_secs(20);

fn stack_config(db: &TestDb) -> facteur_config::Config {
    let mut c = with_tokens(config(db));
    c.argo
        .parameters
        .insert("Base".into(), "from-config".into());
    c.argo.service_account = "facteur-runner".into();
    c.dispatcher.lease_seconds = 2;
    c.dispatcher.backoff_initial_ms = 20;
    c.dispatcher.backoff_max_ms = 100;
    c.dispatcher.max_attempts = 3;
    c
}

async fn wait_status(a: &stack::Admin, id: &str, want: pb::RunStatus) {
    wait_until(&format!("run {id} to be {want:?}"), WAIT, || async {
        a.status(id).await == want
    })
    .await;
}

async fn wait_workflow(kube: &FakeKube, name: &str) -> serde_json::Value {
    wait_until(&format!("workflow {name} to exist"), WAIT, || async {
        kube.workflow(NS, name).is_some()
    })
    .await;
    kube.workflow(NS, name).expect("workflow")
}

fn name_of(run: &pb::Run) -> String {
    run.target.as_ref().expect("target").workflow_name.clone()
}

async fn template_to_succeeded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let srv = TestServer::start(stack_config(&db)).await;
    let kube = FakeKube::start().await;
    let adapter = Adapter::start(&srv.grpc_url(), &kube, NS);
    let a = admin(&srv).await;

    let run = a
        .start_run("dispatch", &[("payload", "{\"hello\":1}")])
        .await;
    let name = name_of(&run);
    let wf = wait_workflow(&kube, &name).await;
    assert_eq!(
        wf["spec"]["workflowTemplateRef"]["name"],
        "facteur-dispatch"
    );
    assert_eq!(wf["spec"]["serviceAccountName"], "facteur-runner");
    assert_eq!(
        wf["spec"]["arguments"]["parameters"],
        json!([{"name": "Base", "value": "from-config"}, {"name": "payload", "value": "{\"hello\":1}"}]),
        "declared parameters only, sorted by name, case kept"
    );
    assert_eq!(
        wf["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "facteur"
    );
    assert_eq!(
        wf["metadata"]["labels"]["facteur.proompteng.ai/run-id"],
        run.id.as_str()
    );
    assert_eq!(
        wf["metadata"]["labels"]["facteur.proompteng.ai/command"],
        "dispatch"
    );
    assert_eq!(
        wf["metadata"]["annotations"]["facteur.proompteng.ai/requester"],
        "ops"
    );
    wait_status(&a, &run.id, pb::RunStatus::Submitted).await;

    kube.set_phase(NS, &name, "Pending", json!({}));
    wait_until("the Pending phase in the history", WAIT, || async {
        a.get(&run.id)
            .await
            .events
            .iter()
            .any(|e| e.payload_json.contains("\"phase\":\"Pending\""))
    })
    .await;
    // A watch that ends is resumed; the next phase still arrives.
    kube.end_watches();
    kube.set_phase(NS, &name, "Running", json!({"progress": "0/2"}));
    wait_status(&a, &run.id, pb::RunStatus::Running).await;
    kube.set_phase(NS, &name, "Running", json!({"progress": "1/2"}));
    wait_until("progress 1/2", WAIT, || async {
        a.get(&run.id).await.run.expect("run").progress == "1/2"
    })
    .await;
    kube.set_phase(NS, &name, "Succeeded", json!({"progress": "2/2"}));
    wait_status(&a, &run.id, pb::RunStatus::Succeeded).await;

    let got = a.get(&run.id).await;
    let r = got.run.expect("run");
    assert!(r.finished_at.is_some() && r.started_at.is_some());
    assert!(!r.workflow_uid.is_empty());
    let steps: Vec<(String, i32)> = got
        .events
        .iter()
        .map(|e| (e.kind.clone(), e.to_status))
        .collect();
    let want = [
        ("created", pb::RunStatus::Queued),
        ("leased", pb::RunStatus::Dispatching),
        ("submitted", pb::RunStatus::Submitted),
        ("status", pb::RunStatus::Submitted),
        ("status", pb::RunStatus::Running),
        // A step ended within the phase: recorded, so run cards follow it.
        ("progress", pb::RunStatus::Running),
        ("status", pb::RunStatus::Succeeded),
    ];
    assert_eq!(
        steps,
        want.iter()
            .map(|(k, s)| (k.to_string(), *s as i32))
            .collect::<Vec<_>>(),
        "history: {:#?}",
        got.events
    );
    assert_eq!(kube.creates().len(), 1);
    adapter.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn run_goes_from_template_to_succeeded_on_sqlite() {
    Box::pin(template_to_succeeded(Backend::Sqlite)).await;
}

#[tokio::test]
async fn run_goes_from_template_to_succeeded_on_postgres() {
    Box::pin(template_to_succeeded(Backend::Postgres)).await;
}

#[tokio::test]
async fn adapter_killed_between_create_and_complete_makes_no_second_workflow() {
    let db = TestDb::new(Backend::Postgres).await;
    let srv = TestServer::start(stack_config(&db)).await;
    let kube = FakeKube::start().await;
    let a = admin(&srv).await;
    kube.hang_creates(1);
    let first = Adapter::start(&srv.grpc_url(), &kube, NS);
    let run = a.start_run("dispatch", &[]).await;
    let name = name_of(&run);
    wait_workflow(&kube, &name).await;
    first.kill(); // the Workflow exists, Complete was never sent

    // Its lease expires and the job is redelivered to another adapter, whose create answers
    // AlreadyExists: success, and still one Workflow.
    let second = Adapter::start(&srv.grpc_url(), &kube, NS);
    wait_status(&a, &run.id, pb::RunStatus::Submitted).await;
    assert_eq!(kube.workflows().len(), 1, "no second workflow");
    assert_eq!(
        kube.creates().len(),
        2,
        "the redelivered job tried to create again"
    );
    let events = a.get(&run.id).await.events;
    let owners: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "leased")
        .map(|e| e.actor.as_str())
        .collect();
    assert_eq!(owners.len(), 2, "{events:#?}");
    assert_ne!(owners[0], owners[1], "redelivered to another adapter");
    assert_eq!(
        srv.server
            .state
            .metrics
            .counter(facteur_server::metrics::Metric::LeaseRedeliveries, &[]),
        1,
        "counted as a redelivery"
    );
    let submitted = events
        .iter()
        .find(|e| e.kind == "submitted")
        .expect("submitted");
    assert!(
        submitted.payload_json.contains("\"already_existed\":true"),
        "{}",
        submitted.payload_json
    );

    kube.set_phase(NS, &name, "Running", json!({}));
    kube.set_phase(NS, &name, "Succeeded", json!({}));
    wait_status(&a, &run.id, pb::RunStatus::Succeeded).await;
    second.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn server_restart_mid_run_still_reaches_the_end() {
    let db = TestDb::new(Backend::Postgres).await;
    let srv = TestServer::start(stack_config(&db)).await;
    let kube = FakeKube::start().await;
    let adapter = Adapter::start(&srv.grpc_url(), &kube, NS);
    let a = admin(&srv).await;
    let run = a.start_run("dispatch", &[]).await;
    let name = name_of(&run);
    wait_workflow(&kube, &name).await;
    kube.set_phase(NS, &name, "Running", json!({}));
    wait_status(&a, &run.id, pb::RunStatus::Running).await;

    let addr = srv.server.grpc_addr;
    srv.stop().await;
    // The Workflow ends while the server is down.
    kube.set_phase(NS, &name, "Failed", json!({"message": "child failed", "nodes": {
        "n1": {"phase": "Failed", "type": "Pod", "displayName": "build", "message": "exit code 2"}}}));
    let mut cfg = stack_config(&db);
    cfg.server.grpc_listen_address = addr.to_string();
    let srv = TestServer::start(cfg).await;
    let a = admin(&srv).await;
    wait_status(&a, &run.id, pb::RunStatus::Failed).await;
    let r = a.get(&run.id).await.run.expect("run");
    assert!(
        r.message.contains("build") && r.message.contains("exit code 2"),
        "failing node named: {}",
        r.message
    );
    adapter.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn cancel_a_queued_run_and_a_running_one() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(stack_config(&db)).await;
    let kube = FakeKube::start().await;
    let a = admin(&srv).await;

    // Queued: cancelled at once, never dispatched.
    let queued = a.start_run("dispatch", &[]).await;
    let resp =
        a.0.admin()
            .cancel_run(pb::CancelRunRequest {
                run_id: queued.id.clone(),
                mode: 0,
                reason: "changed my mind".into(),
            })
            .await;
    assert_eq!(
        resp.expect("cancel").into_inner().run.expect("run").status,
        pb::RunStatus::Cancelled as i32
    );
    let again =
        a.0.admin()
            .cancel_run(pb::CancelRunRequest {
                run_id: queued.id.clone(),
                ..Default::default()
            })
            .await;
    assert_eq!(
        again.expect_err("already cancelled").code(),
        Code::FailedPrecondition
    );

    // Running: a terminate patch reaches the Workflow; Argo ends it as Failed; the run is cancelled.
    let adapter = Adapter::start(&srv.grpc_url(), &kube, NS);
    let running = a.start_run("dispatch", &[]).await;
    let name = name_of(&running);
    wait_workflow(&kube, &name).await;
    kube.set_phase(NS, &name, "Running", json!({}));
    wait_status(&a, &running.id, pb::RunStatus::Running).await;
    a.0.admin()
        .cancel_run(pb::CancelRunRequest {
            run_id: running.id.clone(),
            mode: pb::CancelMode::Terminate as i32,
            reason: "stop".into(),
        })
        .await
        .expect("cancel running");
    wait_until("the shutdown patch", WAIT, || async {
        kube.patches().iter().any(|(ns, n, p)| {
            ns == NS && *n == name && p == &json!({"spec": {"shutdown": "Terminate"}})
        })
    })
    .await;
    kube.set_phase(
        NS,
        &name,
        "Failed",
        json!({"message": "Stopped with strategy 'Terminate'"}),
    );
    wait_status(&a, &running.id, pb::RunStatus::Cancelled).await;

    assert!(
        kube.workflows()
            .iter()
            .all(|w| w["metadata"]["name"] != name_of(&queued).as_str()),
        "the queued run never got a workflow"
    );
    adapter.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn out_of_order_and_repeated_reports_never_move_a_run_backwards() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(stack_config(&db)).await;
    let a = admin(&srv).await;
    let argo = srv.client(ARGO_TOKEN).await;
    let run = a.start_run("dispatch", &[]).await;
    let report = |phase: &str| pb::ReportWorkflowStatusRequest {
        run_id: run.id.clone(),
        workflow_name: name_of(&run),
        namespace: NS.into(),
        phase: phase.into(),
        source: "test".into(),
        ..Default::default()
    };
    let send = |phase: &'static str| {
        let argo = argo.clone();
        let r = report(phase);
        async move {
            argo.dispatch()
                .report_workflow_status(r)
                .await
                .expect("report")
                .into_inner()
        }
    };
    assert!(send("Running").await.changed, "skipping ahead is fine");
    let late = send("Pending").await;
    assert!(!late.changed);
    assert_eq!(late.run_status, pb::RunStatus::Running as i32);
    assert!(!send("Running").await.changed, "a repeat is a no-op");
    assert!(send("Succeeded").await.changed);
    for phase in ["Running", "Pending", "Failed", "Succeeded"] {
        let r = send(phase).await;
        assert!(!r.changed, "{phase} after Succeeded");
        assert_eq!(r.run_status, pb::RunStatus::Succeeded as i32);
    }
    assert_eq!(a.status(&run.id).await, pb::RunStatus::Succeeded);

    let bad = argo
        .dispatch()
        .report_workflow_status(report("Exploded"))
        .await
        .expect_err("bad phase");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let mut other = report("Running");
    other.workflow_name = "someone-elses-workflow".into();
    assert_eq!(
        argo.dispatch()
            .report_workflow_status(other)
            .await
            .expect_err("wrong workflow")
            .code(),
        Code::InvalidArgument
    );
    let events = a.get(&run.id).await.events;
    assert_eq!(
        events.iter().filter(|e| e.kind == "status").count(),
        2,
        "only the two real steps: {events:#?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_dispatch_failing_every_attempt_is_dead_lettered_and_requeue_brings_it_back() {
    let db = TestDb::new(Backend::Postgres).await;
    let srv = TestServer::start(stack_config(&db)).await;
    let kube = FakeKube::start().await;
    kube.fail_creates(3, 500);
    let adapter = Adapter::start(&srv.grpc_url(), &kube, NS);
    let a = admin(&srv).await;
    let run = a.start_run("dispatch", &[]).await;
    wait_status(&a, &run.id, pb::RunStatus::DeadLettered).await;
    assert_eq!(kube.creates().len(), 3, "max_attempts = 3");
    assert_eq!(
        srv.server
            .state
            .metrics
            .counter(facteur_server::metrics::Metric::CommandEventsDlq, &[]),
        1
    );
    assert_eq!(
        srv.server
            .state
            .metrics
            .counter(facteur_server::metrics::Metric::CommandEventsFailed, &[]),
        3
    );

    let dead =
        a.0.admin()
            .list_dead_letters(pb::ListDeadLettersRequest::default())
            .await
            .expect("list")
            .into_inner();
    assert_eq!(dead.dead_letters.len(), 1);
    let dl = &dead.dead_letters[0];
    assert_eq!(dl.attempts, 3);
    assert!(dl.last_error.contains("500"), "{}", dl.last_error);
    assert_eq!(
        dl.run.as_ref().map(|r| r.id.as_str()),
        Some(run.id.as_str())
    );

    let requeued =
        a.0.admin()
            .requeue_dead_letter(pb::RequeueDeadLetterRequest {
                dispatch_id: dl.dispatch_id.clone(),
            })
            .await
            .expect("requeue")
            .into_inner();
    assert_ne!(
        requeued.run.expect("run").status,
        pb::RunStatus::DeadLettered as i32
    );
    wait_status(&a, &run.id, pb::RunStatus::Submitted).await;
    assert_eq!(kube.workflows().len(), 1);
    let again =
        a.0.admin()
            .requeue_dead_letter(pb::RequeueDeadLetterRequest {
                dispatch_id: dl.dispatch_id.clone(),
            })
            .await;
    assert_eq!(
        again.expect_err("no longer dead").code(),
        Code::FailedPrecondition
    );

    // A permanent error (403) dead-letters at the first attempt.
    kube.fail_creates(1, 403);
    let forbidden = a.start_run("dispatch", &[]).await;
    wait_status(&a, &forbidden.id, pb::RunStatus::DeadLettered).await;
    let r = a.get(&forbidden.id).await.run.expect("run");
    assert_eq!(r.attempts, 1);
    assert!(r.message.contains("not retryable"), "{}", r.message);
    adapter.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn start_run_validates_and_retry_links_the_new_run() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(stack_config(&db)).await;
    let a = admin(&srv).await;
    let bad =
        a.0.admin()
            .start_run(pb::StartRunRequest {
                command: "dispatch".into(),
                parameters: [("nope".into(), "x".into())].into(),
                ..Default::default()
            })
            .await
            .expect_err("undeclared option");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("nope"), "{}", bad.message());
    let unknown =
        a.0.admin()
            .start_run(pb::StartRunRequest {
                command: "rm-rf".into(),
                ..Default::default()
            })
            .await;
    assert_eq!(unknown.expect_err("unknown").code(), Code::InvalidArgument);
    assert!(
        a.0.admin()
            .list_runs(pb::ListRunsRequest::default())
            .await
            .expect("list")
            .into_inner()
            .runs
            .is_empty(),
        "rejected requests write nothing"
    );

    let key = pb::StartRunRequest {
        command: "dispatch".into(),
        idempotency_key: "client-key-1".into(),
        ..Default::default()
    };
    let first =
        a.0.admin()
            .start_run(key.clone())
            .await
            .expect("start")
            .into_inner();
    let replay =
        a.0.admin()
            .start_run(key)
            .await
            .expect("replay")
            .into_inner();
    assert!(replay.duplicate && !first.duplicate);
    assert_eq!(
        replay.run.as_ref().map(|r| &r.id),
        first.run.as_ref().map(|r| &r.id)
    );
    let id = first.run.expect("run").id;

    let not_done =
        a.0.admin()
            .retry_run(pb::RetryRunRequest {
                run_id: id.clone(),
                ..Default::default()
            })
            .await;
    assert_eq!(
        not_done.expect_err("queued").code(),
        Code::FailedPrecondition
    );
    a.0.admin()
        .cancel_run(pb::CancelRunRequest {
            run_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("cancel");
    let retry =
        a.0.admin()
            .retry_run(pb::RetryRunRequest {
                run_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("retry")
            .into_inner();
    let new = retry.run.expect("run");
    assert_eq!(new.parent_run_id, id);
    assert_ne!(new.id, id);
    assert_eq!(new.source, pb::RunSource::Retry as i32);
    assert_eq!(new.status, pb::RunStatus::Queued as i32);
    srv.stop().await;
}

#[tokio::test]
async fn exit_handler_callbacks_are_a_fast_path() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(stack_config(&db)).await;
    let a = admin(&srv).await;
    let run = a.start_run("dispatch", &[]).await;
    let control = facteur_client::Client::lazy(
        facteur_client::ClientConfig::new(srv.grpc_url()).with_token(ARGO_TOKEN),
    )
    .expect("client");
    let reporter = facteur_argo::status::Reporter::new(control, "default".into());
    let app = facteur_argo::callback::router(
        facteur_config::Secret("callback-token-0123456789".into()),
        reporter,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let post = |token: &str, body: serde_json::Value| {
        let (token, body) = (token.to_string(), body.to_string());
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let req = format!(
                "POST /callback HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out.split(' ')
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
                .expect("status")
        }
    };
    let body = json!({"namespace": NS, "workflowName": name_of(&run), "phase": "Succeeded"});
    assert_eq!(post("wrong-token", body.clone()).await, 401);
    assert_eq!(
        post("callback-token-0123456789", json!({"phase": "Succeeded"})).await,
        400
    );
    assert_eq!(
        a.status(&run.id).await,
        pb::RunStatus::Queued,
        "refused callbacks change nothing"
    );
    assert_eq!(post("callback-token-0123456789", body).await, 202);
    wait_status(&a, &run.id, pb::RunStatus::Succeeded).await;
    srv.stop().await;
}
