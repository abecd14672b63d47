//! The latest snapshots as Prometheus metrics (text exposition format 0.0.4, through
//! prometheus-client), with leakbpf's own CPU and memory: what `--http`'s `/metrics`
//! serves.
//!
//! Per process (labels `pid`, `command`): outstanding bytes and allocations, call sites
//! and their verdicts, the event counters, RSS, the time of the report. Per call site,
//! for the process's [`TOP_CALLSITES`] first call sites only (label `function`, its
//! shown frame's, past allocation plumbing, cut to [`LABEL_CHARS`]), so the number of series stays bounded
//! however many stacks a process has: outstanding bytes, allocations, growth rate.

use std::{collections::BTreeMap, fmt};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::snapshot::Snapshot;

/// The `Content-Type` of what [`metrics`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Call sites per process with series of their own.
pub const TOP_CALLSITES: usize = 10;

/// Characters of a function name kept in a label: C++ names run to thousands.
pub const LABEL_CHARS: usize = 200;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
    command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallsiteLabels {
    pid: String,
    command: String,
    function: String,
}

/// What the agent itself costs, from `/proc/self`.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentUsage {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
}

impl AgentUsage {
    /// This process's, now; None if `/proc/self` cannot be read.
    pub fn now() -> Option<Self> {
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        Some(Self {
            cpu_seconds: (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64,
            resident_bytes: stat.rss * procfs::page_size(),
            virtual_bytes: stat.vsize,
        })
    }
}

/// Help for each event counter of the report (`counters` in the JSON line); a counter
/// added there is exported too, with a generic help.
const COUNTER_HELP: &[(&str, &str)] = &[
    ("allocations", "Allocations recorded since attach"),
    ("frees", "Frees of recorded allocations since attach"),
    (
        "unknown_frees",
        "Frees of blocks never recorded (allocated before attach, or dropped)",
    ),
    (
        "failed_allocations",
        "Allocation calls that returned NULL or failed",
    ),
    (
        "stack_failures",
        "Allocations whose stack could not be read or stored",
    ),
    (
        "dropped_allocations",
        "Allocations not recorded: the allocation map was full",
    ),
    (
        "dropped_calls",
        "Allocation calls missed: too many threads inside an allocator at once",
    ),
    (
        "probe_errors",
        "Failures of the eBPF programs in the process (non-zero is a bug)",
    ),
    (
        "lost_events",
        "Events the eBPF side could not send: its ring buffer was full",
    ),
];

fn gauge_family<L>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
        None => registry.register(name, help, family.clone()),
    }
    family
}

fn gauge_f64_family<L>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Gauge<f64, std::sync::atomic::AtomicU64>>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(name, help, family.clone());
    family
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The function a call site's metrics are labelled with: the name (or module and offset)
/// of the frame it is shown at, past allocation plumbing, cut to [`LABEL_CHARS`].
fn function_label(snapshot: &Snapshot, index: usize) -> String {
    let site = &snapshot.callsites[index];
    let name = match site.frames.get(site.site_frame) {
        None => "[stack not available]".to_owned(),
        Some(frame) => match (&frame.function, &frame.module, frame.offset) {
            (Some(function), _, _) => function.to_string(),
            (None, Some(module), Some(offset)) => format!("{module}+{offset:#x}"),
            _ => format!("{:#x}", frame.address),
        },
    };
    match name.char_indices().nth(LABEL_CHARS) {
        Some((end, _)) => format!("{}…", &name[..end]),
        None => name,
    }
}

