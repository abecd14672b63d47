//! What unit tests need of the machine: root, or a system file. A test that cannot have
//! it says so on the terminal (past the test harness's capture) and returns early, so a
//! skip is seen and never passes for a run.

use std::{io::Write, path::Path};

/// Whether this process is root; otherwise the skip of `test` is said.
pub fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skipped(test, "needs root (loads eBPF maps or mounts tracefs)");
    }
    root
}

/// Whether `path` exists; otherwise the skip of `test` is said, with what installs it.
pub fn file(test: &str, path: &str, installed_by: &str) -> bool {
    let exists = Path::new(path).exists();
    if !exists {
        skipped(test, &format!("needs {path} ({installed_by})"));
    }
    exists
}

fn skipped(test: &str, reason: &str) {
    // Straight to the terminal: the harness captures what `eprintln!` writes.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}
