//! `ingest`: `CodexService.SubmitTask` throughput and latency on Postgres at concurrency 1, 16
//! and 64, beside pgbench running the same transaction (the same statements, rows and indexes)
//! against the same server. The ratio of throughputs is the figure.
//!
//! What the server does for one new delivery, and what the pgbench script replays:
//! 1. look the delivery id up (replay fast path);
//! 2. `BEGIN`; upsert the idea; upsert the task; insert the task run (`ON CONFLICT DO NOTHING`);
//!    insert the run, its dispatch and its first history entry; `COMMIT`;
//! 3. read the run back.
//!
//! The gRPC path adds validation, proto-JSON and base64 rendering of the task, and the RPC.

use facteur_client::{Client, ClientConfig, pb};
use facteur_proto::froussard::CodexTask;
use facteur_tests::{Backend, TestDb, TestServer, config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SAMPLE: &str = include_str!("../../../shared/examples/codex-task.json");
const ISSUES: u32 = 100_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize).min(sorted.len() - 1)]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

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
    cfg.database.max_connections = 64;
    cfg.codex_implementation_orchestrator.enabled = true;
    let srv = TestServer::start(cfg).await;
    let client = Client::connect(ClientConfig::new(srv.grpc_url())).await?;
    let task = sample()?;
    let stop_warm = Instant::now() + warmup;
    let stop = stop_warm + duration;
    let mut handles = Vec::new();
    for worker in 0..concurrency {
        let (client, task) = (client.clone(), task.clone());
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
    Ok(format!(
        r#"\set issue random(1, {ISSUES})
\set d random(1, 9000000000000000)
SELECT tr.id::text AS task_run_id, tr.task_id::text AS task_id, tk.idea_id::text AS idea_id, tr.delivery_id, tr.status, tk.stage, i.source_ref, to_char(tr.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.US"Z"') AS created_at, tr.created_at AS created_sort FROM codex_kb.task_runs tr JOIN codex_kb.tasks tk ON tk.id = tr.task_id JOIN codex_kb.ideas i ON i.id = tk.idea_id WHERE tr.delivery_id = 'pgb-' || :client_id::text || '-' || :d::text;
BEGIN;
INSERT INTO codex_kb.ideas (id, source_type, source_ref, priority, status, risk_flags, payload, created_at, updated_at) VALUES (gen_random_uuid(), 'github_issue', 'proompteng/lab#' || :issue::text, 0, 'received', '{{}}', {payload}::jsonb, now(), now()) ON CONFLICT (source_type, source_ref) DO UPDATE SET payload = excluded.payload, updated_at = excluded.updated_at RETURNING id::text AS idea_id \gset
INSERT INTO codex_kb.tasks (id, idea_id, stage, state, metadata, created_at, updated_at) VALUES (gen_random_uuid(), :idea_id::uuid, 'implementation', 'queued', {task_meta}::jsonb, now(), now()) ON CONFLICT (idea_id, stage) DO UPDATE SET state = 'queued', metadata = excluded.metadata, updated_at = excluded.updated_at RETURNING id::text AS task_id \gset
INSERT INTO codex_kb.task_runs (id, task_id, external_run_id, status, queued_at, retry_count, metadata, created_at, updated_at, delivery_id) VALUES (gen_random_uuid(), :task_id::uuid, 'codex-autonomous-' || replace(gen_random_uuid()::text, '-', ''), 'queued', now(), 0, {run_meta}::jsonb, now(), now(), 'pgb-' || :client_id::text || '-' || :d::text) ON CONFLICT (delivery_id) DO NOTHING RETURNING id::text AS task_run_id \gset
INSERT INTO runs (id, idempotency_key, command, source, status, requester_principal, requester_user_id, guild_id, channel_id, requester_name, namespace, workflow_template, service_account, workflow_name, workflow_uid, parameters, message, progress, workflow_phase, parent_run_id, attempts, created_at, updated_at, started_at, finished_at, cancel_requested_at, cancel_mode, trace_parent) VALUES (gen_random_uuid()::text, 'codex' || chr(58) || 'pgb-' || :client_id || '-' || :d, 'codex' || chr(58) || 'implementation', 'codex', 'queued', 'local', '', '', '', 'proompteng/lab', {ns}, {tmpl}, '', 'codex-autonomous-' || replace(gen_random_uuid()::text, '-', ''), '', {params}, '', '', '', NULL, 0, now(), now(), NULL, NULL, NULL, '', '') RETURNING id AS run_id \gset
INSERT INTO dispatches (id, run_id, kind, state, attempts, available_at, lease_owner, lease_token, lease_expires_at, last_error, dead_lettered_at, created_at, updated_at) VALUES (gen_random_uuid()::text, :run_id::text, 'create', 'pending', 0, now(), '', '', NULL, '', NULL, now(), now());
INSERT INTO run_events (run_id, sequence, actor, kind, from_status, to_status, payload, created_at) VALUES (:run_id::text, 1, 'local', 'created', 'queued', 'queued', {event}, now());
END;
SELECT * FROM runs WHERE id = :run_id::text;
"#,
        payload = sql_str(&payload),
        task_meta = sql_str(&task_meta),
        run_meta = sql_str(&run_meta),
        ns = sql_str(&plan.namespace),
        tmpl = sql_str(&plan.workflow_template),
        params = sql_str(&params),
        event = sql_str(&event),
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
