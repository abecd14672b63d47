//! Two saved runs compared: their call sites matched by their symbolized frames (the
//! functions, or module and offset where unnamed), never by address, which ASLR moves
//! between runs, nor by line, which a fix moves.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

use crate::{snapshot::Snapshot, symbolize::Frame};

/// What happened to a call site from the first run to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the second run.
    New,
    /// Only in the first: the fix.
    Gone,
    Grown,
    Shrunk,
}

/// One call site's figures in one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    pub bytes: u64,
    pub allocations: u64,
    pub bytes_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SiteChange {
    pub change: Change,
    pub before: Option<Figures>,
    pub after: Option<Figures>,
    pub bytes_change: i64,
    pub allocations_change: i64,
    pub bytes_per_s_change: f64,
    /// The frames, from the run that has the site (the second when both do).
    pub frames: Arc<[Frame]>,
}

/// The runs compared, and what changed.
#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub before: RunSummary,
    pub after: RunSummary,
    /// Call sites whose figures are the same in both.
    pub unchanged: u64,
    /// Largest change in bytes first.
    pub callsites: Vec<SiteChange>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub pid: u32,
    pub timestamp: String,
    pub report: u64,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
}

impl RunSummary {
    fn of(snapshot: &Snapshot) -> Self {
        Self {
            pid: snapshot.pid,
            timestamp: snapshot.timestamp.clone(),
            report: snapshot.report,
            outstanding_bytes: snapshot.totals.outstanding_bytes,
            outstanding_allocations: snapshot.totals.outstanding_allocations,
        }
    }
}

/// What identifies a call site across runs.
fn key(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(
            |frame| match (&frame.function, &frame.module, frame.offset) {
                (Some(function), _, _) => function.to_string(),
                (None, Some(module), Some(offset)) => {
                    let name = module.rsplit('/').next().unwrap_or(module);
                    format!("{name}+{offset:#x}")
                }
                _ => "[unknown]".to_owned(),
            },
        )
        .collect()
}

/// The call sites of `snapshot` by key; sites that differ only by address are summed.
fn sites(snapshot: &Snapshot) -> BTreeMap<Vec<String>, (Figures, Arc<[Frame]>)> {
    let mut sites: BTreeMap<Vec<String>, (Figures, Arc<[Frame]>)> = BTreeMap::new();
    for site in &snapshot.callsites {
        let entry = sites
            .entry(key(&site.frames))
            .or_insert_with(|| (Figures::default(), site.frames.clone()));
        entry.0.bytes += site.bytes;
        entry.0.allocations += site.allocations;
        entry.0.bytes_per_s += site.trend.bytes_per_s;
    }
    sites
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What changed from `before` to `after`.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Diff {
    let mut first = sites(before);
    let mut unchanged = 0;
    let mut callsites = Vec::new();
    for (key, (now, frames)) in sites(after) {
        let then = first.remove(&key).map(|(figures, _)| figures);
        let was = then.unwrap_or_default();
        let change = match then {
            None => Change::New,
            Some(_) if now.bytes > was.bytes => Change::Grown,
            Some(_) if now.bytes < was.bytes => Change::Shrunk,
            Some(_) if now.allocations == was.allocations => {
                unchanged += 1;
                continue;
            }
            Some(_) if now.allocations > was.allocations => Change::Grown,
            Some(_) => Change::Shrunk,
        };
        callsites.push(SiteChange {
            change,
            before: then,
            after: Some(now),
            bytes_change: signed(now.bytes) - signed(was.bytes),
            allocations_change: signed(now.allocations) - signed(was.allocations),
            bytes_per_s_change: now.bytes_per_s - was.bytes_per_s,
            frames,
        });
    }
    for (_, (was, frames)) in first {
        callsites.push(SiteChange {
            change: Change::Gone,
            before: Some(was),
            after: None,
            bytes_change: -signed(was.bytes),
            allocations_change: -signed(was.allocations),
            bytes_per_s_change: -was.bytes_per_s,
            frames,
        });
    }
    callsites.sort_by(|a, b| {
        b.bytes_change
            .unsigned_abs()
            .cmp(&a.bytes_change.unsigned_abs())
            .then(a.change.cmp(&b.change))
    });
    Diff {
        before: RunSummary::of(before),
        after: RunSummary::of(after),
        unchanged,
        callsites,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::example;

    fn with_sites(sites: &[(&str, u64, u64, u64)]) -> Snapshot {
        let mut snapshot = example();
        let template = snapshot.callsites[0].clone();
        snapshot.callsites = sites
            .iter()
            .map(|&(function, address, bytes, allocations)| {
                let mut site = template.clone();
                site.bytes = bytes;
                site.allocations = allocations;
                site.frames = Arc::from([Frame {
                    address,
                    function: Some(function.into()),
                    line: Some(address as u32),
                    ..Frame::default()
                }]);
                site
            })
            .collect();
        snapshot
    }

    #[test]
    fn matches_by_function_across_addresses_and_lines() {
        let before = with_sites(&[
            ("subscribe", 0x5555_1000, 1840, 10),
            ("cache", 0x5555_2000, 500, 5),
            ("same", 0x5555_3000, 64, 1),
            ("shrinks", 0x5555_4000, 900, 9),
        ]);
        let after = with_sites(&[
            ("cache", 0x7777_2000, 800, 8),
            ("same", 0x7777_3000, 64, 1),
            ("shrinks", 0x7777_4000, 100, 1),
            ("fresh", 0x7777_5000, 10, 1),
        ]);
        let diff = diff(&before, &after);
        let changes: Vec<(Change, &str, i64)> = diff
            .callsites
            .iter()
            .map(|c| {
                (
                    c.change,
                    c.frames[0].function.as_deref().unwrap(),
                    c.bytes_change,
                )
            })
            .collect();
        assert_eq!(
            changes,
            [
                (Change::Gone, "subscribe", -1840),
                (Change::Shrunk, "shrinks", -800),
                (Change::Grown, "cache", 300),
                (Change::New, "fresh", 10),
            ]
        );
        assert_eq!(diff.unchanged, 1);
    }
}
