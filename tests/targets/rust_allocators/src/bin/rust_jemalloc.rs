//! rust_leaker on tikv-jemallocator, as Rust servers use it.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "../../../../src/bin/rust_leaker.rs"]
mod leaker;

fn main() -> ExitCode {
    leaker::main()
}
