//! A [`Snapshot`]: one moment of one traced process, with its top call sites and their
//! symbolized frames, its counters and totals. It is what every output renders, and its
//! JSON serialization is the NDJSON report, so a saved run reads back as snapshots
//! (`leakbpf report FILE`).

use std::{
    io::{self, BufRead},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    kernel::{Counters, Estimate},
    symbolize::Frame,
};

/// Bumped on any change a consumer of the JSON lines would notice.
pub const SCHEMA_VERSION: u32 = 6;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema_version: u32,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub pid: u32,
    /// 1 for the first report of the run.
    pub report: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub interval_s: f64,
    pub process: ProcessFacts,
    /// Null when the process could not be read (gone).
    pub memory: Option<Memory>,
    pub totals: Totals,
    /// Null unless allocations were sampled (`--sample-bytes`): then the bytes and
    /// allocations of the totals, call sites and suppressions are estimates, and the
    /// counters count the blocks recorded.
    pub sampling: Option<Sampled>,
    pub counters: Counters,
    pub suppressed: Vec<Suppressed>,
    pub callsites: Vec<Callsite>,
}

/// What a sampled report's estimates rest on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampled {
    /// The mean bytes between sample points.
    pub mean_bytes: u64,
    /// The outstanding blocks recorded, over every call site.
    pub sampled_allocations: u64,
    /// One standard error of the totals' outstanding bytes and allocations.
    pub bytes_error: u64,
    pub allocations_error: u64,
}

/// A sampled call site's estimate: how many of its blocks were recorded, and one
/// standard error of its bytes and allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteEstimate {
    pub sampled_allocations: u64,
    pub bytes_error: u64,
    pub allocations_error: u64,
}

impl SiteEstimate {
    pub fn of(estimate: &Estimate) -> Self {
        let (bytes_error, allocations_error) = estimate.errors();
        Self {
            sampled_allocations: estimate.sampled,
            bytes_error,
            allocations_error,
        }
    }
}

/// What the process is, as the kernel last showed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFacts {
    /// Its command name (`/proc/PID/comm`).
    pub command: Option<String>,
    /// The program it runs (`/proc/PID/exe`).
    pub executable: Option<String>,
}

/// Over every call site of the process that no suppression took out, not only those
/// shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub callsites: u64,
    /// Call sites whose verdict is leak, and suspect.
    pub leak_callsites: u64,
    pub suspect_callsites: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Callsite {
    pub rank: usize,
    #[serde(with = "hex")]
    pub stack_id: u64,
    pub bytes: u64,
    pub allocations: u64,
    pub average_size: u64,
    /// Age of the oldest outstanding allocation, in seconds.
    pub oldest_age_s: f64,
    /// Change since the previous report (all of it for the first).
    pub growth_bytes: i64,
    pub growth_allocations: i64,
    pub trend: Trend,
    /// The frame the call site is shown at: the first outside allocation plumbing.
    pub site_frame: usize,
    /// Innermost first: `frames[0]` is the function that called the allocator.
    pub frames: Arc<[Frame]>,
    /// Null unless allocations were sampled.
    pub estimate: Option<SiteEstimate>,
}

/// The shape of a call site's outstanding bytes over the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Grows at a steady rate.
    SteadyGrowth,
    /// Grows in steps, flat in between.
    SteppedGrowth,
    /// Grew, then holds (a cache or pool that filled up).
    GrowsThenHolds,
    /// Falls.
    Shrinking,
    /// Every block is young: allocated and freed between reports.
    Transient,
    /// Neither grows nor falls.
    Stable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Grows steadily or in steps with blocks that stay and age.
    Leak,
    /// Grows, but not yet with the evidence of a leak (too few reports, an irregular
    /// growth, young blocks).
    Suspect,
    NoLeak,
}

/// What the history of a site says, as the reports carry it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    /// Growth rate of the outstanding bytes, least squares over the samples.
    pub bytes_per_s: f64,
    pub allocations_per_s: f64,
    /// R² of the bytes fit: 1 is a straight line.
    pub fit: f64,
    /// Reports the trend is fitted over.
    pub samples: usize,
    pub pattern: Pattern,
    /// Outstanding blocks older than `old_after_s`.
    pub old_allocations: u64,
    pub old_after_s: f64,
    pub verdict: Verdict,
}

/// What the process's memory says next to its heap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Resident set size (`VmRSS`), and its anonymous part (`RssAnon`).
    pub rss_bytes: u64,
    pub anon_rss_bytes: u64,
    /// Growth rates over the run (least squares), of the RSS and of the outstanding
    /// bytes leakbpf tracks.
    pub rss_bytes_per_s: f64,
    pub heap_bytes_per_s: f64,
    /// Outstanding bytes over RSS.
    pub heap_share: f64,
    /// RSS grows and the tracked heap does not explain it: the memory is elsewhere
    /// (mmap outside malloc, fragmentation, an allocator leakbpf does not see).
    pub growth_elsewhere: bool,
}

/// Call sites a suppression (`--suppressions`) took out of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppressed {
    /// The `leak:` pattern, as written.
    pub pattern: String,
    pub callsites: u64,
    pub bytes: u64,
    pub allocations: u64,
}

