//! facteur benchmarks. Each starts what it needs on loopback (the server in process, the fake
//! Kubernetes API server, an argo-adapter on the real kube-rs client, a fresh Postgres database
//! or SQLite file) and prints one JSON object with the figures as its last line.
//!
//! `dispatch`: run accepted → Workflow create request seen by the fake Kubernetes API server.
//! Latency is measured one run at a time from the moment `StartRun` is sent (so it includes the
//! acceptance itself); throughput by submitting many runs at once and timing until every
//! Workflow create has been seen.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod history;
mod ingest;
mod interactions;
mod process;
mod soak;
mod unary;

use facteur_client::pb;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::{Adapter, admin};
use facteur_tests::{Backend, TestDb, TestServer, config, with_tokens};
use serde_json::json;
use std::time::{Duration, Instant};

const NS: &str = "argo-workflows";

/// The `p`th percentile of sorted figures (nearest rank).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The benches' server configuration: tokens, `deploy` (with a quota, so every interaction
/// goes through the quota check) allowed to `deployer`, and `dispatch`.
pub(crate) fn bench_config(db: &TestDb, deployer: &str) -> facteur_config::Config {
    use facteur_config::{CommandConfig, OptionConfig};
    let mut cfg = facteur_tests::with_deploy_command(with_tokens(config(db)), deployer);
    cfg.commands[0].max_concurrent = Some(1_000_000);
    cfg.commands[0].max_per_hour = Some(1_000_000);
    cfg.commands.push(CommandConfig {
        name: "dispatch".into(),
        description: "Dispatch".into(),
        options: vec![OptionConfig {
            name: "payload".into(),
            description: "Payload".into(),
            kind: "string".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    cfg
}

/// Two decimals.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn dispatch(
    backend: Backend,
    latency_runs: usize,
    burst_runs: usize,
    concurrency: usize,
    in_flight: u32,
) -> anyhow::Result<serde_json::Value> {
    let db = TestDb::new(backend).await;
    let mut cfg = with_tokens(config(&db));
    cfg.database.max_connections = 16;
    let srv = TestServer::start(cfg).await;
    let kube = FakeKube::start().await;
    let adapter = Adapter::start_in_flight(&srv.grpc_url(), &kube, NS, in_flight);
    let a = admin(&srv).await;

    // Warm-up: connections, prepared statements, the adapter's watch.
    for _ in 0..20 {
        let run = a.start_run("dispatch", &[("payload", "warm-up")]).await;
        let name = run.target.expect("target").workflow_name;
        while kube.create_seen(&name).is_none() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    let mut lat = Vec::with_capacity(latency_runs);
    for _ in 0..latency_runs {
        let t0 = Instant::now();
        let run = a.start_run("dispatch", &[("payload", "latency")]).await;
        let name = run.target.expect("target").workflow_name;
        let seen = loop {
            if let Some(t) = kube.create_seen(&name) {
                break t;
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        };
        lat.push(seen.duration_since(t0).as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);

    let before = kube.create_seen_count();
    let start = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(burst_runs);
    for i in 0..burst_runs {
        let permit = sem.clone().acquire_owned().await?;
        let client = a.0.clone();
        tasks.push(tokio::spawn(async move {
            let req = pb::StartRunRequest {
                cluster: String::new(),
                command: "dispatch".into(),
                parameters: [("payload".into(), format!("burst-{i}"))].into(),
                idempotency_key: String::new(),
            };
            let r = client.admin().start_run(req).await;
            drop(permit);
            r.map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let accepted = start.elapsed();
    while kube.create_seen_count() < before + burst_runs {
        if start.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("burst did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all_created = start.elapsed();
    adapter.stop().await;
    srv.stop().await;
    let per_s = burst_runs as f64 / all_created.as_secs_f64();
    let accept_per_s = burst_runs as f64 / accepted.as_secs_f64();
    let out = json!({
        "backend": format!("{backend:?}").to_lowercase(),
        "latency_runs": latency_runs,
        "p50_ms": round2(percentile(&lat, 50.0)),
        "p99_ms": round2(percentile(&lat, 99.0)),
        "max_ms": round2(lat.last().copied().unwrap_or(0.0)),
        "burst_runs": burst_runs,
        "burst_concurrency": concurrency,
        "adapter_max_in_flight": in_flight,
        "accept_per_s": accept_per_s.round(),
        "per_s": per_s.round(),
        "ratio_vs_accept": round2(per_s / accept_per_s),
    });
    println!("{out}");
    Ok(out)
}

/// On the processes' own runtime (`facteur_runtime::runtime`): what the benches measure in
/// process is what the binaries run.
fn main() -> anyhow::Result<()> {
    facteur_runtime::runtime::build()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    // Logs only when asked (RUST_LOG), so they do not disturb the figures.
    let _telemetry = std::env::var("RUST_LOG")
        .is_ok()
        .then(|| facteur_runtime::telemetry::init("facteur-bench", &Default::default(), false));
    let which = std::env::args().nth(1).unwrap_or_default();
    let n = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    match which.as_str() {
        "dispatch" => {
            let (lat, burst, conc) = (
                n("BENCH_LATENCY_RUNS", 500),
                n("BENCH_BURST_RUNS", 2000),
                n("BENCH_CONCURRENCY", 32),
            );
            let in_flight = n("BENCH_MAX_IN_FLIGHT", 128) as u32;
            let sqlite = dispatch(Backend::Sqlite, lat, burst, conc, in_flight).await?;
            let postgres = dispatch(Backend::Postgres, lat, burst, conc, in_flight).await?;
            let summary = json!({
                "bench": "dispatch",
                "p50_ms": postgres["p50_ms"], "p99_ms": postgres["p99_ms"], "per_s": postgres["per_s"],
                "ratio_vs_accept": postgres["ratio_vs_accept"],
                "postgres": postgres, "sqlite": sqlite,
            });
            println!("{summary}");
            Ok(())
        }
        "ingest" => {
            let summary = Box::pin(ingest::run(n("BENCH_SECONDS", 10) as u64)).await?;
            println!("{summary}");
            Ok(())
        }
        "interactions" => {
            let summary =
                Box::pin(interactions::run(n("BENCH_SECONDS", 30) as u64, &[50, 500])).await?;
            println!("{summary}");
            Ok(())
        }
        "history" => {
            let summary = Box::pin(history::run(
                n("BENCH_HISTORY_RUNS", 1_000_000) as u64,
                n("BENCH_BASELINE_RUNS", 1_000) as u64,
                n("BENCH_SAMPLES", 200),
            ))
            .await?;
            println!("{summary}");
            Ok(())
        }
        "soak" => {
            let rate = std::env::var("BENCH_SOAK_RATE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10.0);
            let summary = Box::pin(soak::run(
                n("BENCH_SOAK_MINUTES", 30) as u64,
                n("BENCH_SOAK_INTERVAL_SECONDS", 60) as u64,
                rate,
            ))
            .await?;
            println!("{summary}");
            Ok(())
        }
        "memory" => {
            let summary = process::memory(n("BENCH_CONCURRENT", 4), n("BENCH_ROUNDS", 3)).await?;
            println!("{summary}");
            Ok(())
        }
        "idle" => {
            println!("{}", process::idle().await?);
            Ok(())
        }
        "startup" => {
            println!("{}", process::startup(n("BENCH_RUNS", 10)).await?);
            Ok(())
        }
        other => {
            anyhow::bail!(
                "unknown benchmark `{other}`; available: dispatch, history, ingest, interactions, memory, startup, idle, soak"
            )
        }
    }
}
