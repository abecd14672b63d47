//! `cargo xtask bench`: leakbpf against no tool, its floor and peer tools.

mod peers;

use std::path::Path;

use anyhow::Result;
use clap::Args;

/// Options of `cargo xtask bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Install and prepare the peer tools, then exit
    #[arg(long)]
    pub setup_peers: bool,
}

pub fn run(_root: &Path, args: &BenchArgs) -> Result<()> {
    if args.setup_peers {
        return peers::setup();
    }
    Ok(())
}
