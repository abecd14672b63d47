//! A mirror of the agent's JSON report (README, "JSON lines"), written from the consumer's
//! side: every key the agent writes, and nothing else. Every struct denies unknown keys
//! and every nullable key must be present (as null), so a field added, removed or renamed
//! by the agent fails every test that reads a report until the mirror follows, rather
//! than passing unnoticed. The unit tests below hold the mirror to the agent's own types
//! and to the README's example.

use std::fmt::Write as _;

use serde::{Deserialize, Deserializer};

/// The schema this mirror reads.
pub const SCHEMA_VERSION: u32 = 6;

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema_version: u32,
    pub timestamp: String,
    pub pid: u32,
    pub report: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub interval_s: f64,
    pub process: Process,
    #[serde(deserialize_with = "present")]
    pub memory: Option<Memory>,
    pub totals: Totals,
    /// Null unless sampled: then bytes and allocations are estimates.
    #[serde(deserialize_with = "present")]
    pub sampling: Option<Sampled>,
    pub counters: Counters,
    pub suppressed: Vec<Suppressed>,
    pub callsites: Vec<Callsite>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Sampled {
    pub mean_bytes: u64,
    pub sampled_allocations: u64,
    pub bytes_error: u64,
    pub allocations_error: u64,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct SiteEstimate {
    pub sampled_allocations: u64,
    pub bytes_error: u64,
    pub allocations_error: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Process {
    #[serde(deserialize_with = "present")]
    pub command: Option<String>,
    #[serde(deserialize_with = "present")]
    pub executable: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub rss_bytes: u64,
    pub anon_rss_bytes: u64,
    pub rss_bytes_per_s: f64,
    pub heap_bytes_per_s: f64,
    pub heap_share: f64,
    pub growth_elsewhere: bool,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub callsites: u64,
    pub leak_callsites: u64,
    pub suspect_callsites: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Suppressed {
    pub pattern: String,
    pub callsites: u64,
    pub bytes: u64,
    pub allocations: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Trend {
    pub bytes_per_s: f64,
    pub allocations_per_s: f64,
    pub fit: f64,
    pub samples: u64,
    /// `steady_growth`, `stepped_growth`, `grows_then_holds`, `shrinking`, `transient`,
    /// `stable`.
    pub pattern: String,
    pub old_allocations: u64,
    pub old_after_s: f64,
    /// `leak`, `suspect`, `no_leak`.
    pub verdict: String,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Counters {
    pub allocations: u64,
    pub frees: u64,
    pub unknown_frees: u64,
    pub failed_allocations: u64,
    pub stack_failures: u64,
    pub dropped_allocations: u64,
    pub dropped_calls: u64,
    pub probe_errors: u64,
    pub lost_events: u64,
    pub truncated_stacks: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Callsite {
    pub rank: u64,
    pub stack_id: String,
    pub bytes: u64,
    pub allocations: u64,
    pub average_size: u64,
    pub oldest_age_s: f64,
    pub growth_bytes: i64,
    pub growth_allocations: i64,
    pub trend: Trend,
    /// The frame the agent shows the site at: its first outside allocation plumbing.
    pub site_frame: usize,
    pub frames: Vec<Frame>,
    #[serde(deserialize_with = "present")]
    pub estimate: Option<SiteEstimate>,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Frame {
    pub address: String,
    #[serde(deserialize_with = "present")]
    pub function: Option<String>,
    #[serde(deserialize_with = "present")]
    pub module: Option<String>,
    #[serde(deserialize_with = "present")]
    pub offset: Option<String>,
    #[serde(deserialize_with = "present")]
    pub build_id: Option<String>,
    #[serde(deserialize_with = "present")]
    pub file: Option<String>,
    #[serde(deserialize_with = "present")]
    pub line: Option<u32>,
    pub inlined: bool,
    /// Allocation plumbing (Rust's alloc, libstdc++'s allocators, g_malloc, …).
    pub allocator: bool,
}

/// A nullable key that must be there: serde takes a missing `Option` for None unless the
/// field has a `deserialize_with` of its own.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::deserialize(deserializer)
}

impl Frame {
    /// The function's name without a Rust legacy-mangling hash (`::h0123456789abcdef`).
    pub fn name(&self) -> Option<&str> {
        self.function.as_deref().map(strip_rust_hash)
    }
}

impl Callsite {
    /// The name of `frames[index]`'s function, if that frame exists and was named.
    pub fn function(&self, index: usize) -> Option<&str> {
        self.frames.get(index).and_then(Frame::name)
    }

    /// The name of the frame the agent shows the site at (`site_frame`): past the
    /// allocation plumbing, the function that asked for the memory.
    pub fn site(&self) -> Option<&str> {
        self.function(self.site_frame)
    }

    /// Its functions, innermost first (inlined ones too), by [`short_name`], up to and
    /// with the first called `last` (`main`); None when no frame is, or one before it is
    /// unnamed.
    pub fn chain_to(&self, last: &str) -> Option<Vec<&str>> {
        let mut chain = Vec::new();
        for frame in &self.frames {
            let name = short_name(frame.name()?);
            chain.push(name);
            if name == last {
                return Some(chain);
            }
        }
        None
    }

    /// Its functions from the first called `first` up to and with the next called `last`,
    /// by [`short_name`], as [`Callsite::chain_to`].
    pub fn chain_between(&self, first: &str, last: &str) -> Option<Vec<&str>> {
        let chain = self.chain_to(last)?;
        let start = chain.iter().position(|&name| name == first)?;
        Some(chain[start..].to_vec())
    }

    /// Every frame's name, innermost first, for failure messages.
    pub fn names(&self) -> Vec<&str> {
        self.frames
            .iter()
            .map(|frame| frame.name().unwrap_or("?"))
            .collect()
    }
}

/// A function's name without its parameters (`EventManager::subscribe` for
/// `EventManager::subscribe(std::function<void (Message const&)>)`), nor a clone's
/// suffix (`.constprop.0`).
pub fn short_name(name: &str) -> &str {
    let mut depth = 0i32;
    for (index, byte) in name.bytes().enumerate() {
        match byte {
            b'<' => depth += 1,
            b'>' => depth -= 1,
            // `operator()` keeps its own parentheses.
            b'(' if depth == 0 && !name[..index].ends_with("operator") => {
                return &name[..index];
            }
            _ => {}
        }
    }
    [".constprop.", ".isra.", ".part.", ".cold"]
        .iter()
        .find_map(|suffix| name.split_once(suffix))
        .map_or(name, |(name, _)| name)
}

/// Checks that every call site whose first frame is `function` names `expected` from
/// `frames[0]` up to its last entry (`main`, or a thread's start), in that order, each
/// by its [`short_name`].
pub fn assert_chain(report: &Report, function: &str, expected: &[&str]) {
    let last = expected.last().expect("a chain has a last function");
    let sites: Vec<&Callsite> = report
        .sites_where(|site| site.function(0).map(short_name) == Some(function))
        .collect();
    assert!(
        !sites.is_empty(),
        "no call site at {function}:\n{}",
        report.describe()
    );
    for site in sites {
        assert_eq!(
            site.chain_to(last).as_deref(),
            Some(expected),
            "the callers of {function} up to {last} ({} B in {}): {:?}\n{}",
            site.bytes,
            site.allocations,
            site.names(),
            report.describe()
        );
    }
}

/// [`assert_chain`] for each of `functions`, called by `main`.
pub fn assert_chains_to_main(report: &Report, functions: &[&str]) {
    for function in functions {
        assert_chain(report, function, &[function, "main"]);
    }
}

/// A Rust function's name without its legacy-mangling hash (`::h0123456789abcdef`).
pub fn strip_rust_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((path, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            path
        }
        _ => name,
    }
}

impl Report {
    /// Parses one JSON line; panics, quoting it, if it is not a report of this schema.
    pub fn parse(line: &str) -> Self {
        serde_json::from_str(line).unwrap_or_else(|err| {
            panic!("not a schema {SCHEMA_VERSION} JSON report ({err}): {line}")
        })
    }

    /// The call sites that satisfy `matches`.
    pub fn sites_where<'a>(
        &'a self,
        mut matches: impl FnMut(&Callsite) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Callsite> + 'a {
        self.callsites.iter().filter(move |site| matches(site))
    }

    /// Summed (bytes, allocations) of the call sites whose `frames[0]` is `function`.
    pub fn outstanding_at(&self, function: &str) -> (u64, u64) {
        sum(self.sites_where(|site| site.function(0) == Some(function)))
    }

    /// (bytes, allocations) outstanding over all its call sites, shown or not.
    pub fn outstanding(&self) -> (u64, u64) {
        (
            self.totals.outstanding_bytes,
            self.totals.outstanding_allocations,
        )
    }

    /// A short listing of the report, for failure messages.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "report #{} (final: {}) of pid {}: {} B in {} allocations at {} call sites; \
             counters {:?}\n",
            self.report,
            self.is_final,
            self.pid,
            self.totals.outstanding_bytes,
            self.totals.outstanding_allocations,
            self.totals.callsites,
            self.counters
        );
        for site in self.callsites.iter().take(25) {
            let frames: Vec<String> = site
                .frames
                .iter()
                .take(5)
                .map(|frame| match frame.name() {
                    Some(name) => name.to_owned(),
                    None => format!(
                        "?{}({}+{})",
                        frame.address,
                        frame.module.as_deref().unwrap_or("?"),
                        frame.offset.as_deref().unwrap_or("?")
                    ),
                })
                .collect();
            let _ = writeln!(
                text,
                "  #{} {} B in {}: {}",
                site.rank,
                site.bytes,
                site.allocations,
                frames.join(" <- ")
            );
        }
        if self.callsites.len() > 25 {
            let _ = writeln!(text, "  ... {} more", self.callsites.len() - 25);
        }
        text
    }
}

/// Summed (bytes, allocations) of some call sites.
pub fn sum<'a>(sites: impl IntoIterator<Item = &'a Callsite>) -> (u64, u64) {
    sites.into_iter().fold((0, 0), |(bytes, count), site| {
        (bytes + site.bytes, count + site.allocations)
    })
}

/// Parses JSON report lines; blank lines are skipped. Panics on anything else.
pub fn parse_reports(text: &str) -> Vec<Report> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(Report::parse)
        .collect()
}

