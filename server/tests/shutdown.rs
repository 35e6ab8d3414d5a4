//! The real `facteur` binary under SIGTERM (Kubernetes' stop): idle, it drains and exits 0 at
//! once; with a request still in flight when `server.shutdown_grace_seconds` runs out (an upload
//! that stalls), it cuts it and exits non-zero, saying why. (Under load within the grace:
//! `faults.rs`.) Before, it exited 0 even when it had cut requests off.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts the binary on a fresh SQLite file; returns it and its HTTP port.
fn start(dir: &std::path::Path, grace: u64) -> (Child, u16, std::path::PathBuf) {
    let http = free_port();
    let log = dir.join(format!("facteur-{grace}.log"));
    let file = std::fs::File::create(&log).expect("log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_facteur"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FACTEUR_")) {
        c.env_remove(k);
    }
    let child = c
        .env(
            "FACTEUR_DATABASE_URL",
            format!(
                "sqlite://{}?mode=rwc",
                dir.join(format!("f{grace}.db")).display()
            ),
        )
        .env("FACTEUR_CODEX_IMPLEMENTATION_ORCHESTRATOR_ENABLED", "true")
        .env("FACTEUR_SERVER_SHUTDOWN_GRACE_SECONDS", grace.to_string())
        .env(
            "FACTEUR_SERVER_GRPC_LISTEN_ADDRESS",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("FACTEUR_SERVER_LISTEN_ADDRESS", format!("127.0.0.1:{http}"))
        .stdout(Stdio::from(file.try_clone().expect("log")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start facteur");
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(up.elapsed() < Duration::from_secs(30), "never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, http, log)
}

fn sigterm_and_wait(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let sent = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return (s, sent.elapsed());
        }
        if sent.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("facteur did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_idle_exits_zero_and_a_cut_request_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");

    let (mut idle, _, log) = start(dir.path(), 5);
    let (status, took) = sigterm_and_wait(&mut idle);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "idle: {status}\n{text}");
    assert!(took < Duration::from_secs(3), "an idle drain took {took:?}");

    // An upload that stalls after its headers: in flight until the grace (1 s) runs out.
    let (mut busy, http, log) = start(dir.path(), 1);
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", http)).expect("connect");
    stalled
        .write_all(
            b"POST /codex/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = sigterm_and_wait(&mut busy);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_ne!(status.code(), Some(0), "work was cut: {status}\n{text}");
    assert!(took < Duration::from_secs(4), "cut at the grace: {took:?}");
    assert!(text.contains("ran out"), "the log says why:\n{text}");
    drop(stalled);
}
