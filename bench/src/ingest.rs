//! `ingest`: `CodexService.SubmitTask` throughput and latency on Postgres at concurrency 1, 16
//! and 64, beside pgbench against the same server in the same run. The ratio of throughputs is
//! the figure.
//!
//! The server writes a delivery that arrives alone with one statement ([`SUBMIT_ONE`]: the
//! delivery-id look-up, the idea and task upserts, the task run, run, dispatch and first history
//! entry), and deliveries that arrive while its batch slots are busy together, with one
//! statement per batch (`store::codex_batch`). Two pgbench references run per delivery:
//! - `pgbench` (the figure, `ratio_vs_pgbench`): the server's own one-delivery statement,
//!   nothing else, one transaction per delivery. What the database does for one delivery at
//!   the least; the server adds the RPC and everything around the statement.
//! - `pgbench_txn` (`ratio_vs_pgbench_txn`): one delivery as a client would write it with
//!   plain SQL: look the delivery id up, the same statement, read the run back.
//!
//! Every per-delivery value is bound per execution (pgbench variables), as the server binds it.
//!
//! Two load generators call the server, each with a connection per worker:
//! - the figure: [`Unary`], which writes each request to its connection whole (HEADERS and
//!   the one DATA frame that carries the message and ends the stream), as pgbench writes a
//!   transaction;
//! - `*_tonic_client`: facteur's own client (`facteur_client`, tonic over hyper), which writes
//!   a unary request in three writes, so the server wakes once for its headers and again for
//!   its message.
//!
//! The server under each generator and each reference take turns in [`ROUNDS`] rounds, so a
//! change in the machine's load during the run weighs on all four alike.