/// Checks what every run's reports must satisfy, and returns the final report: all of
/// `pid`, of this schema, numbered 1, 2, …, callsites ranked 1, 2, … by bytes descending,
/// and exactly one final report, the last.
pub fn check_reports(reports: &[Report], pid: u32) -> &Report {
    assert!(
        !reports.is_empty(),
        "leakbpf wrote no report about pid {pid}"
    );
    for (index, report) in reports.iter().enumerate() {
        let at = || format!("in report {}", report.describe());
        assert_eq!(report.schema_version, SCHEMA_VERSION, "{}", at());
        assert_eq!(
            report.pid,
            pid,
            "the report is about another process {}",
            at()
        );
        assert_eq!(
            report.report,
            index as u64 + 1,
            "reports are numbered from 1 {}",
            at()
        );
        assert_eq!(
            report.is_final,
            index + 1 == reports.len(),
            "exactly the last report is final {}",
            at()
        );
        for (rank, site) in report.callsites.iter().enumerate() {
            assert_eq!(site.rank, rank as u64 + 1, "ranks run 1, 2, … {}", at());
            // Only a stack that did not fit in the stack map has no frames.
            assert!(
                !site.frames.is_empty() || report.counters.stack_failures > 0,
                "call site without frames {}",
                at()
            );
        }
        assert!(
            report
                .callsites
                .windows(2)
                .all(|w| w[0].bytes >= w[1].bytes),
            "call sites are sorted by bytes, largest first {}",
            at()
        );
    }
    reports.last().expect("not empty")
}

