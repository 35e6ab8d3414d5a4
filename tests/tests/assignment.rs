//! The server is the one source of truth for where runs go. An argo-adapter given nothing but
//! the control plane's URL, a token and a kubeconfig serves a server with Codex orchestration
//! on: the sample CodexTask (autonomous or not) becomes exactly one Workflow in the Codex
//! namespace. An adapter whose `argo.namespaces` narrows the set leaves namespaces unserved, and
//! `AdminService.GetStatus` shows them, with their queued runs, within seconds (metrics too).
//! Before, each adapter served what its own configuration named, and a server with Codex on
//! next to an adapter without it left Codex runs `queued` forever, with nothing to see.

use facteur_client::pb;
use facteur_proto::froussard::{CodexTask, CodexTaskStage};
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::Adapter;
use facteur_tests::*;
use std::time::Duration;

fn server_config(db: &TestDb) -> facteur_config::Config {
    let mut c = with_tokens(config(db));
    let o = &mut c.codex_implementation_orchestrator;
    o.enabled = true;
    o.namespace = "codex".into();
    o.autonomous_namespace = "jangar".into();
    c
}

/// An adapter configured with the control plane's URL only (its token comes with the client),
/// optionally narrowed to `namespaces`.
fn adapter_config(grpc_url: &str, namespaces: &[&str]) -> facteur_config::Config {
    let env = [(
        "FACTEUR_CONTROL_PLANE_URL".to_string(),
        grpc_url.to_string(),
    )]
    .into();
    let mut cfg = facteur_config::load_from(None, &env, facteur_config::Process::ArgoAdapter)
        .expect("adapter config");
    cfg.argo.namespaces = namespaces.iter().map(|s| s.to_string()).collect();
    cfg
}

fn task(delivery: &str, autonomous: bool) -> CodexTask {
    CodexTask {
        stage: CodexTaskStage::Implementation as i32,
        prompt: "Implement the thing".into(),
        repository: "proompteng/lab".into(),
        base: "main".into(),
        head: "codex/1635".into(),
        issue_number: 1635,
        issue_url: "https://github.com/proompteng/lab/issues/1635".into(),
        issue_title: "Thing".into(),
        delivery_id: delivery.into(),
        autonomous: Some(autonomous),
        ..Default::default()
    }
}

async fn submit(srv: &TestServer, t: CodexTask) {
    srv.client(CODEX_TOKEN)
        .await
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(t),
            delivery_id: String::new(),
        })
        .await
        .expect("accepted");
}

async fn status(srv: &TestServer) -> pb::GetStatusResponse {
    srv.client(ADMIN_TOKEN)
        .await
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_serves_what_the_server_dispatches_to() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(server_config(&db)).await;
    let kube = FakeKube::start().await;
    let adapter_cfg = adapter_config(&srv.grpc_url(), &[]);
    assert!(
        !adapter_cfg.codex_implementation_orchestrator.enabled,
        "the adapter's own configuration knows nothing of Codex"
    );
    let adapter = Adapter::start_with(adapter_cfg, &kube);

    submit(&srv, task("assign-1", false)).await;
    submit(&srv, task("assign-2", true)).await;
    wait_until("both Workflows", Duration::from_secs(20), || async {
        kube.creates().len() >= 2
    })
    .await;
    let mut placed: Vec<String> = kube
        .creates()
        .iter()
        .map(|w| {
            w["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    placed.sort();
    assert_eq!(placed, ["codex", "jangar"], "exactly one Workflow each");

    // The status lists the adapter with the whole set, and nothing unserved.
    let s = status(&srv).await;
    assert_eq!(s.adapters.len(), 1, "{:?}", s.adapters);
    assert_eq!(
        s.adapters[0].namespaces,
        ["argo-workflows", "codex", "jangar"]
    );
    assert!(s.adapters[0].adapter_id.starts_with("argo/"));
    assert!(
        s.unserved_namespaces.is_empty(),
        "{:?}",
        s.unserved_namespaces
    );
    // A Workflow status report reaches the run: the Codex namespaces are watched too.
    let name = kube.creates()[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let ns = kube.creates()[0]["metadata"]["namespace"]
        .as_str()
        .expect("ns")
        .to_string();
    kube.set_phase(&ns, &name, "Succeeded", serde_json::json!({}));
    let admin = facteur_tests::stack::admin(&srv).await;
    wait_until("the run to succeed", Duration::from_secs(20), || async {
        let runs = admin
            .0
            .admin()
            .list_runs(pb::ListRunsRequest {
                status: pb::RunStatus::Succeeded as i32,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .runs;
        runs.len() == 1
    })
    .await;
    adapter.drain().await.expect("drain");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_nobody_serves_is_visible_within_seconds_sqlite() {
    unserved_is_visible(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_nobody_serves_is_visible_within_seconds_postgres() {
    unserved_is_visible(Backend::Postgres).await;
}

async fn unserved_is_visible(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut c = server_config(&db);
    c.dispatcher.strand_after_seconds = 1;
    let srv = TestServer::start(c).await;
    let kube = FakeKube::start().await;
    // Its RBAC scope: argo-workflows only.
    let adapter = Adapter::start_with(adapter_config(&srv.grpc_url(), &["argo-workflows"]), &kube);
    wait_until(
        "the adapter's heartbeat",
        Duration::from_secs(10),
        || async { status(&srv).await.adapters.len() == 1 },
    )
    .await;
    let s = status(&srv).await;
    assert_eq!(s.adapters[0].namespaces, ["argo-workflows"]);
    let unserved: Vec<&str> = s
        .unserved_namespaces
        .iter()
        .map(|u| u.namespace.as_str())
        .collect();
    assert_eq!(unserved, ["codex", "jangar"]);
    assert!(
        s.unserved_namespaces
            .iter()
            .all(|u| u.configured && u.queued_runs == 0)
    );

    // A task accepted for an unserved namespace waits there, counted, and is not leased.
    submit(&srv, task("strand-1", false)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = status(&srv).await;
    let codex = s
        .unserved_namespaces
        .iter()
        .find(|u| u.namespace == "codex")
        .expect("codex unserved");
    assert_eq!(codex.queued_runs, 1);
    assert!(codex.oldest_queued_at.is_some());
    assert!(kube.creates().is_empty(), "nothing leased for codex");
    let (code, body) = http(srv.server.http_addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("facteur_unserved_namespaces 2"), "{text}");
    assert!(
        text.contains("facteur_stranded_runs{cluster=\"default\"} 1"),
        "{text}"
    );
    assert!(text.contains("facteur_adapters_connected 1"), "{text}");

    // An adapter that serves it comes: the run is taken at once, nothing is unserved.
    let kube2 = FakeKube::start().await;
    let second = Adapter::start_with(adapter_config(&srv.grpc_url(), &[]), &kube2);
    wait_until(
        "the stranded run's Workflow",
        Duration::from_secs(20),
        || async { kube2.creates().len() == 1 },
    )
    .await;
    assert_eq!(kube2.creates()[0]["metadata"]["namespace"], "codex");
    let s = status(&srv).await;
    assert_eq!(s.adapters.len(), 2);
    assert!(
        s.unserved_namespaces.is_empty(),
        "{:?}",
        s.unserved_namespaces
    );
    second.drain().await.expect("drain");
    adapter.drain().await.expect("drain");
    srv.stop().await;
}
