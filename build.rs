//! Compiles `proto/` into the tonic/prost code that core and gateway share.
//! protoc and the well-known types come from a vendored copy, so a fresh
//! machine needs nothing installed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/emit/v1/job.proto",
    "proto/emit/v1/jobs_service.proto",
    "proto/emit/v1/admin_service.proto",
    "proto/emit/v1/event_service.proto",
    "proto/emit/v1/worker_service.proto",
    "proto/emit/v1/schedules_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("emit_descriptor.bin"))
        .compile_with_config(config, &protos, &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