/// The reports about `pid`, in order, from a run that reported on several processes
/// (`--pid A,B`, `--follow-forks`, `--all`).
pub fn reports_of(reports: &[Report], pid: u32) -> Vec<Report> {
    reports
        .iter()
        .filter(|report| report.pid == pid)
        .cloned()
        .collect()
}

/// The final report about `pid` from a run that reported on several processes, after
/// checking all of that process's reports with [`check_reports`].
pub fn final_report_of(reports: &[Report], pid: u32) -> Report {
    check_reports(&reports_of(reports, pid), pid).clone()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;

    /// A report as the agent builds it, every field set, nullable frame fields both ways.
    fn agent_report() -> leakbpf::snapshot::Snapshot {
        use leakbpf::snapshot as agent;
        let frame = |function: Option<&str>| leakbpf::symbolize::Frame {
            address: 0x55d0_c0de_1234,
            function: function.map(Arc::from),
            module: function.map(|_| Arc::from("/abs/path/chat_server")),
            offset: function.map(|_| 0x1233),
            build_id: function.map(|_| Arc::from("0123456789abcdef")),
            file: function.map(|_| Arc::from("/abs/path/chat_server.cpp")),
            line: function.map(|_| 42),
            inlined: function.is_some(),
            allocator: function.is_none(),
        };
        agent::Snapshot {
            schema_version: agent::SCHEMA_VERSION,
            timestamp: "2026-11-25T10:00:00.123Z".to_owned(),
            pid: 1234,
            report: 3,
            is_final: true,
            interval_s: 5.0,
            process: agent::ProcessFacts {
                command: Some("chat_server".to_owned()),
                executable: None,
            },
            memory: Some(agent::Memory {
                rss_bytes: 11,
                anon_rss_bytes: 12,
                rss_bytes_per_s: 13.5,
                heap_bytes_per_s: 14.5,
                heap_share: 0.25,
                growth_elsewhere: true,
            }),
            totals: agent::Totals {
                outstanding_bytes: 1,
                outstanding_allocations: 2,
                callsites: 3,
                leak_callsites: 1,
                suspect_callsites: 2,
            },
            sampling: Some(agent::Sampled {
                mean_bytes: 29,
                sampled_allocations: 30,
                bytes_error: 31,
                allocations_error: 32,
            }),
            counters: leakbpf::Counters {
                allocations: 4,
                frees: 5,
                unknown_frees: 6,
                failed_allocations: 7,
                stack_failures: 8,
                dropped_allocations: 9,
                dropped_calls: 10,
                probe_errors: 23,
                lost_events: 24,
                truncated_stacks: 25,
            },
            suppressed: vec![agent::Suppressed {
                pattern: "^known$".to_owned(),
                callsites: 15,
                bytes: 16,
                allocations: 17,
            }],
            callsites: vec![agent::Callsite {
                rank: 1,
                stack_id: 0x1f2e,
                bytes: 123,
                allocations: 3,
                average_size: 41,
                oldest_age_s: 1.5,
                growth_bytes: -12,
                growth_allocations: -1,
                trend: agent::Trend {
                    bytes_per_s: 18.5,
                    allocations_per_s: 19.5,
                    fit: 0.75,
                    samples: 20,
                    pattern: agent::Pattern::SteppedGrowth,
                    old_allocations: 21,
                    old_after_s: 22.5,
                    verdict: agent::Verdict::Suspect,
                },
                site_frame: 1,
                frames: Arc::from(vec![frame(Some("subscribe")), frame(None)]),
                estimate: Some(agent::SiteEstimate {
                    sampled_allocations: 26,
                    bytes_error: 27,
                    allocations_error: 28,
                }),
            }],
        }
    }

    /// The mirror reads exactly what the agent writes: what it parses, written back, is
    /// the agent's JSON, key for key (a key the agent dropped would come back as null, one
    /// it added would not parse).
    #[test]
    fn the_mirror_is_the_agents_schema() {
        assert_eq!(
            leakbpf::snapshot::SCHEMA_VERSION,
            SCHEMA_VERSION,
            "the agent writes another schema version: update the mirror"
        );
        let written = serde_json::to_string(&agent_report()).unwrap();
        let read = Report::parse(&written);
        let agent: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), agent);
    }

    /// The README's example line, the documented contract, is a report of this schema.
    #[test]
    fn the_readme_example_is_a_report() {
        let readme = include_str!("../../README.md");
        let (_, block) = readme
            .split_once("```json\n")
            .expect("the README has a JSON example");
        let (line, _) = block.split_once('\n').expect("one line");
        let report = Report::parse(line);
        assert_eq!(report.schema_version, SCHEMA_VERSION);
        assert_eq!(report.callsites[0].frames[0].line, Some(117));
    }

    #[test]
    fn unknown_and_missing_keys_are_refused() {
        let agent: Value = serde_json::to_value(agent_report()).unwrap();
        let at = |path: &[&str], edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let mut value = agent.clone();
            let mut object = &mut value;
            for key in path {
                object = match key.parse::<usize>() {
                    Ok(index) => &mut object[index],
                    Err(_) => &mut object[*key],
                };
            }
            edit(object.as_object_mut().unwrap());
            serde_json::from_value::<Report>(value)
        };
        for path in [
            &[][..],
            &["process"],
            &["memory"],
            &["totals"],
            &["counters"],
            &["suppressed", "0"],
            &["callsites", "0"],
            &["callsites", "0", "trend"],
            &["callsites", "0", "frames", "1"],
        ] {
            let added = at(path, &|object| {
                object.insert("unheard_of".to_owned(), Value::Null);
            });
            assert!(added.is_err(), "a new key at {path:?} was read");
        }
        for key in ["function", "module", "offset", "build_id", "file", "line"] {
            let removed = at(&["callsites", "0", "frames", "1"], &|object| {
                object.remove(key);
            });
            assert!(removed.is_err(), "a frame without {key} was read");
        }
    }

    #[test]
    fn rust_hashes_are_stripped() {
        assert_eq!(
            strip_rust_hash("rust_leaker::leak_boxes::h0123456789abcdef"),
            "rust_leaker::leak_boxes"
        );
        assert_eq!(
            strip_rust_hash("rust_leaker::leak_boxes"),
            "rust_leaker::leak_boxes"
        );
        assert_eq!(strip_rust_hash("a::hash"), "a::hash");
    }

    #[test]
    fn the_site_is_the_frame_the_agent_names() {
        let frame = |name: &str, inlined| Frame {
            address: "0x1".into(),
            function: Some(name.into()),
            module: None,
            offset: None,
            build_id: None,
            file: None,
            line: None,
            inlined,
            allocator: false,
        };
        let site = Callsite {
            rank: 1,
            stack_id: "0x1".into(),
            bytes: 333,
            allocations: 1,
            average_size: 333,
            oldest_age_s: 0.0,
            growth_bytes: 333,
            growth_allocations: 1,
            trend: Trend {
                bytes_per_s: 0.0,
                allocations_per_s: 0.0,
                fit: 0.0,
                samples: 1,
                pattern: "stable".into(),
                old_allocations: 0,
                old_after_s: 15.0,
                verdict: "no_leak".into(),
            },
            site_frame: 3,
            frames: vec![
                frame("alloc::alloc::alloc", true),
                frame("<alloc::alloc::Global>::alloc_impl_runtime", true),
                frame("alloc::boxed::Box<T>::new", true),
                frame("rust_leaker::leak_boxes::h0123456789abcdef", false),
                frame("rust_leaker::main", false),
            ],
            estimate: None,
        };
        assert_eq!(site.site(), Some("rust_leaker::leak_boxes"));
        assert_eq!(site.function(0), Some("alloc::alloc::alloc"));
    }
}
