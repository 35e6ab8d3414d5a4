//! `memory` and `startup`: the real `facteur` binary as a process of its own, as it runs in a
//! container (release build next to this one: `cargo build --release -p facteur-server --bin
//! facteur`, or `FACTEUR_BIN`), on a fresh Postgres database.
//!
//! `memory`: resident memory idle, at its peak while 4 MiB CodexTasks arrive together by the HTTP
//! compatibility endpoint (sampled every 2 ms from `/proc`), and 10 s after the burst; and the
//! bytes Postgres holds per delivery (every table and index of the database, after minus before,
//! by the delivery count).
//!
//! `startup`: exec to the first `200` from `/readyz`, on Postgres with the migrations current
//! (the database migrated by an earlier start) and on a fresh SQLite file.
//!
//! `idle`: resident memory of each binary idle, 5 s after start: the server (Postgres), the
//! argo-adapter (leasing from it, watching a fake Kubernetes API) and the discord-adapter
//! (connected to it, its Discord REST API pointed at a closed port).

use crate::{percentile, round2};
use facteur_proto::froussard::CodexTask;
use facteur_tests::{Backend, TestDb};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("FACTEUR_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("facteur"),
    };
    ensure_built(path)
}

/// `name` next to this binary (`cargo build --release --bins`).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    ensure_built(std::env::current_exe()?.with_file_name(name))
}

fn ensure_built(path: PathBuf) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        path.exists(),
        "{} not found: `cargo build --release --bins` first (or set FACTEUR_BIN for the server)",
        path.display()
    );
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running `facteur`.
pub(crate) struct Server {
    pub(crate) child: Child,
    http: SocketAddr,
    /// `http://…` of its gRPC listener.
    pub(crate) grpc_url: String,
}

impl Server {
    fn spawn(database_url: &str) -> anyhow::Result<Server> {
        Self::spawn_with(database_url, None)
    }

