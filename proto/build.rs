//! Generates the wire types with a vendored `protoc`, so building keel
//! needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment while this runs.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    // The client API decodes with keel's codec (`src/codec.rs`: an
    // undecodable request is INVALID_ARGUMENT with `keel-error`); the peer
    // API keeps prost's. tonic-build takes one codec per run, hence two.
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::KeelCodec")
        .compile_protos(&["proto/keel.proto"], &["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/raft.proto"], &["proto"])?;
    Ok(())
}
