//! Compiles pprof's `profile.proto` (vendored unchanged from github.com/google/pprof,
//! `proto/profile.proto`) into prost types for the pprof output. protox parses it in
//! Rust, so building leakbpf needs no `protoc`.

use std::{error::Error, path::Path};

fn main() -> Result<(), Box<dyn Error>> {
    let proto = Path::new("proto/profile.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