    /// [`Server::spawn`] with a configuration file (`FACTEUR_CONFIG_FILE`); the database and the
    /// listen addresses given here win over the file's.
    pub(crate) fn spawn_with(
        database_url: &str,
        config_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Server> {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let grpc = format!("127.0.0.1:{}", free_port()?);
        let mut c = Command::new(binary()?);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FACTEUR_")) {
            c.env_remove(k);
        }
        if let Some(f) = config_file {
            c.env("FACTEUR_CONFIG_FILE", f);
        }
        let child = c
            .env("FACTEUR_DATABASE_URL", database_url)
            .env("FACTEUR_CODEX_IMPLEMENTATION_ORCHESTRATOR_ENABLED", "true")
            .env("FACTEUR_SERVER_GRPC_LISTEN_ADDRESS", &grpc)
            .env("FACTEUR_SERVER_LISTEN_ADDRESS", http.to_string())
            .env("RUST_LOG", "warn")
            // As the container image sets it (deploy/docker/Dockerfile), unless asked otherwise.
            .env(
                "MIMALLOC_ARENA_EAGER_COMMIT",
                std::env::var("MIMALLOC_ARENA_EAGER_COMMIT").unwrap_or_else(|_| "0".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Server {
            child,
            http,
            grpc_url: format!("http://{grpc}"),
        })
    }

    /// Waits for the first `200` from `/readyz`, asking every millisecond.
    pub(crate) async fn ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(Ok(mut s)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(self.http),
            )
            .await
            {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let req = format!(
                    "GET /readyz HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
                    self.http
                );
                let mut head = [0u8; 12];
                if s.write_all(req.as_bytes()).await.is_ok()
                    && s.read_exact(&mut head).await.is_ok()
                    && &head[9..12] == b"200"
                {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("facteur exited while starting: {status}");
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "facteur not ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Resident set size, KiB.
    fn rss_kib(&self) -> u64 {
        rss_of(self.child.id())
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let sent = Instant::now();
        while self.child.try_wait()?.is_none() {
            if sent.elapsed() > Duration::from_secs(20) {
                self.child.kill()?;
                anyhow::bail!("facteur did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

/// A bench that fails between `spawn` and `stop` does not leave the server running (a signal
/// that kills the bench still does: nothing runs then).
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Resident set size of process `pid`, KiB.
pub(crate) fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time process `pid` has used, user + system, in seconds (`/proc/<pid>/stat`, fields 14
/// and 15, in clock ticks of 1/100 s as Linux reports them to user space).
pub(crate) fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count from the parenthesis that closes it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the name: field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    (tick(11) + tick(12)) as f64 / 100.0
}

/// The machine's CPU time so far, in clock ticks: (busy, total) from `/proc/stat`'s `cpu` line
/// (busy is everything but idle and iowait).
pub(crate) fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Where process `pid`'s resident memory is (`/proc/<pid>/smaps`), MiB: anonymous (heap, stacks)
/// and file-backed (the binary's own pages, shared libraries), the largest mappings by name
/// (anonymous ones as `[anon]`), and the thread count.
fn resident_breakdown(pid: u32) -> Value {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_name: std::collections::BTreeMap<String, u64> = Default::default();
    let (mut anon, mut rss, mut name) = (0u64, 0u64, String::new());
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, perms, offset, dev, inode, [path].
            name = words
                .nth(4)
                .map_or("[anon]", |p| p.rsplit('/').next().unwrap_or(p))
                .to_string();
            continue;
        }
        let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match first {
            "Rss:" => {
                rss += kib;
                *by_name.entry(name.clone()).or_default() += kib;
            }
            "Anonymous:" => anon += kib,
            _ => {}
        }
    }
    let mut largest: Vec<(String, u64)> = by_name.into_iter().collect();
    largest.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    json!({
        "rss_mib": mib(rss),
        "anonymous_mib": mib(anon),
        "file_mib": mib(rss.saturating_sub(anon)),
        "threads": threads,
        "largest_mib": largest
            .into_iter()
            .take(4)
            .map(|(n, k)| json!([n, mib(k)]))
            .collect::<Vec<_>>(),
    })
}

pub(crate) fn mib(kib: u64) -> f64 {
    round2(kib as f64 / 1024.0)
}

/// Every table and index of the database, in bytes (`psql`, as pgbench comes with it).
pub(crate) fn database_bytes(url: &str) -> anyhow::Result<u64> {
    let out = Command::new("psql")
        .args([
            url,
            "-Atc",
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// A CodexTask whose body is `size` bytes at most: the fixture with a prompt of random text
/// (incompressible as a real prompt nearly is: no compression flatters the stored figure).
fn big_task(size: usize, n: usize) -> anyhow::Result<CodexTask> {
    let mut t = facteur_proto::codex_task_from_json(
        include_str!("../../tests/fixtures/codex-task.json").as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("sample: {e}"))?;
    t.delivery_id = format!("memory-{n}-{}", uuid::Uuid::new_v4().simple());
    t.issue_number = n as i64 + 1;
    let base = prost::Message::encoded_len(&t);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 \n";
    let mut x = (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let prompt: String = (0..size - base - 16)
        .map(|_| {
            // xorshift64*: a cheap generator; the text only has to resist compression.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            ALPHABET[(x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 58) as usize] as char
        })
        .collect();
    t.prompt = prompt;
    Ok(t)
}

pub async fn memory(concurrent: usize, rounds: usize) -> anyhow::Result<Value> {
    const BODY: usize = 4 * 1024 * 1024;
    let db = TestDb::new(Backend::Postgres).await;
    let mut srv = Server::spawn(&db.url)?;
    srv.ready().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = srv.rss_kib();
    let idle_breakdown = resident_breakdown(srv.child.id());
    let before = database_bytes(&db.url)?;

    let bodies: Vec<Vec<u8>> = (0..concurrent * rounds)
        .map(|n| big_task(BODY, n).map(|t| prost::Message::encode_to_vec(&t)))
        .collect::<anyhow::Result<_>>()?;
    let body_len = bodies.iter().map(Vec::len).max().unwrap_or(0);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pid, on) = (srv.child.id(), sampling.clone());
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_of(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let started = Instant::now();
    let mut bodies = bodies.into_iter();
    for _ in 0..rounds {
        let mut calls = Vec::new();
        for body in bodies.by_ref().take(concurrent) {
            let addr = srv.http;
            calls.push(tokio::spawn(async move {
                facteur_tests::http(
                    addr,
                    "POST",
                    "/codex/tasks",
                    &[("content-type", "application/x-protobuf")],
                    &body,
                )
                .await
            }));
        }
        for c in calls {
            let (status, answer) = c.await?;
            anyhow::ensure!(
                status == 202,
                "a 4 MiB task answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    let burst = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let mut settled = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        settled.push(srv.rss_kib());
    }
    let settled_breakdown = resident_breakdown(srv.child.id());
    let after = database_bytes(&db.url)?;
    srv.stop()?;
    let deliveries = concurrent * rounds;
    let in_flight = peak.saturating_sub(idle) as f64 * 1024.0 / concurrent as f64;
    let settled_10s = settled.last().copied().unwrap_or(0);
    let stored = after.saturating_sub(before) as f64 / deliveries as f64;
    Ok(json!({
        "bench": "memory",
        "body_bytes": body_len,
        "concurrent": concurrent,
        "deliveries": deliveries,
        "burst_ms": round2(burst.as_secs_f64() * 1000.0),
        "idle_rss_mib": mib(idle),
        "peak_rss_mib": mib(peak),
        "in_flight_bytes_per_task": in_flight.round(),
        "in_flight_per_body": round2(in_flight / body_len as f64),
        "settled_rss_mib": settled.iter().map(|k| mib(*k)).collect::<Vec<_>>(),
        "settled_10s_vs_idle": round2(settled_10s as f64 / idle as f64),
        "idle_resident": idle_breakdown,
        "settled_resident": settled_breakdown,
        "stored_bytes_per_delivery": stored.round(),
        "stored_per_body": round2(stored / body_len as f64),
    }))
}

async fn cold_starts(url: &str, runs: usize) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut srv = Server::spawn(url)?;
        srv.ready().await?;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        srv.stop()?;
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn summary(ms: &[f64]) -> Value {
    json!({
        "runs": ms.len(),
        "min_ms": round2(ms.first().copied().unwrap_or(0.0)),
        "p50_ms": round2(percentile(ms, 50.0)),
        "max_ms": round2(ms.last().copied().unwrap_or(0.0)),
    })
}

pub async fn startup(runs: usize) -> anyhow::Result<Value> {
    let pg = TestDb::new(Backend::Postgres).await;
    // The first start migrates; those measured find the migrations current.
    let mut first = Server::spawn(&pg.url)?;
    first.ready().await?;
    first.stop()?;
    let postgres = cold_starts(&pg.url, runs).await?;
    let mut sqlite = Vec::with_capacity(runs);
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("f.db").display());
        sqlite.extend(cold_starts(&url, 1).await?);
    }
    sqlite.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "startup",
        "p50_ms": round2(percentile(&postgres, 50.0)),
        "postgres_migrated": summary(&postgres),
        "sqlite_fresh": summary(&sqlite),
    }))
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn idle() -> anyhow::Result<Value> {
    let db = TestDb::new(Backend::Postgres).await;
    let mut srv = Server::spawn(&db.url)?;
    srv.ready().await?;
    let control = srv.grpc_url.clone();

    let kube = facteur_tests::fake_kube::FakeKube::start().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kube.write_kubeconfig(dir.path(), "argo-workflows")?;
    let quiet = |c: &mut Command| {
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("FACTEUR_CONTROL_PLANE_URL", &control)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut argo = Command::new(sibling("facteur-argo")?);
    quiet(&mut argo);
    let argo = Running(
        argo.env("FACTEUR_KUBECONFIG", &kubeconfig)
            .env("FACTEUR_ARGO_NAMESPACE", "argo-workflows")
            .env(
                "FACTEUR_ARGO_CALLBACK_LISTEN_ADDRESS",
                format!("127.0.0.1:{}", free_port()?),
            )
            .spawn()?,
    );
    let mut discord = Command::new(sibling("facteur-discord")?);
    quiet(&mut discord);
    let discord = Running(
        discord
            .env("FACTEUR_DISCORD_BOT_TOKEN", "bench-bot-token")
            .env("FACTEUR_DISCORD_APPLICATION_ID", "400000000000000001")
            .env(
                "FACTEUR_DISCORD_PUBLIC_KEY",
                facteur_tests::discord::public_hex(),
            )
            .env("FACTEUR_DISCORD_API_BASE_URL", "http://127.0.0.1:9")
            .env(
                "FACTEUR_DISCORD_INTERACTIONS_LISTEN_ADDRESS",
                format!("127.0.0.1:{}", free_port()?),
            )
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = [
        ("server", srv.rss_kib()),
        ("argo_adapter", rss_of(argo.0.id())),
        ("discord_adapter", rss_of(discord.0.id())),
    ];
    for (name, kib) in rss {
        anyhow::ensure!(kib > 0, "{name} is not running");
    }
    drop((argo, discord));
    srv.stop()?;
    Ok(json!({
        "bench": "idle",
        "server_rss_mib": mib(rss[0].1),
        "argo_adapter_rss_mib": mib(rss[1].1),
        "discord_adapter_rss_mib": mib(rss[2].1),
    }))
}
