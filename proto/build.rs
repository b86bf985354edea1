//! Compiles the crossbatch.v1 protos with protox (pure Rust: no system protoc) and
//! generates the tonic clients and servers. The descriptor set for the server's
//! reflection holds only the scoring API (the coordinator is the collector's).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = "crossbatch/v1/crossbatch.proto";
    let coordinator = "crossbatch/v1/coordinator.proto";
    println!("cargo:rerun-if-changed={api}");
    println!("cargo:rerun-if-changed={coordinator}");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let api_fds = protox::compile([api], ["."])?;
    std::fs::write(
        out.join("crossbatch_descriptor.bin"),
        api_fds.encode_to_vec(),
    )?;
    let all = protox::compile([api, coordinator], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(all)?;
    Ok(())
}
