//! Compiles `schema/qim/v1/qim.proto` with the pure-Rust `protox`, so no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = "schema/qim/v1/qim.proto";
    println!("cargo:rerun-if-changed={schema}");
    let fds = protox::compile([schema], ["schema"])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
