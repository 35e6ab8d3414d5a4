//! Loading, layering and validation of the shared configuration.

use facteur_config::{Config, ConfigErrors, Process, all_keys, load, load_from};
use std::collections::BTreeMap;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[track_caller]
fn errors(r: Result<Config, ConfigErrors>) -> Vec<(String, String)> {
    match r {
        Ok(_) => panic!("expected configuration errors"),
        Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
    }
}

#[track_caller]
fn assert_key(errs: &[(String, String)], key: &str) {
    assert!(
        errs.iter().any(|(k, _)| k == key),
        "no error for `{key}` in {errs:?}"
    );
}

#[test]
fn example_file_loads_and_documents_every_key() {
    let text = include_str!("../example.yaml");
    let c =
        load_from(Some(text), &BTreeMap::new(), Process::Server).expect("example.yaml is valid");
    assert_eq!(c.server.grpc_listen_address, "127.0.0.1:50051");
    let doc: serde_json::Value = serde_yaml_ng::from_str(text).expect("yaml");
    for (key, _) in all_keys() {
        let pointer = format!("/{}", key.replace('.', "/"));
        assert!(
            doc.pointer(&pointer).is_some(),
            "example.yaml does not document `{key}`"
        );
    }
}

#[test]
fn defaults_need_nothing_for_the_server() {
    let c = load_from(None, &BTreeMap::new(), Process::Server).expect("defaults are valid");
    assert_eq!(c.database_url(), "sqlite://facteur.db?mode=rwc");
    assert_eq!(c.server.listen_address, "127.0.0.1:8080");
    assert!(c.redis.url.is_empty());
    assert!(!c.auth_enabled());
}

