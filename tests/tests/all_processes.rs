//! --all: every process that maps the probed C library, system-wide. Each interval brings
//! per-process reports on the --top-processes holding the most outstanding bytes, each
//! with that process's own figures; the table starts with a summary of them.
//!
//! big_leaker (tests/targets/big_leaker.c) leaks gigabytes of address space, more than
//! anything else on a test machine holds, so its processes are the top ones.

use std::{
    collections::BTreeSet,
    process::Command,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use leakbpf_tests::{
    Agent, BIG_LEAKER, KernelObjects, Report, START_UP_ALLOCATIONS, Target, Truth, final_report_of,
    require_root, sum,
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
            .iter()
            .map(|target| target.read_until_done().truth("leak_big").clone())
            .collect();
    }

    fn pid(&self, index: usize) -> u32 {
        self.targets[index].pid()
    }

    /// Whether `report` is about one of them and shows its whole leak.
    fn shows_a_leak(&self, report: &Report) -> Option<usize> {
        (0..self.targets.len()).find(|&index| {
            let truth = &self.truths[index];
            report.pid == self.pid(index)
                && report.outstanding_at("leak_big") == (truth.bytes, truth.count)
        })
    }

    /// Waits until leakbpf has reported on each of them with its whole leak.
    fn wait_until_reported(&self, agent: &Agent) {
        let mut seen = BTreeSet::new();
        agent.wait_for_report("a report on each leaker with its whole leak", |report| {
            seen.extend(self.shows_a_leak(report));
            seen.len() == self.targets.len()
        });
    }

    fn finish(&mut self) {
        for target in &mut self.targets {
            target.finish();
        }
    }
}

/// `leakbpf --all ARGS`, attached.
fn attach_all(args: &[&str]) -> Agent {
    let agent = Agent::spawn(LEAKBPF, ["--all"].iter().chain(args));
    agent.wait_attached();
    agent
}

/// Follows a run's reports, one after the other, and counts the intervals that report on
/// exactly the top three leakers, largest first, each with its whole leak.
#[derive(Default)]
struct TopThree {
    /// Which of them the next report must be about to go on with an interval.
    next: usize,
    intervals: usize,
}

impl TopThree {
    /// Takes the next report; returns whether it ended such an interval.
    fn take(&mut self, leakers: &Leakers, report: &Report) -> bool {
        let about = leakers.shows_a_leak(report);
        self.next = match about {
            Some(index) if index == self.next => index + 1,
            Some(0) => 1,
            _ => 0,
        };
        let ended = self.next == 3;
        if ended {
            self.next = 0;
            self.intervals += 1;
        }
        ended
    }
}

