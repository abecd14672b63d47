//! Folded stacks: one line per call site, its frames outermost first and separated by
//! `;`, then its outstanding bytes (`main;Server::handleJoin;EventManager::subscribe
//! 1031320`), as flamegraph.pl, inferno and speedscope read them. A stack starts at the
//! frame its call site is shown at, past allocation plumbing, unless all frames are
//! asked for (`--show-alloc-frames`).

use std::io::{self, Write};

use super::{Render, table::printable};
use crate::{
    snapshot::{Callsite, Snapshot},
    symbolize::Frame,
};

pub struct Folded {
    pub all_frames: bool,
}

impl Render for Folded {
    fn snapshot(&mut self, snapshot: &Snapshot, out: &mut dyn Write) -> io::Result<()> {
        self.document(&[snapshot], out)
    }

    fn document(&mut self, snapshots: &[&Snapshot], out: &mut dyn Write) -> io::Result<()> {
        for line in lines(snapshots, self.all_frames) {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

/// The folded stacks of the call sites that hold bytes; with several processes, each
/// process's under a root frame naming it.
pub(super) fn lines(snapshots: &[&Snapshot], all_frames: bool) -> Vec<String> {
    let several = snapshots.len() > 1;
    let mut lines = Vec::new();
    for snapshot in snapshots {
        let root = several.then(|| process_name(snapshot));
        for site in snapshot.callsites.iter().filter(|site| site.bytes > 0) {
            let mut names: Vec<String> = root.iter().cloned().collect();
            if site.frames.is_empty() {
                names.push("[stack not available]".to_owned());
            }
            names.extend(shown_frames(site, all_frames).iter().rev().map(frame_name));
            lines.push(format!("{} {}", names.join(";"), site.bytes));
        }
    }
    lines
}

/// The frames of `site` a document shows, innermost first: from the one the site is
/// shown at, or all of them.
pub(super) fn shown_frames(site: &Callsite, all_frames: bool) -> &[Frame] {
    let first = if all_frames { 0 } else { site.site_frame };
    site.frames.get(first..).unwrap_or_default()
}

/// `command (pid N)`, or `pid N` for a process never named.
pub(super) fn process_name(snapshot: &Snapshot) -> String {
    match &snapshot.process.command {
        Some(command) => format!("{} (pid {})", printable(command), snapshot.pid),
        None => format!("pid {}", snapshot.pid),
    }
}

/// A frame's name in a folded line: its function, else `[module+0xoffset]` (the file
/// name only) or its address. `;` separates frames, so one in a name (Rust's `[u8; 8]`)
/// becomes `:`; control characters are escaped as the table shows them.
fn frame_name(frame: &Frame) -> String {
    let name = match (&frame.function, &frame.module, frame.offset) {
        (Some(function), _, _) => printable(function).into_owned(),
        (None, Some(module), Some(offset)) => {
            let file = module.rsplit('/').next().unwrap_or(module);
            format!("[{}+{offset:#x}]", printable(file))
        }
        _ => format!("[{:#x}]", frame.address),
    };
    name.replace(';', ":")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::snapshot::example;

    #[test]
    fn writes_outer_frames_first_and_names_what_has_no_name() {
        let mut snapshot = example();
        let named = |function: &str, inlined| Frame {
            function: Some(function.into()),
            inlined,
            ..Frame::default()
        };
        snapshot.callsites[0].frames = Arc::from([
            named("__rust_alloc", false),
            named("alloc::alloc", true),
            named("make<[u8; 8]>", false),
            Frame {
                address: 0x7f00_0000_1234,
                module: Some("/usr/lib/libstdc++.so.6".into()),
                offset: Some(0xa57b9),
                ..Frame::default()
            },
            Frame {
                address: 0x1234,
                ..Frame::default()
            },
        ]);
        snapshot.callsites[0].site_frame = 1;
        let folded = |all_frames| {
            let mut out = Vec::new();
            Folded { all_frames }.snapshot(&snapshot, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            folded(false),
            "[0x1234];[libstdc++.so.6+0xa57b9];make<[u8: 8]>;alloc::alloc 368\n"
        );
        assert_eq!(
            folded(true),
            "[0x1234];[libstdc++.so.6+0xa57b9];make<[u8: 8]>;alloc::alloc;__rust_alloc 368\n"
        );
    }
}