#[test]
fn environment_wins_over_file_and_old_names_work() {
    let yaml = "server:\n  listen_address: 127.0.0.1:9000\nargo:\n  namespace: from-file\n";
    let e = env(&[
        ("FACTEUR_SERVER_LISTEN_ADDRESS", "127.0.0.1:9100"),
        ("FACTEUR_SERVER_GRPC_LISTEN_ADDRESS", "127.0.0.1:9101"),
        ("FACTEUR_POSTGRES_DSN", "postgres://u:p@127.0.0.1/db"),
        ("FACTEUR_REDIS_URL", "redis://127.0.0.1:6379"),
        ("FACTEUR_ARGO_NAMESPACE", "from-env"),
        ("FACTEUR_ARGO_WORKFLOW_TEMPLATE", "tmpl"),
        ("FACTEUR_ARGO_SERVICE_ACCOUNT", "sa"),
        (
            "FACTEUR_ARGO_PARAMETERS",
            r#"{"rawEvent":"x","Payload":"y"}"#,
        ),
        ("FACTEUR_ROLE_MAP", r#"{"dispatch":["123456789012345678"]}"#),
        ("FACTEUR_DISABLE_DISPATCHER", "true"),
        ("FACTEUR_KUBECONFIG", "/tmp/kc"),
        ("FACTEUR_CODEX_ENABLE_IMPLEMENTATION_ORCHESTRATION", "1"),
        (
            "FACTEUR_CODEX_IMPLEMENTATION_ORCHESTRATOR_AUTONOMOUS_NAMESPACE",
            "jangar",
        ),
        (
            "FACTEUR_CODEX_IMPLEMENTATION_ORCHESTRATOR_PARAMETERS",
            r#"{"Mixed_Case":"v"}"#,
        ),
        ("FACTEUR_DISCORD_BOT_TOKEN", "bot"),
        ("FACTEUR_DISCORD_APPLICATION_ID", "123456789012345678"),
        ("FACTEUR_DISCORD_PUBLIC_KEY", "ab"),
        ("FACTEUR_DISCORD_GUILD_ID", "123456789012345679"),
        (
            "FACTEUR_AUTH_TOKENS",
            r#"[{"name":"ops","role":"admin","token":"0123456789abcdef0"}]"#,
        ),
    ]);
    let c = load_from(Some(yaml), &e, Process::Server).expect("valid");
    assert_eq!(c.server.listen_address, "127.0.0.1:9100");
    assert_eq!(c.server.grpc_listen_address, "127.0.0.1:9101");
    assert_eq!(c.database_url(), "postgres://u:p@127.0.0.1/db");
    assert_eq!(c.redis.url.expose(), "redis://127.0.0.1:6379");
    assert_eq!(c.argo.namespace, "from-env");
    assert_eq!(c.argo.workflow_template, "tmpl");
    assert_eq!(c.argo.service_account, "sa");
    assert_eq!(
        c.argo.parameters.get("rawEvent").map(String::as_str),
        Some("x")
    );
    assert_eq!(
        c.argo.parameters.get("Payload").map(String::as_str),
        Some("y"),
        "keys keep their case"
    );
    assert_eq!(
        c.role_map["dispatch"],
        vec!["123456789012345678".to_string()]
    );
    assert!(c.dispatcher.disabled);
    assert_eq!(c.argo.kubeconfig, "/tmp/kc");
    assert!(c.codex_implementation_orchestrator.enabled);
    assert_eq!(
        c.codex_implementation_orchestrator.autonomous_namespace,
        "jangar"
    );
    assert!(
        c.codex_implementation_orchestrator
            .parameters
            .contains_key("Mixed_Case")
    );
    assert_eq!(c.discord.guild_id, "123456789012345679");
    assert_eq!(c.auth.tokens[0].role, "admin");
    assert!(c.auth_enabled());
}

#[test]
fn unknown_keys_and_invalid_values_are_all_reported() {
    let yaml = r#"
server:
  listen_adress: 127.0.0.1:1
  grpc_listen_address: not-an-address
  shutdown_grace_seconds: soon
bogus: 1
role_map:
  Deploy: ["123"]
  ok: []
auth:
  tokens:
    - {name: a, role: root, token: short}
"#;
    let errs = errors(load_from(Some(yaml), &BTreeMap::new(), Process::Server));
    for key in [
        "server.listen_adress",
        "bogus",
        "server.grpc_listen_address",
        "server.shutdown_grace_seconds",
        "role_map.Deploy",
        "role_map.ok",
        "auth.tokens[0].role",
        "auth.tokens[0].token",
    ] {
        assert_key(&errs, key);
    }
    let unknown = errs
        .iter()
        .find(|(k, _)| k == "bogus")
        .map(|(_, m)| m.as_str());
    assert_eq!(unknown, Some("unknown key"));
}

#[test]
fn codex_batch_slots_must_leave_a_connection_free() {
    for slots in ["0", "10"] {
        let yaml = format!("database:\n  max_connections: 10\n  codex_batch_slots: {slots}\n");
        let errs = errors(load_from(
            Some(yaml.as_str()),
            &BTreeMap::new(),
            Process::Server,
        ));
        assert!(
            errs.iter()
                .any(|(k, m)| k == "database.codex_batch_slots" && m.contains("below")),
            "{slots}: {errs:?}"
        );
    }
    let ok = "database:\n  max_connections: 10\n  codex_batch_slots: 9\n";
    let c = load_from(Some(ok), &BTreeMap::new(), Process::Server).expect("9 of 10 is valid");
    assert_eq!(c.database.codex_batch_slots, 9);
}

#[test]
fn role_map_follows_the_schema() {
    let dup = env(&[(
        "FACTEUR_ROLE_MAP",
        r#"{"deploy":["123456789012345678","123456789012345678"]}"#,
    )]);
    let errs = errors(load_from(None, &dup, Process::Server));
    assert!(
        errs.iter()
            .any(|(k, m)| k == "role_map.deploy" && m.contains("twice")),
        "{errs:?}"
    );
    let wrong_type = env(&[("FACTEUR_ROLE_MAP", r#"{"deploy":"123456789012345678"}"#)]);
    assert_key(
        &errors(load_from(None, &wrong_type, Process::Server)),
        "role_map.deploy",
    );
    let not_json = env(&[("FACTEUR_ROLE_MAP", "deploy=1")]);
    let errs = errors(load_from(None, &not_json, Process::Server));
    assert!(
        errs.iter()
            .any(|(k, m)| k == "role_map" && m.contains("FACTEUR_ROLE_MAP")),
        "{errs:?}"
    );
    let good = env(&[(
        "FACTEUR_ROLE_MAP",
        r#"{"codex:plan":["12345678901234567","99999999999999999999"]}"#,
    )]);
    load_from(None, &good, Process::Server).expect("valid role map");
}

#[test]
fn bad_environment_values_name_the_variable() {
    let e = env(&[
        ("FACTEUR_DISABLE_DISPATCHER", "maybe"),
        ("FACTEUR_REDIS_POOL_SIZE", "-1"),
    ]);
    let errs = errors(load_from(None, &e, Process::Server));
    assert!(
        errs.iter()
            .any(|(k, m)| k == "dispatcher.disabled" && m.contains("FACTEUR_DISABLE_DISPATCHER")),
        "{errs:?}"
    );
    assert_key(&errs, "redis.pool_size");
}

#[test]
fn each_process_requires_only_its_keys() {
    // The server needs no Discord token; the adapters need no database but need the control plane.
    load_from(None, &BTreeMap::new(), Process::Server).expect("server needs nothing");
    let errs = errors(load_from(None, &BTreeMap::new(), Process::DiscordAdapter));
    for key in [
        "control_plane.url",
        "discord.bot_token",
        "discord.application_id",
        "discord.public_key",
    ] {
        assert_key(&errs, key);
    }
    assert!(
        !errs
            .iter()
            .any(|(k, _)| k.starts_with("database") || k.starts_with("postgres"))
    );
    // Gateway mode receives nothing over HTTP: no signature key needed.
    let gateway = env(&[
        ("FACTEUR_CONTROL_PLANE_URL", "http://127.0.0.1:50051"),
        ("FACTEUR_DISCORD_BOT_TOKEN", "bot"),
        ("FACTEUR_DISCORD_APPLICATION_ID", "400000000000000001"),
        ("FACTEUR_DISCORD_MODE", "gateway"),
    ]);
    load_from(None, &gateway, Process::DiscordAdapter).expect("gateway mode needs no public key");
    let argo = env(&[
        ("FACTEUR_CONTROL_PLANE_URL", "http://127.0.0.1:50051"),
        ("FACTEUR_DATABASE_URL", "mysql://x"),
    ]);
    load_from(None, &argo, Process::ArgoAdapter).expect("the argo-adapter ignores the database");
    assert_key(
        &errors(load_from(None, &argo, Process::Server)),
        "database.url",
    );
}

#[test]
fn query_string_passwords_are_redacted_too() {
    use facteur_config::redact_url;
    for (url, shown) in [
        (
            "postgres://facteur@db/facteur?password=hunter2&sslmode=require",
            "postgres://***@db/facteur?password=***&sslmode=require",
        ),
        (
            "postgres://db?user=facteur&password=hunter2",
            "postgres://db?user=facteur&password=***",
        ),
        (
            "redis://cache:6379/0?password=hunter2",
            "redis://cache:6379/0?password=***",
        ),
        (
            "postgres://u:hunter2@db/x?sslpassword=hunter2&application_name=f",
            "postgres://u:***@db/x?sslpassword=***&application_name=f",
        ),
        ("http://h/x?token=hunter2", "http://h/x?token=***"),
        (
            "sqlite://facteur.db?mode=rwc",
            "sqlite://facteur.db?mode=rwc",
        ),
    ] {
        assert_eq!(redact_url(url), shown);
    }
    let e = env(&[
        (
            "FACTEUR_DATABASE_URL",
            "postgres://facteur@db/facteur?password=hunter2-q",
        ),
        ("FACTEUR_REDIS_URL", "redis://cache:6379?password=hunter2-r"),
    ]);
    let c = load_from(None, &e, Process::Server).expect("valid");
    let shown = c.redacted_yaml();
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn secrets_never_appear_in_the_redacted_view_or_debug() {
    let e = env(&[
        (
            "FACTEUR_POSTGRES_DSN",
            "postgres://facteur:hunter2-db@db/facteur",
        ),
        ("FACTEUR_REDIS_URL", "redis://:hunter2-redis@cache:6379"),
        ("FACTEUR_DISCORD_BOT_TOKEN", "hunter2-bot"),
        ("FACTEUR_CONTROL_PLANE_TOKEN", "hunter2-cp"),
        (
            "FACTEUR_AUTH_TOKENS",
            r#"[{"name":"ops","role":"admin","token":"hunter2-token-0123"}]"#,
        ),
    ]);
    let c = load_from(None, &e, Process::Server).expect("valid");
    let shown = c.redacted_yaml();
    let debug = format!("{c:?}");
    for secret in [
        "hunter2-db",
        "hunter2-redis",
        "hunter2-bot",
        "hunter2-cp",
        "hunter2-token",
    ] {
        assert!(
            !shown.contains(secret),
            "{secret} leaked into config check output:\n{shown}"
        );
        assert!(!debug.contains(secret), "{secret} leaked into Debug");
    }
    assert!(
        shown.contains("postgres://facteur:***@db/facteur"),
        "{shown}"
    );
}

#[test]
fn a_missing_config_file_is_an_error() {
    let errs = errors(load(
        Some(std::path::Path::new("/nonexistent/facteur.yaml")),
        Process::Server,
    ));
    assert_key(&errs, "config file");
}

#[test]
fn the_kubernetes_configuration_is_valid_for_every_process() {
    let text = include_str!("../../deploy/kubernetes/base/app/facteur.yaml");
    // What the Deployments inject from the Secret `facteur-secrets`.
    let secrets = env(&[
        (
            "FACTEUR_POSTGRES_DSN",
            "postgres://facteur:pw@postgres/facteur",
        ),
        ("FACTEUR_REDIS_URL", "redis://redis:6379"),
        (
            "FACTEUR_AUTH_TOKENS",
            r#"[{"name":"ops","role":"admin","token":"0123456789abcdef0123"}]"#,
        ),
        ("FACTEUR_CONTROL_PLANE_TOKEN", "0123456789abcdef0123"),
        ("FACTEUR_DISCORD_BOT_TOKEN", "bot-token"),
        ("FACTEUR_DISCORD_APPLICATION_ID", "123456789012345678"),
        (
            "FACTEUR_DISCORD_PUBLIC_KEY",
            "ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12",
        ),
    ]);
    for process in [
        Process::Server,
        Process::DiscordAdapter,
        Process::ArgoAdapter,
    ] {
        if let Err(e) = load_from(Some(text), &secrets, process) {
            panic!("deploy/kubernetes/base/app/facteur.yaml is invalid for {process:?}: {e}");
        }
    }
}

#[test]
fn every_secret_the_configuration_holds_can_be_masked() {
    let e = env(&[
        (
            "FACTEUR_DATABASE_URL",
            "postgres://facteur:db-pass-1@db/facteur?sslpassword=ssl-pass-2",
        ),
        (
            "FACTEUR_REDIS_URL",
            "redis://cache:6379?password=redis-pass-3",
        ),
        ("FACTEUR_ARGO_CALLBACK_TOKEN", "callback-token-4"),
    ]);
    let mut c = load_from(None, &e, Process::Server).expect("valid");
    c.auth.tokens.push(facteur_config::TokenConfig {
        cluster: String::new(),
        name: "ops".into(),
        role: "admin".into(),
        token: facteur_config::Secret("admin-token-5".into()),
    });
    let secrets = c.secrets();
    let log = "auth db-pass-1 ssl-pass-2 redis-pass-3 callback-token-4 admin-token-5 done";
    assert_eq!(
        facteur_config::mask_secrets(log, &secrets),
        "auth *** *** *** *** *** done"
    );
    // Too short to mask without garbling ordinary words.
    assert_eq!(facteur_config::mask_secrets("a b", &["a".into()]), "a b");
}

#[test]
fn command_policies_and_approval_values_are_checked() {
    let yaml = r#"
commands:
  - name: deploy
    description: Deploy
    approval_values:
      ticket: {pattern: "[A-Z]+-[0-9]+", pattern_hint: "a ticket like OPS-12"}
      broken: {pattern: "("}
command_policies:
  deploy: {max_per_hour: 3}
  hello:
    approvers: ["admins"]
    max_concurrent: 2
  "Bad:Name": {}
"#;
    let errs = errors(load_from(Some(yaml), &BTreeMap::new(), Process::Server));
    let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "commands[0].approval_values.broken.pattern",
            "command_policies.Bad:Name",
            "command_policies.deploy",
            "command_policies.hello.approvers[0]",
        ],
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|(k, m)| k == "command_policies.deploy"
                && m.contains("set its policy on commands[0]")),
        "{errs:?}"
    );
    let good = r#"
command_policies:
  hello: {approvers: ["200000000000000009"], require_second_person: true, max_per_hour: 5}
"#;
    let c = load_from(Some(good), &BTreeMap::new(), Process::Server).expect("valid");
    assert_eq!(c.command_policies["hello"].max_per_hour, Some(5));
}
