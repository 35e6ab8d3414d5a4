//! The change feed behind `WatchRuns` cannot skip a commit. One transaction takes a history id
//! and stays open while a later one commits; the watcher must deliver both once the first
//! commits (with `id > cursor` it delivered the later one, moved past the earlier id, and never
//! delivered it: that run's card stayed stuck). Run on both backends, through the real server
//! and the real client.

use facteur_client::pb;
use facteur_server::store::feed::FeedCursor;
use facteur_tests::*;
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use std::time::Duration;
use tokio_stream::StreamExt;

const GUILD: &str = "100000000000000001";
const DEPLOYER: &str = "200000000000000001";

/// Reads updates until one for `run_id` arrives (cursors checked to grow), or panics after 10 s.
async fn next_for(
    watch: &mut tonic::Streaming<pb::WatchRunsResponse>,
    last: &mut FeedCursor,
    run_id: &str,
) -> pb::WatchRunsResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let u = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| panic!("no update for run {run_id} within 10 s"))
            .expect("stream open")
            .expect("update");
        let at: FeedCursor = u.cursor.parse().expect("cursor");
        assert!(at > *last, "cursors only grow: {at} after {last}");
        *last = at;
        if u.run.as_ref().map(|r| r.id.as_str()) == Some(run_id) {
            return u;
        }
    }
}

async fn a_commit_behind_a_later_one_is_delivered(backend: Backend) {
    let db = TestDb::new(backend).await;
    let srv = TestServer::start(with_deploy_command(with_tokens(config(&db)), DEPLOYER)).await;
    let discord = srv.client(DISCORD_TOKEN).await;
    let admin = srv.client(ADMIN_TOKEN).await;
    let mut watch = discord
        .command()
        .watch_runs(pb::WatchRunsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    let mut runs = Vec::new();
    for id in ["800000000000000001", "800000000000000002"] {
        let r = discord
            .command()
            .invoke(deploy_invoke(interaction(id, GUILD, &[DEPLOYER])))
            .await
            .expect("invoke")
            .into_inner()
            .run
            .expect("a run");
        runs.push(r.id);
    }
    let (a, b) = (runs[0].clone(), runs[1].clone());
    let mut last = FeedCursor::default();
    next_for(&mut watch, &mut last, &a).await;
    next_for(&mut watch, &mut last, &b).await;

    // A's transaction takes the next history id and stays open...
    let db = srv.server.state.store.connection();
    let held = db.begin().await.expect("begin");
    let backend = held.get_database_backend();
    held.execute_raw(Statement::from_sql_and_values(
        backend,
        match backend {
            sea_orm::DatabaseBackend::Postgres => {
                "INSERT INTO run_events (run_id, sequence, actor, kind, from_status, to_status, \
                 payload, created_at) VALUES ($1, 100, 'test', 'note', 'queued', 'queued', '{}', now())"
            }
            _ => {
                "INSERT INTO run_events (run_id, sequence, actor, kind, from_status, to_status, \
                 payload, created_at) VALUES (?, 100, 'test', 'note', 'queued', 'queued', '{}', \
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
            }
        },
        [a.clone().into()],
    ))
    .await
    .expect("held insert");

    // ...while B's cancellation, a later id, commits (on SQLite it waits for the write lock).
    let cancel = {
        let admin = admin.clone();
        let b = b.clone();
        tokio::spawn(async move {
            admin
                .admin()
                .cancel_run(pb::CancelRunRequest {
                    run_id: b,
                    reason: "feed test".into(),
                    ..Default::default()
                })
                .await
                .expect("cancel")
        })
    };
    if backend == sea_orm::DatabaseBackend::Postgres {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !cancel.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the later transaction commits first");
        // The watcher has polled past the later commit by now (it looks every 500 ms at most).
        tokio::time::sleep(Duration::from_millis(1200)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    held.commit().await.expect("commit the earlier one");
    cancel.await.expect("cancel task");

    // Both are delivered, whichever comes first: A (the earlier id, committed last) and B's
    // cancellation.
    let (mut got_a, mut got_b) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(got_a && got_b) {
        let u = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| panic!("delivered A: {got_a}, B: {got_b} after 10 s"))
            .expect("stream open")
            .expect("update");
        let at: FeedCursor = u.cursor.parse().expect("cursor");
        assert!(at > last, "cursors only grow: {at} after {last}");
        last = at;
        let run = u.run.expect("run");
        if run.id == a {
            got_a = true;
        } else if run.id == b && run.status == pb::RunStatus::Cancelled as i32 {
            got_b = true;
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_behind_a_later_one_is_delivered_on_postgres() {
    a_commit_behind_a_later_one_is_delivered(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_behind_a_later_one_is_delivered_on_sqlite() {
    a_commit_behind_a_later_one_is_delivered(Backend::Sqlite).await;
}
