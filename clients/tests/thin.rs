//! `facteur-client` is what a service that only calls facteur depends on: the generated
//! clients, auth, TLS and retry. None of facteur's own configuration or runtime, no
//! OpenTelemetry, no allocator (those are `facteur-runtime`'s).

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
            "-e",
            "normal",
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
    ] {
        assert!(
            !crates.contains(&banned),
            "facteur-client depends on {banned}:\n{tree}"
        );
    }
}
