//! The discord-adapter's interactions endpoint, end to end: requests signed with a test Ed25519
//! key, the real server behind it, and a fake Discord REST API recording registrations.

use ed25519_dalek::SigningKey;
use facteur_discord::register;
use facteur_tests::discord::*;
use facteur_tests::fake_discord::FakeDiscord;
use facteur_tests::*;
use serde_json::{Value, json};

async fn stack() -> Stack {
    Stack::start(Options::default()).await
}

#[tokio::test]
async fn ping_and_every_bad_signature() {
    let s = stack().await;
    let ping = json!({"id": "700000000000000001", "application_id": APP, "type": 1, "token": "t", "version": 1});
    assert_eq!(s.post(&ping).await, (200, json!({"type": 1})));

    let cmd = command(
        "700000000000000002",
        &[DEPLOYER],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "api"}]),
    );
    let stranger = SigningKey::from_bytes(&[9u8; 32]);
    assert_eq!(post(s.endpoint, &cmd, None).await.0, 401, "missing headers");
    assert_eq!(
        post(s.endpoint, &cmd, Some((&stranger, now()))).await.0,
        401,
        "wrong key"
    );
    assert_eq!(
        post(s.endpoint, &cmd, Some((&key(), now() - 600))).await.0,
        401,
        "stale timestamp"
    );
    // Malformed signature header, and a body changed after signing.
    let raw = cmd.to_string();
    let h = [
        ("X-Signature-Ed25519", "abcd"),
        ("X-Signature-Timestamp", "1"),
    ];
    assert_eq!(
        http(s.endpoint, "POST", "/interactions", &h, raw.as_bytes())
            .await
            .0,
        401
    );
    let (sig, ts) = signature(&key(), now(), raw.as_bytes());
    let tampered = raw.replace("api", "web");
    let h = [
        ("X-Signature-Ed25519", sig.as_str()),
        ("X-Signature-Timestamp", ts.as_str()),
    ];
    assert_eq!(
        http(s.endpoint, "POST", "/interactions", &h, tampered.as_bytes())
            .await
            .0,
        401
    );
    assert_eq!(
        count_rows(&s.srv.server.state.store, "runs").await,
        0,
        "nothing refused was processed"
    );
    s.srv.stop().await;
}

#[tokio::test]
async fn commands_buttons_and_denials_through_the_endpoint() {
    let s = stack().await;
    let store = &s.srv.server.state.store;
    let cmd = command(
        "700000000000000010",
        &[DEPLOYER],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "api"}]),
    );
    let (code, resp) = s.post(&cmd).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["type"], 4);
    assert!(message_text(&resp["data"]).contains("/deploy"), "{resp}");
    let button = &resp["data"]["components"][0]["components"][0];
    assert_eq!(button["label"], "Cancel");
    let custom_id = button["custom_id"].as_str().expect("custom_id").to_string();
    assert_eq!(count_rows(store, "runs").await, 1);
    // A replayed interaction id starts nothing.
    let (code, _) = s.post(&cmd).await;
    assert_eq!((code, count_rows(store, "runs").await), (200, 1));

    // Denied: an ephemeral answer naming the role, and an audit entry.
    let denied = command(
        "700000000000000011",
        &[OPS],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "api"}]),
    );
    let (code, resp) = s.post(&denied).await;
    assert_eq!(code, 200);
    assert_eq!(resp["data"]["flags"], 64);
    assert!(message_text(&resp["data"]).contains(DEPLOYER), "{resp}");
    assert!(
        store
            .audit_events(GUILD, 5)
            .await
            .expect("audit")
            .iter()
            .any(|e| e.1 == "denied")
    );

    // The Cancel button updates the message it sits on.
    let mut click = command("700000000000000012", &[DEPLOYER], "deploy", json!([]));
    click["type"] = json!(3);
    click["data"] = json!({"custom_id": custom_id, "component_type": 2});
    let (code, resp) = s.post(&click).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["type"], 7);
    assert!(message_text(&resp["data"]).contains("cancelled"), "{resp}");
    assert_eq!(
        resp["data"]["components"][0]["components"][0]["label"],
        "Retry"
    );
    s.srv.stop().await;
}