/// `0x`-prefixed hexadecimal, as addresses and ids are written.
pub(crate) mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{value:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).ok_or_else(|| D::Error::custom(format!("{text:?} is not a 0x number")))
    }

    pub(crate) fn parse(text: &str) -> Option<u64> {
        u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
    }

    /// The same for an optional value, null when absent.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub fn serialize<S: Serializer>(
            value: &Option<u64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => super::serialize(value, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<u64>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                None => Ok(None),
                Some(text) => super::parse(&text)
                    .map(Some)
                    .ok_or_else(|| D::Error::custom(format!("{text:?} is not a 0x number"))),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the saved run")]
    Io(#[from] io::Error),
    #[error("line {line} is not a leakbpf report: {source}")]
    Parse {
        line: usize,
        source: serde_json::Error,
    },
    #[error(
        "line {line} is a report of schema version {found}; this leakbpf reads version \
         {SCHEMA_VERSION}"
    )]
    Schema { line: usize, found: u64 },
    #[error("the saved run holds no report")]
    Empty,
}

/// Reads a saved run: one JSON report per line, as `--format json` writes them; blank
/// lines are skipped.
pub fn read_run(input: impl BufRead) -> Result<Vec<Snapshot>, ReadError> {
    let mut snapshots = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|source| ReadError::Parse {
                line: number,
                source,
            })?;
        // The version first, so an older or newer report is named as such rather than
        // as a field that does not parse.
        match value
            .get("schema_version")
            .and_then(serde_json::Value::as_u64)
        {
            Some(version) if version == u64::from(SCHEMA_VERSION) => {}
            Some(found) => {
                return Err(ReadError::Schema {
                    line: number,
                    found,
                });
            }
            None => {}
        }
        let snapshot = serde_json::from_value(value).map_err(|source| ReadError::Parse {
            line: number,
            source,
        })?;
        snapshots.push(snapshot);
    }
    if snapshots.is_empty() {
        return Err(ReadError::Empty);
    }
    Ok(snapshots)
}

/// A snapshot of one call site, for the tests of the stages that render snapshots.
#[cfg(test)]
pub(crate) fn example() -> Snapshot {
    Snapshot {
        schema_version: SCHEMA_VERSION,
        timestamp: "2026-11-25T10:00:00.000Z".into(),
        pid: 42,
        report: 1,
        is_final: true,
        interval_s: 5.0,
        process: ProcessFacts {
            command: Some("chat_server".into()),
            executable: Some("/srv/chat_server".into()),
        },
        memory: Some(Memory {
            rss_bytes: 8 << 20,
            anon_rss_bytes: 2 << 20,
            rss_bytes_per_s: 0.0,
            heap_bytes_per_s: 36.8,
            heap_share: 368.0 / f64::from(8 << 20),
            growth_elsewhere: false,
        }),
        totals: Totals {
            outstanding_bytes: 368,
            outstanding_allocations: 2,
            callsites: 1,
            leak_callsites: 1,
            suspect_callsites: 0,
        },
        sampling: None,
        counters: Counters::default(),
        suppressed: Vec::new(),
        callsites: vec![Callsite {
            rank: 1,
            stack_id: 0x5bd1,
            bytes: 368,
            allocations: 2,
            average_size: 184,
            oldest_age_s: 1.5,
            growth_bytes: 184,
            growth_allocations: 1,
            trend: Trend {
                bytes_per_s: 36.8,
                allocations_per_s: 0.2,
                fit: 0.99,
                samples: 6,
                pattern: Pattern::SteadyGrowth,
                old_allocations: 2,
                old_after_s: 15.0,
                verdict: Verdict::Leak,
            },
            site_frame: 0,
            frames: Arc::from([Frame {
                address: 0x55d0_c0de_1b2f,
                function: Some("EventManager::subscribe".into()),
                module: Some("/srv/chat_server".into()),
                offset: Some(0x1b2e),
                build_id: Some("2f6c1e0a9b7d4c3e".into()),
                file: Some("chat_server.cpp".into()),
                line: Some(117),
                inlined: false,
                allocator: false,
            }]),
            estimate: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_line_reads_back_as_the_same_snapshot() {
        let snapshot = example();
        let line = serde_json::to_string(&snapshot).unwrap();
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["callsites"][0]["stack_id"], "0x5bd1");
        assert_eq!(
            json["callsites"][0]["frames"][0]["address"],
            "0x55d0c0de1b2f"
        );
        assert_eq!(json["final"], true);
        let text = format!("{line}\n\n{line}\n");
        let read = read_run(text.as_bytes()).unwrap();
        assert_eq!(read, [snapshot.clone(), snapshot]);
    }

    #[test]
    fn other_schemas_and_garbage_are_named_with_their_line() {
        let old = r#"{"schema_version":3,"pid":1}"#;
        let err = read_run(format!("{old}\n").as_bytes()).unwrap_err();
        assert!(
            matches!(err, ReadError::Schema { line: 1, found: 3 }),
            "{err}"
        );
        let line = serde_json::to_string(&example()).unwrap();
        let err = read_run(format!("{line}\nnot json\n").as_bytes()).unwrap_err();
        assert!(matches!(err, ReadError::Parse { line: 2, .. }), "{err}");
        assert!(matches!(read_run(&b"\n"[..]), Err(ReadError::Empty)));
    }
}
