//! Secrets never reach a log line, at any level: the real `facteur` binary at `RUST_LOG=trace`
//! with random secrets in the database URL (`?password=`), the Redis URL (`?password=`), bearer
//! tokens (accepted and refused ones sent over HTTP), and `config check`. Needs the local
//! PostgreSQL (trust auth: the password is accepted whatever it is) and Redis.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qc",
            sql,
        ])
        .status()
        .expect("psql");
    assert!(ok.success(), "{sql}");
}

fn post(port: u16, path: &str, token: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn secret(what: &str) -> String {
    format!("{what}{}", uuid::Uuid::new_v4().simple())
}

#[test]
fn no_secret_reaches_the_logs_at_trace() {
    let db = format!("facteur_secrets_{}", uuid::Uuid::new_v4().simple());
    psql(&format!("CREATE DATABASE {db}"));
    let db_pw = secret("dbpw");
    let redis_pw = secret("redispw");
    let token = secret("token");
    let wrong = secret("wrongtoken");
    let (grpc, http) = (free_port(), free_port());
    let tokens = format!(r#"[{{"name":"ops","role":"admin","token":"{token}"}}]"#);
    let env = [
        (
            "FACTEUR_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{db}?password={db_pw}"),
        ),
        (
            "FACTEUR_REDIS_URL",
            format!("redis://127.0.0.1:6379/0?password={redis_pw}"),
        ),
        ("FACTEUR_AUTH_TOKENS", tokens),
        (
            "FACTEUR_SERVER_GRPC_LISTEN_ADDRESS",
            format!("127.0.0.1:{grpc}"),
        ),
        ("FACTEUR_SERVER_LISTEN_ADDRESS", format!("127.0.0.1:{http}")),
        ("RUST_LOG", "trace".into()),
    ];
    let facteur = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_facteur"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FACTEUR_")) {
            c.env_remove(k);
        }
        c.envs(env.iter().map(|(k, v)| (k, v)));
        c
    };

    let check = facteur()
        .args(["config", "check"])
        .output()
        .expect("config check");
    let mut seen = String::from_utf8_lossy(&check.stdout).to_string();
    seen.push_str(&String::from_utf8_lossy(&check.stderr));

    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("facteur.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = facteur()
        .stdout(Stdio::from(file.try_clone().expect("clone")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start facteur");
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "facteur exited: {s}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(up.elapsed() < Duration::from_secs(30), "never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let accepted = post(http, "/codex/tasks", &token);
    let refused = post(http, "/codex/tasks", &wrong);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(!accepted.starts_with("HTTP/1.1 401"), "{accepted}");
    let _ = post(http, "/readyz", &token);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    seen.push_str(&std::fs::read_to_string(&log).expect("log"));
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));

    assert!(
        seen.contains("TRACE") || seen.contains("\"level\":\"TRACE\""),
        "logged at trace"
    );
    for s in [&db_pw, &redis_pw, &token, &wrong] {
        assert!(!seen.contains(s.as_str()), "a secret reached the logs: {s}");
    }
}
