//! `soak`: the real `facteur` binary under a steady mixed load for `BENCH_SOAK_MINUTES` (default
//! 30), on a fresh Postgres database, with an argo-adapter (in this process, on the real kube-rs
//! client) creating the Workflows on the fake Kubernetes API server, which plays the controller
//! (each Workflow goes Running, then Succeeded a second later, and the adapter reports both).
//!
//! The load, each kind paced on its own and one call at a time (so the latencies are the
//! server's, not a queue's): slash-command interactions that start a run (`Invoke`, with the
//! policy and quota check) at `BENCH_SOAK_RATE` per second (default 10), `StartRun` at half that,
//! Codex tasks (`CodexService.SubmitTask`) at a tenth, `GetStatus` every 5 s (a dashboard's poll), `ListRuns`
//! twice a second (newest, by status, by guild, by requester in turn), and one `WatchRuns`
//! stream that follows every change, as the discord-adapter does.
//!
//! Every `BENCH_SOAK_INTERVAL_SECONDS` (default 60) one row: the server's resident memory, its open
//! file descriptors (sockets included), the connections it holds to Postgres (`pg_stat_activity`),
//! the runs not final yet (a backlog that grows means the pipeline falls behind), the database's
//! size, and per kind of call the count, errors, p50 and p99 of that interval; and what explains
//! a tail: the server's CPU seconds in the interval, the machine's busy fraction (`/proc/stat`)
//! and how long the interval's `VACUUM (ANALYZE)` took (`vacuum_s`).
//!
//! Postgres with autovacuum off (as on this project's test machines) gets a `VACUUM (ANALYZE)`
//! from the soak once per interval, as autovacuum would give a long-lived database.
//!
//! The verdict compares the last third of the rows with the first third (the first row, the
//! warm-up, left out): the means of resident memory, descriptors and connections within 10 %;
//! each kind's p99 over every call of the third (a minute's p99 alone is a noisy figure) within
//! 25 %; the backlog within 50 %, or under ten seconds of load throughout. `flat` is all of them,
//! with no call failed.

use crate::process::{Server, cpu_seconds_of, database_bytes, machine_ticks, mib, rss_of};
use crate::{percentile, round2};
use facteur_client::{Client, ClientConfig, pb};
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::Adapter;
use facteur_tests::{
    ADMIN_TOKEN, Backend, CODEX_TOKEN, DISCORD_TOKEN, TestDb, deploy_invoke, interaction,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const GUILD: &str = "100000000000000001";
const DEPLOYER: &str = "200000000000000001";
const NS: &str = "argo-workflows";

/// What one kind of call did in the current interval.
#[derive(Default)]
struct Window {
    lat_ms: Vec<f64>,
    errors: u64,
}

/// Every kind's window, taken (and emptied) once per interval.
#[derive(Clone, Default)]
struct Stats(Arc<Mutex<BTreeMap<&'static str, Window>>>);

impl Stats {
    fn record(&self, kind: &'static str, took: Duration, ok: bool) {
        let Ok(mut m) = self.0.lock() else { return };
        let w = m.entry(kind).or_default();
        if ok {
            w.lat_ms.push(took.as_secs_f64() * 1000.0);
        } else {
            w.errors += 1;
        }
    }

    fn take(&self) -> BTreeMap<&'static str, Window> {
        self.0
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }
}

/// A Workflow the fake controller moves to its end once the adapter has created it.
type Started = (String, String);

/// Calls `call` every `every` until `stop`, one at a time, recording each under `kind`.
fn paced<F, Fut>(
    kind: &'static str,
    every: Duration,
    stats: &Stats,
    stop: &CancellationToken,
    mut call: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let (stats, stop) = (stats.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = 0u64;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let t = Instant::now();
            let r = call(i).await;
            if let Err(e) = &r {
                eprintln!("soak: {kind}: {e:#}");
            }
            stats.record(kind, t.elapsed(), r.is_ok());
            i += 1;
        }
    })
}

/// Plays the Argo controller for every started Workflow: Running once the adapter created it,
/// Succeeded a second later. One that is never created within a minute counts as an error of
/// `workflow_created`.
fn controller(
    kube: Arc<FakeKube>,
    mut started: mpsc::UnboundedReceiver<Started>,
    stats: Stats,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((ns, name)) = started.recv().await {
            let (kube, stats) = (kube.clone(), stats.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                while kube.create_seen(&name).is_none() {
                    if t.elapsed() > Duration::from_secs(60) {
                        stats.record("workflow_created", t.elapsed(), false);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                stats.record("workflow_created", t.elapsed(), true);
                // The create is seen before the fake stores it: let it land.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if kube.workflow(&ns, &name).is_none() {
                    stats.record("workflow_created", t.elapsed(), false);
                    return;
                }
                kube.set_phase(&ns, &name, "Running", json!({"progress": "0/1"}));
                tokio::time::sleep(Duration::from_secs(1)).await;
                kube.set_phase(&ns, &name, "Succeeded", json!({"progress": "1/1"}));
            });
        }
    })
}