/// The metrics of `snapshots` (each process's latest) and of the agent (`agent`).
pub fn metrics(snapshots: &[&Snapshot], agent: Option<AgentUsage>) -> String {
    let mut root = Registry::default();
    if let Some(agent) = agent {
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(agent.cpu_seconds);
        root.register_with_unit(
            "process_cpu",
            "CPU time leakbpf itself used, user and system",
            Unit::Seconds,
            cpu,
        );
        for (name, help, value) in [
            (
                "process_resident_memory",
                "Resident memory of leakbpf itself",
                agent.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory of leakbpf itself",
                agent.virtual_bytes,
            ),
        ] {
            let gauge = Gauge::<i64>::default();
            gauge.set(signed(value));
            root.register_with_unit(name, help, Unit::Bytes, gauge);
        }
    }
    let registry = root.sub_registry_with_prefix("leakbpf");
    let outstanding_bytes = gauge_family::<ProcessLabels>(
        registry,
        "outstanding",
        "Bytes allocated and not freed, over every call site not suppressed",
        Some(Unit::Bytes),
    );
    let outstanding_allocations = gauge_family::<ProcessLabels>(
        registry,
        "outstanding_allocations",
        "Allocations not freed, over every call site not suppressed",
        None,
    );
    let callsites = gauge_family::<ProcessLabels>(
        registry,
        "callsites",
        "Call sites holding outstanding allocations",
        None,
    );
    let leak_callsites = gauge_family::<ProcessLabels>(
        registry,
        "leak_callsites",
        "Call sites whose verdict is leak",
        None,
    );
    let suspect_callsites = gauge_family::<ProcessLabels>(
        registry,
        "suspect_callsites",
        "Call sites whose verdict is suspect",
        None,
    );
    let rss = gauge_family::<ProcessLabels>(
        registry,
        "process_rss",
        "Resident set size of the traced process (VmRSS)",
        Some(Unit::Bytes),
    );
    let anon_rss = gauge_family::<ProcessLabels>(
        registry,
        "process_anon_rss",
        "Anonymous resident memory of the traced process (RssAnon)",
        Some(Unit::Bytes),
    );
    let report_time = gauge_f64_family::<ProcessLabels>(
        registry,
        "report_timestamp_seconds",
        "When the report these figures are from was made, seconds since the epoch",
    );
    let site_bytes = gauge_family::<CallsiteLabels>(
        registry,
        "callsite_outstanding",
        "Bytes outstanding at a call site (the process's first call sites, by function)",
        Some(Unit::Bytes),
    );
    let site_allocations = gauge_family::<CallsiteLabels>(
        registry,
        "callsite_outstanding_allocations",
        "Allocations outstanding at a call site (the process's first call sites, by function)",
        None,
    );
    let site_rate = gauge_f64_family::<CallsiteLabels>(
        registry,
        "callsite_growth_bytes_per_second",
        "Growth rate of a call site's outstanding bytes over the run (least squares)",
    );
    let mut counters: BTreeMap<String, Family<ProcessLabels, Counter>> = BTreeMap::new();

    for snapshot in snapshots {
        let labels = ProcessLabels {
            pid: snapshot.pid.to_string(),
            command: snapshot.process.command.clone().unwrap_or_default(),
        };
        let totals = &snapshot.totals;
        for (family, value) in [
            (&outstanding_bytes, totals.outstanding_bytes),
            (&outstanding_allocations, totals.outstanding_allocations),
            (&callsites, totals.callsites),
            (&leak_callsites, totals.leak_callsites),
            (&suspect_callsites, totals.suspect_callsites),
        ] {
            family.get_or_create(&labels).set(signed(value));
        }
        if let Some(memory) = &snapshot.memory {
            rss.get_or_create(&labels).set(signed(memory.rss_bytes));
            anon_rss
                .get_or_create(&labels)
                .set(signed(memory.anon_rss_bytes));
        }
        if let Ok(time) = humantime::parse_rfc3339(&snapshot.timestamp)
            && let Ok(since) = time.duration_since(std::time::UNIX_EPOCH)
        {
            report_time.get_or_create(&labels).set(since.as_secs_f64());
        }
        if let Ok(serde_json::Value::Object(values)) = serde_json::to_value(snapshot.counters) {
            for (name, value) in values {
                let Some(value) = value.as_u64() else {
                    continue;
                };
                counters
                    .entry(name)
                    .or_default()
                    .get_or_create(&labels)
                    .inc_by(value);
            }
        }
        for index in 0..snapshot.callsites.len().min(TOP_CALLSITES) {
            let site = &snapshot.callsites[index];
            let labels = CallsiteLabels {
                pid: labels.pid.clone(),
                command: labels.command.clone(),
                function: function_label(snapshot, index),
            };
            // Two call sites in one function are one series: their sum.
            site_bytes.get_or_create(&labels).inc_by(signed(site.bytes));
            site_allocations
                .get_or_create(&labels)
                .inc_by(signed(site.allocations));
            site_rate
                .get_or_create(&labels)
                .inc_by(site.trend.bytes_per_s);
        }
    }
    for (name, family) in counters {
        let help = COUNTER_HELP
            .iter()
            .find(|(known, _)| *known == name)
            .map_or_else(
                || format!("The report's counters.{name}"),
                |(_, help)| (*help).to_owned(),
            );
        registry.register(name, help, family);
    }
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &root);
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{snapshot::example, symbolize::Frame};

    /// The sample lines of `text` that start with `name{` or `name `.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
            .collect()
    }

    #[test]
    fn exports_the_totals_the_counters_and_the_first_call_sites() {
        let mut snapshot = example();
        snapshot.counters.allocations = 7;
        snapshot.counters.dropped_calls = 2;
        let long = "f".repeat(LABEL_CHARS + 50);
        let mut sites = Vec::new();
        for index in 0..TOP_CALLSITES + 3 {
            let mut site = snapshot.callsites[0].clone();
            site.bytes = 100;
            let name = if index < 2 {
                long.clone()
            } else {
                format!("f{index}")
            };
            site.frames = Arc::from([Frame {
                function: Some(name.into()),
                ..Frame::default()
            }]);
            sites.push(site);
        }
        snapshot.callsites = sites;
        let text = metrics(
            &[&snapshot],
            Some(AgentUsage {
                cpu_seconds: 1.5,
                resident_bytes: 4096,
                virtual_bytes: 8192,
            }),
        );
        let labels = r#"pid="42",command="chat_server""#;
        assert_eq!(
            samples(&text, "leakbpf_outstanding_bytes"),
            [format!("leakbpf_outstanding_bytes{{{labels}}} 368")]
        );
        assert_eq!(
            samples(&text, "leakbpf_allocations_total"),
            [format!("leakbpf_allocations_total{{{labels}}} 7")]
        );
        assert_eq!(
            samples(&text, "leakbpf_dropped_calls_total"),
            [format!("leakbpf_dropped_calls_total{{{labels}}} 2")]
        );
        assert_eq!(
            samples(&text, "leakbpf_process_rss_bytes"),
            [format!("leakbpf_process_rss_bytes{{{labels}}} 8388608")]
        );
        let sites = samples(&text, "leakbpf_callsite_outstanding_bytes");
        // The two long names are one label, cut short; the rest beyond the first ten
        // call sites have no series.
        assert_eq!(sites.len(), TOP_CALLSITES - 1, "{text}");
        let cut = format!("{}…", "f".repeat(LABEL_CHARS));
        assert!(
            sites.contains(
                &format!(r#"leakbpf_callsite_outstanding_bytes{{{labels},function="{cut}"}} 200"#)
                    .as_str()
            ),
            "{text}"
        );
        assert_eq!(
            samples(&text, "process_cpu_seconds_total"),
            ["process_cpu_seconds_total 1.5"]
        );
        assert_eq!(
            samples(&text, "process_resident_memory_bytes"),
            ["process_resident_memory_bytes 4096"]
        );
        assert!(
            text.contains("# TYPE leakbpf_allocations_total counter"),
            "{text}"
        );
    }
}
