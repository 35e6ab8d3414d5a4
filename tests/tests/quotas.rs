//! Quotas per guild and command, end to end: `/deploy` limited to two runs at once in a guild
//! (its configuration), the third refused with an ephemeral message naming the limit, counted
//! and audited, and accepted again once a run ended; a guild's policy changes the limit live.

use facteur_client::pb;
use facteur_tests::discord::*;
use facteur_tests::*;
use serde_json::json;
use std::time::Duration;

const NS: &str = "argo-workflows";
const WAIT: Duration = Duration::from_secs(20);

fn deploy(id: &str) -> serde_json::Value {
    command(
        id,
        &[DEPLOYER],
        "deploy",
        json!([{"name": "service", "type": 3, "value": "api"}]),
    )
}

/// `/deploy`'s quota usage in the guild, as `GetStatus` reports it.
async fn deploy_usage(admin: &facteur_client::Client) -> pb::QuotaUsage {
    let status = admin
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    status
        .quota_usage
        .into_iter()
        .find(|u| u.guild_id == GUILD && u.command == "deploy")
        .expect("usage")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_past_the_quota_is_refused_until_one_ends() {
    let f = Followed::start(Options {
        max_concurrent: Some(2),
        ..Default::default()
    })
    .await;
    for id in ["700000000000000401", "700000000000000402"] {
        let (code, resp) = f.s.post(&deploy(id)).await;
        assert_eq!(code, 200);
        assert!(resp["data"]["flags"].is_null(), "started: {resp}");
    }
    let (_, refused) = f.s.post(&deploy("700000000000000403")).await;
    assert_eq!(
        refused["data"]["flags"], 64,
        "only the member sees it: {refused}"
    );
    let text = message_text(&refused["data"]);
    assert!(
        text.contains("/deploy is at its limit of 2 concurrent runs in this server"),
        "{text}"
    );
    assert!(
        f.s.srv
            .server
            .state
            .store
            .run_by_key("discord:700000000000000403")
            .await
            .expect("query")
            .is_none(),
        "nothing started"
    );
    let m = &f.s.srv.server.state.metrics;
    assert_eq!(
        m.counter(
            facteur_server::metrics::Metric::QuotaRefusals,
            &[("command", "deploy"), ("limit", "max_concurrent")]
        ),
        1
    );
    let audit =
        f.s.srv
            .server
            .state
            .store
            .audit_events(GUILD, 20)
            .await
            .expect("audit");
    assert!(
        audit
            .iter()
            .any(|e| e.1 == "quota_refused" && e.3["limit"] == "max_concurrent")
    );
    let admin = f.s.srv.client(ADMIN_TOKEN).await;
    let usage = deploy_usage(&admin).await;
    // No hourly limit: the hour's runs are not read, nor reported.
    assert_eq!(
        (usage.active, usage.max_concurrent, usage.last_hour),
        (2, Some(2), 0)
    );

    // One run ends: there is room again.
    let first = f.s.run_of("700000000000000401").await;
    wait_until("the Workflow", WAIT, || async {
        f.kube.workflow(NS, &first.workflow_name).is_some()
    })
    .await;
    f.kube
        .set_phase(NS, &first.workflow_name, "Succeeded", json!({}));
    let a = facteur_tests::stack::admin(&f.s.srv).await;
    wait_until("the first run succeeded", WAIT, || async {
        a.status(&first.id).await == pb::RunStatus::Succeeded
    })
    .await;
    let (_, resp) = f.s.post(&deploy("700000000000000404")).await;
    assert!(resp["data"]["flags"].is_null(), "room again: {resp}");

    // The guild's policy lowers the limit live: one run at once is now too many.
    let mut policy = policy_of(&admin, GUILD).await;
    policy.guild_id = GUILD.into();
    policy.quotas = vec![pb::CommandQuota {
        command: "deploy".into(),
        max_concurrent: Some(1),
        max_per_hour: None,
    }];
    admin
        .admin()
        .set_policy(pb::SetPolicyRequest {
            policy: Some(policy),
            expected_version: 0,
        })
        .await
        .expect("set policy");
    let (_, refused) = f.s.post(&deploy("700000000000000405")).await;
    assert!(
        message_text(&refused["data"]).contains("limit of 1 concurrent run in this server"),
        "{refused}"
    );

    // An hourly limit in the guild's policy: the hour is counted, ended runs included
    // (401 ended; 402 and 404 run; 403 and 405 were refused and never started).
    let mut policy = policy_of(&admin, GUILD).await;
    policy.guild_id = GUILD.into();
    policy.quotas = vec![pb::CommandQuota {
        command: "deploy".into(),
        max_concurrent: Some(1),
        max_per_hour: Some(10),
    }];
    admin
        .admin()
        .set_policy(pb::SetPolicyRequest {
            policy: Some(policy.clone()),
            expected_version: policy.version,
        })
        .await
        .expect("set policy");
    let usage = deploy_usage(&admin).await;
    assert_eq!(
        (usage.active, usage.last_hour, usage.max_per_hour),
        (2, 3, Some(10))
    );
    f.stop().await;
}
