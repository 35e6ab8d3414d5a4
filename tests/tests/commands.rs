//! The server side of Discord commands: the catalog, the role policy (seeded, changed live,
//! audited), invocations that start runs idempotently, buttons re-checked on every click, and
//! guild isolation.

use facteur_client::pb;
use facteur_tests::*;
use std::time::Duration;
use tonic::Code;

const GUILD: &str = "100000000000000001";
const OTHER_GUILD: &str = "100000000000000002";
const DEPLOYER: &str = "200000000000000001";
const OPS: &str = "200000000000000002";
const ALICE: &str = MEMBER;

fn commands_config(db: &TestDb) -> facteur_config::Config {
    with_deploy_command(with_tokens(config(db)), DEPLOYER)
}

fn ctx(id: &str, guild: &str, roles: &[&str]) -> pb::InteractionContext {
    interaction(id, guild, roles)
}

fn invoke(
    interaction: &str,
    guild: &str,
    roles: &[&str],
    command: &str,
    options: &[(&str, &str)],
) -> pb::InvokeRequest {
    pb::InvokeRequest {
        context: Some(ctx(interaction, guild, roles)),
        kind: pb::InvocationKind::SlashCommand as i32,
        command: command.into(),
        options: options
            .iter()
            .map(|(k, v)| pb::OptionValue {
                name: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_catalog_and_the_builtins_are_served() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(commands_config(&db)).await;
    let c = srv.client(DISCORD_TOKEN).await;
    let list = c
        .command()
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .commands;
    let names: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["deploy", "status", "runs", "cancel"]);
    let deploy = &list[0];
    assert_eq!(deploy.options[0].choices[0].value, "api");
    assert!(deploy.options[0].required);
    assert!(list[1].builtin && !deploy.builtin);
    srv.stop().await;
}

#[tokio::test]
async fn policy_decides_is_audited_and_changes_live() {
    let db = TestDb::new(Backend::Postgres).await;
    let srv = TestServer::start(commands_config(&db)).await;
    let discord = srv.client(DISCORD_TOKEN).await;
    let admin = srv.client(ADMIN_TOKEN).await;
    let store = &srv.server.state.store;

    // The configuration seeded the global policy, which guilds inherit.
    let global = policy_of(&admin, "").await;
    assert_eq!(global.commands.len(), 1);
    assert_eq!(global.version, 1);

    // Denied: the reason names the role that would allow it, and the denial is audited.
    let err = discord
        .command()
        .invoke(invoke(
            "i-1",
            GUILD,
            &[OPS],
            "deploy",
            &[("service", "api")],
        ))
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains(DEPLOYER), "{}", err.message());
    let audit = store.audit_events(GUILD, 10).await.expect("audit");
    assert_eq!(audit[0].1, "denied");
    assert_eq!(
        (audit[0].0.as_str(), audit[0].2.as_str()),
        (ALICE, "deploy")
    );
    assert_eq!(
        count_rows(store, "runs").await,
        0,
        "a denial starts nothing"
    );

    // Allowed: a run, replay-safe on the interaction id.
    let ok = discord
        .command()
        .invoke(invoke(
            "i-2",
            GUILD,
            &[DEPLOYER],
            "deploy",
            &[("service", "api")],
        ))
        .await
        .expect("allowed")
        .into_inner();
    let run = ok.run.expect("run");
    assert_eq!(run.status, pb::RunStatus::Queued as i32);
    assert_eq!(
        run.requester.as_ref().map(|r| r.guild_id.as_str()),
        Some(GUILD)
    );
    let reply = ok.reply.expect("reply");
    assert!(reply_text(&reply).contains("/deploy"), "{reply:?}");
    assert_eq!(reply.buttons[0].custom_id, format!("cancel:{}", run.id));
    let again = discord
        .command()
        .invoke(invoke(
            "i-2",
            GUILD,
            &[DEPLOYER],
            "deploy",
            &[("service", "api")],
        ))
        .await
        .expect("replay")
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.run.map(|r| r.id), Some(run.id.clone()));
    assert_eq!(count_rows(store, "runs").await, 1);

    // The session holds the interaction token for 15 minutes; the old per-user key is kept.
    let sessions = &srv.server.state.sessions;
    let session = sessions
        .get("facteur:session:i-2")
        .await
        .expect("get")
        .expect("session");
    assert!(session.contains(&run.id) && session.contains("interaction-token-secret"));
    let ttl = sessions
        .ttl("facteur:session:i-2")
        .await
        .expect("ttl")
        .expect("ttl set");
    assert!(
        ttl <= Duration::from_secs(900) && ttl > Duration::from_secs(890),
        "{ttl:?}"
    );
    assert!(
        sessions
            .get(&format!("facteur:dispatch:{ALICE}"))
            .await
            .expect("get")
            .is_some_and(|v| v.contains(&run.id))
    );

    // Admins see live sessions, never their tokens.
    let listed = admin
        .admin()
        .list_sessions(pb::ListSessionsRequest {
            guild_id: GUILD.into(),
        })
        .await
        .expect("sessions")
        .into_inner();
    assert!(
        listed
            .sessions
            .iter()
            .any(|x| x.interaction_id == "i-2" && x.run_id == run.id && x.expires_at.is_some()),
        "{listed:?}"
    );
    assert!(!format!("{listed:?}").contains("interaction-token-secret"));
    let elsewhere = admin
        .admin()
        .list_sessions(pb::ListSessionsRequest {
            guild_id: OTHER_GUILD.into(),
        })
        .await
        .expect("sessions")
        .into_inner();
    assert!(elsewhere.sessions.is_empty());

    // Values Discord's client would have checked are checked here.
    let err = discord
        .command()
        .invoke(invoke(
            "i-3",
            GUILD,
            &[DEPLOYER],
            "deploy",
            &[("service", "web")],
        ))
        .await
        .expect_err("choice");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = discord
        .command()
        .invoke(invoke(
            "i-4",
            GUILD,
            &[DEPLOYER],
            "deploy",
            &[("service", "api"), ("extra", "x")],
        ))
        .await
        .expect_err("undeclared");
    assert!(err.message().contains("extra"));

    // SetPolicy for this guild, live: OPS may deploy now; the change is audited; stale writes fail.
    let set = pb::SetPolicyRequest {
        policy: Some(pb::GuildPolicy {
            guild_id: GUILD.into(),
            commands: vec![pb::CommandPolicy {
                command: "deploy".into(),
                role_ids: vec![OPS.into()],
            }],
            default_policy: pb::DefaultPolicy::Deny as i32,
            ..Default::default()
        }),
        expected_version: 0,
    };
    let stored = admin
        .admin()
        .set_policy(set.clone())
        .await
        .expect("set")
        .into_inner()
        .policy
        .expect("policy");
    assert_eq!((stored.version, stored.updated_by.as_str()), (1, "ops"));
    discord
        .command()
        .invoke(invoke(
            "i-5",
            GUILD,
            &[OPS],
            "deploy",
            &[("service", "api")],
        ))
        .await
        .expect("allowed after SetPolicy");
    let err = discord
        .command()
        .invoke(invoke(
            "i-6",
            GUILD,
            &[DEPLOYER],
            "deploy",
            &[("service", "api")],
        ))
        .await
        .expect_err("no longer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = discord
        .command()
        .invoke(invoke("i-7", GUILD, &[OPS], "runs", &[]))
        .await
        .expect_err("default deny");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        store
            .audit_events(GUILD, 20)
            .await
            .expect("audit")
            .iter()
            .any(|e| e.1 == "policy_set" && e.0 == "ops")
    );
    let mut stale = set.clone();
    stale.expected_version = 7;
    assert_eq!(
        admin
            .admin()
            .set_policy(stale)
            .await
            .expect_err("stale")
            .code(),
        Code::FailedPrecondition
    );
    let mut bad = set;
    bad.policy.as_mut().expect("policy").commands[0].role_ids = vec!["not-a-role".into()];
    let err = admin.admin().set_policy(bad).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not-a-role"), "{}", err.message());

    // Another guild still inherits the global policy.
    discord
        .command()
        .invoke(invoke(
            "i-8",
            OTHER_GUILD,
            &[DEPLOYER],
            "deploy",
            &[("service", "api")],
        ))
        .await
        .expect("inherits");
    srv.stop().await;
}