#[tokio::test]
async fn registration_writes_only_when_the_catalog_differs() {
    let s = stack().await;
    let guild: u64 = GUILD.parse().expect("guild");
    assert!(
        register(&s.control, &s.http, Some(guild))
            .await
            .expect("register")
            .wrote,
        "first registration writes"
    );
    let puts: Vec<_> = s
        .discord
        .calls()
        .into_iter()
        .filter(|(m, _, _)| m == "PUT")
        .collect();
    assert_eq!(puts.len(), 1);
    assert_eq!(
        puts[0].1,
        format!("/applications/{APP}/guilds/{GUILD}/commands")
    );
    let names: Vec<&str> = puts[0]
        .2
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["deploy", "plan", "status", "runs", "cancel"]);
    assert_eq!(puts[0].2[0]["options"][0]["choices"][0]["value"], "api");

    assert!(
        !register(&s.control, &s.http, Some(guild))
            .await
            .expect("register")
            .wrote,
        "an unchanged catalog is not rewritten"
    );
    assert_eq!(
        s.discord
            .calls()
            .iter()
            .filter(|(m, _, _)| m == "PUT")
            .count(),
        1
    );
    s.srv.stop().await;
}

#[tokio::test]
async fn the_message_follows_the_run_then_moves_to_the_bot_token() {
    use facteur_tests::fake_kube::FakeKube;
    use facteur_tests::stack::Adapter as ArgoAdapter;
    let s = stack().await;
    let kube = FakeKube::start().await;
    let argo = ArgoAdapter::start(&s.srv.grpc_url(), &kube, "argo-workflows");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(facteur_discord::follow_runs(
        s.control.clone(),
        s.http.clone(),
        stop.clone(),
    ));
    let wait = std::time::Duration::from_secs(20);
    let edits = |discord: FakeDiscord, path: String, text: &'static str| async move {
        discord
            .calls()
            .iter()
            .any(|(m, p, b)| m == "PATCH" && *p == path && message_text(b).contains(text))
    };

    let cmd = command(
        "700000000000000020",
        &[DEPLOYER],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "api"}]),
    );
    let (code, _) = s.post(&cmd).await;
    assert_eq!(code, 200);
    let run = s.run_of("700000000000000020").await;
    let original = format!("/webhooks/{APP}/token-700000000000000020/messages/@original");
    wait_until("the submitted edit", wait, || {
        edits(s.discord.clone(), original.clone(), "submitted")
    })
    .await;
    kube.set_phase(
        "argo-workflows",
        &run.workflow_name,
        "Running",
        json!({"progress": "0/1"}),
    );
    wait_until("the running edit", wait, || {
        edits(s.discord.clone(), original.clone(), "running")
    })
    .await;

    // The interaction token's 15 minutes are over (both session keys expire together): the bot
    // posts in the channel once, then edits.
    for key in [
        format!("facteur:run-session:{}", run.id),
        "facteur:session:700000000000000020".to_string(),
    ] {
        s.srv
            .server
            .state
            .sessions
            .delete(&key)
            .await
            .expect("expire the session");
    }
    kube.set_phase(
        "argo-workflows",
        &run.workflow_name,
        "Running",
        json!({"progress": "1/1", "message": "almost"}),
    );
    kube.set_phase("argo-workflows", &run.workflow_name, "Succeeded", json!({}));
    let posted = "/channels/500000000000000001/messages".to_string();
    wait_until("a bot message in the channel", wait, || {
        let d = s.discord.clone();
        let p = posted.clone();
        async move {
            d.calls()
                .iter()
                .any(|(m, path, _)| m == "POST" && *path == p)
        }
    })
    .await;
    let edited = "/channels/500000000000000001/messages/800000000000000099".to_string();
    wait_until("the success message", wait, || {
        let (d, p, e) = (s.discord.clone(), posted.clone(), edited.clone());
        async move {
            d.calls().iter().any(|(m, path, b)| {
                ((m == "POST" && *path == p) || (m == "PATCH" && *path == e))
                    && message_text(b).contains("succeeded")
            })
        }
    })
    .await;
    assert_eq!(
        s.discord
            .calls()
            .iter()
            .filter(|(m, p, _)| m == "POST" && *p == posted)
            .count(),
        1,
        "posted once, edited after"
    );
    stop.cancel();
    argo.stop().await;
    s.srv.stop().await;
}

