//! `facteurctl` against a real server (SQLite, auth on).

use facteur_config::{Process, Secret, TokenConfig};
use std::process::Command;

const TOKEN: &str = "ctl-test-admin-token-0123";
const ADAPTER_TOKEN: &str = "ctl-test-discord-token-0123";
const ARGO_TOKEN: &str = "ctl-test-argo-token-01234567";

async fn server(dir: &std::path::Path) -> facteur_server::RunningServer {
    server_with(dir, |_| {}).await
}

async fn server_with(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut facteur_config::Config),
) -> facteur_server::RunningServer {
    let mut c =
        facteur_config::load_from(None, &Default::default(), Process::Server).expect("config");
    c.server.grpc_listen_address = "127.0.0.1:0".into();
    c.server.listen_address = "127.0.0.1:0".into();
    c.database.url = Secret(format!("sqlite://{}?mode=rwc", dir.join("f.db").display()));
    c.auth.tokens = vec![
        TokenConfig {
            cluster: String::new(),
            name: "ops".into(),
            role: "admin".into(),
            token: Secret(TOKEN.into()),
        },
        TokenConfig {
            cluster: String::new(),
            name: "discord".into(),
            role: "discord-adapter".into(),
            token: Secret(ADAPTER_TOKEN.into()),
        },
        TokenConfig {
            cluster: String::new(),
            name: "argo".into(),
            role: "argo-adapter".into(),
            token: Secret(ARGO_TOKEN.into()),
        },
    ];
    c.role_map = [(
        "dispatch".to_string(),
        vec!["200000000000000001".to_string()],
    )]
    .into();
    configure(&mut c);
    facteur_server::start(c, Default::default())
        .await
        .expect("server")
}

/// The run id in `facteurctl run`'s answer (`run <id>: queued`).
fn started(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .expect("run id")
        .trim_end_matches(':')
        .to_string()
}

fn ctl(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_facteurctl"))
        .args(args)
        .env("FACTEUR_CONTROL_PLANE_URL", url)
        .env("FACTEUR_CONTROL_PLANE_TOKEN", TOKEN)
        .output()
        .expect("run facteurctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_against_a_live_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path()).await;
    let url = format!("http://{}", srv.grpc_addr);
    let url = url.as_str();

    let (ok, out, err) = tokio::task::block_in_place(|| ctl(url, &["status"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("ready") && out.contains("sqlite") && out.contains("memory"),
        "{out}"
    );
    // Nobody serves the namespace the server dispatches to: said at once.
    assert!(out.contains("no argo-adapter connected"), "{out}");
    let unserved = |out: &str, queued: &str| {
        out.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&"argo-workflows") && cols.get(1) == Some(&queued)
        })
    };
    assert!(
        out.contains("UNSERVED NAMESPACE") && unserved(&out, "0"),
        "{out}"
    );

    let (ok, out, err) = tokio::task::block_in_place(|| {
        ctl(url, &["run", "dispatch", "payload=hello", "--key", "k1"])
    });
    assert!(ok, "{err}");
    assert!(out.contains(": queued"), "{out}");
    let (_, status, _) = tokio::task::block_in_place(|| ctl(url, &["status"]));
    assert!(
        unserved(&status, "1"),
        "the queued run is counted: {status}"
    );
    let run_id = started(&out);
    let (_, again, _) = tokio::task::block_in_place(|| {
        ctl(url, &["run", "dispatch", "payload=hello", "--key", "k1"])
    });
    assert!(
        again.contains("already accepted") && again.contains(&run_id),
        "{again}"
    );

    let (ok, out, _) = tokio::task::block_in_place(|| ctl(url, &["runs", "--status", "queued"]));
    assert!(
        ok && out.starts_with("RUN") && out.contains(&run_id) && out.contains("dispatch"),
        "{out}"
    );
    let (ok, out, _) = tokio::task::block_in_place(|| ctl(url, &["run", "get", &run_id]));
    assert!(
        ok && out.contains("payload=hello") && out.contains("created"),
        "{out}"
    );

    let (ok, out, _) =
        tokio::task::block_in_place(|| ctl(url, &["cancel", &run_id, "--reason", "test"]));
    assert!(ok && out.contains("cancelled"), "{out}");
    let (ok, out, _) = tokio::task::block_in_place(|| ctl(url, &["retry", &run_id]));
    assert!(ok && out.contains(&format!("retry of {run_id}")), "{out}");
    let (ok, out, _) = tokio::task::block_in_place(|| ctl(url, &["dead-letters"]));
    assert!(ok && out.starts_with("DISPATCH"), "{out}");

    let (ok, _, err) = tokio::task::block_in_place(|| ctl(url, &["run", "dispatch", "bogus=1"]));
    assert!(
        !ok && err.contains("INVALID_ARGUMENT") && err.contains("bogus"),
        "{err}"
    );
    let (ok, _, err) = tokio::task::block_in_place(|| ctl(url, &["requeue", "not-a-uuid"]));
    assert!(!ok && err.contains("dispatch_id"), "{err}");
    srv.stop().await.expect("stop");
}

