//! `ingest`: `CodexService.SubmitTask` throughput and latency on Postgres at concurrency 1, 16
//! and 64, beside pgbench running the same transaction (the same statements, rows and indexes)
//! against the same server. The ratio of throughputs is the figure.
//!
//! What the server does for one new delivery, and what the pgbench script replays:
//! 1. look the delivery id up (replay fast path);
//! 2. one statement (`store::codex::SUBMIT_POSTGRES`) upserting the idea and the task, inserting
//!    the task run (`ON CONFLICT DO NOTHING`), the run, its dispatch and its first history entry;
//! 3. read the run back.
//!
//! The pgbench script is generated from the same SQL text, parameters replaced by pgbench
//! expressions, so both sides run exactly the same statements.
//!
//! The gRPC path adds validation, proto-JSON and base64 rendering of the task, and the RPC.

use crate::{percentile, round2};
use facteur_client::{Client, ClientConfig, pb};
use facteur_proto::froussard::CodexTask;
use facteur_tests::{Backend, TestDb, TestServer, config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SAMPLE: &str = include_str!("../../tests/fixtures/codex-task.json");
const ISSUES: u32 = 100_000;

fn sample() -> anyhow::Result<CodexTask> {
    facteur_proto::codex_task_from_json(SAMPLE.as_bytes())
        .map_err(|e| anyhow::anyhow!("sample: {e}"))
}

/// Runs `SubmitTask` from `concurrency` clients for `duration`; (per second, latencies in ms).
async fn app(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let db = TestDb::new(Backend::Postgres).await;
    let mut cfg = config(&db);
    cfg.database.max_connections = concurrency.clamp(2, 64) as u32;
    cfg.database.url = facteur_config::Secret(format!("{}?sslmode={}", db.url, sslmode()));
    cfg.codex_implementation_orchestrator.enabled = true;
    let srv = TestServer::start(cfg).await;
    let task = sample()?;
    let stop_warm = Instant::now() + warmup;
    let stop = stop_warm + duration;
    let mut handles = Vec::new();
    for worker in 0..concurrency {
        // One connection per worker, as pgbench has one per client and producers are separate
        // services; all workers on one HTTP/2 connection would measure that connection instead.
        let client = Client::connect(ClientConfig::new(srv.grpc_url())).await?;
        let task = task.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n: u64 = 0;
            loop {
                let now = Instant::now();
                if now >= stop {
                    break;
                }
                n += 1;
                let mut t = task.clone();
                t.delivery_id = format!("bench-{worker}-{n}-{}", uuid::Uuid::new_v4().simple());
                t.issue_number =
                    i64::from(1 + (uuid::Uuid::new_v4().as_u128() % u128::from(ISSUES)) as u32);
                let r = client
                    .codex()
                    .submit_task(pb::SubmitTaskRequest {
                        task: Some(t),
                        delivery_id: String::new(),
                    })
                    .await;
                let r = r.map_err(|s| anyhow::anyhow!("submit failed: {s}"))?;
                if r.into_inner().duplicate {
                    anyhow::bail!("unexpected duplicate");
                }
                if now >= stop_warm {
                    lat.push(now.elapsed().as_secs_f64() * 1000.0);
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    srv.stop().await;
    all.sort_by(f64::total_cmp);
    Ok((all.len() as f64 / duration.as_secs_f64(), all))
}

/// Transport security to Postgres for both sides (`BENCH_PG_SSLMODE`, default `prefer`, which
/// negotiates TLS here, as the server's and pgbench's defaults do).
fn sslmode() -> String {
    std::env::var("BENCH_PG_SSLMODE").unwrap_or_else(|_| "prefer".into())
}

/// A SQL string literal for a pgbench script. pgbench substitutes `:name` even inside quotes,
/// so colons are spliced in with `chr(58)`.
fn sql_str(s: &str) -> String {
    format!(
        "('{}')",
        s.replace('\'', "''").replace(':', "' || chr(58) || '")
    )
}

/// The pgbench script: the server's statements, with pgbench variables for what varies.
fn pgbench_script() -> anyhow::Result<String> {
    let task = sample()?;
    let mut c =
        facteur_config::load_from(None, &Default::default(), facteur_config::Process::Server)?;
    c.codex_implementation_orchestrator.enabled = true;
    let plan = facteur_server::domain::codex::plan(&task, "", &c, facteur_proto::codex_task_json)
        .map_err(|(_, e)| anyhow::anyhow!("plan: {e}"))?;
    let payload = facteur_proto::codex_task_json(&task);
    let params = serde_json::to_string(&plan.parameters)?;
    let task_meta = json!({"repository": plan.repository, "issue_number": plan.issue_number, "delivery_id": plan.delivery_id}).to_string();
    let run_meta = json!({"facteur_run_id": "00000000-0000-0000-0000-000000000000", "workflow_name": "codex-autonomous-00000000000000000000000000000000", "namespace": plan.namespace, "workflow_template": plan.workflow_template}).to_string();
    let event = json!({"source": "codex", "command": "codex:implementation", "workflow_template": plan.workflow_template, "namespace": plan.namespace, "parent_run_id": null}).to_string();
    // The server's own statement, its parameters replaced by pgbench expressions.
    let delivery = "('pgb-' || :client_id::text || '-' || :d::text)";
    let subs: [(usize, String); 23] = [
        (1, "gen_random_uuid()::text".into()),
        (2, "('proompteng/lab#' || :issue::text)".into()),
        (3, sql_str(&payload)),
        (4, "now()::text".into()),
        (5, "gen_random_uuid()::text".into()),
        (6, "'implementation'".into()),
        (7, sql_str(&task_meta)),
        (8, "gen_random_uuid()::text".into()),
        (
            9,
            "('codex-autonomous-' || :client_id::text || '-' || :d::text)".into(),
        ),
        (10, sql_str(&run_meta)),
        (11, delivery.into()),
        (12, "gen_random_uuid()::text".into()),
        (13, format!("({} || {delivery})", sql_str("codex:"))),
        (14, sql_str("codex:implementation")),
        (15, "'local'".into()),
        (16, sql_str(&plan.repository)),
        (17, sql_str(&plan.namespace)),
        (18, sql_str(&plan.workflow_template)),
        (19, "''".into()),
        (20, sql_str(&params)),
        (21, "''".into()),
        (22, "gen_random_uuid()::text".into()),
        (23, sql_str(&event)),
    ];
    let mut submit = facteur_server::store::codex::SUBMIT_POSTGRES.replace('\n', " ");
    for (n, expr) in subs.iter().rev() {
        submit = submit.replace(&format!("${n}"), expr);
    }
    let lookup = format!(
        "SELECT tr.id::text AS task_run_id, tr.task_id::text AS task_id, tk.idea_id::text AS idea_id, tr.delivery_id, tr.status, tk.stage, i.source_ref, to_char(tr.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24' || chr(58) || 'MI' || chr(58) || 'SS.US\"Z\"') AS created_at, tr.created_at AS created_sort FROM codex_kb.task_runs tr JOIN codex_kb.tasks tk ON tk.id = tr.task_id JOIN codex_kb.ideas i ON i.id = tk.idea_id WHERE tr.delivery_id = {delivery}"
    );
    let read_back = format!(
        "SELECT * FROM runs WHERE idempotency_key = ({} || {delivery})",
        sql_str("codex:")
    );
    Ok(format!(
        "\\set issue random(1, {ISSUES})\n\\set d random(1, 9000000000000000)\n{lookup};\n{submit};\n{read_back};\n"
    ))
}

/// pgbench at `concurrency` for `duration` on a freshly migrated database; (tps, latencies ms).
async fn pgbench(
    script: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let db = TestDb::new(Backend::Postgres).await;
    let store = facteur_server::store::Store::connect(&db.url, 2, Duration::from_secs(5)).await?;
    store.migrate().await?;
    store.close().await;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ingest.sql");
    std::fs::write(&path, script)?;
    let name = db.url.rsplit('/').next().unwrap_or_default().to_string();
    let prefix = dir.path().join("lat");
    let out = tokio::process::Command::new("pgbench")
        .env("PGSSLMODE", sslmode())
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-n",
            "-M",
            "prepared",
        ])
        .arg("-c")
        .arg(concurrency.to_string())
        .arg("-j")
        .arg(concurrency.min(2).to_string())
        .arg("-T")
        .arg(duration.as_secs().to_string())
        .arg("-l")
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg("-f")
        .arg(&path)
        .arg(&name)
        .current_dir(dir.path())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        anyhow::bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))?;
    let mut lat = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let p = entry?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("lat"))
        {
            for line in std::fs::read_to_string(&p)?.lines() {
                if let Some(us) = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    lat.push(us / 1000.0);
                }
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok((tps, lat))
}