#[tokio::test]
async fn the_plan_modal_and_autocomplete() {
    let s = stack().await;
    // /plan opens its modal instead of running.
    let (code, resp) = s
        .post(&command("700000000000000030", &[], "plan", json!([])))
        .await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["type"], 9);
    assert_eq!(resp["data"]["custom_id"], "modal:plan");
    let input = &resp["data"]["components"][0]["components"][0];
    assert_eq!(
        (
            input["custom_id"].as_str(),
            input["style"].as_u64(),
            input["max_length"].as_u64()
        ),
        (Some("payload"), Some(2), Some(4000))
    );
    assert_eq!(count_rows(&s.srv.server.state.store, "runs").await, 0);

    // Its submission starts the run with the paragraph as the payload.
    let mut submit = command("700000000000000031", &[], "plan", json!([]));
    submit["type"] = json!(5);
    submit["data"] = json!({"custom_id": "modal:plan", "components": [{"type": 1, "components": [{"type": 4, "custom_id": "payload", "value": "build the thing"}]}]});
    let (code, resp) = s.post(&submit).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["type"], 4);
    assert!(message_text(&resp["data"]).contains("/plan"), "{resp}");
    let run = s.run_of("700000000000000031").await;
    assert_eq!(
        run.parameters.get("payload").map(String::as_str),
        Some("build the thing")
    );

    // Autocomplete: the caller's runs for `run` options, fixed choices filtered by what is typed.
    let mut ac = command(
        "700000000000000032",
        &[],
        "cancel",
        json!([{"name": "run", "type": 3, "value": "", "focused": true}]),
    );
    ac["type"] = json!(4);
    let (code, resp) = s.post(&ac).await;
    assert_eq!(code, 200);
    assert_eq!(resp["type"], 8);
    assert_eq!(
        resp["data"]["choices"][0]["value"],
        run.id.as_str(),
        "{resp}"
    );
    let mut ac = command(
        "700000000000000033",
        &[DEPLOYER],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "ap", "focused": true}]),
    );
    ac["type"] = json!(4);
    let (_, resp) = s.post(&ac).await;
    assert_eq!(
        resp["data"]["choices"],
        json!([{"name": "API", "value": "api"}])
    );
    // Nothing is suggested for a command the member may not run.
    let mut ac = command(
        "700000000000000034",
        &[OPS],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "", "focused": true}]),
    );
    ac["type"] = json!(4);
    let (_, resp) = s.post(&ac).await;
    assert_eq!(resp["data"]["choices"], json!([]));
    s.srv.stop().await;
}

#[tokio::test]
async fn a_slow_server_gets_a_deferral_then_the_answer_as_an_edit() {
    let s = Stack::start(Options {
        proxy: true,
        ..Default::default()
    })
    .await;
    // Every answer from the server now takes longer than Discord's 3 seconds.
    s.proxy
        .as_ref()
        .expect("proxy")
        .slow_down(std::time::Duration::from_millis(3500));
    let cmd = command(
        "700000000000000040",
        &[DEPLOYER],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "api"}]),
    );
    let (code, resp) = s.post(&cmd).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(
        resp["type"], 5,
        "deferred: the member sees `thinking`: {resp}"
    );
    assert!(
        resp["data"].get("content").is_none(),
        "nothing to show yet: {resp}"
    );
    let original = format!("/webhooks/{APP}/token-700000000000000040/messages/@original");
    wait_until(
        "the answer edited into the deferred response",
        std::time::Duration::from_secs(30),
        || {
            let (d, p) = (s.discord.clone(), original.clone());
            async move {
                d.calls().iter().any(|(m, path, b)| {
                    m == "PATCH" && *path == p && message_text(b).contains("/deploy")
                })
            }
        },
    )
    .await;
    assert!(
        s.srv
            .server
            .state
            .store
            .run_by_key("discord:700000000000000040")
            .await
            .expect("query")
            .is_some(),
        "the deferred command started its run"
    );
    s.srv.stop().await;
}

