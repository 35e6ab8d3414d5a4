//! The real `facteur-argo` binary as Kubernetes stops it (SIGTERM), against the control plane
//! (the server in-process, on SQLite) and a fake Kubernetes API that its kubeconfig names:
//! - idle: it drains and exits 0 at once;
//! - a Workflow create in flight: the create is finished and completed (the run is `submitted`,
//!   not left `dispatching` until its lease expires), then exit 0;
//! - a create that outlives `argo.shutdown_grace_seconds`: cut when the grace runs out, and the
//!   exit status says so (non-zero).
//!
//! Before, the process exited in 0.03 s on SIGTERM with a create in flight. It runs at
//! `RUST_LOG=trace` with random tokens, and neither appears in its log.

use facteur_client::pb;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::admin;
use facteur_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NS: &str = "argo-workflows";

fn kubeconfig(dir: &Path, kube: &FakeKube) -> PathBuf {
    kube.write_kubeconfig(dir, NS).expect("kubeconfig")
}

/// A running `facteur-argo`, killed when dropped (a failing test leaves none behind).
struct Argo(Child);

impl Drop for Argo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The secrets the adapter is given (random per run): never in its log, at any level.
struct Secrets {
    control_plane_token: String,
    callback_token: String,
}

fn start(grpc_url: &str, kubeconfig: &Path, grace: u64, log: &Path, s: &Secrets) -> Argo {
    let file = std::fs::File::create(log).expect("log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_facteur-argo"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FACTEUR_") || k == "KUBECONFIG") {
        c.env_remove(k);
    }
    let child = c
        .env("FACTEUR_CONTROL_PLANE_URL", grpc_url)
        .env("RUST_LOG", "trace")
        .env("FACTEUR_CONTROL_PLANE_TOKEN", &s.control_plane_token)
        .env("FACTEUR_ARGO_CALLBACK_TOKEN", &s.callback_token)
        .env(
            "FACTEUR_ARGO_CALLBACK_LISTEN_ADDRESS",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("FACTEUR_KUBECONFIG", kubeconfig)
        .env("FACTEUR_ARGO_NAMESPACE", NS)
        .env("FACTEUR_ARGO_SHUTDOWN_GRACE_SECONDS", grace.to_string())
        .stdout(Stdio::from(file.try_clone().expect("log")))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start facteur-argo");
    Argo(child)
}

/// SIGTERM, then the exit status and how long the exit took.
fn sigterm(argo: &mut Argo) -> (std::process::ExitStatus, Duration) {
    let ok = Command::new("kill")
        .args(["-TERM", &argo.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let sent = Instant::now();
    loop {
        if let Some(s) = argo.0.try_wait().expect("wait") {
            return (s, sent.elapsed());
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "facteur-argo did not stop within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_idle_in_flight_and_past_the_grace() {
    let random = |what: &str| format!("{what}-{}", uuid::Uuid::new_v4().simple());
    let secrets = Secrets {
        control_plane_token: random("argo-token"),
        callback_token: random("callback-token"),
    };
    let db = TestDb::new(Backend::Sqlite).await;
    let mut c = with_tokens(config(&db));
    c.auth.tokens.push(facteur_config::TokenConfig {
        cluster: String::new(),
        name: "argo-trace".into(),
        role: "argo-adapter".into(),
        token: facteur_config::Secret(secrets.control_plane_token.clone()),
    });
    c.dispatcher.lease_seconds = 30;
    let srv = TestServer::start(c).await;
    let a = admin(&srv).await;
    let dir = std::env::temp_dir().join(format!("facteur-argo-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = |name: &str| dir.join(format!("{name}.log"));
    let read = |name: &str| std::fs::read_to_string(log(name)).unwrap_or_default();

    // Idle: connected, nothing to do.
    let kube = FakeKube::start().await;
    let mut argo = start(
        &srv.grpc_url(),
        &kubeconfig(&dir, &kube),
        10,
        &log("idle"),
        &secrets,
    );
    let warm = a.start_run("dispatch", &[]).await;
    wait_until("the adapter to serve", Duration::from_secs(20), || async {
        a.status(&warm.id).await == pb::RunStatus::Submitted
    })
    .await;
    let (status, took) = sigterm(&mut argo);
    assert_eq!(status.code(), Some(0), "idle: {status}\n{}", read("idle"));
    assert!(took < Duration::from_secs(3), "idle drain took {took:?}");

    // A slow create (2 s) in flight when the stop comes: finished, completed, exit 0.
    let kube = FakeKube::start().await;
    kube.delay_creates(Duration::from_millis(2000));
    let mut argo = start(
        &srv.grpc_url(),
        &kubeconfig(&dir, &kube),
        10,
        &log("inflight"),
        &secrets,
    );
    let run = a.start_run("dispatch", &[]).await;
    wait_until("the create to be sent", Duration::from_secs(20), || async {
        kube.create_seen_count() == 1
    })
    .await;
    let (status, took) = sigterm(&mut argo);
    assert_eq!(
        status.code(),
        Some(0),
        "in flight: {status}\n{}",
        read("inflight")
    );
    assert!(took >= Duration::from_millis(1000), "it waited: {took:?}");
    assert_eq!(
        a.status(&run.id).await,
        pb::RunStatus::Submitted,
        "the create in flight was finished and completed before the exit"
    );

    // A create that hangs: cut when the grace (1 s) runs out; the exit status says so.
    let kube = FakeKube::start().await;
    kube.hang_creates(1);
    let mut argo = start(
        &srv.grpc_url(),
        &kubeconfig(&dir, &kube),
        1,
        &log("cut"),
        &secrets,
    );
    let run = a.start_run("dispatch", &[]).await;
    wait_until("the create to be sent", Duration::from_secs(20), || async {
        kube.create_seen_count() == 1
    })
    .await;
    let (status, took) = sigterm(&mut argo);
    assert_ne!(status.code(), Some(0), "work was cut: {status}");
    assert!(took < Duration::from_secs(4), "cut at the grace: {took:?}");
    assert!(read("cut").contains("shutdown grace"), "{}", read("cut"));
    assert_eq!(a.status(&run.id).await, pb::RunStatus::Dispatching);

    // At RUST_LOG=trace, neither token reached any of the three logs.
    for name in ["idle", "inflight", "cut"] {
        let text = read(name);
        assert!(
            text.lines().count() > 20,
            "{name}: the log is at trace:\n{text}"
        );
        for secret in [&secrets.control_plane_token, &secrets.callback_token] {
            let hits: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(secret.as_str()))
                .collect();
            assert!(hits.is_empty(), "{name}: a token in the log: {hits:#?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    srv.stop().await;
}
