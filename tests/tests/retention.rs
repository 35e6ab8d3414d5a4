//! Retention on both backends, through the real server and the real client: `Prune` with
//! `dry_run` counts and deletes nothing; `Prune` deletes finished runs past their window with
//! their history and dispatches, and old audit entries, and keeps every run that is not final
//! (however old), every run inside its window and every recent audit entry. The deletions are
//! counted in `facteur_retention_deleted_total`.

use chrono::Utc;
use facteur_client::pb;
use facteur_server::store::entities::{audit_events, runs};
use facteur_tests::*;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

fn counts(r: &pb::PruneResponse) -> Vec<(String, u64)> {
    r.counts.iter().map(|c| (c.kind.clone(), c.count)).collect()
}

fn expected(runs: u64, events: u64, dispatches: u64, audit: u64) -> Vec<(String, u64)> {
    [
        ("runs", runs),
        ("run_events", events),
        ("dispatches", dispatches),
        ("audit_events", audit),
        ("codex_task_runs", 0),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect()
}

async fn finished_history_goes_and_nothing_else(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut cfg = with_tokens(config(&db));
    cfg.retention.runs = "30d".into();
    cfg.retention.audit = "60d".into();
    // The background pass runs once at start (nothing to delete yet) and not again here.
    cfg.retention.interval_seconds = 3600;
    cfg.retention.batch_size = 2;
    let srv = TestServer::start(cfg).await;
    let store = &srv.server.state.store;
    let conn = store.connection();
    let admin = srv.client(ADMIN_TOKEN).await;

    let long_ago = Utc::now() - chrono::Duration::days(45);
    let recently = Utc::now() - chrono::Duration::days(10);
    // (status, finished_at, goes)
    let cases = [
        ("succeeded", Some(long_ago), true),
        ("failed", Some(long_ago), true),
        ("error", Some(long_ago), true),
        ("cancelled", Some(long_ago), true),
        ("succeeded", Some(recently), false),
        // Not final, however old: never deleted.
        ("running", None, false),
        ("dead_lettered", Some(long_ago), false),
        ("queued", None, false),
    ];
    let mut ids = Vec::new();
    for (i, (status, finished, goes)) in cases.iter().enumerate() {
        let (run, _) = store
            .create_run(sample_run(&format!("retention-{i}")), "ops")
            .await
            .expect("create");
        runs::Entity::update_many()
            .col_expr(runs::Column::Status, Expr::value(*status))
            .col_expr(runs::Column::FinishedAt, Expr::value(*finished))
            .col_expr(runs::Column::CreatedAt, Expr::value(long_ago))
            .filter(runs::Column::Id.eq(run.id.clone()))
            .exec(conn)
            .await
            .expect("age the run");
        ids.push((run.id, *goes));
    }
    for (i, at) in [long_ago - chrono::Duration::days(30), long_ago, recently]
        .into_iter()
        .enumerate()
    {
        audit_events::Entity::insert(audit_events::ActiveModel {
            guild_id: Set(String::new()),
            actor: Set("ops".into()),
            kind: Set("test".into()),
            subject: Set(format!("entry-{i}")),
            payload: Set("{}".into()),
            created_at: Set(at),
            ..Default::default()
        })
        .exec(conn)
        .await
        .expect("audit entry");
    }
    let (runs_before, events_before, audit_before) = (
        count_rows(store, "runs").await,
        count_rows(store, "run_events").await,
        count_rows(store, "audit_events").await,
    );
    assert_eq!(runs_before, 8);

    // Dry: counts, deletes nothing. Four runs go, each with its one entry and one dispatch;
    // one audit entry is past 60 days (the other two are at 45 and 10).
    let dry = admin
        .admin()
        .prune(pb::PruneRequest { dry_run: true })
        .await
        .expect("dry run")
        .into_inner();
    assert!(dry.dry_run);
    assert_eq!(counts(&dry), expected(4, 4, 4, 1));
    assert_eq!(dry.windows, "runs=30d audit=60d codex_task_runs=keep");
    assert_eq!(count_rows(store, "runs").await, runs_before);
    assert_eq!(count_rows(store, "run_events").await, events_before);
    assert_eq!(count_rows(store, "audit_events").await, audit_before);

    // For real, in batches of two.
    let done = admin
        .admin()
        .prune(pb::PruneRequest { dry_run: false })
        .await
        .expect("prune")
        .into_inner();
    assert!(!done.dry_run);
    assert_eq!(counts(&done), expected(4, 4, 4, 1));
    assert_eq!(count_rows(store, "runs").await, 4);
    assert_eq!(count_rows(store, "run_events").await, events_before - 4);
    assert_eq!(count_rows(store, "dispatches").await, 4);
    assert_eq!(count_rows(store, "audit_events").await, audit_before - 1);
    for (id, goes) in &ids {
        let kept = store.get_run(id).await.expect("get").is_some();
        assert_eq!(kept, !goes, "run {id}");
    }
    let metrics = srv.server.state.metrics.render();
    assert!(
        metrics.contains("facteur_retention_deleted_total{kind=\"runs\"} 4"),
        "{metrics}"
    );

    // Nothing left to delete.
    let again = admin
        .admin()
        .prune(pb::PruneRequest { dry_run: false })
        .await
        .expect("prune again")
        .into_inner();
    assert_eq!(counts(&again), expected(0, 0, 0, 0));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_history_goes_and_nothing_else_on_postgres() {
    finished_history_goes_and_nothing_else(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_history_goes_and_nothing_else_on_sqlite() {
    finished_history_goes_and_nothing_else(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_needs_an_admin() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(with_tokens(config(&db))).await;
    let discord = srv.client(DISCORD_TOKEN).await;
    let err = discord
        .admin()
        .prune(pb::PruneRequest { dry_run: true })
        .await
        .expect_err("not an admin");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    srv.stop().await;
}