#[test]
fn the_top_processes_are_reported_each_interval_with_their_own_figures() {
    require_root();
    let _alone = one_run_at_a_time();
    // 4 GB, 3.6 GB and 3.2 GB of address space: the top three, far above what any other
    // process on the machine allocates meanwhile; 2.8 GB: fourth.
    let blocks = [1000, 900, 800, 700];
    let mut leakers = Leakers::start(&blocks);
    let agent = attach_all(&[
        "--format",
        "json",
        "--interval",
        "500ms",
        "--top-processes",
        "3",
    ]);
    leakers.leak();
    let mut top_three = TopThree::default();
    agent.wait_for_report("two intervals on the top three leakers", |report| {
        top_three.take(&leakers, report);
        top_three.intervals == 2
    });
    agent.signal(libc::SIGINT);
    let finished = agent.wait();
    finished.assert_success();
    leakers.finish();
    let reports = finished.reports();

    // Once an interval has reported on the top three with their whole leaks (the fourth
    // cannot hold more than the third from then on), every interval reports on exactly
    // them, largest first, each once, with its whole leak; the final interval too.
    let mut top_three = TopThree::default();
    let settled = reports
        .iter()
        .position(|report| top_three.take(&leakers, report))
        .expect("an interval on the top three");
    let after = &reports[settled + 1..];
    let describe = || after.iter().map(Report::describe).collect::<String>();
    assert!(
        after.len() >= 3 * 2 && after.len().is_multiple_of(3),
        "{} reports after the first interval on the top three: not whole intervals of \
         three:\n{}",
        after.len(),
        describe()
    );
    for interval in after.chunks(3) {
        let ended = interval
            .iter()
            .filter(|report| top_three.take(&leakers, report))
            .count();
        assert_eq!(
            ended,
            1,
            "each interval: the three processes holding the most, largest first, each with \
             its whole leak (not the fourth, pid {}):\n{}",
            leakers.pid(3),
            describe()
        );
    }
    let (earlier, last) = after.split_at(after.len() - 3);
    assert!(
        last.iter().all(|report| report.is_final) && earlier.iter().all(|report| !report.is_final),
        "the last interval's reports, and only they, are final:\n{}",
        describe()
    );

    // Each one's figures are its own: its leak exactly, and its counters (it allocated
    // nothing else after attach, and freed nothing).
    for (index, truth) in leakers.truths.iter().enumerate().take(3) {
        let report = final_report_of(&reports, leakers.pid(index));
        assert_eq!(truth.bytes, u64::from(blocks[index]) << 22);
        assert_eq!(
            report.outstanding(),
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
    leakers.wait_until_reported(&agent);
    agent.signal(libc::SIGINT);
    let finished = agent.wait();
    finished.assert_success();
    leakers.finish();
    let reports = finished.reports();
    assert!(
        reports.iter().all(|report| report.pid != agent_pid),
        "leakbpf (pid {agent_pid}) reported on itself: its own allocations are not traced"
    );
    let report = final_report_of(&reports, leakers.pid(0));
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
    let agent = attach_all(&[
        "--format",
        "json",
        "--interval",
        "300ms",
        "--top-processes",
        "1000",
    ]);
    let before = KernelObjects::of(agent.pid()).links;
    // New processes that allocate through the C library, and nothing else: leakbpf has
    // probed it in every process already.
    let mut leakers = Leakers::start(&[1, 1, 1, 1]);
    leakers.leak();
    // Reported on: leakbpf has seen each of them, and done whatever it does for a new
    // process.
    leakers.wait_until_reported(&agent);
    let after = KernelObjects::of(agent.pid()).links;
    leakers.finish();
    agent.signal(libc::SIGINT);
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
    let until = Instant::now() + Duration::from_secs(4);
    let mut started = 0;
    while Instant::now() < until {
        let status = Command::new("sleep")
            .arg("0.003")
            .status()
            .expect("cannot run sleep");
        assert!(status.success());
        started += 1;
    }
    agent.signal(libc::SIGINT);
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
    let mut leakers = Leakers::start(&[1000, 900]);
    let agent = attach_all(&["--interval", "500ms", "--top-processes", "3"]);
    leakers.leak();
    let is_header = |line: &str| line.starts_with("leakbpf report #");
    // Each leaker's whole leak in a summary, then its report.
    let mut summarized = BTreeSet::new();
    let mut reported = BTreeSet::new();
    agent.wait_for_stdout("each leaker in a summary, then its report", |line| {
        let words = words(line);
        for (index, truth) in leakers.truths.iter().enumerate() {
            let pid = leakers.pid(index).to_string();
            if !words.contains(&pid.as_str()) {
                continue;
            }
            if !is_header(line) && words.contains(&truth.bytes.to_string().as_str()) {
                summarized.insert(index);
            } else if is_header(line) && summarized.contains(&index) {
                reported.insert(index);
            }
        }
        reported.len() == leakers.truths.len()
    });
    agent.signal(libc::SIGINT);
    let finished = agent.wait();
    finished.assert_success();
    leakers.finish();
    let table = &finished.stdout;
    assert!(
        !table.trim_start().starts_with('{'),
        "the default format is a table:\n{table}"
    );
    let lines: Vec<&str> = table.lines().collect();
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
