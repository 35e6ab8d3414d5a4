//! `facteur-discord` as Kubernetes stops it: SIGTERM drains the listener and exits 0 (it used to
//! listen for SIGINT only, so SIGTERM killed it at once, cutting requests in flight).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_facteur-discord"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // Nothing answers there: the adapter keeps trying in the background, as in a real
        // start-up before the server is up.
        .env("FACTEUR_CONTROL_PLANE_URL", "http://127.0.0.1:9")
        .env("FACTEUR_DISCORD_BOT_TOKEN", "test-bot-token")
        .env("FACTEUR_DISCORD_APPLICATION_ID", "400000000000000001")
        .env(
            "FACTEUR_DISCORD_PUBLIC_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        )
        .env("FACTEUR_DISCORD_API_BASE_URL", "http://127.0.0.1:9")
        .env(
            "FACTEUR_DISCORD_INTERACTIONS_LISTEN_ADDRESS",
            format!("127.0.0.1:{port}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start facteur-discord");
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("facteur-discord exited at start: {status}");
        }
        assert!(up.elapsed() < Duration::from_secs(20), "never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("facteur-discord did not stop within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a drain, not a kill: {status}"
    );
}
