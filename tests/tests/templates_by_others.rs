//! Templates written by others (#36), end to end: WorkflowTemplates in the fake Kubernetes API
//! that break Discord's rules or the server's storage limits, the real argo-adapter reporting
//! them, the server's catalog and the real discord-adapter registering it in a fake Discord
//! that refuses an invalid bulk overwrite exactly as Discord does (HTTP 400, code 50035, an
//! `errors` object). One bad template never blocks the others; what is repaired or left out
//! is listed with its reason; a registration Discord refuses is retried and visible.

use facteur_client::pb;
use facteur_tests::discord::*;
use facteur_tests::fake_discord::invalid_commands;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::Adapter as ArgoAdapter;
use facteur_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

const NS: &str = "argo-workflows";
const WAIT: Duration = Duration::from_secs(20);

fn template(name: &str, command: &str, annotations: Value, parameters: Value) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": NS,
            "labels": {"facteur.proompteng.ai/command": command},
            "annotations": annotations,
        },
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": parameters},
            "templates": [{"name": "main", "container": {"image": "busybox"}}],
        },
    })
}

fn puts(s: &Stack) -> Vec<Value> {
    let path = format!("/applications/{APP}/guilds/{GUILD}/commands");
    s.discord
        .calls()
        .into_iter()
        .filter(|(m, p, _)| m == "PUT" && *p == path)
        .map(|(_, _, b)| b)
        .collect()
}

