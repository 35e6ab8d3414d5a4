//! The `facteur` binary as an operator runs it.

use std::process::Command;

fn facteur() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_facteur"));
    // The developer's environment must not leak into these checks.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FACTEUR_")) {
        c.env_remove(k);
    }
    c
}

#[test]
fn config_check_names_every_bad_key_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "server:\n  listen_adress: 127.0.0.1:1\nrole_map:\n  Deploy: [\"12\"]\n",
    )
    .expect("write");
    let out = facteur()
        .arg("--config")
        .arg(&path)
        .args(["config", "check"])
        .output()
        .expect("run facteur");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.listen_adress: unknown key"), "{err}");
    assert!(err.contains("role_map.Deploy"), "{err}");
}

#[test]
fn config_check_prints_the_effective_config_without_secrets() {
    let out = facteur()
        .args(["config", "check"])
        .env(
            "FACTEUR_POSTGRES_DSN",
            "postgres://facteur:s3cret-pw@db:5432/facteur",
        )
        .env(
            "FACTEUR_AUTH_TOKENS",
            r#"[{"name":"ops","role":"admin","token":"s3cret-token-0123456"}]"#,
        )
        .env("FACTEUR_ARGO_NAMESPACE", "from-env")
        .output()
        .expect("run facteur");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("namespace: from-env"), "{shown}");
    assert!(
        shown.contains("postgres://facteur:***@db:5432/facteur"),
        "{shown}"
    );
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn a_bad_environment_stops_serve_before_it_binds() {
    let out = facteur()
        .arg("serve")
        .env("FACTEUR_SERVER_LISTEN_ADDRESS", "nowhere")
        .output()
        .expect("run facteur");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen_address"));
}
