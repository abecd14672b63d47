//! --all: every process that maps the probed C library, system-wide. Each interval brings
//! per-process reports on the --top-processes holding the most outstanding bytes, each
//! with that process's own figures; the table starts with a summary of them.
//!
//! big_leaker (tests/targets/big_leaker.c) leaks gigabytes of address space, more than
//! anything else on a test machine holds, so its processes are the top ones.

use std::{
    collections::BTreeSet,
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use leakbpf_tests::{
    Agent, BIG_LEAKER, KernelObjects, Report, START_UP_ALLOCATIONS, Target, Truth, check_reports,
    reports_of, require_root, sum,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// Two system-wide runs at once would each see the other's leakers.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_run_at_a_time() -> MutexGuard<'static, ()> {
    ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// big_leaker processes, told to leak, and what they leaked.
struct Leakers {
    targets: Vec<Target>,
    truths: Vec<Truth>,
}

impl Leakers {
    /// Starts one big_leaker per entry, leaking that many 4 MiB blocks, stopped at ready.
    fn start(blocks: &[u32]) -> Self {
        let targets = blocks
            .iter()
            .map(|blocks| Target::start(BIG_LEAKER, &["--blocks", &blocks.to_string()]))
            .collect();
        Self {
            targets,
            truths: Vec::new(),
        }
    }

    /// Lets them leak, and reads what they leaked.
    fn leak(&mut self) {
        for target in &mut self.targets {
            target.go();
        }
        self.truths = self
            .targets
            .iter_mut()
            .map(|target| target.read_until_done().truth("leak_big").clone())
            .collect();
    }

    fn pid(&self, index: usize) -> u32 {
        self.targets[index].pid()
    }

    fn finish(&mut self) {
        for target in &mut self.targets {
            target.finish();
        }
    }
}

/// `leakbpf --all ARGS`, attached.
fn attach_all(args: &[&str]) -> Agent {
    let mut agent = Agent::spawn(LEAKBPF, ["--all"].iter().chain(args));
    agent.wait_attached();
    agent
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp with milliseconds, as
/// reports write them (`2026-11-25T10:33:07.412Z`).
fn timestamp_ms(text: &str) -> i64 {
    let number = |range: std::ops::Range<usize>| -> i64 {
        text.get(range)
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("not a timestamp: {text:?}"))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + number(11..13) * 3600 + number(14..16) * 60 + number(17..19);
    seconds * 1000 + number(20..23)
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("a plausible time")
}

/// The reports grouped by interval: an interval's reports are written together, the
/// next ones an interval later. Reports less than `gap_ms` apart are one interval's.
fn intervals(reports: &[Report], gap_ms: i64) -> Vec<&[Report]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for index in 1..=reports.len() {
        if index == reports.len()
            || timestamp_ms(&reports[index].timestamp) - timestamp_ms(&reports[index - 1].timestamp)
                >= gap_ms
        {
            groups.push(&reports[start..index]);
            start = index;
        }
    }
    groups
}

fn describe(interval: &[Report]) -> String {
    interval.iter().map(Report::describe).collect()
}

#[test]
fn the_top_processes_are_reported_each_interval_with_their_own_figures() {
    require_root();
    let _alone = one_run_at_a_time();
    // 1.6 GB, 1.2 GB and 800 MB: the top three; 400 MB: fourth.
    let mut leakers = Leakers::start(&[400, 300, 200, 100]);
    let agent = attach_all(&[
        "--format",
        "json",
        "--interval",
        "500ms",
        "--count",
        "8",
        "--top-processes",
        "3",
    ]);
    leakers.leak();
    let leaked_ms = now_ms();
    let finished = agent.wait();
    finished.assert_success();
    leakers.finish();
    let reports = finished.reports();
    let top: BTreeSet<u32> = (0..3).map(|index| leakers.pid(index)).collect();

    let intervals = intervals(&reports, 250);
    assert!(
        !intervals.is_empty() && intervals.len() <= 8,
        "--count 8 makes 8 intervals of reports, not {}",
        intervals.len()
    );
    for interval in &intervals {
        let pids: BTreeSet<u32> = interval.iter().map(|report| report.pid).collect();
        assert!(
            interval.len() <= 3 && pids.len() == interval.len(),
            "at most 3 processes an interval, each once:\n{}",
            describe(interval)
        );
    }
    // Once they have leaked (an interval after, so the drain came after it too), the
    // top three are exactly the three largest leakers, and the fourth is not reported.
    let settled: Vec<&&[Report]> = intervals
        .iter()
        .filter(|interval| timestamp_ms(&interval[0].timestamp) >= leaked_ms + 500)
        .collect();
    assert!(
        settled.len() >= 2,
        "{} intervals after the leaks: leakbpf stopped too early?",
        settled.len()
    );
    for interval in settled {
        let pids: BTreeSet<u32> = interval.iter().map(|report| report.pid).collect();
        assert_eq!(
            pids,
            top,
            "the three processes holding the most (not the fourth, pid {}):\n{}",
            leakers.pid(3),
            describe(interval)
        );
    }
    let last = intervals.last().expect("not empty");
    assert!(
        last.iter().all(|report| report.is_final),
        "the last interval's reports are final:\n{}",
        describe(last)
    );

    // Each one's figures are its own: its leak exactly, and its counters (it allocated
    // nothing else after attach, and freed nothing).
    for (index, truth) in leakers.truths.iter().enumerate().take(3) {
        let pid = leakers.pid(index);
        let own = reports_of(&reports, pid);
        let report = check_reports(&own, pid);
        assert_eq!(truth.bytes, u64::from([400u32, 300, 200][index]) << 22);
        assert_eq!(
            report.outstanding_at("leak_big"),
            (truth.bytes, truth.count),
            "(bytes, allocations) at leak_big:\n{}",
            report.describe()
        );
        assert_eq!(
            (
                report.totals.outstanding_bytes,
                report.totals.outstanding_allocations
            ),
            (truth.bytes, truth.count),
            "attached after its start-up, it holds exactly its leak:\n{}",
            report.describe()
        );
        assert_eq!(
            (report.counters.allocations, report.counters.frees),
            (truth.count, 0),
            "its own counters, not the system's:\n{}",
            report.describe()
        );
    }
}

#[test]
fn a_process_started_after_attach_is_traced() {
    require_root();
    let _alone = one_run_at_a_time();
    // Every process holding anything is reported: leakbpf itself must not be among them.
    let agent = attach_all(&[
        "--format",
        "json",
        "--interval",
        "300ms",
        "--top-processes",
        "1000",
    ]);
    let agent_pid = agent.pid();
    // Started after the attach: it maps the C library only now.
    let mut leakers = Leakers::start(&[250]);
    leakers.leak();
    // A few intervals with it, then the final reports.
    thread::sleep(Duration::from_millis(1200));
    leakbpf_tests::signal(agent.pid(), libc::SIGINT);
    let finished = agent.wait();
    finished.assert_success();
    leakers.finish();
    let reports = finished.reports();
    assert!(
        reports.iter().all(|report| report.pid != agent_pid),
        "leakbpf (pid {agent_pid}) reported on itself: its own allocations are not traced"
    );
    let pid = leakers.pid(0);
    let own = reports_of(&reports, pid);
    let report = check_reports(&own, pid);
    let truth = &leakers.truths[0];
    assert_eq!(
        report.outstanding_at("leak_big"),
        (truth.bytes, truth.count),
        "(bytes, allocations) at leak_big:\n{}",
        report.describe()
    );
    // Traced from its start: its start-up's blocks too (stdio's buffers), no more.
    let (_, beyond) = sum(report.sites_where(|site| site.function(0) != Some("leak_big")));
    assert!(
        beyond <= START_UP_ALLOCATIONS,
        "{beyond} allocations beyond its leak:\n{}",
        report.describe()
    );
}

#[test]
fn the_c_library_is_probed_once_however_many_processes_use_it() {
    require_root();
    let _alone = one_run_at_a_time();
    let agent = attach_all(&["--format", "json", "--interval", "300ms"]);
    let before = KernelObjects::of(agent.pid()).links;
    // New processes that allocate through the C library, and nothing else: leakbpf has
    // probed it in every process already.
    let mut leakers = Leakers::start(&[1, 1, 1, 1]);
    leakers.leak();
    thread::sleep(Duration::from_millis(900));
    let after = KernelObjects::of(agent.pid()).links;
    leakers.finish();
    leakbpf_tests::signal(agent.pid(), libc::SIGINT);
    let finished = agent.wait();
    finished.assert_success();
    assert_eq!(
        after.len(),
        before.len(),
        "leakbpf held {} links (probes and tracepoints) once attached, {} after 4 processes \
         using the same C library started: the library's functions are probed again for \
         each process, so every allocation on the system runs the programs that many more \
         times",
        before.len(),
        after.len()
    );
}

#[test]
fn short_lived_processes_do_not_end_the_run() {
    require_root();
    let _alone = one_run_at_a_time();
    let agent = attach_all(&["--format", "json", "--interval", "300ms"]);
    // Thousands of processes come and go on a real system: some are gone before leakbpf
    // is done looking at them (their maps read, their objects opened through
    // /proc/PID/root).
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut started = 0;
    while std::time::Instant::now() < until {
        let status = std::process::Command::new("sleep")
            .arg("0.003")
            .status()
            .expect("cannot run sleep");
        assert!(status.success());
        started += 1;
    }
    leakbpf_tests::signal(agent.pid(), libc::SIGINT);
    let finished = agent.wait();
    assert!(
        finished.status.success(),
        "leakbpf --all ended with {} while {started} short-lived processes came and went; \
         stderr:\n{}",
        finished.status,
        finished.stderr
    );
    finished.assert_no_panic();
    assert!(
        finished.reports().iter().any(|report| report.is_final),
        "final reports at SIGINT"
    );
}

/// The words of a line: its runs of ASCII letters and digits.
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect()
}

#[test]
fn the_table_starts_each_interval_with_a_summary_of_the_top_processes() {
    require_root();
    let _alone = one_run_at_a_time();
    let mut leakers = Leakers::start(&[300, 200]);
    let agent = attach_all(&[
        "--interval",
        "500ms",
        "--count",
        "4",
        "--top-processes",
        "3",
    ]);
    leakers.leak();
    let finished = agent.wait();
    finished.assert_success();
    leakers.finish();
    let table = &finished.stdout;
    assert!(
        !table.trim_start().starts_with('{'),
        "the default format is a table:\n{table}"
    );
    let lines: Vec<&str> = table.lines().collect();
    let is_header = |line: &str| line.starts_with("leakbpf report #");
    let first_header = lines
        .iter()
        .position(|line| is_header(line))
        .unwrap_or_else(|| panic!("no per-process report:\n{table}"));
    assert!(
        lines[..first_header]
            .iter()
            .any(|line| !line.trim().is_empty()),
        "a summary comes before the first interval's reports:\n{table}"
    );
    for (index, truth) in leakers.truths.iter().enumerate() {
        let pid = leakers.pid(index).to_string();
        let bytes = truth.bytes.to_string();
        let headers: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, line)| is_header(line) && words(line).contains(&pid.as_str()))
            .map(|(at, _)| at)
            .collect();
        let last_header = *headers.last().unwrap_or_else(|| {
            panic!("no report headed \"pid {pid}\" on the leaker (pid {pid}):\n{table}")
        });
        // In the summary (not a report's header): its pid and exactly what it holds,
        // before its own report.
        let summary = lines[..last_header].iter().any(|line| {
            let words = words(line);
            !is_header(line) && words.contains(&pid.as_str()) && words.contains(&bytes.as_str())
        });
        assert!(
            summary,
            "no summary line with pid {pid} and its {bytes} B before its report:\n{table}"
        );
    }
}

#[test]
fn all_takes_no_pid_and_no_command() {
    require_root();
    for args in [
        &["--all", "--pid", "1"][..],
        &["--all", "--", "/bin/true"][..],
    ] {
        let finished = Agent::spawn(LEAKBPF, args).wait();
        assert!(
            !finished.status.success(),
            "leakbpf {args:?} should refuse; stderr:\n{}",
            finished.stderr
        );
        finished.assert_no_panic();
        assert!(
            finished.stdout.trim().is_empty(),
            "leakbpf {args:?} reported:\n{}",
            finished.stdout
        );
        assert!(
            finished.stderr.contains("--all"),
            "the error names --all: {}",
            finished.stderr
        );
    }
}
