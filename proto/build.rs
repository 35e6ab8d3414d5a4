//! Generates the Rust code for every `.proto` in this crate with protox (pure Rust, no `protoc`)
//! and writes the descriptor set that server reflection serves.
use prost::Message;
use std::{env, fs, path::PathBuf};

const FILES: &[&str] = &[
    "facteur/v1/run.proto",
    "facteur/v1/command.proto",
    "facteur/v1/codex.proto",
    "facteur/v1/dispatch.proto",
    "facteur/v1/admin.proto",
    "proompteng/froussard/v1/codex_task.proto",
    "proompteng/facteur/v1/contract.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=facteur");
    println!("cargo:rerun-if-changed=proompteng");
    let fds = protox::compile(FILES, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let bytes = fds.encode_to_vec();
    fs::write(out.join("facteur_descriptor.bin"), &bytes)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Timestamps with protobuf's JSON mapping (RFC 3339), so CodexTask round-trips as proto-JSON.
        .extern_path(".google.protobuf.Timestamp", "::pbjson_types::Timestamp")
        .compile_fds(fds)?;
    // serde impls following protobuf's JSON mapping, for the legacy CodexTask only.
    // Unknown fields are skipped, as protobuf's binary decoding skips them: a producer built
    // against a newer CodexTask loses no task (`codex_task_unknown_fields` names them).
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .ignore_unknown_fields()
        .build(&[".proompteng.froussard.v1"])?;
    Ok(())
}
