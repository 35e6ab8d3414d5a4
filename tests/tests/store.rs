//! The run store on both backends: the outbox transaction, durable idempotency (including under
//! concurrency), history, listing with filters and pagination, and concurrent migrations.

use facteur_client::pb;
use facteur_server::domain::{RunSource, RunStatus};
use facteur_server::store::{RunFilter, Store};
use facteur_tests::*;
use std::time::Duration;

async fn store(db: &TestDb) -> Store {
    let s = Store::connect(&db.url, 10, Duration::from_secs(5))
        .await
        .expect("connect");
    s.migrate().await.expect("migrate");
    s
}

async fn create_is_transactional_and_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db).await;
    let (run, dup) = s
        .create_run(sample_run("key-1"), "ops")
        .await
        .expect("create");
    assert!(!dup);
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.source, RunSource::Admin);
    assert_eq!(
        run.parameters.get("payload").map(String::as_str),
        Some("{}")
    );
    assert!(
        run.workflow_name.starts_with("facteur-dispatch-") && run.workflow_name.len() <= 63,
        "{}",
        run.workflow_name
    );
    assert_eq!(
        s.dispatch_count(&run.id).await.expect("count"),
        1,
        "a run comes with its dispatch"
    );
    let events = s.run_events(&run.id).await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].sequence,
            events[0].kind.as_str(),
            events[0].actor.as_str()
        ),
        (1, "created", "ops")
    );

    let (again, dup) = s
        .create_run(sample_run("key-1"), "ops")
        .await
        .expect("replay");
    assert!(dup);
    assert_eq!(again.id, run.id);
    assert_eq!(
        s.dispatch_count(&run.id).await.expect("count"),
        1,
        "a replay starts nothing"
    );

    // A replay finds the run through a new connection pool too (another replica).
    let other = store(&db).await;
    let (third, dup) = other
        .create_run(sample_run("key-1"), "ops")
        .await
        .expect("replay elsewhere");
    assert!(dup && third.id == run.id);
}

#[tokio::test]
async fn create_is_transactional_and_idempotent_on_sqlite() {
    create_is_transactional_and_idempotent(Backend::Sqlite).await;
}

#[tokio::test]
async fn create_is_transactional_and_idempotent_on_postgres() {
    create_is_transactional_and_idempotent(Backend::Postgres).await;
}

async fn concurrent_replays_make_one_run(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db).await;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.create_run(sample_run("same-key"), "ops").await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut fresh = 0;
    for t in tasks {
        let (run, dup) = t.await.expect("task").expect("create under contention");
        ids.insert(run.id);
        fresh += usize::from(!dup);
    }
    assert_eq!(ids.len(), 1, "one run for one key");
    assert_eq!(fresh, 1, "exactly one call created it");
    let all = s
        .list_runs(&RunFilter::default(), 100, None)
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(s.dispatch_count(&all[0].id).await.expect("count"), 1);
}

#[tokio::test]
async fn concurrent_replays_make_one_run_on_sqlite() {
    concurrent_replays_make_one_run(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_replays_make_one_run_on_postgres() {
    concurrent_replays_make_one_run(Backend::Postgres).await;
}

async fn list_filters_and_pages(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut cfg = config(&db);
    cfg.database.max_connections = 5;
    let srv = TestServer::start(cfg).await;
    let s = srv.server.state.store.clone();
    for i in 0..7 {
        let mut r = sample_run(&format!("k{i}"));
        if i % 2 == 0 {
            r.command = "deploy".into();
            r.requester.user_id = "123456789012345678".into();
        }
        s.create_run(r, "ops").await.expect("create");
    }
    let c = srv.client("").await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .admin()
            .list_runs(pb::ListRunsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.runs.len() <= 3);
        seen.extend(page.runs.into_iter().map(|r| r.idempotency_key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        vec!["k6", "k5", "k4", "k3", "k2", "k1", "k0"],
        "newest first, no gaps or repeats"
    );

    let deploys = c
        .admin()
        .list_runs(pb::ListRunsRequest {
            command: "deploy".into(),
            ..Default::default()
        })
        .await
        .expect("filter")
        .into_inner();
    assert_eq!(deploys.runs.len(), 4);
    let by_user = c
        .admin()
        .list_runs(pb::ListRunsRequest {
            requester: "123456789012345678".into(),
            ..Default::default()
        })
        .await
        .expect("filter")
        .into_inner();
    assert_eq!(by_user.runs.len(), 4);
    let running = c
        .admin()
        .list_runs(pb::ListRunsRequest {
            status: pb::RunStatus::Running as i32,
            ..Default::default()
        })
        .await
        .expect("filter")
        .into_inner();
    assert!(running.runs.is_empty());

    let bad = c
        .admin()
        .list_runs(pb::ListRunsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("page_token"));
    let bad = c
        .admin()
        .get_run(pb::GetRunRequest {
            run_id: "nope".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let missing = c
        .admin()
        .get_run(pb::GetRunRequest {
            run_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    srv.stop().await;
}

#[tokio::test]
async fn list_filters_and_pages_on_sqlite() {
    list_filters_and_pages(Backend::Sqlite).await;
}

#[tokio::test]
async fn list_filters_and_pages_on_postgres() {
    list_filters_and_pages(Backend::Postgres).await;
}

#[tokio::test]
async fn replicas_migrating_together_on_postgres_are_safe() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let s = Store::connect(&url, 3, Duration::from_secs(10))
                .await
                .expect("connect");
            s.migrate().await
        }));
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("every replica migrates without error");
    }
    let s = store(&db).await;
    s.create_run(sample_run("after-migrate"), "ops")
        .await
        .expect("schema usable");
}

/// Starts racing for the last places of a quota: exactly the quota's worth start, on any
/// backend (the decision and the insert share one transaction holding the quota's lock).
async fn a_quota_holds_under_concurrent_starts(backend: Backend) {
    use facteur_server::domain::policy::Quota;
    use facteur_server::store::policy::Quoted;
    let db = TestDb::new(backend).await;
    let s = store(&db).await;
    let quota = Quota {
        max_concurrent: Some(3),
        max_per_hour: None,
    };
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut new = sample_run(&format!("quota-{i}"));
            new.requester.guild_id = "100000000000000001".into();
            s.create_run_within(new, "ops", &quota).await
        }));
    }
    let (mut started, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task").expect("no error under contention") {
            Quoted::Started(_, false) => started += 1,
            Quoted::Started(_, true) => panic!("no replays here"),
            Quoted::Refused(..) => refused += 1,
        }
    }
    assert_eq!((started, refused), (3, 9));
}

