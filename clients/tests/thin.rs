//! `facteur-client` is what a service that only calls facteur depends on: the generated
//! clients, auth, TLS and retry. None of facteur's own configuration or runtime, no
//! OpenTelemetry, no allocator (those are `facteur-runtime`'s), and without its default `cli`
//! feature none of facteurctl's command-line crates either.

use std::process::Command;

#[test]
fn the_client_crate_pulls_no_configuration_telemetry_or_allocator() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "--manifest-path",
            manifest,
            "-p",
            "facteur-client",
            "--no-default-features",
            "-e",
            "normal,no-proc-macro",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"tonic"), "the tree was read: {tree}");
    for banned in [
        "facteur-config",
        "facteur-runtime",
        "facteur-server",
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry-otlp",
        "tracing-opentelemetry",
        "tracing-subscriber",
        "libmimalloc-sys",
        "mimalloc",
        // facteurctl's, behind the default `cli` feature (chrono stays: the generated
        // types' JSON timestamps use it).
        "clap",
        "anyhow",
    ] {
        assert!(
            !crates.contains(&banned),
            "facteur-client depends on {banned}:\n{tree}"
        );
    }
}
