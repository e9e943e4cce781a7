//! Compiles `lambdarec/v1/*.proto` into Rust (messages, client and server) plus a file descriptor
//! set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["lambdarec/v1/recommender.proto", "lambdarec/v1/log.proto"];

    // A vendored protoc keeps the build offline and independent of what the host has installed;
    // handing its path to the prost config avoids mutating the process environment.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join("lambdarec_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;

    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
