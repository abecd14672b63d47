//! rust_leaker on the mimalloc crate, which calls mimalloc's `mi_*` interface.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../../../src/bin/rust_leaker.rs"]
mod leaker;

fn main() -> ExitCode {
    leaker::main()
}
