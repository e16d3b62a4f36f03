//! Compiles `proto/pubsub_api.proto` into Rust (messages, client and
//! server) with protox, a protobuf compiler in Rust, so building needs no
//! `protoc` on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["pubsub_api.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
