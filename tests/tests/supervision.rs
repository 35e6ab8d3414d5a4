//! Background tasks of the real server are supervised: one that dies is started again (and
//! counted); one that keeps dying takes readiness down and stops the server with an error,
//! which the binary turns into a non-zero exit code.

use facteur_runtime::supervise::{Lifetime, RestartPolicy};
use facteur_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn quick() -> RestartPolicy {
    RestartPolicy {
        initial: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        budget: 3,
        window: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_dies_once_is_restarted_and_counted() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(with_tokens(config(&db))).await;
    let state = srv.server.state.clone();
    let runs = Arc::new(AtomicUsize::new(0));
    let (n, shutdown) = (runs.clone(), state.shutdown.clone());
    state
        .supervisor
        .spawn_with("flaky", Lifetime::UntilShutdown, quick(), move || {
            let (n, shutdown) = (n.clone(), shutdown.clone());
            async move {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("the first run dies");
                }
                shutdown.cancelled().await;
                Ok(())
            }
        });
    wait_until("the task runs again", Duration::from_secs(5), || {
        let runs = runs.clone();
        async move { runs.load(Ordering::SeqCst) >= 2 }
    })
    .await;
    assert!(state.supervisor.failed().is_none());
    assert!(state.health.check().await.iter().all(|r| r.healthy));
    assert!(
        state
            .metrics
            .render()
            .contains("facteur_background_task_restarts_total{task=\"flaky\"} 1"),
        "{}",
        state.metrics.render()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_dying_takes_readiness_down_and_stops_the_server() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(with_tokens(config(&db))).await;
    let state = srv.server.state.clone();
    state
        .supervisor
        .spawn_with("doomed", Lifetime::UntilShutdown, quick(), || async {
            Err("cannot reach the thing it needs".to_string())
        });
    tokio::time::timeout(Duration::from_secs(10), state.shutdown.cancelled())
        .await
        .expect("the server is asked to stop");
    let reports = state.health.check().await;
    let tasks = reports
        .iter()
        .find(|r| r.name == "background_tasks")
        .expect("a background_tasks check");
    assert!(!tasks.healthy, "readiness is down");
    assert!(tasks.message.contains("doomed"), "{}", tasks.message);
    let err = tokio::time::timeout(Duration::from_secs(30), srv.server.wait())
        .await
        .expect("the server stops")
        .expect_err("stops with an error");
    let text = format!("{err:#}");
    assert!(
        text.contains("doomed") && text.contains("cannot reach the thing it needs"),
        "{text}"
    );
}
