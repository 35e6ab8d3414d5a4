//! A Redis outage on the Discord path: a run and the session that lets it report back are one
//! outcome. With a private `redis-server` (free loopback port) stopped, then frozen (SIGSTOP):
//! Invoke and `POST /events` with an interaction token answer UNAVAILABLE / 503 and start
//! nothing; a replay of an interaction whose run already started is answered with that run;
//! admin runs (no session) go on; once Redis is back, the retried interaction gives exactly one
//! run. (Before, the run was committed and its Workflow ran behind the failure answer.)

use facteur_client::pb;
use facteur_tests::redis_server::PrivateRedis;
use facteur_tests::*;
use prost::Message;
use std::time::{Duration, Instant};
use tonic::Code;

const GUILD: &str = "100000000000000001";
const DEPLOYER: &str = "200000000000000001";

fn invoke(id: &str) -> pb::InvokeRequest {
    deploy_invoke(interaction(id, GUILD, &[DEPLOYER]))
}

fn event(id: &str) -> Vec<u8> {
    facteur_proto::legacy::CommandEvent {
        command: "deploy".into(),
        interaction_id: id.into(),
        token: "event-token-secret".into(),
        guild_id: GUILD.into(),
        channel_id: "500000000000000001".into(),
        user: Some(facteur_proto::legacy::DiscordUser {
            id: "300000000000000001".into(),
            username: "alice".into(),
            ..Default::default()
        }),
        member: Some(facteur_proto::legacy::DiscordMember {
            id: "300000000000000001".into(),
            roles: vec![DEPLOYER.into()],
        }),
        options: [("service".to_string(), "api".to_string())].into(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_starts_no_run_behind_a_failure() {
    let mut redis = PrivateRedis::start();
    let db = TestDb::new(Backend::Postgres).await;
    let mut cfg = with_deploy_command(with_tokens(config(&db)), DEPLOYER);
    cfg.redis.url = facteur_config::Secret(redis.url());
    cfg.redis.timeout_ms = 500;
    let srv = TestServer::start(cfg).await;
    let discord = srv.client(DISCORD_TOKEN).await;
    let admin = srv.client(ADMIN_TOKEN).await;
    let store = &srv.server.state.store;
    let events = |id: &str| {
        let body = event(id);
        let addr = srv.server.http_addr;
        async move {
            let auth = format!("Bearer {DISCORD_TOKEN}");
            let headers = [
                ("Content-Type", "application/octet-stream"),
                ("Authorization", auth.as_str()),
            ];
            http(addr, "POST", "/events", &headers, &body).await.0
        }
    };

    // Redis up: a run started before the outage.
    let started = discord
        .command()
        .invoke(invoke("800000000000000001"))
        .await
        .expect("invoke")
        .into_inner();
    assert_eq!(count_rows(store, "runs").await, 1);

    for (outage, freeze) in [("stopped", false), ("frozen", true)] {
        if freeze {
            redis.freeze();
        } else {
            redis.stop();
        }
        let before = count_rows(store, "runs").await;
        let t = Instant::now();
        let err = discord
            .command()
            .invoke(invoke(&format!("80000000000000010{}", u8::from(freeze))))
            .await
            .expect_err("no session store, no run");
        assert_eq!(err.code(), Code::Unavailable, "{outage}: {}", err.message());
        let code = events(&format!("80000000000000020{}", u8::from(freeze))).await;
        assert_eq!(code, 503, "{outage}: /events");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{outage}: answered within 3 s"
        );
        assert_eq!(
            count_rows(store, "runs").await,
            before,
            "{outage}: nothing started behind a failure"
        );
        // A replay of an interaction whose run started is answered with that run.
        let again = discord
            .command()
            .invoke(invoke("800000000000000001"))
            .await
            .expect("replay while redis is out")
            .into_inner();
        assert!(again.duplicate);
        assert_eq!(
            again.run.map(|r| r.id),
            started.run.as_ref().map(|r| r.id.clone())
        );
        // Admin runs need no session.
        admin
            .admin()
            .start_run(pb::StartRunRequest {
                cluster: String::new(),
                command: "deploy".into(),
                parameters: [("service".to_string(), "api".to_string())].into(),
                idempotency_key: String::new(),
            })
            .await
            .expect("admin run while redis is out");
        assert_eq!(count_rows(store, "runs").await, before + 1);
        if freeze {
            redis.thaw();
        } else {
            redis.restart();
        }
        // Back: the retried interaction starts exactly one run, and reaches its session.
        let id = format!("80000000000000010{}", u8::from(freeze));
        let mut ok = None;
        for _ in 0..50 {
            match discord.command().invoke(invoke(&id)).await {
                Ok(r) => {
                    ok = Some(r.into_inner());
                    break;
                }
                Err(s) if s.code() == Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(s) => panic!("{outage}: after recovery: {s:?}"),
            }
        }
        let ok = ok.expect("recovered without a restart");
        assert!(!ok.duplicate);
        let replay = discord
            .command()
            .invoke(invoke(&id))
            .await
            .expect("replay")
            .into_inner();
        assert!(replay.duplicate);
        assert_eq!(count_rows(store, "runs").await, before + 2);
        let session = srv
            .server
            .state
            .sessions
            .get(&format!("facteur:session:{id}"))
            .await
            .expect("redis back")
            .expect("session");
        assert!(session.contains(&ok.run.expect("run").id));
        assert_eq!(
            events(&format!("80000000000000020{}", u8::from(freeze))).await,
            202
        );
    }
    srv.stop().await;
    drop(redis);
}
