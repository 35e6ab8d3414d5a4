//! Commands from WorkflowTemplates, end to end: a template labelled
//! `facteur.proompteng.ai/command` in the fake Kubernetes API, the argo-adapter watching it on
//! kube-rs, the server merging it into the catalog, and the discord-adapter registering the
//! change in the fake Discord — added, changed, deleted — without a restart; then run like any
//! command, its values checked against the template's enum.

use facteur_client::pb;
use facteur_tests::discord::*;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::Adapter as ArgoAdapter;
use facteur_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

const NS: &str = "argo-workflows";
const WAIT: Duration = Duration::from_secs(20);

fn hello(choices: &[&str]) -> Value {
    json!({
        "metadata": {
            "name": "hello-world", "namespace": NS,
            "labels": {"facteur.proompteng.ai/command": "hello"},
            "annotations": {
                "workflows.argoproj.io/description": "Say hello to someone",
                "facteur.proompteng.ai/type.count": "integer",
                "facteur.proompteng.ai/hidden": "internal",
            },
        },
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [
                {"name": "greeting", "description": "How to greet", "enum": choices, "value": choices[0]},
                {"name": "target", "description": "Who to greet"},
                {"name": "count", "value": "1"},
                {"name": "internal", "value": "x"},
            ]},
            "templates": [{"name": "main", "container": {"image": "busybox"}}],
        },
    })
}

/// The last registration body the fake Discord received for [`GUILD`].
fn registered(s: &Stack) -> Option<Vec<Value>> {
    let path = format!("/applications/{APP}/guilds/{GUILD}/commands");
    s.discord
        .calls()
        .into_iter()
        .rev()
        .find(|(m, p, _)| m == "PUT" && *p == path)
        .and_then(|(_, _, b)| b.as_array().cloned())
}

fn command<'a>(body: &'a [Value], name: &str) -> Option<&'a Value> {
    body.iter().find(|c| c["name"] == name)
}

async fn wait_registered(s: &Stack, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_until(what, WAIT, || async {
        registered(s).is_some_and(|b| f(&b))
    })
    .await;
    registered(s).expect("registered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_template_becomes_a_command_and_follows_its_changes() {
    let s = Stack::start(Options::default()).await;
    let kube = FakeKube::start().await;
    let argo = ArgoAdapter::start(&s.srv.grpc_url(), &kube, NS);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(facteur_discord::follow_guilds(
        s.control.clone(),
        s.http.clone(),
        Some(GUILD.parse().expect("guild")),
        stop.clone(),
    ));

    // Added: registered as Discord documents a command, field by field.
    kube.apply_template(hello(&["hi", "hello"]));
    let body = wait_registered(&s, "/hello registered", |b| command(b, "hello").is_some()).await;
    assert_eq!(
        command(&body, "hello").expect("hello"),
        &json!({
            "type": 1, "name": "hello", "description": "Say hello to someone",
            "contexts": [0], "integration_types": [0],
            "options": [
                // The server's bound, so Discord's client says it first.
                {"type": 3, "name": "target", "description": "Who to greet", "required": true,
                 "max_length": 1000},
                {"type": 3, "name": "greeting", "description": "How to greet",
                 "choices": [{"name": "hi", "value": "hi"}, {"name": "hello", "value": "hello"}]},
                {"type": 4, "name": "count", "description": "count"},
            ],
        }),
        "{body:#?}"
    );
    assert!(
        command(&body, "deploy").is_some(),
        "the configured commands stay"
    );
    let admin = s.srv.client(ADMIN_TOKEN).await;
    let catalog = admin
        .admin()
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .expect("catalog")
        .into_inner();
    let sources: Vec<(String, String)> = catalog
        .commands
        .iter()
        .map(|c| (c.name.clone(), c.source.clone()))
        .collect();
    assert!(
        sources.contains(&("hello".into(), format!("{NS}/hello-world"))),
        "{sources:?}"
    );
    assert!(
        sources.contains(&("deploy".into(), "configuration".into())),
        "{sources:?}"
    );

    // Changed: the enum's new value is a new choice.
    kube.apply_template(hello(&["hi", "hello", "hey"]));
    wait_registered(&s, "the new choice registered", |b| {
        command(b, "hello")
            .is_some_and(|c| c["options"][1]["choices"].as_array().map(Vec::len) == Some(3))
    })
    .await;

    // Run like any command: the values are checked against the template's enum on the server.
    let refused = s
        .post(&facteur_tests::discord::command(
            "700000000000000201",
            &[],
            "hello",
            json!([{"name": "target", "type": 3, "value": "world"},
                   {"name": "greeting", "type": 3, "value": "salut"}]),
        ))
        .await;
    let text = message_text(&refused.1["data"]);
    assert!(text.contains("greeting"), "names the option: {text}");
    assert_eq!(refused.1["data"]["flags"], 64, "only the invoker sees it");
    assert!(kube.creates().is_empty(), "nothing started");
    let (code, _) = s
        .post(&facteur_tests::discord::command(
            "700000000000000202",
            &[],
            "hello",
            json!([{"name": "target", "type": 3, "value": "world"},
                   {"name": "greeting", "type": 3, "value": "hey"},
                   {"name": "count", "type": 4, "value": 3}]),
        ))
        .await;
    assert_eq!(code, 200);
    wait_until("the Workflow", WAIT, || async {
        !kube.creates().is_empty()
    })
    .await;
    let wf = &kube.creates()[0];
    assert_eq!(wf["metadata"]["namespace"], NS);
    assert_eq!(wf["spec"]["workflowTemplateRef"]["name"], "hello-world");
    let params: Vec<(String, String)> = wf["spec"]["arguments"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").into(),
                p["value"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    for want in [("count", "3"), ("greeting", "hey"), ("target", "world")] {
        assert!(
            params.contains(&(want.0.to_string(), want.1.to_string())),
            "{params:?}"
        );
    }

    // A template naming a configured command does not replace it, and says so.
    let mut clash = hello(&["hi"]);
    clash["metadata"]["name"] = json!("deploy-tpl");
    clash["metadata"]["labels"]["facteur.proompteng.ai/command"] = json!("deploy");
    kube.apply_template(clash);
    wait_until("the clash reported", WAIT, || async {
        admin
            .admin()
            .get_status(pb::GetStatusRequest {})
            .await
            .is_ok_and(|r| {
                r.into_inner()
                    .catalog_problems
                    .iter()
                    .any(|p| p.contains("deploy-tpl") && p.contains("configured one is used"))
            })
    })
    .await;
    assert_eq!(
        command(&registered(&s).expect("registered"), "deploy").expect("deploy")["description"],
        "Deploy a service",
        "the configured /deploy stays"
    );

    // Deleted: the command is gone from Discord.
    kube.delete_template(NS, "hello-world");
    wait_registered(&s, "/hello removed", |b| command(b, "hello").is_none()).await;

    stop.cancel();
    argo.stop().await;
    s.srv.stop().await;
}
