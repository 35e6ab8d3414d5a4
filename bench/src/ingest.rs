//! `ingest`: `CodexService.SubmitTask` throughput and latency on Postgres at concurrency 1, 16
//! and 64, beside pgbench running the same transaction (the same rows and indexes) against the
//! same server. The ratio of throughputs is the figure.
//!
//! The server writes new deliveries in batches (`store::codex_batch`: one statement for every
//! delivery waiting while the batch slots are busy; alone when nothing waits). The pgbench
//! reference writes one delivery per transaction, as the server did before batching:
//! 1. look the delivery id up;
//! 2. one statement ([`SUBMIT_ONE`]) upserting the idea and the task, inserting the task run
//!    (`ON CONFLICT DO NOTHING`), the run, its dispatch and its first history entry;
//! 3. read the run back.
//!
//! Every per-delivery value is bound per execution (pgbench variables), as the server binds it.
//! The gRPC path adds validation, proto-JSON and base64 rendering of the task, and the RPC.

use crate::{percentile, round2};
use facteur_client::{Client, ClientConfig, pb};
use facteur_proto::froussard::CodexTask;
use facteur_tests::{Backend, TestDb, TestServer, config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The reference transaction's write: one delivery's rows in one statement (idea and task
/// upserts, the task run, nothing more if the delivery id is taken, the run, its dispatch and its
/// first history entry), the server's statement for one delivery before it wrote batches
/// (`store::codex_batch::SUBMIT_BATCH` writes the same rows for many).
///
/// `$1` idea id, `$2` source_ref, `$3` payload, `$4` now, `$5` task id, `$6` stage, `$7` task
/// metadata, `$8` task run id, `$9` workflow name, `$10` task run metadata, `$11` delivery id,
/// `$12` run id, `$13` idempotency key, `$14` command, `$15` principal, `$16` display name,
/// `$17` namespace, `$18` template, `$19` service account, `$20` parameters, `$21` traceparent,
/// `$22` dispatch id, `$23` event payload.
const SUBMIT_ONE: &str = "WITH idea AS (
    INSERT INTO codex_kb.ideas (id, source_type, source_ref, priority, status, risk_flags, payload, created_at, updated_at)
    VALUES ($1::uuid, 'github_issue', $2, 0, 'received', '{}', $3::jsonb, $4::timestamptz, $4::timestamptz)
    ON CONFLICT (source_type, source_ref) DO UPDATE SET payload = excluded.payload, updated_at = excluded.updated_at
    RETURNING id),
task AS (
    INSERT INTO codex_kb.tasks (id, idea_id, stage, state, metadata, created_at, updated_at)
    SELECT $5::uuid, idea.id, $6, 'queued', $7::jsonb, $4::timestamptz, $4::timestamptz FROM idea
    ON CONFLICT (idea_id, stage) DO UPDATE SET state = 'queued', metadata = excluded.metadata, updated_at = excluded.updated_at
    RETURNING id),
tr AS (
    INSERT INTO codex_kb.task_runs (id, task_id, external_run_id, status, queued_at, retry_count, metadata, created_at, updated_at, delivery_id)
    SELECT $8::uuid, task.id, $9, 'queued', $4::timestamptz, 0, $10::jsonb, $4::timestamptz, $4::timestamptz, $11 FROM task
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING id),
run AS (
    INSERT INTO runs (id, idempotency_key, command, source, status, requester_principal, requester_user_id, guild_id,
        channel_id, requester_name, namespace, workflow_template, service_account, workflow_name, workflow_uid, parameters,
        message, progress, workflow_phase, parent_run_id, attempts, created_at, updated_at, started_at, finished_at,
        cancel_requested_at, cancel_mode, trace_parent)
    SELECT $12, $13, $14, 'codex', 'queued', $15, '', '', '', $16, $17, $18, $19, $9, '', $20, '', '', '', NULL, 0,
        $4::timestamptz, $4::timestamptz, NULL, NULL, NULL, '', $21 FROM tr
    RETURNING id),
disp AS (
    INSERT INTO dispatches (id, run_id, kind, state, attempts, available_at, lease_owner, lease_token, lease_expires_at,
        last_error, dead_lettered_at, created_at, updated_at)
    SELECT $22, run.id, 'create', 'pending', 0, $4::timestamptz, '', '', NULL, '', NULL, $4::timestamptz, $4::timestamptz FROM run
    RETURNING id),
ev AS (
    INSERT INTO run_events (run_id, sequence, actor, kind, from_status, to_status, payload, created_at)
    SELECT run.id, 1, $15, 'created', 'queued', 'queued', $23, $4::timestamptz FROM run
    RETURNING id)
SELECT (SELECT id::text FROM idea) AS idea_id, (SELECT id::text FROM task) AS task_id,
    (SELECT id::text FROM tr) AS task_run_id, (SELECT count(*) FROM disp) + (SELECT count(*) FROM ev) AS outbox";

const SAMPLE: &str = include_str!("../../tests/fixtures/codex-task.json");
const ISSUES: u32 = 100_000;

fn sample() -> anyhow::Result<CodexTask> {
    facteur_proto::codex_task_from_json(SAMPLE.as_bytes())
        .map_err(|e| anyhow::anyhow!("sample: {e}"))
}

/// Runs `SubmitTask` from `concurrency` clients for `duration`; (per second, latencies in ms,
/// deliveries per batch statement).
async fn app(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<f64>, f64)> {
    let db = TestDb::new(Backend::Postgres).await;
    let mut cfg = config(&db);
    // As many connections as pgbench has (one per client), and room for the batch slots.
    if let Some(n) = std::env::var("BENCH_CODEX_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.database.codex_batch_slots = n;
    }
    let slots = cfg.database.codex_batch_slots;
    cfg.database.max_connections = (concurrency as u32).clamp(slots + 1, 64);
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
    let batches = srv.server.state.store.codex_batch_stats();
    srv.stop().await;
    all.sort_by(f64::total_cmp);
    let per_batch = batches.deliveries as f64 / batches.statements.max(1) as f64;
    Ok((all.len() as f64 / duration.as_secs_f64(), all, per_batch))
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

/// The pgbench script (the server's statements, with pgbench variables for what varies) and the
/// `-D name=value` variables it binds.
///
/// The JSON and text values the server binds as parameters are pgbench variables too: with
/// `-M prepared`, pgbench sends them as parameters of every execution, so Postgres receives and
/// parses them per transaction as it does for the server. (As literals inside the script they
/// would be parsed and cast once, when the statement is prepared, and never sent again.)
fn pgbench_script() -> anyhow::Result<(String, Vec<(String, String)>)> {
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
    let vars: Vec<(String, String)> = [
        ("payload", payload),
        ("task_meta", task_meta),
        ("run_meta", run_meta),
        ("stage", plan.stage.to_string()),
        ("command", "codex:implementation".to_string()),
        ("repository", plan.repository.clone()),
        ("namespace", plan.namespace.clone()),
        ("template", plan.workflow_template.clone()),
        ("params", params),
        ("event", event),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // The server's own statement, its parameters replaced by pgbench expressions.
    let delivery = "('pgb-' || :client_id::text || '-' || :d::text)";
    let subs: [(usize, String); 23] = [
        (1, "gen_random_uuid()::text".into()),
        (2, "('proompteng/lab#' || :issue::text)".into()),
        (3, ":payload".into()),
        (4, "now()::text".into()),
        (5, "gen_random_uuid()::text".into()),
        (6, ":stage".into()),
        (7, ":task_meta".into()),
        (8, "gen_random_uuid()::text".into()),
        (
            9,
            "('codex-autonomous-' || :client_id::text || '-' || :d::text)".into(),
        ),
        (10, ":run_meta".into()),
        (11, delivery.into()),
        (12, "gen_random_uuid()::text".into()),
        (13, format!("({} || {delivery})", sql_str("codex:"))),
        (14, ":command".into()),
        (15, "'local'".into()),
        (16, ":repository".into()),
        (17, ":namespace".into()),
        (18, ":template".into()),
        (19, "''".into()),
        (20, ":params".into()),
        (21, "''".into()),
        (22, "gen_random_uuid()::text".into()),
        (23, ":event".into()),
    ];
    let mut submit = SUBMIT_ONE.replace('\n', " ");
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
    Ok((
        format!(
            "\\set issue random(1, {ISSUES})\n\\set d random(1, 9000000000000000)\n{lookup};\n{submit};\n{read_back};\n"
        ),
        vars,
    ))
}

/// pgbench at `concurrency` for `duration` on a freshly migrated database; (tps, latencies ms).
async fn pgbench(
    (script, vars): &(String, Vec<(String, String)>),
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
        .args(
            vars.iter()
                .flat_map(|(k, v)| ["-D".to_string(), format!("{k}={v}")]),
        )
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
        let (app_per_s, app_lat, per_batch) = app(c, Duration::from_secs(2), duration).await?;
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
            "deliveries_per_statement": round2(per_batch),
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
