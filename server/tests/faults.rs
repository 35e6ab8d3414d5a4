//! Faults an operator meets, on the real `facteur` binary against a private PostgreSQL it starts
//! itself (`initdb` as the postgres user, a free loopback port), so it can crash it without
//! disturbing the shared one:
//! - PostgreSQL crashed (`pg_ctl stop -m immediate`) for 3 s under a bounded load of unique Codex
//!   deliveries: every acknowledged (202) delivery is stored exactly once, no request waits
//!   longer than `database.connect_timeout_seconds` + 2 s, readiness goes false and comes back
//!   without a restart;
//! - `kill -9` of the server mid-load, then a restart: every acknowledged delivery is stored once
//!   and a replay answers `duplicate`.

use facteur_proto::froussard::{CodexTask, CodexTaskStage};
use prost::Message;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "faults-codex-token-0123456789";
const CONNECT_TIMEOUT: u64 = 2;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn pg_bin(name: &str) -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(name)
}

/// A private PostgreSQL cluster, run as the `postgres` user (initdb refuses root).
struct Pg {
    dir: tempfile::TempDir,
    port: u16,
}

impl Pg {
    fn as_postgres(args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).args(args);
        c
    }

    fn new() -> Pg {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("chown")
            .args(["postgres:postgres", &dir.path().display().to_string()])
            .status()
            .expect("chown");
        assert!(ok.success());
        let data = dir.path().join("data");
        let initdb = pg_bin("initdb");
        let ok = Self::as_postgres(&[
            &initdb.display().to_string(),
            "-D",
            &data.display().to_string(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("initdb");
        assert!(ok.success(), "initdb");
        let pg = Pg {
            dir,
            port: free_port(),
        };
        pg.start();
        pg.psql("postgres", "CREATE DATABASE facteur");
        pg
    }

    fn ctl(&self, args: &[&str]) {
        let ctl = pg_bin("pg_ctl");
        let data = self.dir.path().join("data").display().to_string();
        let mut all = vec![ctl.display().to_string(), "-D".into(), data];
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let ok = Self::as_postgres(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(ok.success(), "pg_ctl {args:?}");
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log").display().to_string();
        self.ctl(&["-o", &opts, "-l", &log, "-w", "start"]);
    }

    fn crash(&self) {
        self.ctl(&["-m", "immediate", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/facteur", self.port)
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-tAc", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let ctl = pg_bin("pg_ctl");
        let data = self.dir.path().join("data").display().to_string();
        let _ = Self::as_postgres(&[
            &ctl.display().to_string(),
            "-D",
            &data,
            "-m",
            "immediate",
            "stop",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}

struct Server {
    child: Child,
    http: u16,
}

impl Drop for Server {
    /// A failing test must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(pg: &Pg, http: u16, log: &Path) -> Server {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_facteur"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FACTEUR_")) {
        c.env_remove(k);
    }
    let child = c
        .env("FACTEUR_DATABASE_URL", pg.url())
        .env(
            "FACTEUR_DATABASE_CONNECT_TIMEOUT_SECONDS",
            CONNECT_TIMEOUT.to_string(),
        )
        .env("FACTEUR_CODEX_IMPLEMENTATION_ORCHESTRATOR_ENABLED", "true")
        .env(
            "FACTEUR_AUTH_TOKENS",
            format!(r#"[{{"name":"froussard","role":"codex-submitter","token":"{TOKEN}"}}]"#),
        )
        .env(
            "FACTEUR_SERVER_GRPC_LISTEN_ADDRESS",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("FACTEUR_SERVER_LISTEN_ADDRESS", format!("127.0.0.1:{http}"))
        .env("FACTEUR_SERVER_HEALTH_CHECK_INTERVAL_SECONDS", "1")
        .stdout(Stdio::from(file.try_clone().expect("log")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start facteur");
    let up = Instant::now();
    while http_call(http, "GET", "/healthz", &[]).0 != 200 {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "facteur never served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, http }
}

/// One HTTP/1.1 exchange; status 0 when the connection failed.
fn http_call(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .is_err()
    {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn task(delivery: &str) -> Vec<u8> {
    CodexTask {
        stage: CodexTaskStage::Implementation as i32,
        prompt: "fault suite".into(),
        repository: "proompteng/lab".into(),
        issue_number: 1,
        delivery_id: delivery.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// What one load run saw: acknowledged delivery ids and the slowest answer.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    refused: usize,
    slowest: Duration,
}

/// `workers` threads posting unique deliveries to `port` until `stop`.
fn load(
    port: u16,
    workers: usize,
    prefix: &str,
    stop: Arc<Mutex<bool>>,
) -> Vec<std::thread::JoinHandle<Seen>> {
    (0..workers)
        .map(|w| {
            let stop = stop.clone();
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut i = 0;
                while !*stop.lock().expect("stop") && i < 5_000 {
                    let id = format!("{prefix}-{w}-{i}");
                    i += 1;
                    let t = Instant::now();
                    let (code, _) = http_call(port, "POST", "/codex/tasks", &task(&id));
                    seen.slowest = seen.slowest.max(t.elapsed());
                    if code == 202 {
                        seen.acked.push(id);
                    } else {
                        seen.refused += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                seen
            })
        })
        .collect()
}

fn collect(handles: Vec<std::thread::JoinHandle<Seen>>) -> Seen {
    let mut all = Seen::default();
    for h in handles {
        let s = h.join().expect("load thread");
        all.acked.extend(s.acked);
        all.refused += s.refused;
        all.slowest = all.slowest.max(s.slowest);
    }
    all
}

/// Every acknowledged delivery is stored exactly once (task run and run).
fn stored_once(pg: &Pg, acked: &[String]) {
    let dupes = pg.psql(
        "facteur",
        "SELECT count(*) FROM (SELECT delivery_id FROM codex_kb.task_runs GROUP BY delivery_id HAVING count(*) > 1) d",
    );
    assert_eq!(dupes, "0", "a delivery stored twice");
    let stored: std::collections::HashSet<String> = pg
        .psql("facteur", "SELECT delivery_id FROM codex_kb.task_runs")
        .lines()
        .map(str::to_string)
        .collect();
    let runs: i64 = pg
        .psql(
            "facteur",
            "SELECT count(*) FROM runs WHERE source = 'codex'",
        )
        .parse()
        .expect("count");
    assert_eq!(runs as usize, stored.len(), "one run per stored delivery");
    let lost: Vec<&String> = acked.iter().filter(|d| !stored.contains(*d)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
}

#[test]
fn a_database_crash_and_a_killed_server_lose_no_acknowledged_delivery() {
    let pg = Pg::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("facteur.log");
    let http = free_port();
    let server = start_server(&pg, http, &log);

    // PostgreSQL crashes for 3 s, then for 15 s, under load.
    let mut seen = Seen::default();
    for outage in [3, 15] {
        let stop = Arc::new(Mutex::new(false));
        let handles = load(server.http, 4, &format!("crash{outage}"), stop.clone());
        std::thread::sleep(Duration::from_millis(1500));
        pg.crash();
        let down = Instant::now();
        let mut saw_not_ready = false;
        while down.elapsed() < Duration::from_secs(outage) {
            saw_not_ready |= http_call(server.http, "GET", "/readyz", &[]).0 == 503;
            std::thread::sleep(Duration::from_millis(200));
        }
        pg.start();
        let back = Instant::now();
        while http_call(server.http, "GET", "/readyz", &[]).0 != 200 {
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "never ready again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1500));
        *stop.lock().expect("stop") = true;
        let round = collect(handles);
        eprintln!(
            "{outage} s crash: {} acknowledged, {} refused, slowest answer {:?}",
            round.acked.len(),
            round.refused,
            round.slowest
        );
        assert!(
            saw_not_ready,
            "readiness went false while the database was down"
        );
        assert!(round.refused > 0, "the outage was felt");
        assert!(
            round.acked.len() > 20,
            "load went on: {}",
            round.acked.len()
        );
        assert!(
            round.slowest <= Duration::from_secs(CONNECT_TIMEOUT + 2),
            "{outage} s outage: a request waited {:?}",
            round.slowest
        );
        seen.acked.extend(round.acked);
        stored_once(&pg, &seen.acked);
    }

    // kill -9 mid-load, then a restart.
    let stop = Arc::new(Mutex::new(false));
    let handles = load(server.http, 4, "kill", stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    drop(server); // SIGKILL
    std::thread::sleep(Duration::from_millis(300));
    *stop.lock().expect("stop") = true;
    let killed = collect(handles);
    eprintln!(
        "kill -9: {} acknowledged, {} refused",
        killed.acked.len(),
        killed.refused
    );
    let server = start_server(&pg, http, &log);
    stored_once(&pg, &killed.acked);
    let mut all = seen.acked.clone();
    all.extend(killed.acked.iter().cloned());
    // A replay of an acknowledged delivery answers with the original.
    for id in all.iter().step_by(all.len().div_ceil(20).max(1)) {
        let (code, body) = http_call(server.http, "POST", "/codex/tasks", &task(id));
        assert_eq!(code, 202, "{body}");
        assert!(body.contains("\"duplicate\":true"), "{body}");
    }
    stored_once(&pg, &all);

    // SIGTERM under load: the requests in flight are answered, the server exits 0 within its
    // grace, and what it acknowledged is stored.
    let stop = Arc::new(Mutex::new(false));
    let handles = load(server.http, 4, "term", stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    let mut server = server;
    let ok = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(25),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    *stop.lock().expect("stop") = true;
    let termed = collect(handles);
    assert_eq!(status.code(), Some(0), "a drain within the grace exits 0");
    assert!(!termed.acked.is_empty());
    all.extend(termed.acked);
    stored_once(&pg, &all);
}