#[tokio::test]
async fn buttons_and_builtins_recheck_permission_state_and_guild() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(commands_config(&db)).await;
    let discord = srv.client(DISCORD_TOKEN).await;
    let run = discord
        .command()
        .invoke(invoke(
            "b-1",
            GUILD,
            &[DEPLOYER],
            "deploy",
            &[("service", "api")],
        ))
        .await
        .expect("invoke")
        .into_inner()
        .run
        .expect("run");
    let click =
        |interaction: &str, guild: &str, roles: &[&str], custom_id: String| pb::InteractRequest {
            context: Some(ctx(interaction, guild, roles)),
            custom_id,
        };

    let err = discord
        .command()
        .interact(click("b-2", GUILD, &[OPS], format!("cancel:{}", run.id)))
        .await
        .expect_err("not allowed");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = discord
        .command()
        .interact(click(
            "b-3",
            OTHER_GUILD,
            &[DEPLOYER],
            format!("cancel:{}", run.id),
        ))
        .await
        .expect_err("other guild");
    assert_eq!(err.code(), Code::NotFound, "runs stay in their guild");

    let status = discord
        .command()
        .invoke(invoke("b-4", GUILD, &[], "status", &[]))
        .await
        .expect("status")
        .into_inner();
    assert!(reply_text(&status.reply.expect("reply")).contains("queued"));
    let runs = discord
        .command()
        .invoke(invoke("b-5", GUILD, &[], "runs", &[]))
        .await
        .expect("runs")
        .into_inner();
    let handle = format!("#{}", run.number);
    assert!(reply_text(&runs.reply.expect("reply")).contains(&handle));
    // The handle the card shows is typed back: in this guild it names the run, in another
    // guild it names nothing.
    let by_number = discord
        .command()
        .invoke(invoke("b-41", GUILD, &[], "status", &[("run", &handle)]))
        .await
        .expect("status by number")
        .into_inner();
    let card = by_number.reply.expect("reply");
    assert!(
        card.embeds[0].footer.contains(&run.id) && card.embeds[0].title.contains(&handle),
        "{card:?}"
    );
    let err = discord
        .command()
        .invoke(invoke(
            "b-42",
            OTHER_GUILD,
            &[],
            "status",
            &[("run", &handle)],
        ))
        .await
        .expect_err("another guild's run");
    assert_eq!(err.code(), Code::NotFound);
    let elsewhere = discord
        .command()
        .invoke(invoke("b-6", OTHER_GUILD, &[], "runs", &[]))
        .await
        .expect("runs")
        .into_inner();
    assert!(reply_text(&elsewhere.reply.expect("reply")).contains("no runs"));

    let cancelled = discord
        .command()
        .interact(click(
            "b-7",
            GUILD,
            &[DEPLOYER],
            format!("cancel:{}", run.id),
        ))
        .await
        .expect("cancel")
        .into_inner();
    assert!(cancelled.update_message);
    assert_eq!(
        cancelled.run.expect("run").status,
        pb::RunStatus::Cancelled as i32
    );
    let again = discord
        .command()
        .interact(click(
            "b-8",
            GUILD,
            &[DEPLOYER],
            format!("cancel:{}", run.id),
        ))
        .await
        .expect_err("state");
    assert_eq!(
        again.code(),
        Code::FailedPrecondition,
        "the click is checked against the run's current state"
    );

    let retried = discord
        .command()
        .interact(click(
            "b-9",
            GUILD,
            &[DEPLOYER],
            format!("retry:{}", run.id),
        ))
        .await
        .expect("retry")
        .into_inner();
    let new = retried.run.expect("run");
    assert_eq!(new.parent_run_id, run.id);
    assert_eq!(new.status, pb::RunStatus::Queued as i32);
    let err = discord
        .command()
        .interact(click("b-10", GUILD, &[DEPLOYER], "explode:x".into()))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    srv.stop().await;
}