#[tokio::test]
async fn a_refusal_after_a_deferral_reaches_the_member_alone() {
    let s = Stack::start(Options {
        proxy: true,
        ..Default::default()
    })
    .await;
    s.proxy
        .as_ref()
        .expect("proxy")
        .slow_down(std::time::Duration::from_millis(3500));
    // No role that may run /deploy: the answer is a refusal meant for the member alone.
    let cmd = command(
        "700000000000000041",
        &[],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "api"}]),
    );
    let (code, resp) = s.post(&cmd).await;
    assert_eq!((code, resp["type"].clone()), (200, json!(5)), "{resp}");
    let token = "token-700000000000000041";
    let followup = format!("/webhooks/{APP}/{token}");
    let original = format!("/webhooks/{APP}/{token}/messages/@original");
    wait_until(
        "the refusal as an ephemeral follow-up",
        std::time::Duration::from_secs(30),
        || {
            let (d, p) = (s.discord.clone(), followup.clone());
            async move {
                d.calls()
                    .iter()
                    .any(|(m, path, b)| m == "POST" && *path == p && b["flags"] == 64)
            }
        },
    )
    .await;
    wait_until(
        "the public deferral deleted",
        std::time::Duration::from_secs(10),
        || {
            let (d, p) = (s.discord.clone(), original.clone());
            async move {
                d.calls()
                    .iter()
                    .any(|(m, path, _)| m == "DELETE" && *path == p)
            }
        },
    )
    .await;
    let calls = s.discord.calls();
    let (_, _, sent) = calls
        .iter()
        .find(|(m, p, _)| m == "POST" && *p == followup)
        .expect("follow-up");
    assert!(
        message_text(sent).to_lowercase().contains("not allowed")
            || message_text(sent).contains("role"),
        "{sent}"
    );
    assert!(
        !calls.iter().any(|(m, p, _)| m == "PATCH" && *p == original),
        "the public deferral is never edited into the refusal: Discord would show it to the channel"
    );
    s.srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_modal_from_a_message_defers_an_update_and_never_deletes_the_message() {
    let s = Stack::start(Options {
        proxy: true,
        ..Default::default()
    })
    .await;
    s.proxy
        .as_ref()
        .expect("proxy")
        .slow_down(std::time::Duration::from_millis(3500));
    // A modal submitted from a message (as a run card's Approve opens one) with a value the
    // server refuses: the late answer is a refusal for the member alone.
    let mut submit = command("700000000000000051", &[], "plan", json!([]));
    submit["type"] = json!(5);
    submit["message"] = json!({"id": "900000000000000051", "content": ""});
    submit["data"] = json!({"custom_id": "modal:plan", "components": [{"type": 1, "components": [
        {"type": 4, "custom_id": "payload", "value": "build {{workflow.name}}"}]}]});
    let (code, resp) = s.post(&submit).await;
    // DEFERRED_UPDATE_MESSAGE: nothing shown, the message stays as it is.
    assert_eq!((code, resp["type"].clone()), (200, json!(6)), "{resp}");
    let token = "token-700000000000000051";
    let followup = format!("/webhooks/{APP}/{token}");
    let original = format!("/webhooks/{APP}/{token}/messages/@original");
    wait_until(
        "the refusal as an ephemeral follow-up",
        std::time::Duration::from_secs(30),
        || {
            let (d, p) = (s.discord.clone(), followup.clone());
            async move {
                d.calls()
                    .iter()
                    .any(|(m, path, b)| m == "POST" && *path == p && b["flags"] == 64)
            }
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !s.discord
            .calls()
            .iter()
            .any(|(m, p, _)| (m == "DELETE" || m == "PATCH") && *p == original),
        "`@original` is the message the modal came from: neither deleted nor edited into a refusal"
    );
    s.srv.stop().await;
}

#[tokio::test]
async fn guild_setup_registers_the_catalog_and_seeds_an_isolated_policy_live() {
    use facteur_client::pb;
    let s = Stack::start(Options {
        backend: Backend::Postgres,
        ..Default::default()
    })
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(facteur_discord::follow_guilds(
        s.control.clone(),
        s.http.clone(),
        None,
        stop.clone(),
    ));
    let admin = s.srv.client(ADMIN_TOKEN).await;
    let other = "100000000000000002";

    // A malformed id is refused and writes nothing.
    let err = admin
        .admin()
        .setup_guild(pb::SetupGuildRequest {
            guild_id: "guild-two".into(),
            reseed_policy: false,
        })
        .await
        .expect_err("not a snowflake");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("guild-two"), "{}", err.message());
    assert_eq!(
        count_rows(&s.srv.server.state.store, "discord_guilds").await,
        0
    );

    let setup = |reseed| {
        let admin = admin.clone();
        async move {
            admin
                .admin()
                .setup_guild(pb::SetupGuildRequest {
                    guild_id: other.into(),
                    reseed_policy: reseed,
                })
                .await
                .expect("setup")
                .into_inner()
        }
    };
    let registered = |generation: i64| {
        let admin = admin.clone();
        async move {
            admin
                .admin()
                .list_guilds(pb::ListGuildsRequest {
                    guild_id: other.into(),
                })
                .await
                .expect("list")
                .into_inner()
                .guilds
                .first()
                .is_some_and(|g| {
                    g.registered_generation >= generation && g.registered_commands == 5
                })
        }
    };
    let puts = |d: &FakeDiscord| {
        d.calls()
            .iter()
            .filter(|(m, p, _)| {
                m == "PUT" && *p == format!("/applications/{APP}/guilds/{other}/commands")
            })
            .count()
    };
    let wait = std::time::Duration::from_secs(20);

    let first = setup(false).await;
    assert!(first.policy_seeded);
    let policy = first.policy.expect("policy");
    assert_eq!(
        (policy.guild_id.as_str(), policy.version),
        (other, 1),
        "the guild has its own policy now"
    );
    assert_eq!(first.guild.expect("guild").generation, 1);
    wait_until("the catalog registered in the guild", wait, || {
        registered(1)
    })
    .await;
    assert_eq!(puts(&s.discord), 1);

    // The guild's policy is its own: changing it leaves the first guild's alone.
    let mut changed = policy.clone();
    changed.commands = vec![pb::CommandPolicy {
        command: "deploy".into(),
        role_ids: vec![OPS.into()],
    }];
    admin
        .admin()
        .set_policy(pb::SetPolicyRequest {
            policy: Some(changed),
            expected_version: 1,
        })
        .await
        .expect("set policy");
    let mine = policy_of(&admin, GUILD).await;
    assert!(
        mine.commands
            .iter()
            .any(|c| c.command == "deploy" && c.role_ids == vec![DEPLOYER.to_string()]),
        "{mine:?}"
    );

    // Set up again: the live policy is kept, the catalog re-checked, nothing rewritten.
    let again = setup(false).await;
    assert!(!again.policy_seeded);
    assert_eq!(again.policy.expect("policy").version, 2);
    wait_until("the second set-up done", wait, || registered(2)).await;
    assert_eq!(puts(&s.discord), 1, "an unchanged catalog is not rewritten");

    // --reseed-policy puts the configuration's policy back.
    let reseeded = setup(true).await;
    assert!(reseeded.policy_seeded);
    let p = reseeded.policy.expect("policy");
    assert!(
        p.commands
            .iter()
            .any(|c| c.command == "deploy" && c.role_ids == vec![DEPLOYER.to_string()]),
        "{p:?}"
    );
    let audit = s
        .srv
        .server
        .state
        .store
        .audit_events(other, 20)
        .await
        .expect("audit");
    assert_eq!(audit.iter().filter(|e| e.1 == "guild_setup").count(), 3);
    stop.cancel();
    s.srv.stop().await;
}

