//! A flame graph of the outstanding bytes, drawn by inferno from the folded stacks: each
//! frame as wide as the bytes its callees hold, the title naming the process, the time
//! and the totals. Interactive in a browser (inferno's script: zoom, search).

use std::io::{self, Write};

use inferno::flamegraph::{
    self, Options, TextTruncateDirection,
    color::{BasicPalette, Palette},
};

use super::{
    Render,
    folded::{self, process_name},
};
use crate::snapshot::Snapshot;

pub struct Svg {
    pub all_frames: bool,
}

impl Render for Svg {
    fn snapshot(&mut self, snapshot: &Snapshot, out: &mut dyn Write) -> io::Result<()> {
        self.document(&[snapshot], out)
    }

    fn document(&mut self, snapshots: &[&Snapshot], out: &mut dyn Write) -> io::Result<()> {
        let (title, subtitle) = titles(snapshots);
        let lines = folded::lines(snapshots, self.all_frames);
        if lines.is_empty() {
            return empty(&title, &subtitle, out);
        }
        let mut options = Options::default();
        options.title = title;
        options.subtitle = Some(subtitle);
        options.count_name = "bytes".to_owned();
        options.colors = Palette::Basic(BasicPalette::Mem);
        // Colors from the names, so the same function looks the same in every graph.
        options.hash = true;
        options.deterministic = true;
        // A C++ signature is longer than its frame: keep its start, the function's name.
        options.text_truncate_direction = TextTruncateDirection::Right;
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
    }
}

/// The graph's title and subtitle: whose, how much, when.
fn titles(snapshots: &[&Snapshot]) -> (String, String) {
    let bytes: u64 = snapshots.iter().map(|s| s.totals.outstanding_bytes).sum();
    let allocations: u64 = snapshots
        .iter()
        .map(|s| s.totals.outstanding_allocations)
        .sum();
    let callsites: u64 = snapshots.iter().map(|s| s.totals.callsites).sum();
    let leaks: u64 = snapshots.iter().map(|s| s.totals.leak_callsites).sum();
    let title = match snapshots {
        [snapshot] => format!("leakbpf: {}, {bytes} B outstanding", process_name(snapshot)),
        _ => format!(
            "leakbpf: {} processes, {bytes} B outstanding",
            snapshots.len()
        ),
    };
    let when = match snapshots {
        [snapshot] => format!(
            "report #{}{} at {}",
            snapshot.report,
            if snapshot.is_final { " (final)" } else { "" },
            snapshot.timestamp
        ),
        _ => format!(
            "at {}",
            snapshots
                .iter()
                .map(|s| s.timestamp.as_str())
                .max()
                .unwrap_or_default()
        ),
    };
    let subtitle =
        format!("{allocations} allocations at {callsites} call sites, {leaks} leaking; {when}");
    (title, subtitle)
}

/// An SVG that says there is nothing to draw (inferno draws no graph without samples).
fn empty(title: &str, subtitle: &str, out: &mut dyn Write) -> io::Result<()> {
    let text =
        quick_xml::escape::escape(format!("{title}: {subtitle}; no outstanding allocations"));
    writeln!(
        out,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><rect width="100%" height="100%" fill="#eef2ee"/><text x="600" y="34" text-anchor="middle" font-family="Verdana" font-size="14">{text}</text></svg>"##
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::example;

    #[test]
    fn draws_the_call_sites_under_a_title_naming_the_process() {
        let mut out = Vec::new();
        Svg { all_frames: false }
            .snapshot(&example(), &mut out)
            .unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.starts_with("<?xml"), "{svg}");
        assert!(
            svg.contains("leakbpf: chat_server (pid 42), 368 B outstanding"),
            "{svg}"
        );
        assert!(
            svg.contains("2 allocations at 1 call sites, 1 leaking; report #1 (final) at 2026-11-25T10:00:00.000Z"),
            "{svg}"
        );
        assert!(
            svg.contains("EventManager::subscribe (368 bytes, 100.00%)"),
            "{svg}"
        );
    }

    #[test]
    fn says_when_nothing_is_outstanding() {
        let mut snapshot = example();
        snapshot.callsites.clear();
        snapshot.process.command = Some("<a&b>".into());
        let mut out = Vec::new();
        Svg { all_frames: false }
            .snapshot(&snapshot, &mut out)
            .unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.contains("leakbpf: &lt;a&amp;b&gt; (pid 42)"), "{svg}");
        assert!(svg.contains("no outstanding allocations"), "{svg}");
    }
}
