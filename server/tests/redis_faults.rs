//! A Redis outage on the Discord path, on the real `facteur` binary with a private
//! `redis-server` it stops (SIGKILL) and freezes (SIGSTOP): `CommandService.Invoke` and
//! `POST /events` with an interaction token answer UNAVAILABLE / 503 promptly and start nothing
//! (before, the run was committed and its Workflow ran behind the failure answer, with no
//! session to report back to); a replay of an interaction whose run started is answered with
//! that run; admin runs, which need no session, go on; when Redis is back, without a restart,
//! the retried interaction starts exactly one run.

use facteur_client::{Client, ClientConfig, pb};
use facteur_tests::redis_server::PrivateRedis;
use facteur_tests::*;
use prost::Message;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;

const GUILD: &str = "100000000000000001";
const DEPLOYER: &str = "200000000000000001";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The running binary, killed when dropped.
struct Facteur(Child);

impl Drop for Facteur {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn event(id: &str) -> Vec<u8> {
    facteur_proto::legacy::CommandEvent {
        command: "deploy".into(),
        interaction_id: id.into(),
        token: "event-token".into(),
        guild_id: GUILD.into(),
        channel_id: "500000000000000001".into(),
        member: Some(facteur_proto::legacy::DiscordMember {
            id: MEMBER.into(),
            roles: vec![DEPLOYER.into()],
        }),
        options: [("service".to_string(), "api".to_string())].into(),
        ..Default::default()
    }
    .encode_to_vec()
}

async fn runs(admin: &Client) -> usize {
    admin
        .admin()
        .list_runs(pb::ListRunsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("list runs")
        .into_inner()
        .runs
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_starts_no_run_behind_a_failure() {
    let mut redis = PrivateRedis::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let (grpc, http_port) = (free_port(), free_port());
    let mut cfg = with_deploy_command(with_tokens(config(&db)), DEPLOYER);
    cfg.server.grpc_listen_address = format!("127.0.0.1:{grpc}");
    cfg.server.listen_address = format!("127.0.0.1:{http_port}");
    cfg.redis.url = facteur_config::Secret(redis.url());
    cfg.redis.timeout_ms = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    // YAML is a superset of JSON: the test's configuration, as the operator's file.
    let file = dir.path().join("facteur.yaml");
    std::fs::write(&file, serde_json::to_string(&cfg).expect("config")).expect("write");
    let log = std::fs::File::create(dir.path().join("facteur.log")).expect("log");
    let mut c = Command::new(env!("CARGO_BIN_EXE_facteur"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FACTEUR_")) {
        c.env_remove(k);
    }
    let _facteur = Facteur(
        c.env("FACTEUR_CONFIG_FILE", &file)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start facteur"),
    );
    let url = format!("http://127.0.0.1:{grpc}");
    let client = |token: &str| Client::lazy(ClientConfig::new(url.clone()).with_token(token));
    let (discord, admin) = (
        client(DISCORD_TOKEN).expect("client"),
        client(ADMIN_TOKEN).expect("client"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().expect("addr");
    let events = |id: String| async move {
        let auth = format!("Bearer {DISCORD_TOKEN}");
        let headers = [
            ("Content-Type", "application/octet-stream"),
            ("Authorization", auth.as_str()),
        ];
        http(addr, "POST", "/events", &headers, &event(&id)).await.0
    };
    let invoke = |id: &str| deploy_invoke(interaction(id, GUILD, &[DEPLOYER]));

    // Redis up: a run started before the outage (also: the binary is serving).
    let started = Instant::now();
    let first = loop {
        match discord.command().invoke(invoke("810000000000000001")).await {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(30), "never up: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(runs(&admin).await, 1);

    for (outage, freeze) in [("stopped", false), ("frozen", true)] {
        if freeze {
            redis.freeze();
        } else {
            redis.stop();
        }
        let n = u8::from(freeze);
        let before = runs(&admin).await;
        let t = Instant::now();
        let err = discord
            .command()
            .invoke(invoke(&format!("81000000000000010{n}")))
            .await
            .expect_err("no session store, no run");
        assert_eq!(err.code(), Code::Unavailable, "{outage}: {}", err.message());
        assert_eq!(
            events(format!("81000000000000020{n}")).await,
            503,
            "{outage}: /events"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{outage}: answered within 3 s, took {:?}",
            t.elapsed()
        );
        assert_eq!(runs(&admin).await, before, "{outage}: nothing started");
        let again = discord
            .command()
            .invoke(invoke("810000000000000001"))
            .await
            .expect("a replay while Redis is out")
            .into_inner();
        assert!(again.duplicate);
        assert_eq!(
            again.run.map(|r| r.id),
            first.run.as_ref().map(|r| r.id.clone())
        );
        admin
            .admin()
            .start_run(pb::StartRunRequest {
                cluster: String::new(),
                command: "deploy".into(),
                parameters: [("service".to_string(), "api".to_string())].into(),
                idempotency_key: String::new(),
            })
            .await
            .expect("an admin run while Redis is out");
        assert_eq!(runs(&admin).await, before + 1);

        if freeze {
            redis.thaw();
        } else {
            redis.restart();
        }
        // Back, without a restart: each retried interaction starts exactly one run.
        let id = format!("81000000000000010{n}");
        let t = Instant::now();
        let ok = loop {
            match discord.command().invoke(invoke(&id)).await {
                Ok(r) => break r.into_inner(),
                Err(s) if s.code() == Code::Unavailable => {
                    assert!(t.elapsed() < Duration::from_secs(15), "{outage}: {s:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(s) => panic!("{outage}: after recovery: {s:?}"),
            }
        };
        assert!(!ok.duplicate);
        assert_eq!(events(format!("81000000000000020{n}")).await, 202);
        assert_eq!(events(format!("81000000000000020{n}")).await, 202);
        assert!(
            discord
                .command()
                .invoke(invoke(&id))
                .await
                .expect("replay")
                .into_inner()
                .duplicate
        );
        assert_eq!(runs(&admin).await, before + 3, "{outage}: one run each");
    }
}
