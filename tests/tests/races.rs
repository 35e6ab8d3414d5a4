//! Cancels racing leases and status reports on Postgres: two argo-adapters leasing, Argo moving
//! every new Workflow to Running, and each run cancelled right after it was started. Before the
//! store took one lock order (run row, then dispatch row), some of these cancels deadlocked with
//! a lease or a completion and were answered UNAVAILABLE "deadlock detected".

use facteur_client::pb;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::{Adapter, admin};
use facteur_tests::*;
use sea_orm::{ConnectionTrait, Database, DatabaseBackend, Statement};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "argo-workflows";
const ROUNDS: usize = 80;
const WAVES: usize = 4;

async fn deadlocks(url: &str) -> i64 {
    let db = Database::connect(url).await.expect("connect");
    let row = db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        ))
        .await
        .expect("pg_stat_database")
        .expect("a row");
    let n: i64 = row.try_get("", "deadlocks").expect("deadlocks");
    let _ = db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancels_racing_leases_and_reports_all_succeed_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut c = with_tokens(config(&db));
    c.dispatcher.lease_seconds = 5;
    c.dispatcher.backoff_initial_ms = 20;
    c.dispatcher.backoff_max_ms = 100;
    let srv = TestServer::start(c).await;
    let kube = Arc::new(FakeKube::start().await);
    let adapters = [
        Adapter::start(&srv.grpc_url(), &kube, NS),
        Adapter::start(&srv.grpc_url(), &kube, NS),
    ];
    let a = Arc::new(admin(&srv).await);
    let before = deadlocks(&db.url).await;

    // Argo: every new Workflow starts running at once, so status reports race the cancels.
    let argo = tokio_util::sync::CancellationToken::new();
    let argo_task = {
        let (kube, stop) = (kube.clone(), argo.clone());
        tokio::spawn(async move {
            let mut moved = HashSet::new();
            while !stop.is_cancelled() {
                for wf in kube.workflows() {
                    let name = wf["metadata"]["name"].as_str().unwrap_or("").to_string();
                    if moved.insert(name.clone()) {
                        kube.set_phase(NS, &name, "Running", json!({"progress": "0/1"}));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // WAVES callers, each ROUNDS times: start a run, cancel it at once. The start wakes the
    // adapters' lease streams, so the cancel lands while the run is being leased, completed or
    // reported on.
    let callers = (0..WAVES).map(|w| {
        let a = a.clone();
        async move {
            let mut out = Vec::new();
            for i in 0..ROUNDS {
                let run = a.start_run("dispatch", &[]).await;
                let mode = if (i + w) % 2 == 0 {
                    pb::CancelMode::Stop
                } else {
                    pb::CancelMode::Terminate
                };
                let r =
                    a.0.admin()
                        .cancel_run(pb::CancelRunRequest {
                            run_id: run.id.clone(),
                            mode: mode as i32,
                            reason: format!("race {w}/{i}"),
                        })
                        .await;
                out.push((
                    run,
                    r.map(|_| ())
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                ));
            }
            out
        }
    });
    let started = std::time::Instant::now();
    let results: Vec<_> = futures::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect();
    eprintln!(
        "{} start+cancel pairs in {:?}",
        results.len(),
        started.elapsed()
    );
    let failed: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    assert!(failed.is_empty(), "cancels failed: {failed:?}");

    // Argo ends every Workflow that was told to shut down; every run ends cancelled.
    let runs: Vec<pb::Run> = results.into_iter().map(|(run, _)| run).collect();
    wait_until(
        "every run to be cancelled",
        Duration::from_secs(40),
        || async {
            for (_, name, _) in kube.patches() {
                if let Some(wf) = kube.workflow(NS, &name)
                    && wf["status"]["phase"] != "Failed"
                {
                    kube.set_phase(NS, &name, "Failed", json!({"message": "Stopped"}));
                }
            }
            let mut all = true;
            for run in &runs {
                all &= a.status(&run.id).await == pb::RunStatus::Cancelled;
            }
            all
        },
    )
    .await;
    eprintln!("every run cancelled after {:?}", started.elapsed());
    argo.cancel();
    let _ = argo_task.await;

    // Every Workflow that exists is one of these runs', and was told to stop: none is left
    // running behind a cancelled run.
    let ours: HashSet<String> = runs
        .iter()
        .filter_map(|r| r.target.as_ref().map(|t| t.workflow_name.clone()))
        .collect();
    for wf in kube.workflows() {
        let name = wf["metadata"]["name"].as_str().unwrap_or("");
        assert!(ours.contains(name), "a Workflow of no run: {name}");
        assert_eq!(wf["status"]["phase"], "Failed", "{name} left running");
    }

    for adapter in adapters {
        adapter.stop().await;
    }
    // The statistics collector flushes at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(deadlocks(&db.url).await, before, "deadlocks were detected");
    srv.stop().await;
}
