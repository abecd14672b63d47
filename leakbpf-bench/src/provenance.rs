//! Where a run's results come from, for its report: the command, the time, the commit.

use std::{env, path::Path, process::Command};

use devutil::try_output;

/// `cargo xtask bench ARGS` as invoked (xtask passes ARGS on unchanged).
pub fn command_line() -> String {
    let words: Vec<String> = ["cargo", "xtask", "bench"]
        .into_iter()
        .map(str::to_owned)
        .chain(env::args().skip(1))
        .collect();
    words.join(" ")
}

/// Now, UTC, to the minute.
pub fn date_utc() -> String {
    try_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M"])).unwrap_or_default()
}

/// The commit the agent was built from (`-dirty` with local changes to it).
pub fn commit(root: &Path) -> Option<String> {
    let git = |args: &[&str]| try_output(Command::new("git").current_dir(root).args(args));
    let hash = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "leakbpf",
        "leakbpf-ebpf",
        "leakbpf-common",
    ])
    .is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
