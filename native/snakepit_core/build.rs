//! Generates the gRPC service and messages from `proto/snakepit_bridge.proto`.
//! protox parses the proto in pure Rust, so no system `protoc` is needed.
//! Also writes the encoded descriptor set (the proto and the well-known types
//! it imports) that server reflection serves: `lib.rs`'s `FILE_DESCRIPTOR_SET`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("proto");
    let proto = proto_dir.join("snakepit_bridge.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&proto_dir])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("snakepit_bridge_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A request that does not decode is INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