/// One `psql` query's single row, its fields split on `|`.
fn psql_row(url: &str, sql: &str) -> anyhow::Result<Vec<u64>> {
    let out = Command::new("psql").args([url, "-Atc", sql]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .trim()
        .split('|')
        .map(|v| Ok(v.trim().parse()?))
        .collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The rows of the first and the last third, the first row (the warm-up) left out.
fn thirds(rows: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let third = (rows.saturating_sub(1) / 3).max(1);
    (
        1.min(rows)..(1 + third).min(rows),
        rows.saturating_sub(third)..rows,
    )
}

/// Mean of the last third of `series` over that of its first third.
fn trend(series: &[f64]) -> f64 {
    let (first, last) = thirds(series.len());
    let mean = |r: std::ops::Range<usize>| {
        let part = &series[r];
        if part.is_empty() {
            0.0
        } else {
            part.iter().sum::<f64>() / part.len() as f64
        }
    };
    let (a, b) = (mean(first), mean(last));
    if a > 0.0 {
        round2(b / a)
    } else if b > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

fn finite(ratio: f64) -> Value {
    if ratio.is_finite() {
        json!(ratio)
    } else {
        json!("grew from 0")
    }
}

/// The server's configuration: tokens, `deploy` (with a quota, so every interaction checks it)
/// and `dispatch`, Codex tasks into the namespace the adapter serves.
fn server_config(db: &TestDb) -> facteur_config::Config {
    let mut cfg = crate::bench_config(db, DEPLOYER);
    // The concurrency quota is checked on every interaction; the hourly one is not set: its
    // check reads the hour's runs of the guild's command, a cost that grows through the first
    // hour of any steady load (and then stays), which a half-hour soak would read as a trend.
    cfg.commands[0].max_per_hour = None;
    cfg.database.max_connections = 10;
    cfg.server.health_check_interval_seconds = 2;
    cfg.codex_implementation_orchestrator.enabled = true;
    cfg.codex_implementation_orchestrator.namespace = NS.into();
    cfg
}

/// Runs the soak.
pub async fn run(minutes: u64, interval_s: u64, rate: f64) -> anyhow::Result<Value> {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("facteur.yaml");
    // JSON is YAML.
    std::fs::write(&file, serde_json::to_vec(&server_config(&db))?)?;
    let mut srv = Server::spawn_with(&db.url, Some(&file))?;
    srv.ready().await?;
    let pid = srv.child.id();

    let kube = Arc::new(FakeKube::start().await);
    let adapter = Adapter::start(&srv.grpc_url, &kube, NS);
    let connect =
        |token: &str| Client::connect(ClientConfig::new(srv.grpc_url.clone()).with_token(token));
    let (discord, admin, codex) = (
        connect(DISCORD_TOKEN).await?,
        connect(ADMIN_TOKEN).await?,
        connect(CODEX_TOKEN).await?,
    );
    let task = facteur_proto::codex_task_from_json(
        include_str!("../../tests/fixtures/codex-task.json").as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("sample: {e}"))?;

    let stats = Stats::default();
    let stop = CancellationToken::new();
    let (started_tx, started_rx) = mpsc::unbounded_channel::<Started>();
    let ctl = controller(kube.clone(), started_rx, stats.clone());
    let per = |per_s: f64| Duration::from_secs_f64(1.0 / per_s.max(0.01));
    let mut load = Vec::new();

    load.push({
        let (c, started) = (discord.clone(), started_tx.clone());
        paced("invoke", per(rate), &stats, &stop, move |i| {
            let (mut c, started) = (c.command(), started.clone());
            async move {
                let id = (830_000_000_000_000_000 + i).to_string();
                let r = c
                    .invoke(deploy_invoke(interaction(&id, GUILD, &[DEPLOYER])))
                    .await?;
                let run = r
                    .into_inner()
                    .run
                    .ok_or_else(|| anyhow::anyhow!("no run started"))?;
                let t = run
                    .target
                    .ok_or_else(|| anyhow::anyhow!("run without target"))?;
                let _ = started.send((t.namespace, t.workflow_name));
                Ok(())
            }
        })
    });
    load.push({
        let (c, started) = (admin.clone(), started_tx.clone());
        paced("start_run", per(rate / 2.0), &stats, &stop, move |i| {
            let (mut c, started) = (c.admin(), started.clone());
            async move {
                let r = c
                    .start_run(pb::StartRunRequest {
                        cluster: String::new(),
                        command: "dispatch".into(),
                        parameters: [("payload".to_string(), format!("soak-{i}"))].into(),
                        idempotency_key: format!("soak-{i}"),
                    })
                    .await?;
                let run = r
                    .into_inner()
                    .run
                    .ok_or_else(|| anyhow::anyhow!("no run"))?;
                let t = run
                    .target
                    .ok_or_else(|| anyhow::anyhow!("run without target"))?;
                let _ = started.send((t.namespace, t.workflow_name));
                Ok(())
            }
        })
    });
    load.push({
        let (c, started) = (codex.clone(), started_tx.clone());
        paced("codex_task", per(rate / 10.0), &stats, &stop, move |i| {
            let (mut c, started, mut t) = (c.codex(), started.clone(), task.clone());
            t.delivery_id = format!("soak-{i}");
            t.issue_number = i as i64 + 1;
            async move {
                let r = c
                    .submit_task(pb::SubmitTaskRequest {
                        task: Some(t),
                        delivery_id: String::new(),
                    })
                    .await?
                    .into_inner();
                let _ = started.send((r.namespace, r.workflow_name));
                Ok(())
            }
        })
    });
    drop(started_tx);
    load.push({
        let c = admin.clone();
        paced(
            "get_status",
            Duration::from_secs(1),
            &stats,
            &stop,
            move |_| {
                let mut c = c.admin();
                async move {
                    c.get_status(pb::GetStatusRequest {}).await?;
                    Ok(())
                }
            },
        )
    });
    load.push({
        let c = admin.clone();
        paced(
            "list_runs",
            Duration::from_millis(500),
            &stats,
            &stop,
            move |i| {
                let mut c = c.admin();
                let mut req = pb::ListRunsRequest {
                    page_size: 20,
                    ..Default::default()
                };
                match i % 4 {
                    1 => req.status = pb::RunStatus::Succeeded as i32,
                    2 => req.guild_id = GUILD.into(),
                    3 => req.requester = facteur_tests::MEMBER.into(),
                    _ => {}
                }
                async move {
                    c.list_runs(req).await?;
                    Ok(())
                }
            },
        )
    });
    // The feed, followed as the discord-adapter follows it: each update delivered is counted
    // (its latency is the time since the previous one, so only the count is a figure).
    let feed_updates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    load.push({
        let (c, stop, stats, n) = (
            discord.clone(),
            stop.clone(),
            stats.clone(),
            feed_updates.clone(),
        );
        tokio::spawn(async move {
            let mut cursor = String::new();
            while !stop.is_cancelled() {
                let t = Instant::now();
                let stream = c
                    .command()
                    .watch_runs(pb::WatchRunsRequest {
                        cursor: cursor.clone(),
                    })
                    .await;
                let mut stream = match stream {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        eprintln!("soak: watch_runs: {e}");
                        stats.record("watch_runs_open", t.elapsed(), false);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        m = stream.message() => match m {
                            Ok(Some(u)) => {
                                cursor = u.cursor;
                                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            _ => break,
                        }
                    }
                }
            }
        })
    });

    // A database that lives for months is vacuumed and analyzed by autovacuum; where the server
    // runs with it off (this project's test machines do), the soak does what it would, once per
    // interval, or the planner keeps the estimates of an empty table and the figures measure that.
    let autovacuum = Command::new("psql")
        .args([db.url.as_str(), "-Atc", "SHOW autovacuum"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "on")
        .unwrap_or(false);
    let started_at = Instant::now();
    let mut rows: Vec<Value> = Vec::new();
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // Every latency of each interval, by kind, for the verdict's pooled percentiles.
    let mut pooled: Vec<BTreeMap<&'static str, Vec<f64>>> = Vec::new();
    let intervals = (minutes * 60).div_ceil(interval_s.max(1));
    let mut fed = 0u64;
    let (mut cpu_before, mut ticks_before) = (cpu_seconds_of(pid), machine_ticks());
    for k in 1..=intervals {
        tokio::time::sleep_until((started_at + Duration::from_secs(k * interval_s)).into()).await;
        if let Some(status) = srv.child.try_wait()? {
            anyhow::bail!("facteur exited during the soak: {status}");
        }
        let windows = stats.take();
        // What the interval cost the server and the machine, read before this interval's VACUUM
        // (which is then timed on its own): a tail that follows the machine's load, or the
        // VACUUM's growing length, is not the server's code.
        let (cpu, ticks) = (cpu_seconds_of(pid), machine_ticks());
        let server_cpu = cpu - cpu_before;
        let busy = ticks.0.saturating_sub(ticks_before.0) as f64
            / ticks.1.saturating_sub(ticks_before.1).max(1) as f64;
        let vacuum_started = Instant::now();
        if !autovacuum {
            let out = Command::new("psql")
                .args([db.url.as_str(), "-qAtc", "VACUUM (ANALYZE)"])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "VACUUM: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let vacuum_s = vacuum_started.elapsed().as_secs_f64();
        (cpu_before, ticks_before) = (cpu_seconds_of(pid), machine_ticks());
        let rss = rss_of(pid);
        let fds = open_fds(pid);
        let pg = psql_row(
            &db.url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )?[0];
        let runs = psql_row(
            &db.url,
            "SELECT count(*) FILTER (WHERE status IN ('queued', 'dispatching', 'submitted', 'running')), count(*) FROM runs",
        )?;
        let bytes = database_bytes(&db.url)?;
        let updates = feed_updates.load(std::sync::atomic::Ordering::Relaxed);
        let mut calls = serde_json::Map::new();
        let mut lat = BTreeMap::new();
        for (kind, mut w) in windows {
            w.lat_ms.sort_by(f64::total_cmp);
            let p99 = round2(percentile(&w.lat_ms, 99.0));
            calls.insert(
                kind.into(),
                json!({
                    "n": w.lat_ms.len(), "errors": w.errors,
                    "p50_ms": round2(percentile(&w.lat_ms, 50.0)), "p99_ms": p99,
                }),
            );
            lat.insert(kind, w.lat_ms);
        }
        pooled.push(lat);
        for (name, v) in [
            ("rss_mib", mib(rss)),
            ("open_fds", fds as f64),
            ("pg_connections", pg as f64),
            ("open_runs", runs[0] as f64),
        ] {
            series.entry(name.into()).or_default().push(v);
        }
        let row = json!({
            "t_s": k * interval_s,
            "rss_mib": mib(rss),
            "open_fds": fds,
            "pg_connections": pg,
            "open_runs": runs[0],
            "runs": runs[1],
            "database_mib": round2(bytes as f64 / 1048576.0),
            "feed_updates": updates - fed,
            "server_cpu_s": round2(server_cpu),
            "machine_busy": round2(busy),
            "vacuum_s": round2(vacuum_s),
            "calls": calls,
        });
        fed = updates;
        println!("{row}");
        rows.push(row);
    }

    stop.cancel();
    for l in load {
        let _ = l.await;
    }
    adapter.stop().await;
    let _ = ctl.await;
    srv.stop()?;

    let mut verdict = serde_json::Map::new();
    let mut flat = true;
    for (name, s) in &series {
        let ratio = trend(s);
        let (ok, bound) = if name == "open_runs" {
            // A backlog under ten seconds of load is none, whatever its trend.
            let small = s.iter().skip(1).all(|v| *v <= rate * 1.6 * 10.0);
            (
                small || ratio <= 1.5,
                json!(if small { "under 10 s of load" } else { "1.5" }),
            )
        } else {
            (ratio <= 1.10, json!(1.10))
        };
        flat &= ok;
        verdict.insert(
            name.clone(),
            json!({"last_over_first": finite(ratio), "bound": bound, "flat": ok}),
        );
    }
    // Latencies: the p99 of every call of the first third beside that of the last third (a
    // minute's p99 is too few calls to compare alone).
    let kinds: std::collections::BTreeSet<&str> =
        pooled.iter().flat_map(|m| m.keys().copied()).collect();
    let (first, last) = thirds(pooled.len());
    for kind in kinds {
        let pool = |rows: std::ops::Range<usize>| {
            let mut v: Vec<f64> = pooled[rows]
                .iter()
                .flat_map(|m| m.get(kind).into_iter().flatten().copied())
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (a, b) = (pool(first.clone()), pool(last.clone()));
        let (pa, pb) = (percentile(&a, 99.0), percentile(&b, 99.0));
        let ratio = if pa > 0.0 { round2(pb / pa) } else { 1.0 };
        let ok = ratio <= 1.25;
        flat &= ok;
        verdict.insert(
            format!("p99_ms.{kind}"),
            json!({
                "first_third": round2(pa), "last_third": round2(pb),
                "last_over_first": ratio, "bound": 1.25, "flat": ok,
            }),
        );
    }
    let errors: u64 = rows
        .iter()
        .flat_map(|r| r["calls"].as_object().into_iter().flatten())
        .map(|(_, c)| c["errors"].as_u64().unwrap_or(0))
        .sum();
    Ok(json!({
        "bench": "soak",
        "minutes": minutes,
        "interval_s": interval_s,
        "interactions_per_s": rate,
        "autovacuum": if autovacuum { "on" } else { "off: VACUUM (ANALYZE) by the soak once per interval" },
        "flat": flat && errors == 0,
        "errors": errors,
        "verdict": verdict,
        "rows": rows,
    }))
}
