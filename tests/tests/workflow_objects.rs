//! The Workflow objects the argo-adapter sends, pinned: a command run, a Codex task (autonomous
//! and not), a retry, and the cancel patch, produced by the real server and adapter against the
//! fake Kubernetes API, must equal `deploy/argo-crds/samples/` (run ids and names replaced by
//! placeholders). `deploy/check.py` validates those samples against Argo's own Workflow CRD, so
//! a change to what facteur sends is checked against Argo before it lands. Regenerate with
//! `FACTEUR_UPDATE_SAMPLES=1`.

use facteur_client::pb;
use facteur_proto::froussard::{CodexTask, CodexTaskStage};
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::{Adapter, admin};
use facteur_tests::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/argo-crds/samples")
}

/// Replaces what changes from run to run (ids, names, trace context) with placeholders.
fn normalized(mut v: Value, run_id: &str, name: &str) -> Value {
    if let Some(a) = v.pointer_mut("/metadata/annotations")
        && let Some(t) = a.get_mut("facteur.proompteng.ai/traceparent")
    {
        *t = Value::String("TRACEPARENT".into());
    }
    let text = serde_json::to_string_pretty(&v).expect("json");
    let text = text
        .replace(name, "WORKFLOW_NAME")
        .replace(run_id, "RUN_ID");
    v = serde_json::from_str(&text).expect("json");
    v
}

/// Compares with the committed sample (or writes it under `FACTEUR_UPDATE_SAMPLES=1`).
fn pinned(file: &str, v: &Value) -> Option<String> {
    let path = samples().join(file);
    let text = serde_json::to_string_pretty(v).expect("json") + "\n";
    if std::env::var("FACTEUR_UPDATE_SAMPLES").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(samples()).expect("dir");
        std::fs::write(&path, &text).expect("write sample");
        return None;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    (committed != text).then(|| {
        format!(
            "{file}: what the argo-adapter sends changed.\n--- committed\n{committed}\n--- now\n{text}\nRegenerate with FACTEUR_UPDATE_SAMPLES=1 and run deploy/check.py (Argo's CRD)."
        )
    })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflows_facteur_sends_are_the_committed_samples() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut c = with_tokens(config(&db));
    c.argo.service_account = "facteur-workflow".into();
    let o = &mut c.codex_implementation_orchestrator;
    o.enabled = true;
    o.namespace = "argo-workflows".into();
    o.autonomous_namespace = "argo-workflows".into();
    o.autonomous_service_account = "jangar-inspector".into();
    let srv = TestServer::start(c).await;
    let kube = FakeKube::start().await;
    let adapter = Adapter::start(&srv.grpc_url(), &kube, "argo-workflows");
    let a = admin(&srv).await;
    let codex = srv.client(CODEX_TOKEN).await;

    let mut made: Vec<(&str, String)> = Vec::new();
    let created = |n: usize| {
        let kube = kube.clone();
        async move {
            wait_until("the Workflow", Duration::from_secs(20), || async {
                kube.creates().len() >= n
            })
            .await;
            kube.creates()[n - 1].clone()
        }
    };

    let run = a.start_run("dispatch", &[("payload", "{\"k\":1}")]).await;
    let wf = created(1).await;
    made.push(("command.json", run.id.clone()));
    let mut objects = vec![(wf, run.id.clone())];

    for (i, (file, autonomous)) in [("codex.json", false), ("codex-autonomous.json", true)]
        .into_iter()
        .enumerate()
    {
        let r = codex
            .codex()
            .submit_task(pb::SubmitTaskRequest {
                task: Some(task(&format!("sample-{autonomous}"), autonomous)),
                delivery_id: String::new(),
            })
            .await
            .expect("accepted")
            .into_inner();
        let wf = created(i + 2).await;
        made.push((file, r.run_id.clone()));
        objects.push((wf, r.run_id));
    }

    // A retry of the finished command run.
    let name = objects[0].0["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    kube.set_phase("argo-workflows", &name, "Failed", serde_json::json!({}));
    wait_until("the run to fail", Duration::from_secs(20), || async {
        a.status(&run.id).await == pb::RunStatus::Failed
    })
    .await;
    let retry =
        a.0.admin()
            .retry_run(pb::RetryRunRequest {
                run_id: run.id.clone(),
                idempotency_key: String::new(),
            })
            .await
            .expect("retry")
            .into_inner()
            .run
            .expect("run");
    let wf = created(4).await;
    made.push(("retry.json", retry.id.clone()));
    objects.push((wf, retry.id.clone()));

    // The cancel of the running retry: a merge patch of spec.shutdown.
    a.0.admin()
        .cancel_run(pb::CancelRunRequest {
            run_id: retry.id.clone(),
            mode: pb::CancelMode::Stop as i32,
            reason: "sample".into(),
        })
        .await
        .expect("cancel");
    wait_until("the cancel patch", Duration::from_secs(20), || async {
        !kube.patches().is_empty()
    })
    .await;
    let (_, _, patch) = kube.patches()[0].clone();

    let mut problems = Vec::new();
    for ((file, id), (wf, _)) in made.iter().zip(objects) {
        let name = wf["metadata"]["name"].as_str().expect("name").to_string();
        problems.extend(pinned(file, &normalized(wf, id, &name)));
    }
    problems.extend(pinned("cancel-patch.json", &patch));
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    adapter.drain().await.expect("drain");
    srv.stop().await;
}
