//! `leakbpf diff`: what changed between two saved runs, as a table or one JSON object.

use std::fmt::Write as _;

use super::table::printable;
use crate::analyze::diff::{Change, Diff};

/// Frames shown per call site.
const DIFF_FRAMES: usize = 6;

pub fn diff_table(diff: &Diff) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "leakbpf diff: before pid {} report #{} at {}: {} B in {} allocations; after pid {} report #{} at {}: {} B in {} allocations",
        diff.before.pid,
        diff.before.report,
        diff.before.timestamp,
        diff.before.outstanding_bytes,
        diff.before.outstanding_allocations,
        diff.after.pid,
        diff.after.report,
        diff.after.timestamp,
        diff.after.outstanding_bytes,
        diff.after.outstanding_allocations,
    );
    let count = |change| diff.callsites.iter().filter(|c| c.change == change).count();
    let _ = writeln!(
        out,
        "  {} new, {} gone, {} grown, {} shrunk, {} unchanged call sites",
        count(Change::New),
        count(Change::Gone),
        count(Change::Grown),
        count(Change::Shrunk),
        diff.unchanged
    );
    if diff.callsites.is_empty() {
        let _ = writeln!(out, "  no call site changed");
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<7}  {:>14}  {:>14}  {:>10}  {:>13}",
        "CHANGE", "BYTES", "BYTES CHANGE", "ALLOCS", "RATE CHANGE"
    );
    for site in &diff.callsites {
        let change = match site.change {
            Change::New => "new",
            Change::Gone => "gone",
            Change::Grown => "grown",
            Change::Shrunk => "shrunk",
        };
        let after = site.after.unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<7}  {:>14}  {:>+14}  {:>+10}  {:>+11.0}/s",
            change,
            after.bytes,
            site.bytes_change,
            site.allocations_change,
            site.bytes_per_s_change
        );
        for frame in site.frames.iter().take(DIFF_FRAMES) {
            let name = frame.function.as_deref().unwrap_or("[unknown]");
            let _ = writeln!(out, "          {}", printable(name));
        }
    }
    out
}