#[tokio::test]
async fn gateway_mode_answers_through_the_callback_route() {
    let s = stack().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let gateway_http =
        facteur_discord::discord_http("bot-token", APP.parse().expect("id"), &s.discord.base_url());
    let adapter = facteur_discord::Adapter::for_gateway(s.control.clone(), s.http.clone());
    let connected = tokio::spawn(facteur_discord::gateway::run(
        adapter,
        gateway_http,
        stop.clone(),
    ));
    let wait = std::time::Duration::from_secs(20);
    wait_until("the adapter identified on the gateway", wait, || {
        let d = s.discord.clone();
        async move { !d.identified().is_empty() }
    })
    .await;
    let identify = &s.discord.identified()[0];
    assert_eq!(identify["token"], "Bot bot-token");
    assert_eq!(identify["intents"], 0, "interactions need no intents");

    // An interaction as Discord delivers it over the gateway (every field the model requires).
    let id = "700000000000000050";
    let mut i = command(
        id,
        &[DEPLOYER],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "api"}]),
    );
    i["member"] = json!({
        "user": {"id": "300000000000000001", "username": "alice", "discriminator": "0",
                 "global_name": "Alice", "avatar": null},
        "roles": [DEPLOYER], "nick": null, "avatar": null, "joined_at": "2026-01-01T00:00:00+00:00",
        "deaf": false, "mute": false, "flags": 0, "pending": false, "permissions": "2147483647",
    });
    i["app_permissions"] = json!("2147483647");
    i["guild_locale"] = json!("en-US");
    i["entitlements"] = json!([]);
    i["authorizing_integration_owners"] = json!({"0": GUILD});
    i["context"] = json!(0);
    i["attachment_size_limit"] = json!(10485760);
    s.discord.send_interaction(i);

    let path = format!("/interactions/{id}/token-{id}/callback");
    wait_until("the answer at the callback route", wait, || {
        let (d, p) = (s.discord.clone(), path.clone());
        async move {
            d.calls().iter().any(|(m, c, b)| {
                m == "POST"
                    && *c == p
                    && b["type"] == 4
                    && message_text(&b["data"]).contains("/deploy")
            })
        }
    })
    .await;
    let run = s.run_of(id).await;
    assert_eq!(run.requester.display_name, "Alice");
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), connected).await;
    s.srv.stop().await;
}