fn names(body: &Value) -> Vec<String> {
    body.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

async fn status(admin: &facteur_client::Client) -> pb::GetStatusResponse {
    admin
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

async fn metrics_text(s: &Stack) -> String {
    reqwest::get(s.srv.http_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

fn home(st: &pb::GetStatusResponse) -> Option<pb::CommandRegistration> {
    st.registrations.iter().find(|r| r.scope == GUILD).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_template_never_blocks_the_others_and_each_says_why() {
    let s = Stack::start(Options::default()).await;
    let kube = FakeKube::start().await;
    let argo = ArgoAdapter::start(&s.srv.grpc_url(), &kube, NS);
    let admin = s.srv.client(ADMIN_TOKEN).await;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(facteur_discord::follow_guilds(
        s.control.clone(),
        s.http.clone(),
        Some(GUILD.parse().expect("guild")),
        stop.clone(),
    ));

    // Start-up registers once: one catalog, one PUT.
    wait_until("the start-up registration", WAIT, || async {
        !puts(&s).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(puts(&s).len(), 1, "start-up registered once");
    let st = status(&admin).await;
    let reg = home(&st).expect("the home scope's registration is reported");
    assert!(reg.ok && reg.failures == 0, "{reg:?}");

    // A good template; one whose description no store takes (poisoned); one whose enum value
    // Discord cannot take whole (left out); one Discord's rules let facteur repair.
    kube.apply_template(template(
        "hello",
        "hello",
        json!({"workflows.argoproj.io/description": "Say hello"}),
        json!([{"name": "target"}]),
    ));
    kube.apply_template(template(
        "poisoned",
        "poisoned",
        json!({"workflows.argoproj.io/description": "x".repeat(5000)}),
        json!([{"name": "target"}]),
    ));
    kube.apply_template(template(
        "long-enum",
        "long-enum",
        json!({}),
        json!([{"name": "which", "enum": ["y".repeat(101)], "value": "y".repeat(101)}]),
    ));
    kube.apply_template(template(
        "repaired",
        "Repaired",
        json!({
            "workflows.argoproj.io/description": "r".repeat(300),
            "facteur.proompteng.ai/type.count": "integer",
            "facteur.proompteng.ai/type.dry": "boolean",
        }),
        json!([
            {"name": "mode", "enum": ["", "fast"], "value": ""},
            {"name": "count", "enum": ["few", "many"], "value": "few"},
            {"name": "dry", "enum": ["true", "false"], "value": "false"},
        ]),
    ));
    wait_until(
        "hello and the repaired command registered",
        WAIT,
        || async {
            puts(&s).last().is_some_and(|b| {
                let n = names(b);
                n.contains(&"hello".to_string()) && n.contains(&"repaired".to_string())
            })
        },
    )
    .await;
    let body = puts(&s).last().cloned().expect("a body");
    assert_eq!(invalid_commands(&body), [], "what reaches Discord is valid");
    let n = names(&body);
    assert!(!n.contains(&"poisoned".to_string()) && !n.contains(&"long-enum".to_string()));
    assert!(
        n.contains(&"deploy".to_string()),
        "the configured commands stay"
    );
    let repaired = body
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "repaired"))
        .expect("repaired");
    assert_eq!(
        repaired["description"].as_str().map(|d| d.chars().count()),
        Some(100)
    );
    let options: Vec<(Value, Value, usize)> = repaired["options"]
        .as_array()
        .expect("options")
        .iter()
        .map(|o| {
            (
                o["name"].clone(),
                o["type"].clone(),
                o["choices"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    assert_eq!(
        options,
        [
            (json!("mode"), json!(3), 1),
            (json!("count"), json!(3), 2),
            (json!("dry"), json!(5), 0)
        ]
    );

    // Each left-out template and each repair, with its reason, where an operator looks.
    let st = status(&admin).await;
    let problem = |name: &str| {
        st.catalog_problems
            .iter()
            .find(|p| p.starts_with(&format!("{NS}/{name}: ")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        problem("poisoned").contains("report refused")
            && problem("poisoned").contains("at most 4000"),
        "{:?}",
        st.catalog_problems
    );
    assert!(
        problem("long-enum").contains("choices[0].value: must be 1 to 100"),
        "{:?}",
        st.catalog_problems
    );
    assert_eq!(
        st.catalog_repairs
            .iter()
            .filter(|r| r.starts_with(&format!("{NS}/repaired: ")))
            .count(),
        5,
        "{:?}",
        st.catalog_repairs
    );
    let catalog = admin
        .admin()
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .expect("catalog")
        .into_inner();
    assert_eq!(catalog.repairs, st.catalog_repairs);
    assert_eq!(catalog.problems, st.catalog_problems);
    let metrics = metrics_text(&s).await;
    assert!(metrics.contains("facteur_catalog_problems 2"), "{metrics}");
    assert!(metrics.contains("facteur_catalog_repairs 5"), "{metrics}");

    // Mended, the poisoned template becomes a command like the others.
    kube.apply_template(template(
        "poisoned",
        "poisoned",
        json!({"workflows.argoproj.io/description": "Now fine"}),
        json!([{"name": "target"}]),
    ));
    wait_until("the mended template registered", WAIT, || async {
        puts(&s)
            .last()
            .is_some_and(|b| names(b).contains(&"poisoned".to_string()))
    })
    .await;

    // Discord refuses a registration (a rule facteur cannot know): the refusal is visible with
    // Discord's code and message, retried with backoff, and registered once Discord takes it.
    s.discord.refuse_command("hello");
    let before = puts(&s).len();
    kube.apply_template(template(
        "hello",
        "hello",
        json!({"workflows.argoproj.io/description": "Say hello again"}),
        json!([{"name": "target"}]),
    ));
    wait_until("the refusal reported", WAIT, || async {
        home(&status(&admin).await).is_some_and(|r| !r.ok && r.failures >= 2)
    })
    .await;
    let reg = home(&status(&admin).await).expect("registration");
    assert_eq!(reg.discord_code, 50035, "{reg:?}");
    assert!(
        reg.error.contains("Invalid Form Body") && reg.error.contains(".name"),
        "{}",
        reg.error
    );
    assert!(reg.registered_at.is_some(), "the last success is kept");
    let tries = puts(&s).len() - before;
    assert!(tries >= 2, "retried: {tries}");
    let metrics = metrics_text(&s).await;
    assert!(
        metrics.contains(&format!(
            "facteur_discord_registration_failures_total{{scope=\"{GUILD}\"}}"
        )),
        "{metrics}"
    );
    s.discord.accept_commands();
    wait_until(
        "registered after the refusal",
        Duration::from_secs(30),
        || async { home(&status(&admin).await).is_some_and(|r| r.ok && r.failures == 0) },
    )
    .await;
    assert!(
        s.discord
            .calls()
            .iter()
            .rev()
            .find(|(m, _, _)| m == "PUT")
            .is_some_and(|(_, _, b)| b.to_string().contains("Say hello again"))
    );

    stop.cancel();
    argo.stop().await;
    s.srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_up_guilds_refused_registration_is_retried_by_the_adapter() {
    const SET_UP: &str = "100000000000000777";
    let s = Stack::start(Options::default()).await;
    let admin = s.srv.client(ADMIN_TOKEN).await;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(facteur_discord::follow_guilds(
        s.control.clone(),
        s.http.clone(),
        Some(GUILD.parse().expect("guild")),
        stop.clone(),
    ));
    wait_until("the start-up registration", WAIT, || async {
        home(&status(&admin).await).is_some_and(|r| r.ok)
    })
    .await;
    // Discord refuses the catalog in the guild being set up: the adapter tries again on its
    // own (the server announces the guild once), and the guild is registered once it takes it.
    s.discord.refuse_command("deploy");
    admin
        .admin()
        .setup_guild(pb::SetupGuildRequest {
            guild_id: SET_UP.into(),
            reseed_policy: false,
        })
        .await
        .expect("setup");
    let scope =
        |st: &pb::GetStatusResponse| st.registrations.iter().find(|r| r.scope == SET_UP).cloned();
    wait_until("two failures in a row", WAIT, || async {
        scope(&status(&admin).await).is_some_and(|r| !r.ok && r.failures >= 2)
    })
    .await;
    s.discord.accept_commands();
    wait_until(
        "registered after the refusals",
        Duration::from_secs(30),
        || async { scope(&status(&admin).await).is_some_and(|r| r.ok && r.failures == 0) },
    )
    .await;
    let path = format!("/applications/{APP}/guilds/{SET_UP}/commands");
    assert!(
        s.discord
            .calls()
            .iter()
            .filter(|(m, p, _)| m == "PUT" && *p == path)
            .count()
            >= 3,
        "refused twice, then written"
    );
    stop.cancel();
    s.srv.stop().await;
}