#[tokio::test]
async fn a_quota_holds_under_concurrent_starts_on_sqlite() {
    a_quota_holds_under_concurrent_starts(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_quota_holds_under_concurrent_starts_on_postgres() {
    a_quota_holds_under_concurrent_starts(Backend::Postgres).await;
}

/// Leases and completions in batches: concurrent adapters lease disjoint jobs, each batch at
/// most what was asked, one job per run; a batch of completions answers each on its own (a
/// stale token refused, the others recorded) and the history of every run reads in order.
async fn leases_and_completions_go_in_batches(backend: Backend) {
    use facteur_server::domain::dispatch::{DispatchPolicy, Outcome};
    use facteur_server::store::dispatch::{CompleteEffect, Completion, LeaseOutcome};
    let db = TestDb::new(backend).await;
    let s = store(&db).await;
    let policy = DispatchPolicy::from_config(&Default::default());
    let ns = vec!["argo-workflows".to_string()];
    for i in 0..10 {
        s.create_run(sample_run(&format!("batch-{i}")), "ops")
            .await
            .expect("create");
    }
    // A run in a namespace nobody asks for is never handed out.
    let mut other = sample_run("batch-other");
    other.namespace = "elsewhere".into();
    s.create_run(other, "ops").await.expect("create");

    let lease = |owner: &'static str, max: usize| {
        let (s, ns) = (s.clone(), ns.clone());
        tokio::spawn(async move { s.lease_batch(owner, "default", &ns, &policy, max).await })
    };
    let (a, b) = (lease("a", 4), lease("b", 4));
    let mut leased = Vec::new();
    for (batch, max) in [(a, 4), (b, 4)] {
        match batch.await.expect("task").expect("lease") {
            LeaseOutcome::Leased(l) => {
                assert!(!l.is_empty() && l.len() <= max, "{} jobs", l.len());
                leased.extend(l);
            }
            LeaseOutcome::Idle { .. } => panic!("jobs were due"),
        }
    }
    while leased.len() < 10 {
        match s
            .lease_batch("c", "default", &ns, &policy, 10)
            .await
            .expect("lease")
        {
            LeaseOutcome::Leased(l) => leased.extend(l),
            LeaseOutcome::Idle { .. } => break,
        }
    }
    let mut runs: Vec<&str> = leased.iter().map(|l| l.run.id.as_str()).collect();
    runs.sort_unstable();
    runs.dedup();
    assert_eq!(
        (leased.len(), runs.len()),
        (10, 10),
        "each run's job leased once"
    );
    assert!(leased.iter().all(|l| l.run.namespace == "argo-workflows"));
    assert!(matches!(
        s.lease_batch("c", "default", &ns, &policy, 10)
            .await
            .expect("lease"),
        LeaseOutcome::Idle { .. }
    ));

    let success = |name: &str| Outcome::Success {
        workflow_name: name.into(),
        workflow_uid: format!("uid-{name}"),
        already_existed: false,
    };
    let mut items: Vec<Completion> = leased
        .iter()
        .map(|l| Completion {
            dispatch_id: l.dispatch.id.clone(),
            lease_token: l.dispatch.lease_token.clone(),
            outcome: success(&l.run.workflow_name),
            actor: "a".into(),
        })
        .collect();
    items[3].lease_token = "not-the-token".into();
    items.push(Completion {
        dispatch_id: "no-such-dispatch".into(),
        lease_token: "t".into(),
        outcome: success("x"),
        actor: "a".into(),
    });
    let out = s.complete_batch(&items, &policy).await.expect("batch");
    assert_eq!(out.len(), 11);
    for (i, r) in out.iter().enumerate() {
        match (i, r) {
            (3, Err(e)) => assert!(e.to_string().contains("no longer leased"), "{e}"),
            (10, Err(e)) => assert!(e.to_string().contains("no dispatch"), "{e}"),
            (_, Ok((run, CompleteEffect::Submitted(_)))) => {
                assert_eq!(run.status, RunStatus::Submitted, "{i}");
                assert_eq!(run.workflow_uid, format!("uid-{}", run.workflow_name));
            }
            (i, r) => panic!("completion {i}: {r:?}"),
        }
    }
    // The refused one is untouched; the others are as the answers say.
    let refused = s
        .get_run(&leased[3].run.id)
        .await
        .expect("get")
        .expect("run");
    assert_eq!(refused.status, RunStatus::Dispatching);
    for (i, l) in leased.iter().enumerate() {
        let kinds: Vec<(i64, String)> = s
            .run_events(&l.run.id)
            .await
            .expect("events")
            .into_iter()
            .map(|e| (e.sequence, e.kind))
            .collect();
        let want: Vec<(i64, &str)> = if i == 3 {
            vec![(1, "created"), (2, "leased")]
        } else {
            vec![(1, "created"), (2, "leased"), (3, "submitted")]
        };
        let kinds: Vec<(i64, &str)> = kinds.iter().map(|(n, k)| (*n, k.as_str())).collect();
        assert_eq!(kinds, want, "history of run {i}");
    }
    // A success sent again is answered as done, changing nothing.
    let again = s.complete_batch(&items[..1], &policy).await.expect("batch");
    assert!(matches!(again[0], Ok((_, CompleteEffect::AlreadyDone))));
}

#[tokio::test]
async fn leases_and_completions_go_in_batches_on_sqlite() {
    leases_and_completions_go_in_batches(Backend::Sqlite).await;
}

#[tokio::test]
async fn leases_and_completions_go_in_batches_on_postgres() {
    leases_and_completions_go_in_batches(Backend::Postgres).await;
}

/// A quota's usage as the database aggregates it: the active runs, those started within the
/// hour (active or ended), the oldest of those; ended runs older than the hour not counted.
async fn quota_usage_counts_the_hour(backend: Backend) {
    use facteur_server::domain::policy::Quota;
    use facteur_server::store::entities::runs;
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let db = TestDb::new(backend).await;
    let s = store(&db).await;
    let guild = "100000000000000001";
    let quota = Quota {
        max_concurrent: Some(100),
        max_per_hour: Some(100),
    };
    let now = chrono::Utc::now();
    // (key, status, started how long ago)
    let shape = [
        ("active-new", "running", 1),
        ("active-old", "queued", 7_200),
        ("ended-new", "succeeded", 600),
        ("ended-newest", "failed", 60),
        ("ended-old", "succeeded", 4_000),
    ];
    for (key, status, ago) in shape {
        let mut new = sample_run(key);
        new.requester.guild_id = guild.into();
        s.create_run_within(new, "ops", &quota)
            .await
            .expect("start");
        runs::Entity::update_many()
            .col_expr(runs::Column::Status, Expr::value(status))
            .col_expr(
                runs::Column::CreatedAt,
                Expr::value(now - chrono::Duration::seconds(ago)),
            )
            .filter(runs::Column::IdempotencyKey.eq(key))
            .exec(s.connection())
            .await
            .expect("shape");
    }
    let usage = s
        .quota_usage(&["dispatch".to_string()].into())
        .await
        .expect("usage");
    let (_, _, u) = usage
        .iter()
        .find(|(g, _, _)| g == guild)
        .expect("the guild's usage");
    assert_eq!((u.active, u.last_hour), (2, 3), "{u:?}");
    // Where no command has an hourly limit, the ended runs of the hour are not read.
    let active_only = s.quota_usage(&Default::default()).await.expect("usage");
    let (_, _, a) = active_only
        .iter()
        .find(|(g, _, _)| g == guild)
        .expect("the guild's usage");
    assert_eq!((a.active, a.last_hour), (2, 1), "{a:?}");
    let oldest = u.oldest_in_hour.expect("oldest in the hour");
    let want = now - chrono::Duration::seconds(600);
    assert!(
        (oldest - want).num_milliseconds().abs() < 5,
        "oldest {oldest} is the ended run of 10 minutes ago ({want})"
    );
    // The same through the start path: one more place in the hour is refused at 3.
    let tight = Quota {
        max_concurrent: None,
        max_per_hour: Some(3),
    };
    let mut new = sample_run("one-more");
    new.requester.guild_id = guild.into();
    match s
        .create_run_within(new, "ops", &tight)
        .await
        .expect("decide")
    {
        facteur_server::store::policy::Quoted::Refused(..) => {}
        other => panic!("the hour holds 3 already: {other:?}"),
    }
}

#[tokio::test]
async fn quota_usage_counts_the_hour_on_sqlite() {
    quota_usage_counts_the_hour(Backend::Sqlite).await;
}

#[tokio::test]
async fn quota_usage_counts_the_hour_on_postgres() {
    quota_usage_counts_the_hour(Backend::Postgres).await;
}

/// The registration record per scope: a failure counts one more in a row and keeps the last
/// success; a success clears it (the upsert's `failures + 1` on both backends).
async fn registrations_count_failures_in_a_row(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = store(&db).await;
    s.record_registration("global", 1, 7, "", 0)
        .await
        .expect("success");
    for _ in 0..2 {
        s.record_registration("global", 2, 0, "HTTP 400: Invalid Form Body", 50035)
            .await
            .expect("failure");
    }
    s.record_registration("100000000000000001", 2, 0, "unreachable", 0)
        .await
        .expect("another scope");
    let r = s.registrations().await.expect("read");
    assert_eq!(r.len(), 2);
    let g = r.iter().find(|r| r.scope == "global").expect("global");
    assert_eq!(
        (g.failures, g.discord_code, g.commands, g.catalog_version),
        (2, 50035, 7, 2),
        "{g:?}"
    );
    assert!(g.registered_at.is_some() && !g.error.is_empty());
    s.record_registration("global", 3, 8, "", 0)
        .await
        .expect("success again");
    let r = s.registrations().await.expect("read");
    let g = r.iter().find(|r| r.scope == "global").expect("global");
    assert_eq!(
        (g.failures, g.discord_code, g.commands, g.error.as_str()),
        (0, 0, 8, "")
    );
    let other = r.iter().find(|r| r.scope != "global").expect("other");
    assert_eq!((other.failures, other.registered_at), (1, None));
}

#[tokio::test]
async fn registrations_count_failures_in_a_row_on_sqlite() {
    registrations_count_failures_in_a_row(Backend::Sqlite).await;
}

#[tokio::test]
async fn registrations_count_failures_in_a_row_on_postgres() {
    registrations_count_failures_in_a_row(Backend::Postgres).await;
}

/// A thousand runs started at once get a thousand distinct numbers (a sequence on Postgres; the
/// write lock on SQLite), each naming its run, as does a unique prefix of its id.
async fn a_thousand_runs_at_once_have_distinct_numbers(backend: Backend) {
    use facteur_server::domain::run::Handle;
    let db = TestDb::new(backend).await;
    let s = store(&db).await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut runs = Vec::new();
            for k in 0..20 {
                let (run, _) = s
                    .create_run(sample_run(&format!("n-{t}-{k}")), "ops")
                    .await
                    .expect("create");
                runs.push(run);
            }
            runs
        }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.extend(t.await.expect("task"));
    }
    eprintln!("1000 runs in {:?}", started.elapsed());
    let numbers: std::collections::BTreeSet<i64> = runs.iter().map(|r| r.number).collect();
    assert_eq!(numbers.len(), 1000, "distinct");
    assert!(numbers.iter().all(|n| *n > 0));
    for r in runs.iter().step_by(37) {
        let by_number = s
            .runs_by_handle(&Handle::Number(r.number), None, 2)
            .await
            .expect("by number");
        assert_eq!(by_number, [(r.id.clone(), r.number)]);
        let by_prefix = s
            .runs_by_handle(&Handle::Prefix(r.id[..30].to_string()), None, 2)
            .await
            .expect("by prefix");
        assert_eq!(by_prefix, [(r.id.clone(), r.number)]);
    }
    // UUIDv7 ids started together share their first 8 characters: a prefix that short names
    // many runs.
    let many = s
        .runs_by_handle(&Handle::Prefix(runs[0].id[..8].to_string()), None, 11)
        .await
        .expect("by prefix");
    assert!(many.len() > 1, "{many:?}");
}

#[tokio::test]
async fn a_thousand_runs_at_once_have_distinct_numbers_on_sqlite() {
    a_thousand_runs_at_once_have_distinct_numbers(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_thousand_runs_at_once_have_distinct_numbers_on_postgres() {
    a_thousand_runs_at_once_have_distinct_numbers(Backend::Postgres).await;
}