#[tokio::test]
async fn discord_rate_limits_are_waited_out_by_the_production_client() {
    let s = stack().await;
    // serenity as production builds it for https://discord.com, rate limiter on.
    let discord = FakeDiscord::start_tls().await;
    let http = facteur_discord::discord_http_with(
        "bot-token",
        APP.parse().expect("id"),
        "https://discord.com",
        Some(discord.tls_client()),
    );
    let guild: u64 = GUILD.parse().expect("guild");
    let of = |method: &str| -> Vec<(Value, std::time::Instant)> {
        discord
            .calls()
            .into_iter()
            .zip(discord.call_times())
            .filter(|((m, _, _), _)| m == method)
            .map(|((_, _, b), t)| (b, t))
            .collect()
    };

    // 429 with Retry-After on the bulk overwrite: waited out, sent again, registered.
    discord.rate_limit_next("PUT", 1, 0.4);
    let r = register(&s.control, &http, Some(guild))
        .await
        .expect("registered despite the 429");
    assert!(r.wrote);
    let puts = of("PUT");
    assert_eq!(puts.len(), 2, "refused once, then sent again");
    assert_eq!(puts[0].0["rate_limited"], true);
    assert!(
        puts[1].1 - puts[0].1 >= std::time::Duration::from_millis(400),
        "the retry came {:?} after the 429",
        puts[1].1 - puts[0].1
    );

    // A bucket used up (Remaining 0): the next call on it waits for the reset, never hits 429.
    discord.exhaust_bucket_on("GET", 0.5);
    register(&s.control, &http, Some(guild))
        .await
        .expect("up to date");
    register(&s.control, &http, Some(guild))
        .await
        .expect("up to date");
    let gets = of("GET");
    let (a, b) = (&gets[gets.len() - 2], &gets[gets.len() - 1]);
    assert!(
        b.1 - a.1 >= std::time::Duration::from_millis(500),
        "the call after an exhausted bucket came {:?} later",
        b.1 - a.1
    );
    assert_eq!(of("PUT").len(), 2, "nothing rewritten");
    s.srv.stop().await;
}