/// The benchmark; prints one line per concurrency and returns the summary.
pub async fn run(seconds: u64) -> anyhow::Result<Value> {
    let script = pgbench_script()?;
    let duration = Duration::from_secs(seconds);
    let mut levels = Vec::new();
    for c in [1usize, 16, 64] {
        let (app_per_s, app_lat) = app(c, Duration::from_secs(2), duration).await?;
        let (pg_tps, pg_lat) = pgbench(&script, c, duration).await?;
        let level = json!({
            "concurrency": c,
            "per_s": app_per_s.round(),
            "p50_ms": round2(percentile(&app_lat, 50.0)),
            "p99_ms": round2(percentile(&app_lat, 99.0)),
            "pgbench_per_s": pg_tps.round(),
            "pgbench_p50_ms": round2(percentile(&pg_lat, 50.0)),
            "pgbench_p99_ms": round2(percentile(&pg_lat, 99.0)),
            "ratio_vs_pgbench": round2(app_per_s / pg_tps),
        });
        println!("{level}");
        levels.push(level);
    }
    let at16 = levels[1].clone();
    let worst = levels
        .iter()
        .filter_map(|l| l["ratio_vs_pgbench"].as_f64())
        .fold(f64::INFINITY, f64::min);
    Ok(json!({
        "bench": "ingest",
        "p50_ms": at16["p50_ms"], "p99_ms": at16["p99_ms"], "per_s": at16["per_s"],
        "ratio_vs_pgbench": at16["ratio_vs_pgbench"], "ratio_vs_pgbench_min": worst,
        "seconds_per_level": seconds,
        "levels": levels,
    }))
}