use crate::unary::Unary;
use crate::{percentile, round2};
use facteur_client::{Client, ClientConfig, pb};
use facteur_proto::froussard::CodexTask;
use facteur_server::store::codex_batch::SUBMIT_ONE;
use facteur_tests::{Backend, TestDb, TestServer, config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SAMPLE: &str = include_str!("../../tests/fixtures/codex-task.json");
const ISSUES: u32 = 100_000;

fn sample() -> anyhow::Result<CodexTask> {
    facteur_proto::codex_task_from_json(SAMPLE.as_bytes())
        .map_err(|e| anyhow::anyhow!("sample: {e}"))
}

/// `CodexService.SubmitTask`, for [`Unary`].
const SUBMIT_TASK: &str = "/facteur.v1.CodexService/SubmitTask";

/// One load-generating worker's connection.
#[derive(Clone)]
enum Caller {
    /// See [`Unary`].
    Unary(Unary),
    /// facteur's own client.
    Tonic(Client),
}

impl Caller {
    async fn submit(&self, req: pb::SubmitTaskRequest) -> anyhow::Result<pb::SubmitTaskResponse> {
        match self {
            Caller::Unary(u) => u.call(SUBMIT_TASK, &req).await,
            Caller::Tonic(c) => Ok(c
                .codex()
                .submit_task(req)
                .await
                .map_err(|s| anyhow::anyhow!("submit failed: {s}"))?
                .into_inner()),
        }
    }
}

/// The server under test and its load generators.
///
/// The load generators run on a runtime of their own (as many threads as pgbench gets, `-j`),
/// as pgbench is a process of its own: the server's runtime serves, nothing else. Each worker
/// has its own connection, as pgbench has one per client and producers are separate services
/// (all workers on one HTTP/2 connection would measure that connection instead).
struct App {
    srv: TestServer,
    /// The load generators' runtime (see [`Load`]).
    load: Load,
    /// Per worker: the figure's generator.
    unary: Vec<Caller>,
    /// Per worker: facteur's own client.
    tonic: Vec<Caller>,
    task: CodexTask,
    _db: TestDb,
}

impl App {
    async fn start(concurrency: usize) -> anyhow::Result<App> {
        let db = TestDb::new(Backend::Postgres).await;
        let mut cfg = config(&db);
        if let Some(n) = std::env::var("BENCH_CODEX_SLOTS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.database.codex_batch_slots = n;
        }
        // As many connections as pgbench has (one per client), and room for the batch slots, up
        // to 32: the pool keeps every connection open, and Postgres's default 100 must also
        // hold pgbench's 64 clients at the top level.
        let slots = cfg.database.codex_batch_slots;
        cfg.database.max_connections = (concurrency as u32).clamp(slots + 1, 32);
        cfg.database.url = facteur_config::Secret(format!("{}?sslmode={}", db.url, sslmode()));
        cfg.codex_implementation_orchestrator.enabled = true;
        let srv = TestServer::start(cfg).await;
        let load = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(concurrency.min(2))
            .thread_name("load")
            .enable_all()
            .build()?;
        let (mut unary, mut tonic) = (Vec::new(), Vec::new());
        for _ in 0..concurrency {
            let (url, addr) = (srv.grpc_url(), srv.server.grpc_addr.to_string());
            let (u, t) = load
                .spawn(async move {
                    let u = Unary::connect(&addr).await?;
                    let t = Client::connect(ClientConfig::new(url)).await?;
                    anyhow::Ok((u, t))
                })
                .await??;
            unary.push(Caller::Unary(u));
            tonic.push(Caller::Tonic(t));
        }
        Ok(App {
            srv,
            load: Load(Some(load)),
            unary,
            tonic,
            task: sample()?,
            _db: db,
        })
    }

    /// Every worker of `callers` submits new deliveries, one after the other, for `duration`;
    /// the latencies in ms.
    async fn run(&self, callers: &[Caller], duration: Duration) -> anyhow::Result<Vec<f64>> {
        let stop = Instant::now() + duration;
        let mut handles = Vec::new();
        for caller in callers {
            let caller = caller.clone();
            let task = self.task.clone();
            handles.push(self.load.runtime().spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < stop {
                    let mut t = task.clone();
                    let id = uuid::Uuid::new_v4();
                    t.delivery_id = format!("bench-{}", id.simple());
                    t.issue_number = i64::from(1 + (id.as_u128() % u128::from(ISSUES)) as u32);
                    let now = Instant::now();
                    let r = caller
                        .submit(pb::SubmitTaskRequest {
                            task: Some(t),
                            delivery_id: String::new(),
                        })
                        .await?;
                    lat.push(now.elapsed().as_secs_f64() * 1000.0);
                    if r.duplicate {
                        anyhow::bail!("unexpected duplicate");
                    }
                }
                anyhow::Ok(lat)
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await??);
        }
        Ok(all)
    }

    /// [`App::run`], adding its latencies and the server's statements to `into`.
    async fn serve(
        &self,
        callers: &[Caller],
        duration: Duration,
        into: &mut Served,
    ) -> anyhow::Result<()> {
        let before = self.srv.server.state.store.codex_batch_stats();
        into.lat.extend(self.run(callers, duration).await?);
        let after = self.srv.server.state.store.codex_batch_stats();
        into.statements += after.statements - before.statements;
        into.deliveries += after.deliveries - before.deliveries;
        Ok(())
    }

    async fn stop(self) {
        drop(self.load);
        self.srv.stop().await;
    }
}

/// The load generators' runtime, shut down in the background when dropped: an [`App`] dropped
/// on an error (inside the bench's runtime) then lets the error be reported instead of a panic.
struct Load(Option<tokio::runtime::Runtime>);

impl Load {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.0
            .as_ref()
            .expect("the load runtime lives until dropped")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The server's figures under one load generator, over a level's rounds.
#[derive(Default)]
struct Served {
    lat: Vec<f64>,
    statements: u64,
    deliveries: u64,
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

/// The two pgbench references (the server's statements, with pgbench variables for what varies)
/// and the `-D name=value` variables they bind.
struct Scripts {
    /// One delivery as a transaction of its own: look the delivery id up, write it
    /// ([`SUBMIT_ONE`]), read the run back.
    txn: String,
    /// The server's own statement for a delivery alone ([`SUBMIT_ONE`]), nothing else.
    write: String,
    vars: Vec<(String, String)>,
}

/// See [`Scripts`].
///
/// The JSON and text values the server binds as parameters are pgbench variables too: with
/// `-M prepared`, pgbench sends them as parameters of every execution, so Postgres receives and
/// parses them per transaction as it does for the server. (As literals inside the script they
/// would be parsed and cast once, when the statement is prepared, and never sent again.)
fn pgbench_scripts() -> anyhow::Result<Scripts> {
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
    let subs: [(usize, String); 24] = [
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
        (24, sql_str(facteur_server::domain::codex::TASK_PARAMETER)),
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
    let set = format!("\\set issue random(1, {ISSUES})\n\\set d random(1, 9000000000000000)\n");
    Ok(Scripts {
        txn: format!("{set}{lookup};\n{submit};\n{read_back};\n"),
        write: format!("{set}{submit};\n"),
        vars,
    })
}

/// A freshly migrated database for pgbench.
async fn pgbench_db() -> anyhow::Result<TestDb> {
    let db = TestDb::new(Backend::Postgres).await;
    let store = facteur_server::store::Store::connect(&db.url, 2, Duration::from_secs(5)).await?;
    store.migrate().await?;
    store.close().await;
    Ok(db)
}

/// pgbench running `script` at `concurrency` for `duration` on `db`; (tps, latencies ms).
async fn pgbench(
    db: &TestDb,
    script: &str,
    vars: &[(String, String)],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<f64>)> {
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

/// Rounds per level: the server and each pgbench reference take turns, so a change in the
/// machine's load over the run weighs on all of them alike.
const ROUNDS: u64 = 4;

/// The benchmark; prints one line per concurrency and returns the summary. `seconds`: measured
/// time per level for each of the four (the server under each load generator, the two pgbench
/// references).
pub async fn run(seconds: u64) -> anyhow::Result<Value> {
    let scripts = pgbench_scripts()?;
    let round = Duration::from_secs((seconds / ROUNDS).max(1));
    let measured = round.as_secs_f64() * ROUNDS as f64;
    // `BENCH_LEVELS` (e.g. `1` or `1,16`) narrows the run while profiling one level.
    let wanted: Vec<usize> = std::env::var("BENCH_LEVELS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64]);
    let mut levels = Vec::new();
    for c in wanted {
        let app = App::start(c).await?;
        // Warm-up: connections, prepared statements, the batcher's kept connections.
        app.run(&app.unary, Duration::from_secs(2)).await?;
        app.run(&app.tonic, Duration::from_secs(1)).await?;
        let (txn_db, write_db) = (pgbench_db().await?, pgbench_db().await?);
        let (mut unary, mut tonic) = (Served::default(), Served::default());
        let (mut txn_lat, mut write_lat) = (Vec::new(), Vec::new());
        let (mut txn_tps, mut write_tps) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            app.serve(&app.unary, round, &mut unary).await?;
            app.serve(&app.tonic, round, &mut tonic).await?;
            let (tps, lat) = pgbench(&txn_db, &scripts.txn, &scripts.vars, c, round).await?;
            txn_tps += tps / ROUNDS as f64;
            txn_lat.extend(lat);
            let (tps, lat) = pgbench(&write_db, &scripts.write, &scripts.vars, c, round).await?;
            write_tps += tps / ROUNDS as f64;
            write_lat.extend(lat);
        }
        app.stop().await;
        for l in [&mut unary.lat, &mut tonic.lat, &mut txn_lat, &mut write_lat] {
            l.sort_by(f64::total_cmp);
        }
        let per_s = unary.lat.len() as f64 / measured;
        let tonic_per_s = tonic.lat.len() as f64 / measured;
        let level = json!({
            "concurrency": c,
            "per_s": per_s.round(),
            "p50_ms": round2(percentile(&unary.lat, 50.0)),
            "p99_ms": round2(percentile(&unary.lat, 99.0)),
            "pgbench_per_s": write_tps.round(),
            "pgbench_p50_ms": round2(percentile(&write_lat, 50.0)),
            "pgbench_p99_ms": round2(percentile(&write_lat, 99.0)),
            "ratio_vs_pgbench": round2(per_s / write_tps),
            "pgbench_txn_per_s": txn_tps.round(),
            "pgbench_txn_p50_ms": round2(percentile(&txn_lat, 50.0)),
            "pgbench_txn_p99_ms": round2(percentile(&txn_lat, 99.0)),
            "ratio_vs_pgbench_txn": round2(per_s / txn_tps),
            "deliveries_per_statement": round2(unary.deliveries as f64 / unary.statements.max(1) as f64),
            "per_s_tonic_client": tonic_per_s.round(),
            "p50_ms_tonic_client": round2(percentile(&tonic.lat, 50.0)),
            "p99_ms_tonic_client": round2(percentile(&tonic.lat, 99.0)),
            "ratio_vs_pgbench_tonic_client": round2(tonic_per_s / write_tps),
        });
        println!("{level}");
        levels.push(level);
    }
    let at16 = levels
        .iter()
        .find(|l| l["concurrency"] == 16)
        .or(levels.first())
        .cloned()
        .unwrap_or_default();
    let worst = |key: &str| {
        levels
            .iter()
            .filter_map(|l| l[key].as_f64())
            .fold(f64::INFINITY, f64::min)
    };
    Ok(json!({
        "bench": "ingest",
        "p50_ms": at16["p50_ms"], "p99_ms": at16["p99_ms"], "per_s": at16["per_s"],
        "ratio_vs_pgbench": at16["ratio_vs_pgbench"],
        "ratio_vs_pgbench_min": worst("ratio_vs_pgbench"),
        "ratio_vs_pgbench_txn_min": worst("ratio_vs_pgbench_txn"),
        "ratio_vs_pgbench_tonic_client_min": worst("ratio_vs_pgbench_tonic_client"),
        "seconds_per_level": measured,
        "levels": levels,
    }))
}
