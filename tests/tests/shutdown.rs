//! The argo-adapter under SIGTERM (its stop token, as `facteur_runtime::signals::drain` cancels
//! it): a Workflow create in flight is finished and completed within
//! `argo.shutdown_grace_seconds`, and the adapter ends cleanly; a create that outlives the grace
//! is cut and the adapter ends with an error (the binary exits non-zero). Before, in-flight jobs
//! were dropped at once and their runs sat `dispatching` until the lease expired.

use facteur_client::pb;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::{Adapter, admin};
use facteur_tests::*;
use std::time::{Duration, Instant};

const NS: &str = "argo-workflows";

fn adapter_config(grpc_url: &str, grace: u64) -> facteur_config::Config {
    let env = [(
        "FACTEUR_CONTROL_PLANE_URL".to_string(),
        grpc_url.to_string(),
    )]
    .into();
    let mut cfg = facteur_config::load_from(None, &env, facteur_config::Process::ArgoAdapter)
        .expect("adapter config");
    cfg.argo.namespace = NS.into();
    cfg.argo.shutdown_grace_seconds = grace;
    cfg
}

#[tokio::test]
async fn sigterm_finishes_an_in_flight_create_and_cuts_one_past_its_grace() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut c = with_tokens(config(&db));
    c.dispatcher.lease_seconds = 30;
    let srv = TestServer::start(c).await;
    let a = admin(&srv).await;

    // A slow create (1.5 s) in flight when the stop comes: finished, completed, clean end.
    let kube = FakeKube::start().await;
    kube.delay_creates(Duration::from_millis(1500));
    let adapter = Adapter::start_with(adapter_config(&srv.grpc_url(), 10), &kube);
    let run = a.start_run("dispatch", &[]).await;
    wait_until("the create to be sent", Duration::from_secs(10), || async {
        kube.create_seen_count() == 1
    })
    .await;
    adapter.drain().await.expect("a clean drain");
    assert_eq!(
        a.status(&run.id).await,
        pb::RunStatus::Submitted,
        "the create in flight was finished and completed before the adapter ended"
    );

    // A create that hangs: cut when the grace (1 s) runs out, and said so.
    let kube = FakeKube::start().await;
    kube.hang_creates(1);
    let adapter = Adapter::start_with(adapter_config(&srv.grpc_url(), 1), &kube);
    let run = a.start_run("dispatch", &[]).await;
    wait_until("the create to be sent", Duration::from_secs(10), || async {
        kube.create_seen_count() == 1
    })
    .await;
    let t = Instant::now();
    let err = adapter.drain().await.expect_err("the grace ran out");
    assert!(err.to_string().contains("shutdown grace"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(a.status(&run.id).await, pb::RunStatus::Dispatching);
    srv.stop().await;
}