#[tokio::test]
async fn legacy_command_events_start_runs_like_invoke() {
    use facteur_proto::legacy::{CommandEvent, DiscordMember, DiscordUser};
    use prost::Message;
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(commands_config(&db)).await;
    let event = |interaction: &str, roles: &[&str], options: &[(&str, &str)]| CommandEvent {
        provider: "discord".into(),
        interaction_id: interaction.into(),
        application_id: "400000000000000001".into(),
        command: "deploy".into(),
        token: "legacy-token".into(),
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        guild_id: GUILD.into(),
        channel_id: "500000000000000001".into(),
        user: Some(DiscordUser {
            id: ALICE.into(),
            username: "alice".into(),
            ..Default::default()
        }),
        member: Some(DiscordMember {
            id: ALICE.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }),
        correlation_id: format!("corr-{interaction}"),
        ..Default::default()
    };
    let post = |body: Vec<u8>, token: &'static str| {
        let addr = srv.server.http_addr;
        async move {
            let auth = format!("Bearer {token}");
            let (code, body) = http(
                addr,
                "POST",
                "/events",
                &[("Authorization", auth.as_str())],
                &body,
            )
            .await;
            (
                code,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    let (code, body) = post(
        event("e-1", &[DEPLOYER], &[("service", "api")]).encode_to_vec(),
        DISCORD_TOKEN,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["namespace"], "argo-workflows");
    assert_eq!(body["correlationId"], "corr-e-1");
    assert!(
        body["workflowName"]
            .as_str()
            .unwrap_or("")
            .starts_with("deploy-"),
        "{body}"
    );
    let (code, again) = post(
        event("e-1", &[DEPLOYER], &[("service", "api")]).encode_to_vec(),
        DISCORD_TOKEN,
    )
    .await;
    assert_eq!(
        (code, &again["workflowName"]),
        (202, &body["workflowName"]),
        "a replay answers with the same run"
    );
    let store = &srv.server.state.store;
    assert_eq!(count_rows(store, "runs").await, 1);

    let mut no_command = event("e-2", &[DEPLOYER], &[]);
    no_command.command = String::new();
    for (what, body, token, want) in [
        ("empty", vec![], DISCORD_TOKEN, 400),
        ("garbage", b"\xff\xff\xff".to_vec(), DISCORD_TOKEN, 400),
        ("no command", no_command.encode_to_vec(), DISCORD_TOKEN, 400),
        (
            "undeclared option",
            event("e-3", &[DEPLOYER], &[("service", "api"), ("rm", "-rf")]).encode_to_vec(),
            DISCORD_TOKEN,
            400,
        ),
        (
            "denied by policy",
            event("e-4", &[OPS], &[("service", "api")]).encode_to_vec(),
            DISCORD_TOKEN,
            403,
        ),
        (
            "wrong role",
            event("e-5", &[DEPLOYER], &[("service", "api")]).encode_to_vec(),
            CODEX_TOKEN,
            403,
        ),
    ] {
        let (code, resp) = post(body, token).await;
        assert_eq!(code, want, "{what}: {resp}");
        assert_eq!(
            count_rows(store, "runs").await,
            1,
            "{what} started something"
        );
    }
    srv.stop().await;
}
