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
    fs::write(out.join("facteur_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
