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
        .build_server(false)
        // A request that does not decode is INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(fds.clone())?;
    // The server on its own, over the messages above, except that a watch
    // stream sends `wire::EncodedUpdate`: a `VariableUpdate` encoded once and
    // shared by every stream it goes to (same bytes on the wire).
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path("crate::codec::ProtoCodec")
        .extern_path(".snakepit.bridge", "crate::proto")
        .extern_path(".snakepit.bridge.VariableUpdate", "crate::wire::EncodedUpdate")
        .out_dir(&server_dir)
        .compile_fds(fds)?;
    Ok(())
}
