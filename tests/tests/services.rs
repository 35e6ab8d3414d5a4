//! The flows of the service layer called as functions, without tonic or axum: what the gRPC
//! and HTTP handlers translate to and from. Each test asks one flow what an edge would.

use facteur_server::domain::Error;
use facteur_server::domain::interaction::Interaction;
use facteur_server::domain::policy::Quota;
use facteur_server::service::discord::{self, Invocation, Invoked};
use facteur_server::service::{feeds, guilds, policy, runs};
use facteur_server::state::AppState;
use facteur_server::store::RunFilter;
use facteur_tests::{Backend, MEMBER, TestDb, TestServer, config, with_deploy_command};
use std::collections::BTreeMap;

const GUILD: &str = "100000000000000001";
const DEPLOYER: &str = "200000000000000001";

fn member(id: &str) -> Interaction {
    Interaction {
        interaction_id: id.into(),
        application_id: "400000000000000001".into(),
        token: String::new(),
        guild_id: GUILD.into(),
        channel_id: "500000000000000001".into(),
        user_id: MEMBER.into(),
        user_name: "alice".into(),
        role_ids: vec![DEPLOYER.into()],
        locale: String::new(),
        field_prefix: "",
    }
}

fn deploy(options: &[(&str, &str)]) -> Invocation {
    Invocation::Slash {
        command: "deploy".into(),
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn field_of(e: &Error) -> &str {
    match e {
        Error::InvalidArgument { field, .. } => field,
        other => panic!("not INVALID_ARGUMENT: {other:?}"),
    }
}

async fn started() -> (TestDb, TestServer) {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(with_deploy_command(config(&db), DEPLOYER)).await;
    (db, srv)
}

fn state(srv: &TestServer) -> &AppState {
    &srv.server.state
}

#[tokio::test]
async fn invoke_starts_a_run_once_and_refuses_what_it_cannot_read() {
    let (_db, srv) = started().await;
    let s = state(&srv);
    let i = member("700000000000000901");
    let Invoked::Started { run, duplicate, .. } =
        discord::invoke(s, &i, deploy(&[("service", "api")]))
            .await
            .expect("starts")
    else {
        panic!("not started");
    };
    assert!(!duplicate);
    assert_eq!(run.command, "deploy");
    // The same interaction again: the same run, as a duplicate.
    let Invoked::Started {
        run: again,
        duplicate,
        ..
    } = discord::invoke(s, &i, deploy(&[("service", "api")]))
        .await
        .expect("replay")
    else {
        panic!("not started");
    };
    assert!(duplicate);
    assert_eq!(again.id, run.id);

    // An option given twice, a modal that is not ours: refused by field, nothing started.
    let twice = discord::invoke(
        s,
        &member("700000000000000902"),
        deploy(&[("service", "api"), ("service", "web")]),
    )
    .await
    .expect_err("twice");
    assert_eq!(field_of(&twice), "options");
    let foreign = Invocation::ModalSubmit {
        custom_id: "someone-else:1".into(),
        values: BTreeMap::new(),
    };
    let e = discord::invoke(s, &member("700000000000000903"), foreign)
        .await
        .expect_err("not ours");
    assert_eq!(field_of(&e), "modal_custom_id");
    // A member without the role: denied before anything is read of the command.
    let mut stranger = member("700000000000000904");
    stranger.role_ids.clear();
    let denied = discord::invoke(s, &stranger, deploy(&[("service", "api")]))
        .await
        .expect_err("no role");
    assert!(matches!(denied, Error::PermissionDenied(_)), "{denied:?}");
    let listed = runs::list(s, &RunFilter::default(), 10, None)
        .await
        .expect("list");
    assert_eq!(
        listed.items.len(),
        1,
        "only the first interaction started a run"
    );
    srv.stop().await;
}

#[tokio::test]
async fn the_change_feed_gives_each_run_once_at_its_newest_entry() {
    let (_db, srv) = started().await;
    let s = state(&srv);
    let from = feeds::now(s).await.expect("now");
    let mut ids = Vec::new();
    for n in 0..3 {
        let i = member(&format!("70000000000000091{n}"));
        let Invoked::Started { run, .. } = discord::invoke(s, &i, deploy(&[("service", "api")]))
            .await
            .expect("starts")
        else {
            panic!("not started");
        };
        ids.push(run.id.clone());
    }
    let batch = feeds::runs_after(s, from).await.expect("feed");
    let seen: Vec<&str> = batch.changes.iter().map(|c| c.run.id.as_str()).collect();
    assert_eq!(seen, ids, "one change per run, in commit order");
    let end = batch.end.expect("an end");
    assert_eq!(Some(end), batch.changes.last().map(|c| c.cursor));
    // Nothing after the end.
    assert!(
        feeds::runs_after(s, end)
            .await
            .expect("feed")
            .changes
            .is_empty()
    );
    // The loop delivers the same into a channel and ends when its receiver goes.
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let follower = tokio::spawn(feeds::follow_runs(srv.server.state.clone(), from, tx));
    for id in &ids {
        let change = rx.recv().await.expect("a change");
        assert_eq!(&change.run.id, id);
    }
    drop(rx);
    tokio::time::timeout(std::time::Duration::from_secs(5), follower)
        .await
        .expect("the loop ends with its receiver")
        .expect("no panic");
    srv.stop().await;
}

#[tokio::test]
async fn a_policy_is_checked_whole_before_it_is_written() {
    let (_db, srv) = started().await;
    let s = state(&srv);
    let before = policy::get(s, GUILD).await.expect("policy");
    let quota = Quota {
        max_concurrent: Some(1),
        max_per_hour: None,
    };
    let change = policy::PolicyChange {
        guild_id: GUILD.into(),
        commands: vec![("deploy".into(), vec![DEPLOYER.into()])],
        quotas: vec![("deploy".into(), quota), ("deploy".into(), quota)],
        ..Default::default()
    };
    let e = policy::set(s, change.clone(), "ops")
        .await
        .expect_err("listed twice");
    assert_eq!(field_of(&e), "policy.quotas");
    assert_eq!(
        policy::get(s, GUILD).await.expect("policy"),
        before,
        "nothing written"
    );
    let bad_name = policy::PolicyChange {
        commands: vec![("Deploy Now".into(), vec![])],
        quotas: vec![],
        ..change.clone()
    };
    let e = policy::set(s, bad_name, "ops").await.expect_err("bad name");
    assert_eq!(field_of(&e), "commands");
    // Accepted: the default in force is kept when none is given.
    let ok = policy::PolicyChange {
        quotas: vec![("deploy".into(), quota)],
        ..change
    };
    let stored = policy::set(s, ok, "ops").await.expect("set");
    assert_eq!(stored.default, before.default);
    assert_eq!(stored.quotas["deploy"], quota);
    srv.stop().await;
}

#[tokio::test]
async fn start_run_and_the_pages_of_the_list() {
    let (_db, srv) = started().await;
    let s = state(&srv);
    let params: BTreeMap<String, String> = [("service".to_string(), "api".to_string())].into();
    for n in 0..5 {
        runs::start_admin(s, "deploy", &params, "", &format!("key-{n}"), "ops")
            .await
            .expect("starts");
    }
    let (_, duplicate) = runs::start_admin(s, "deploy", &params, "", "key-0", "ops")
        .await
        .expect("replay");
    assert!(duplicate);
    let long = "k".repeat(10_000);
    let e = runs::start_admin(s, "deploy", &params, "", &long, "ops")
        .await
        .expect_err("too long");
    assert_eq!(field_of(&e), "idempotency_key");
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = runs::list(s, &RunFilter::default(), 2, after)
            .await
            .expect("page");
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|r| r.id));
        match page.next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "every run once over the pages");
    seen.dedup();
    assert_eq!(seen.len(), 5);
    srv.stop().await;
}

#[tokio::test]
async fn a_registration_report_names_a_generation_watch_guilds_gave() {
    let (_db, srv) = started().await;
    let s = state(&srv);
    let bad = guilds::RegistrationReport {
        guild_id: GUILD.into(),
        generation: -1,
        ..Default::default()
    };
    let e = guilds::report_registration(s, bad)
        .await
        .expect_err("negative");
    assert_eq!(field_of(&e), "generation");
    // The adapter's own scope (generation 0) records a failure and returns no guild.
    let own = guilds::RegistrationReport {
        generation: 0,
        commands: 3,
        error: "refused".into(),
        discord_code: 50035,
        ..Default::default()
    };
    assert!(
        guilds::report_registration(s, own)
            .await
            .expect("recorded")
            .is_none()
    );
    let status = facteur_server::service::status::report(s).await;
    let global = status
        .registrations
        .iter()
        .find(|r| r.scope == "global")
        .expect("the global scope");
    assert_eq!(
        (global.error.as_str(), global.discord_code),
        ("refused", 50035)
    );
    srv.stop().await;
}
