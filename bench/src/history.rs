//! `history`: the hot paths on a young Postgres database and on one holding months of history
//! (`BENCH_HISTORY_RUNS`, default 10^6 finished runs spread over 90 days in 50 guilds and 20
//! commands, four history entries and one dispatch each, an audit entry per ten runs), side by
//! side with a young database (`BENCH_BASELINE_RUNS`, default 10^3 runs of the same shape at
//! the same rate of runs, so the last hour holds as many runs in both and every filtered page is
//! as full: 50 members, 20 runs each at least): p50/p99 of each path (sequential calls, after a
//! warm-up), and the ratio seeded/young.
//! The goal is every ratio within 1.5.
//!
//! Paths: an interaction that starts a run (`Invoke` of a command with a quota: policy, quota
//! check and the run in one transaction), `StartRun`, one lease round, a status report, the
//! change feed's poll (a caught-up watcher), `GetStatus`, `ListRuns` (newest, by status, by guild,
//! by requester), the quota usage of `GetStatus`, and the stranded-run scan. The gRPC ones go
//! through the real client; the store's own ones (lease, report, feed, quota, stranded) are
//! called in process, as the RPCs behind them do.

use crate::{percentile, round2};
use facteur_client::pb;
use facteur_server::domain::dispatch::StatusReport;
use facteur_tests::{
    ADMIN_TOKEN, Backend, DISCORD_TOKEN, TestDb, TestServer, deploy_invoke, interaction,
};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use std::future::Future;
use std::time::Instant;

const GUILD: &str = "100000000000000001";
const DEPLOYER: &str = "200000000000000001";
const NS: &str = "argo-workflows";

