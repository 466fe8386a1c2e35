//! Generates the wire types with a vendored `protoc`, so building keel
//! needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment while this runs.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/keel.proto", "proto/raft.proto"], &["proto"])?;
    Ok(())
}