/// Plays the discord-adapter's side of a guild set-up: registers nothing, reports success.
async fn adapter_reporting(url: String, commands: u32) {
    let c = facteur_client::Client::connect(
        facteur_client::ClientConfig::new(url).with_token(ADAPTER_TOKEN),
    )
    .await
    .expect("adapter client");
    let mut guilds = c
        .command()
        .watch_guilds(facteur_client::pb::WatchGuildsRequest::default())
        .await
        .expect("watch guilds")
        .into_inner();
    while let Ok(Some(u)) = guilds.message().await {
        let g = u.guild.expect("guild");
        let report = facteur_client::pb::ReportGuildRegistrationRequest {
            guild_id: g.guild_id,
            generation: g.generation,
            commands,
            error: String::new(),
            ..Default::default()
        };
        c.command()
            .report_guild_registration(report)
            .await
            .expect("report");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guild_setup_waits_for_the_adapter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path()).await;
    let url = format!("http://{}", srv.grpc_addr);
    let guild = "100000000000000009";

    // No adapter yet: the request is accepted and stays pending; facteurctl says so.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        ctl(&url, &["guild", "setup", guild, "--wait-seconds", "1"])
    });
    assert!(!ok, "{out}");
    assert!(
        out.contains("seeded from the configuration") && out.contains("1 command rules"),
        "{out}"
    );
    assert!(err.contains("no discord-adapter"), "{err}");
    let (ok, out, _) = tokio::task::block_in_place(|| ctl(&url, &["guild", "list"]));
    assert!(
        ok && out.contains(guild) && out.contains("pending"),
        "{out}"
    );

    // With an adapter connected, the next set-up completes; the policy is kept.
    tokio::spawn(adapter_reporting(url.clone(), 5));
    let (ok, out, err) = tokio::task::block_in_place(|| ctl(&url, &["guild", "setup", guild]));
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("kept as it was") && out.contains("5 commands registered"),
        "{out}"
    );
    let (ok, out, _) = tokio::task::block_in_place(|| ctl(&url, &["guild", "list"]));
    assert!(ok && out.contains("registered"), "{out}");

    let (ok, _, err) = tokio::task::block_in_place(|| ctl(&url, &["guild", "setup", "my-guild"]));
    assert!(
        !ok && err.contains("INVALID_ARGUMENT") && err.contains("snowflake"),
        "{err}"
    );
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_lists_the_catalog_with_each_source() {
    use facteur_client::pb;
    let dir = tempfile::tempdir().expect("tempdir");
    // The operator sets the hourly quota of the template's command without redefining it.
    let srv = server_with(dir.path(), |c| {
        c.command_policies.insert(
            "hello".into(),
            facteur_config::PolicyOverride {
                max_per_hour: Some(5),
                max_concurrent: Some(3),
                ..Default::default()
            },
        );
    })
    .await;
    let url = format!("http://{}", srv.grpc_addr);
    // What an argo-adapter reports: one template command, one whose name the configuration has.
    let argo = facteur_client::Client::connect(
        facteur_client::ClientConfig::new(url.clone()).with_token(ARGO_TOKEN),
    )
    .await
    .expect("argo client");
    let template = |name: &str, command: &str| pb::WorkflowTemplateCommand {
        namespace: "argo-workflows".into(),
        name: name.into(),
        command: command.into(),
        annotations: [
            ("workflows.argoproj.io/description", "Say hello"),
            ("facteur.proompteng.ai/approvers", "200000000000000009"),
            ("facteur.proompteng.ai/max-concurrent", "1"),
            ("facteur.proompteng.ai/pattern.confirm", "YES|NO"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
        parameters: vec![
            pb::TemplateParameter {
                name: "greeting".into(),
                choices: vec!["hi".into(), "hello".into()],
                has_default: true,
                ..Default::default()
            },
            pb::TemplateParameter {
                name: "message".into(),
                has_default: true,
                interpolated_in: vec!["templates[0].script.source".into()],
                ..Default::default()
            },
        ],
    };
    let r = argo
        .dispatch()
        .report_workflow_templates(pb::ReportWorkflowTemplatesRequest {
            cluster: String::new(),
            adapter_id: "a1".into(),
            namespaces: vec!["argo-workflows".into()],
            templates: vec![
                template("hello-world", "hello"),
                template("dispatch-tpl", "dispatch"),
            ],
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(r.commands, 1);
    // A template outside the namespaces the report covers is refused alone, naming it; the
    // rest of the report is taken and nothing else changes.
    let bad = argo
        .dispatch()
        .report_workflow_templates(pb::ReportWorkflowTemplatesRequest {
            cluster: String::new(),
            adapter_id: "a1".into(),
            namespaces: vec!["other".into()],
            templates: vec![template("x", "x")],
        })
        .await
        .expect("taken template by template")
        .into_inner();
    assert_eq!(bad.commands, 1, "nothing else changed");
    assert!(
        bad.problems.iter().any(|p| p
            == "argo-workflows/x: report refused: namespace `argo-workflows` is not one of the reported namespaces"),
        "{:?}",
        bad.problems
    );

    let (ok, out, err) = tokio::task::block_in_place(|| ctl(&url, &["commands"]));
    assert!(ok, "{err}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(
        row("/hello "),
        [
            "/hello",
            "argo-workflows/hello-world",
            "[greeting=hi|hello]"
        ],
        "{out}"
    );
    assert_eq!(
        row("/dispatch ")[..2],
        ["/dispatch", "configuration"],
        "{out}"
    );
    assert_eq!(row("/status ")[..2], ["/status", "built-in"], "{out}");
    // Each free-text option's rule, where a template author sees why a value was refused.
    let rule = |command: &str, option: &str| {
        out.lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(command) && w.next() == Some(option)
            })
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(rule("/hello", "greeting"), "one of its choices", "{out}");
    assert!(
        rule("/hello", "message").starts_with("shell-restricted")
            && rule("/hello", "message")
                .ends_with("used in templates[0].script.source, at most 1000 characters"),
        "{out}"
    );
    assert_eq!(
        rule("/dispatch", "payload"),
        "free text (no `{{`, no control characters), at most 6000 characters",
        "{out}"
    );
    // Each policy rule with where it comes from: the annotation, or the operator's override.
    let policy = |command: &str, rule: &str| {
        out.lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(command) && w.next() == Some(rule)
            })
            .map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert!(out.contains("POLICY"), "{out}");
    assert_eq!(
        policy("/hello", "approvers"),
        "role 200000000000000009 annotation facteur.proompteng.ai/approvers",
        "{out}"
    );
    assert_eq!(
        policy("/hello", "max_concurrent"),
        "3 configuration (command_policies.hello)",
        "the configuration wins: {out}"
    );
    assert_eq!(
        policy("/hello", "max_per_hour"),
        "5 configuration (command_policies.hello)",
        "{out}"
    );
    assert_eq!(
        policy("/hello", "approval_values.confirm"),
        "pattern YES|NO annotation facteur.proompteng.ai/pattern.confirm",
        "{out}"
    );
    assert!(
        out.contains("not a command: argo-workflows/dispatch-tpl: command `dispatch` is already defined by the configuration"),
        "{out}"
    );
    let (_, status, _) = tokio::task::block_in_place(|| ctl(&url, &["status"]));
    assert!(
        status.contains("catalog: not a command: argo-workflows/dispatch-tpl"),
        "{status}"
    );
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn approve_and_reject_a_waiting_step() {
    use facteur_client::pb;
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path()).await;
    let url = format!("http://{}", srv.grpc_addr);
    let (ok, out, err) =
        tokio::task::block_in_place(|| ctl(&url, &["run", "dispatch", "payload=x"]));
    assert!(ok, "{err}");
    let run_id = started(&out);
    let (ok, _, err) = tokio::task::block_in_place(|| ctl(&url, &["approve", &run_id]));
    assert!(
        !ok && err.contains("FAILED_PRECONDITION") && err.contains("waits for no approval"),
        "{err}"
    );
    // What an argo-adapter reports of a Workflow waiting at a suspend step.
    let argo = facteur_client::Client::connect(
        facteur_client::ClientConfig::new(url.clone()).with_token(ARGO_TOKEN),
    )
    .await
    .expect("argo client");
    let admin = facteur_client::Client::connect(
        facteur_client::ClientConfig::new(url.clone()).with_token(TOKEN),
    )
    .await
    .expect("admin client");
    let run = |id: String| {
        let admin = admin.clone();
        async move {
            admin
                .admin()
                .get_run(pb::GetRunRequest { run_id: id })
                .await
                .expect("run")
                .into_inner()
                .run
                .expect("run")
        }
    };
    let wf = run(run_id.clone())
        .await
        .target
        .expect("target")
        .workflow_name;
    argo.dispatch()
        .report_workflow_status(pb::ReportWorkflowStatusRequest {
            run_id: run_id.clone(),
            namespace: "argo-workflows".into(),
            workflow_name: wf,
            phase: "Running".into(),
            source: "watch".into(),
            approval: Some(pb::Approval {
                node_id: "n1".into(),
                node_name: "gate".into(),
                parameters: vec![pb::ApprovalParameter {
                    name: "ok".into(),
                    default: "yes".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("report");
    let (ok, _, err) =
        tokio::task::block_in_place(|| ctl(&url, &["approve", &run_id, "--node", "other"]));
    assert!(
        !ok && err.contains("waits at `gate`, not at `other`"),
        "{err}"
    );
    let (ok, out, err) =
        tokio::task::block_in_place(|| ctl(&url, &["approve", &run_id, "ok=sure"]));
    assert!(ok, "{err}");
    assert!(out.contains("`gate` approved"), "{out}");
    let a = run(run_id.clone()).await.approval.expect("approval");
    assert_eq!((a.decided_by.as_str(), a.approved), ("ops", true));
    assert_eq!(a.values.get("ok").map(String::as_str), Some("sure"));
    let (ok, _, err) =
        tokio::task::block_in_place(|| ctl(&url, &["reject", &run_id, "--reason", "late"]));
    assert!(!ok && err.contains("already approved by ops"), "{err}");
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quota_set_live_and_its_usage_in_status() {
    use facteur_client::pb;
    const GUILD: &str = "100000000000000009";
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path()).await;
    let url = format!("http://{}", srv.grpc_addr);
    let (ok, _, err) = tokio::task::block_in_place(|| {
        ctl(
            &url,
            &["quota", "set", GUILD, "dispatch", "--max-concurrent", "x"],
        )
    });
    assert!(
        !ok && err.contains("--max-concurrent must be a number or `none`"),
        "{err}"
    );
    let (ok, out, err) = tokio::task::block_in_place(|| {
        ctl(
            &url,
            &[
                "quota",
                "set",
                GUILD,
                "dispatch",
                "--max-concurrent",
                "1",
                "--max-per-hour",
                "none",
            ],
        )
    });
    assert!(ok, "{err}");
    assert!(
        out.contains("/dispatch at most 1 at once, no limit per hour"),
        "{out}"
    );
    // The discord-adapter starts /dispatch twice in that guild: the second is over the quota.
    let adapter = facteur_client::Client::connect(
        facteur_client::ClientConfig::new(url.clone()).with_token(ADAPTER_TOKEN),
    )
    .await
    .expect("adapter client");
    let invoke = |id: &str| pb::InvokeRequest {
        context: Some(pb::InteractionContext {
            interaction_id: id.into(),
            application_id: "400000000000000001".into(),
            guild_id: GUILD.into(),
            channel_id: "500000000000000001".into(),
            user_id: "300000000000000001".into(),
            user_name: "alice".into(),
            role_ids: vec!["200000000000000001".into()],
            ..Default::default()
        }),
        kind: pb::InvocationKind::SlashCommand as i32,
        command: "dispatch".into(),
        ..Default::default()
    };
    adapter
        .command()
        .invoke(invoke("700000000000000501"))
        .await
        .expect("the first fits");
    let over = adapter
        .command()
        .invoke(invoke("700000000000000502"))
        .await
        .expect_err("over the quota");
    assert_eq!(over.code(), tonic::Code::ResourceExhausted);
    let (_, status, _) = tokio::task::block_in_place(|| ctl(&url, &["status"]));
    let row: Vec<&str> = status
        .lines()
        .find(|l| l.starts_with(GUILD))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    // No hourly limit: the hour is not counted, and the column says so.
    assert_eq!(row, [GUILD, "/dispatch", "1/1", "-"], "{status}");
    // Cleared: back to the configuration's (none), so the second fits.
    let (ok, out, _) =
        tokio::task::block_in_place(|| ctl(&url, &["quota", "set", GUILD, "dispatch"]));
    assert!(
        ok && out.contains("follows the configuration's quota"),
        "{out}"
    );
    adapter
        .command()
        .invoke(invoke("700000000000000503"))
        .await
        .expect("no quota any more");
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_run_has_a_number_people_can_type() {
    use facteur_client::pb;
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path()).await;
    let url = format!("http://{}", srv.grpc_addr);
    let admin = facteur_client::Client::connect(
        facteur_client::ClientConfig::new(url.clone()).with_token(TOKEN),
    )
    .await
    .expect("client");
    // A thousand runs started together.
    let mut tasks = Vec::new();
    for t in 0..25 {
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for k in 0..40 {
                let run = admin
                    .admin()
                    .start_run(pb::StartRunRequest {
                        cluster: String::new(),
                        command: "dispatch".into(),
                        parameters: [("payload".to_string(), "x".to_string())].into(),
                        idempotency_key: format!("h-{t}-{k}"),
                    })
                    .await
                    .expect("start")
                    .into_inner()
                    .run
                    .expect("run");
                out.push((run.number, run.id));
            }
            out
        }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.extend(t.await.expect("task"));
    }
    let numbers: std::collections::BTreeSet<i64> = runs.iter().map(|r| r.0).collect();
    assert_eq!(numbers.len(), 1000, "a thousand distinct handles");
    // Each is accepted by facteurctl, as `#n`, and names its own run.
    let runs = std::sync::Arc::new(runs);
    let checkers: Vec<_> = (0..4)
        .map(|w| {
            let (runs, url) = (runs.clone(), url.clone());
            std::thread::spawn(move || {
                for (n, id) in runs.iter().skip(w).step_by(4) {
                    let (ok, out, err) = ctl(&url, &["run", "get", &format!("#{n}")]);
                    assert!(ok && out.contains(id.as_str()), "#{n}: {out}{err}");
                }
            })
        })
        .collect();
    for c in checkers {
        c.join().expect("checker");
    }
    // A unique prefix of 8 characters or more works; an ambiguous one lists the candidates.
    let (n, id) = &runs[0];
    let (ok, out, err) = tokio::task::block_in_place(|| ctl(&url, &["run", "get", &id[..30]]));
    assert!(ok && out.contains(&format!("#{n}")), "{out}{err}");
    let (ok, _, err) = tokio::task::block_in_place(|| ctl(&url, &["run", "get", &id[..8]]));
    assert!(!ok, "ambiguous");
    assert!(
        err.contains("names more than one run") && err.contains(", …"),
        "{err}"
    );
    let (ok, _, err) = tokio::task::block_in_place(|| ctl(&url, &["cancel", &format!("#{n}")]));
    assert!(ok, "cancel by number: {err}");
    let (ok, _, err) = tokio::task::block_in_place(|| ctl(&url, &["run", "get", "abc"]));
    assert!(!ok && err.contains("is not a run"), "{err}");
    srv.stop().await.expect("stop");
}