/// Latencies (ms) of `n` sequential calls of `f` after `warm` unmeasured ones.
async fn timed<F, Fut>(warm: usize, n: usize, mut f: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for i in 0..warm {
        f(i).await?;
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(warm + i).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

fn figures(lat: &[f64]) -> Value {
    json!({"p50_ms": round2(percentile(lat, 50.0)), "p99_ms": round2(percentile(lat, 99.0))})
}

/// Every path once per sample, `n` samples each; `round` keeps keys unique across rounds.
async fn measure(srv: &TestServer, n: usize, round: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let state = srv.server.state.clone();
    let store = &state.store;
    let discord = srv.client(DISCORD_TOKEN).await;
    let admin = srv.client(ADMIN_TOKEN).await;
    let warm = 20;
    let mut out = Vec::new();

    let base: u64 = if round == "empty" {
        810_000_000_000_000_000
    } else {
        820_000_000_000_000_000
    };
    let lat = timed(warm, n, |i| {
        let mut c = discord.command();
        async move {
            let id = (base + i as u64).to_string();
            let req = deploy_invoke(interaction(&id, GUILD, &[DEPLOYER]));
            let r = c.invoke(req).await?.into_inner();
            anyhow::ensure!(r.run.is_some(), "invoke started no run: {:?}", r.reply);
            Ok(())
        }
    })
    .await?;
    out.push(("invoke_starts_run".into(), figures(&lat)));

    let lat = timed(warm, n, |i| {
        let mut a = admin.admin();
        let key = format!("bench-{round}-{i}");
        async move {
            a.start_run(pb::StartRunRequest {
                cluster: String::new(),
                command: "dispatch".into(),
                parameters: [("payload".to_string(), "{}".to_string())].into(),
                idempotency_key: key,
            })
            .await?;
            Ok(())
        }
    })
    .await?;
    out.push(("start_run".into(), figures(&lat)));

    // One lease round after each new run (it takes that run's job); only the round is timed.
    let policy = state.dispatch_policy;
    let namespaces = vec![NS.to_string()];
    let mut leased_names = Vec::new();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let run = admin
            .admin()
            .start_run(pb::StartRunRequest {
                cluster: String::new(),
                command: "dispatch".into(),
                parameters: [("payload".to_string(), "{}".to_string())].into(),
                idempotency_key: format!("bench-lease-{round}-{i}"),
            })
            .await?
            .into_inner()
            .run
            .ok_or_else(|| anyhow::anyhow!("no run"))?;
        leased_names.push(run.target.map(|t| t.workflow_name).unwrap_or_default());
        let t = Instant::now();
        store
            .lease_batch("bench-adapter", "default", &namespaces, &policy, 32)
            .await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    out.push(("lease_round".into(), figures(&lat)));

    let lat = timed(0, n.min(leased_names.len()), |i| {
        let name = leased_names[i].clone();
        async move {
            let report = StatusReport {
                namespace: NS.into(),
                workflow_name: name,
                phase: "Running".into(),
                progress: "1/4".into(),
                source: "watch".into(),
                ..Default::default()
            };
            store.report_status(&report, "bench").await?;
            Ok(())
        }
    })
    .await?;
    out.push(("status_report".into(), figures(&lat)));

    let lat = timed(warm, n, |_| async {
        let now = store.feed_now().await?;
        store.discord_changes_after(now, 200).await?;
        Ok(())
    })
    .await?;
    out.push(("feed_poll".into(), figures(&lat)));

    let lat = timed(warm, n, |_| {
        let mut a = admin.admin();
        async move {
            a.get_status(pb::GetStatusRequest {}).await?;
            Ok(())
        }
    })
    .await?;
    out.push(("get_status".into(), figures(&lat)));

    for (name, req) in [
        ("list_runs_newest", pb::ListRunsRequest::default()),
        (
            "list_runs_by_status",
            pb::ListRunsRequest {
                status: pb::RunStatus::Failed as i32,
                ..Default::default()
            },
        ),
        (
            "list_runs_by_guild",
            pb::ListRunsRequest {
                guild_id: "100000000000000007".into(),
                ..Default::default()
            },
        ),
        (
            "list_runs_by_requester",
            pb::ListRunsRequest {
                requester: "300000000000000042".into(),
                ..Default::default()
            },
        ),
    ] {
        let lat = timed(warm, n, |_| {
            let mut a = admin.admin();
            let mut req = req.clone();
            req.page_size = 20;
            async move {
                a.list_runs(req).await?;
                Ok(())
            }
        })
        .await?;
        out.push((name.into(), figures(&lat)));
    }

    // The worst case: every command has an hourly limit, so the hour's ended runs are read.
    let hourly: std::collections::BTreeSet<String> = (0..20)
        .map(|i| format!("cmd{i}"))
        .chain(["deploy".to_string(), "dispatch".to_string()])
        .collect();
    let lat = timed(warm, n, |_| async {
        store.quota_usage(&hourly).await?;
        Ok(())
    })
    .await?;
    out.push(("quota_usage".into(), figures(&lat)));

    let lat = timed(warm, n, |_| {
        let state = state.clone();
        async move {
            facteur_server::service::dispatch::served(&state).await?;
            Ok(())
        }
    })
    .await?;
    out.push(("stranded_scan".into(), figures(&lat)));
    Ok(out)
}

/// Seeds finished runs `start..runs` of other guilds and commands, with their history, created
/// between `ago.0` and `ago.1` seconds ago.
async fn seed(
    db: &impl ConnectionTrait,
    start: u64,
    runs: u64,
    ago: (u64, u64),
) -> anyhow::Result<()> {
    let (newest, oldest) = ago;
    let span = oldest.saturating_sub(newest);
    let b = db.get_database_backend();
    let exec = |sql: String| async move {
        db.execute_raw(Statement::from_string(b, sql)).await?;
        anyhow::Ok(())
    };
    let chunk = 100_000u64;
    let mut from = start;
    while from < runs {
        let to = (from + chunk).min(runs);
        exec(format!(
            "INSERT INTO runs (id, idempotency_key, command, source, status, requester_principal, \
               requester_user_id, guild_id, channel_id, requester_name, namespace, workflow_template, \
               workflow_name, parameters, message, created_at, updated_at, started_at, finished_at) \
             SELECT md5('r' || i)::uuid::text, 'seed-' || i, 'cmd' || (i % 20), 'discord', \
               CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END, '', \
               (300000000000000000 + i % 50)::text, (100000000000000000 + i % 50)::text, \
               '500000000000000001', 'member', '{NS}', 'seeded', 'facteur-seed-' || i, \
               '{{\"service\":\"api\"}}', '', t, t + interval '2 minutes', t, t + interval '2 minutes' \
             FROM (SELECT i, now() - interval '{newest} seconds' - interval '{span} seconds' * random() AS t \
                   FROM generate_series({from}, {to} - 1) i) s"
        ))
        .await?;
        exec(format!(
            "INSERT INTO run_events (run_id, sequence, actor, kind, from_status, to_status, payload, created_at) \
             SELECT md5('r' || i)::uuid::text, s, 'argo', 'status', 'running', 'running', '{{}}', now() - interval '{newest} seconds' - interval '{span} seconds' * random() \
             FROM generate_series({from}, {to} - 1) i, generate_series(1, 4) s"
        ))
        .await?;
        exec(format!(
            "INSERT INTO dispatches (id, run_id, kind, state, attempts, available_at, created_at, updated_at) \
             SELECT md5('d' || i)::uuid::text, md5('r' || i)::uuid::text, 'create', 'done', 1, now(), now(), now() \
             FROM generate_series({from}, {to} - 1) i"
        ))
        .await?;
        exec(format!(
            "INSERT INTO audit_events (guild_id, actor, kind, subject, payload, created_at) \
             SELECT (100000000000000000 + i % 50)::text, 'ops', 'policy_changed', 'cmd' || (i % 20), '{{}}', \
               now() - interval '365 days' * random() \
             FROM generate_series({from}, {to} - 1) i WHERE i % 10 = 0"
        ))
        .await?;
        from = to;
        eprintln!("seeded {from} of {runs} runs");
    }
    exec("ANALYZE".into()).await?;
    Ok(())
}

/// On-disk size of each history table with its indexes and TOAST, and per 1,000 runs.
async fn storage(db: &impl ConnectionTrait) -> anyhow::Result<Value> {
    let b = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_string(
            b,
            "SELECT (SELECT COUNT(*) FROM runs) AS runs,                pg_total_relation_size('runs') AS runs_b,                pg_total_relation_size('run_events') AS events_b,                pg_total_relation_size('dispatches') AS dispatches_b,                pg_total_relation_size('audit_events') AS audit_b",
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no sizes"))?;
    let get = |k: &str| row.try_get::<i64>("", k).unwrap_or(0) as f64;
    let runs = get("runs").max(1.0);
    let per_k = |k: &str| round2(get(k) / runs * 1000.0 / 1024.0);
    let total = get("runs_b") + get("events_b") + get("dispatches_b") + get("audit_b");
    Ok(json!({
        "runs": runs as u64,
        "total_mib": round2(total / 1048576.0),
        "per_1000_runs_kib": {
            "runs": per_k("runs_b"), "run_events": per_k("events_b"),
            "dispatches": per_k("dispatches_b"), "audit_events": per_k("audit_b"),
            "all": round2(total / runs * 1000.0 / 1024.0),
        },
    }))
}

/// Plans of the hot statements on the seeded database (`EXPLAIN (ANALYZE, BUFFERS)`).
async fn plans(db: &impl ConnectionTrait) -> anyhow::Result<Vec<(String, String)>> {
    let b = db.get_database_backend();
    let statements = [
        (
            "feed_poll",
            "SELECT e.id, e.run_id, e.tx::text AS tx FROM run_events e \
             WHERE (e.tx, e.id) > (pg_snapshot_xmin(pg_current_snapshot()), 0) \
               AND e.tx < pg_snapshot_xmin(pg_current_snapshot()) \
               AND EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id AND r.guild_id <> '') \
             ORDER BY e.tx, e.id LIMIT 200"
                .to_string(),
        ),
        (
            "list_runs_newest",
            "SELECT * FROM runs ORDER BY created_at DESC, id DESC LIMIT 21".to_string(),
        ),
        (
            "list_runs_by_status",
            "SELECT * FROM runs WHERE status = 'failed' ORDER BY created_at DESC, id DESC LIMIT 21"
                .to_string(),
        ),
        (
            "list_runs_by_guild",
            "SELECT * FROM runs WHERE guild_id = '100000000000000007' \
             ORDER BY created_at DESC, id DESC LIMIT 21"
                .to_string(),
        ),
        (
            "list_runs_by_requester",
            "SELECT * FROM runs WHERE requester_principal = '300000000000000042' \
             OR requester_user_id = '300000000000000042' ORDER BY created_at DESC, id DESC LIMIT 21"
                .to_string(),
        ),
        (
            "quota_usage",
            "SELECT guild_id, command, status, created_at FROM runs WHERE guild_id <> '' \
             AND status IN ('queued', 'dispatching', 'submitted', 'running') \
             UNION ALL SELECT guild_id, command, status, created_at FROM runs WHERE guild_id <> '' \
             AND status NOT IN ('queued', 'dispatching', 'submitted', 'running') \
             AND created_at > now() - interval '1 hour'"
                .to_string(),
        ),
        (
            "quota_check",
            "SELECT status, created_at FROM runs WHERE guild_id = '100000000000000001' AND command = 'deploy' \
             AND status IN ('queued', 'dispatching', 'submitted', 'running') \
             UNION ALL SELECT status, created_at FROM runs WHERE guild_id = '100000000000000001' \
             AND command = 'deploy' AND status NOT IN ('queued', 'dispatching', 'submitted', 'running') \
             AND created_at > now() - interval '1 hour'"
                .to_string(),
        ),
        (
            "stranded_scan",
            "SELECT r.namespace AS ns, COUNT(*) AS n, MIN(d.created_at) AS oldest \
             FROM dispatches d JOIN runs r ON r.id = d.run_id WHERE d.state = 'pending' GROUP BY r.namespace"
                .to_string(),
        ),
    ];
    let mut out = Vec::new();
    for (name, sql) in statements {
        let rows = db
            .query_all_raw(Statement::from_string(
                b,
                format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) {sql}"),
            ))
            .await?;
        let plan: Vec<String> = rows
            .iter()
            .filter_map(|r| r.try_get::<String>("", "QUERY PLAN").ok())
            .collect();
        out.push((name.to_string(), plan.join("\n")));
    }
    Ok(out)
}

/// Runs the benchmark.
pub async fn run(seeded_runs: u64, baseline_runs: u64, samples: usize) -> anyhow::Result<Value> {
    let db = TestDb::new(Backend::Postgres).await;
    let mut cfg = crate::bench_config(&db, DEPLOYER);
    cfg.database.max_connections = 8;
    // The bench's own lease rounds stand in for an adapter.
    cfg.dispatcher.disabled = true;
    cfg.retention.interval_seconds = 86_400;
    let srv = TestServer::start(cfg).await;
    // The baseline is a young database: `BENCH_BASELINE_RUNS` (default 1,000) runs of the same
    // shape, so every filtered page is as full as on the seeded one (an empty table answers
    // `ListRuns` by status with nothing to render, which is not the same work).
    // Both are the same deployment at the same rate of runs (seeded_runs in 90 days), young and
    // old: the baseline's runs fill its first hours, the history behind them the 90 days. So
    // what grows with the rate (the last hour's runs that a quota counts) is the same in both,
    // and the ratio measures history alone.
    const SPAN: u64 = 90 * 86_400;
    let young = (SPAN as f64 * baseline_runs as f64 / seeded_runs.max(1) as f64) as u64;
    seed(
        srv.server.state.store.connection(),
        0,
        baseline_runs,
        (0, young.max(3_600)),
    )
    .await?;
    let empty = measure(&srv, samples, "empty").await?;
    let t = Instant::now();
    seed(
        srv.server.state.store.connection(),
        baseline_runs,
        seeded_runs,
        (young.max(3_600), SPAN),
    )
    .await?;
    let seeded_in = t.elapsed();
    let seeded = measure(&srv, samples, "seeded").await?;
    let storage = storage(srv.server.state.store.connection()).await?;
    let plans = plans(srv.server.state.store.connection()).await?;
    let mut rows = Vec::new();
    let mut worst: f64 = 0.0;
    for ((name, e), (_, s)) in empty.iter().zip(seeded.iter()) {
        let ratio = |k: &str| {
            let (a, b) = (e[k].as_f64().unwrap_or(0.0), s[k].as_f64().unwrap_or(0.0));
            if a > 0.0 { round2(b / a) } else { 0.0 }
        };
        worst = worst.max(ratio("p50_ms"));
        let row = json!({
            "path": name, "empty": e, "seeded": s,
            "ratio_p50": ratio("p50_ms"), "ratio_p99": ratio("p99_ms"),
        });
        println!("{row}");
        rows.push(row);
    }
    for (name, plan) in &plans {
        eprintln!("--- plan: {name}\n{plan}");
    }
    srv.stop().await;
    drop(db);
    Ok(json!({
        "bench": "history",
        "seeded_runs": seeded_runs,
        "baseline_runs": baseline_runs,
        "seeded_in_s": seeded_in.as_secs(),
        "samples": samples,
        "worst_ratio_p50": worst,
        "paths": rows,
        "storage": storage,
        "plans": plans.into_iter().map(|(n, p)| json!({"statement": n, "plan": p})).collect::<Vec<_>>(),
    }))
}
