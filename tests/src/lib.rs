//! The harness of leakbpf's end-to-end tests: starts a target program (built by build.rs
//! with tests/targets/Makefile), traces it with the real agent, and parses both sides: the
//! target's own account of what it leaked (its "truth" lines) and leakbpf's JSON reports.
//!
//! Target protocol: with `--wait` a target prints `ready` and waits for a line on stdin;
//! then it works, prints one JSON line per leaking function,
//! `{"truth":{"function":...,"bytes":...,"count":...}}` (and maybe other JSON lines),
//! then `done`; with `--wait` it then waits for EOF on stdin and exits 0.
//!
//! The tests load eBPF programs, so they must run as root (`cargo xtask test` arranges
//! it); as anyone else they fail, saying so, rather than pass without testing anything.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;

/// The target programs built by build.rs from tests/targets.
pub const CHAT_SERVER: &str = env!("LEAKBPF_TARGET_CHAT_SERVER");
pub const LEAKER: &str = env!("LEAKBPF_TARGET_LEAKER");
pub const THREADS: &str = env!("LEAKBPF_TARGET_THREADS");
pub const EARLY: &str = env!("LEAKBPF_TARGET_EARLY");
/// src/bin/rust_leaker.rs, built with frame pointers.
pub const RUST_LEAKER: &str = env!("LEAKBPF_TARGET_RUST_LEAKER");
/// A process tree: children, a grandchild and an exec'd child that each leak their own
/// amount (tests/targets/forker.c).
pub const FORKER: &str = env!("LEAKBPF_TARGET_FORKER");
/// Leaks, execs (itself, or its static build), leaks again (tests/targets/exec_target.c).
pub const EXEC_TARGET: &str = env!("LEAKBPF_TARGET_EXEC_TARGET");
/// Leaks gigabytes of address space at leak_big (tests/targets/big_leaker.c).
pub const BIG_LEAKER: &str = env!("LEAKBPF_TARGET_BIG_LEAKER");
/// The allocator targets (tests/targets/alloc_target.h): linked with jemalloc, tcmalloc
/// (C++), mimalloc; leaking through a `je_`-prefixed allocator library; fully static.
pub const JEMALLOC_LINKED: &str = env!("LEAKBPF_TARGET_JEMALLOC_LINKED");
pub const TCMALLOC_NEW: &str = env!("LEAKBPF_TARGET_TCMALLOC_NEW");
pub const MIMALLOC_LINKED: &str = env!("LEAKBPF_TARGET_MIMALLOC_LINKED");
pub const PREFIXED: &str = env!("LEAKBPF_TARGET_PREFIXED");
pub const STATIC_GLIBC: &str = env!("LEAKBPF_TARGET_STATIC_GLIBC");
pub const HOSTILE_STACK: &str = env!("LEAKBPF_TARGET_HOSTILE_STACK");
/// Leaks from functions with hostile names: thousands of characters long, with control
/// characters, not UTF-8 (tests/targets/hostile_names.c).
pub const HOSTILE_NAMES: &str = env!("LEAKBPF_TARGET_HOSTILE_NAMES");
/// Leaks through libbroken_elf.so, which it finds next to itself, intact; broken copies
/// are in `broken_elf.libs/HOW/` beside it (tests/targets/break_elf.py).
pub const BROKEN_ELF: &str = env!("LEAKBPF_TARGET_BROKEN_ELF");
/// tests/targets/stripped.c stripped of every symbol: alone; with a `.gnu_debuglink` to
/// `STRIPPED_DEBUGLINK.debug`; with a debug link only build-id lookup resolves, to
/// `STRIPPED_BUILDID.build-id/XX/YYYY.debug` once installed under /usr/lib/debug. And
/// the unstripped build the first two are stripped from.
pub const STRIPPED: &str = env!("LEAKBPF_TARGET_STRIPPED");
pub const STRIPPED_DEBUGLINK: &str = env!("LEAKBPF_TARGET_STRIPPED_DEBUGLINK");
pub const STRIPPED_BUILDID: &str = env!("LEAKBPF_TARGET_STRIPPED_BUILDID");
pub const STRIPPED_FULL: &str = env!("LEAKBPF_TARGET_STRIPPED_FULL");
/// src/bin/rust_leaker.rs built for x86_64-unknown-linux-musl, statically; empty when
/// rustc has no standard library for that target (see build.rs).
pub const RUST_LEAKER_MUSL: &str = env!("LEAKBPF_TARGET_RUST_LEAKER_MUSL");

/// How long leakbpf may take to attach (load, find the allocator, place the probes).
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a traced target may take to do its work and print `done`.
pub const WORK_TIMEOUT: Duration = Duration::from_secs(180);
/// How long leakbpf may take to write its final report and exit once told to.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Fails the test unless it runs as root: loading eBPF programs needs it, and a test that
/// cannot trace must not pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "leakbpf's end-to-end tests load eBPF programs and must run as root (euid is {euid}): \
         run them with `cargo xtask test`, or as root"
    );
}

// ---------------------------------------------------------------------------------------
// The JSON report (schema_version 3).

#[derive(Clone, Debug, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub timestamp: String,
    pub pid: u32,
    pub report: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub interval_s: f64,
    pub totals: Totals,
    pub counters: Counters,
    pub callsites: Vec<Callsite>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub callsites: u64,
}

#[derive(Clone, Copy, Debug, Deserialize)]
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
}

#[derive(Clone, Debug, Deserialize)]
pub struct Callsite {
    pub rank: u64,
    pub stack_id: String,
    pub bytes: u64,
    pub allocations: u64,
    pub average_size: u64,
    pub oldest_age_s: f64,
    pub growth_bytes: i64,
    pub growth_allocations: i64,
    pub frames: Vec<Frame>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Frame {
    pub address: String,
    pub function: Option<String>,
    pub module: Option<String>,
    pub offset: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub inlined: bool,
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

    /// The first frame that is not Rust's allocation machinery (`alloc::…`, `__rust_alloc`,
    /// …): in a Rust program, the function that asked for the memory. leakbpf may show the
    /// standard library's allocation functions (inlined or not) above it.
    pub fn rust_caller(&self) -> Option<&str> {
        self.frames
            .iter()
            .map(Frame::name)
            .find(|name| !name.is_some_and(is_rust_allocation_machinery))
            .flatten()
    }
}

fn strip_rust_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((path, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            path
        }
        _ => name,
    }
}

fn is_rust_allocation_machinery(name: &str) -> bool {
    let path = name.trim_start_matches('<');
    ["alloc::", "core::", "std::", "__rust_", "__rdl_", "__rg_"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

impl Report {
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
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("not a schema 3 JSON report ({err}): {line}"))
        })
        .collect()
}

/// Checks what every run's reports must satisfy, and returns the final report: all of
/// `pid`, schema 3, numbered 1, 2, …, callsites ranked 1, 2, … by bytes descending, and
/// exactly one final report, the last.
pub fn check_reports(reports: &[Report], pid: u32) -> &Report {
    assert!(!reports.is_empty(), "leakbpf wrote no report");
    for (index, report) in reports.iter().enumerate() {
        let at = || format!("in report {}", report.describe());
        assert_eq!(report.schema_version, 3, "{}", at());
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
/// (`--pid A,B`, `--follow-forks`, `--all`): check them with [`check_reports`].
pub fn reports_of(reports: &[Report], pid: u32) -> Vec<Report> {
    reports
        .iter()
        .filter(|report| report.pid == pid)
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// What a target says about itself.

#[derive(Clone, Debug, Deserialize)]
pub struct Truth {
    pub function: String,
    pub bytes: u64,
    pub count: u64,
    /// Any other fields (`sizeof`, `joins`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Truth {
    /// An extra unsigned field, e.g. `sizeof`.
    pub fn extra_u64(&self, key: &str) -> u64 {
        self.extra
            .get(key)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("the truth about {} has no {key}: {self:?}", self.function))
    }
}

/// Everything a target printed between `go` and `done`.
#[derive(Clone, Debug, Default)]
pub struct TargetOutput {
    pub truths: Vec<Truth>,
    /// Every JSON object it printed, the truth lines included.
    pub json: Vec<Value>,
}

impl TargetOutput {
    fn add_line(&mut self, line: &str) {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if let Some(truth) = value.get("truth") {
            let truth = serde_json::from_value(truth.clone())
                .unwrap_or_else(|err| panic!("bad truth line ({err}): {line}"));
            self.truths.push(truth);
        }
        self.json.push(value);
    }

    /// The truth about `function`.
    pub fn truth(&self, function: &str) -> &Truth {
        self.truths
            .iter()
            .find(|truth| truth.function == function)
            .unwrap_or_else(|| panic!("the target printed no truth about {function}: {self:?}"))
    }

    /// The object under `key` of the first JSON line that has one (e.g. `churn`).
    pub fn object(&self, key: &str) -> &Value {
        self.json
            .iter()
            .find_map(|value| value.get(key))
            .unwrap_or_else(|| panic!("the target printed no {key:?} line: {self:?}"))
    }
}

// ---------------------------------------------------------------------------------------
// Processes.

/// Lines read from a pipe on a thread, so they can be awaited with a timeout; `all` keeps
/// every line.
struct LineReader {
    lines: Receiver<String>,
    all: Arc<Mutex<String>>,
}

impl LineReader {
    fn new(pipe: impl Read + Send + 'static) -> Self {
        let (sender, lines) = mpsc::channel();
        let all = Arc::new(Mutex::new(String::new()));
        let kept = Arc::clone(&all);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    kept.push_str(&line);
                    kept.push('\n');
                }
                // Once nobody awaits lines, keep draining so the writer never blocks.
                let _ = sender.send(line);
            }
        });
        Self { lines, all }
    }

    /// The next line; None at end of file; panics after `deadline` naming `what`.
    fn next_line(&self, deadline: Instant, what: &str) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}"),
        }
    }

    fn text(&self) -> String {
        self.all.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Waits for `child` to exit; kills it and panics after `timeout`.
fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not exit within {timeout:?}: killed it");
            }
            Err(err) => panic!("waiting for {what}: {err}"),
        }
    }
}

/// Sends `signal` to a process this test started.
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        result,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// A target program started with `--wait`, stopped at `ready`. Killed if dropped running.
pub struct Target {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: LineReader,
}

impl Target {
    /// Starts `program --wait args...` and waits for its `ready`.
    pub fn start(program: impl AsRef<Path>, args: &[&str]) -> Self {
        Self::start_with_env(program, args, &[])
    }

    /// [`Target::start`] with variables added to its environment (e.g. `LD_PRELOAD`).
    pub fn start_with_env(program: impl AsRef<Path>, args: &[&str], env: &[(&str, &str)]) -> Self {
        let program = program.as_ref();
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut child = Command::new(program)
            .arg("--wait")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
        let stdin = child.stdin.take();
        let stdout = LineReader::new(child.stdout.take().expect("piped stdout"));
        let target = Self {
            name,
            child,
            stdin,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        match target
            .stdout
            .next_line(deadline, &format!("{} to be ready", target.name))
        {
            Some(line) if line == "ready" => target,
            other => panic!("{} printed {other:?} instead of ready", target.name),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it work.
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "go")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|err| panic!("cannot tell {} to go: {err}", self.name));
    }

    /// Reads its output up to `done`.
    pub fn read_until_done(&mut self) -> TargetOutput {
        let deadline = Instant::now() + WORK_TIMEOUT;
        read_until_done(&self.stdout, deadline, &self.name)
    }

    /// Closes its stdin, so it exits, and checks that it exited 0.
    pub fn finish(&mut self) {
        self.stdin = None;
        let status = wait_child(&mut self.child, Duration::from_secs(30), &self.name);
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_until_done(lines: &LineReader, deadline: Instant, name: &str) -> TargetOutput {
    let mut output = TargetOutput::default();
    loop {
        match lines.next_line(deadline, &format!("{name} to print done")) {
            Some(line) if line == "done" => return output,
            Some(line) => output.add_line(&line),
            None => panic!(
                "{name} closed its stdout before done; it printed:\n{}",
                lines.text()
            ),
        }
    }
}

/// A running leakbpf. Killed if dropped running.
pub struct Agent {
    child: Child,
    /// Its stdin when started with [`Agent::spawn_command_with_stdin`], else /dev/null.
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    stderr: LineReader,
}

/// How a leakbpf run ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Agent {
    /// Starts `leakbpf args...` with stdin from /dev/null.
    pub fn spawn<I, S>(leakbpf: impl AsRef<Path>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_command(Command::new(leakbpf.as_ref()).args(args))
    }

    /// Starts a prepared command (e.g. leakbpf under `setpriv`), stdin from /dev/null.
    pub fn spawn_command(command: &mut Command) -> Self {
        Self::start(command.stdin(Stdio::null()))
    }

    /// Starts a prepared command with its stdin a pipe, which a command it traces in
    /// spawn mode inherits; see [`Agent::close_stdin`].
    pub fn spawn_command_with_stdin(command: &mut Command) -> Self {
        Self::start(command.stdin(Stdio::piped()))
    }

    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let stdin = child.stdin.take();
        let stdout = LineReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = LineReader::new(child.stderr.take().expect("piped stderr"));
        Self {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Closes the stdin pipe: a `--wait` target traced in spawn mode then exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `leakbpf: attached` line on stderr; panics if leakbpf exits first.
    pub fn wait_attached(&mut self) {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            match self.stderr.next_line(deadline, "leakbpf: attached") {
                Some(line) if line.starts_with("leakbpf: attached") => return,
                Some(_) => {}
                None => {
                    let status = wait_child(&mut self.child, EXIT_TIMEOUT, "leakbpf");
                    panic!(
                        "leakbpf exited ({status}) without attaching; stderr:\n{}",
                        self.stderr.text()
                    );
                }
            }
        }
    }

    /// In spawn mode, where the traced command writes to leakbpf's stdout: its lines up
    /// to `done`.
    pub fn read_target_until_done(&mut self, name: &str) -> TargetOutput {
        read_until_done(&self.stdout, Instant::now() + WORK_TIMEOUT, name)
    }

    /// Waits (at most [`EXIT_TIMEOUT`]) for leakbpf to exit by itself.
    pub fn wait(mut self) -> Finished {
        let status = wait_child(&mut self.child, EXIT_TIMEOUT, "leakbpf");
        self.finished(status)
    }

    fn finished(&mut self, status: ExitStatus) -> Finished {
        self.stdin = None;
        // The reader threads see end of file once leakbpf (and any child sharing its
        // pipes) is gone; give them a moment to collect the last lines.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .stdout
            .next_line(deadline, "leakbpf's stdout to close")
            .is_some()
        {}
        while self
            .stderr
            .next_line(deadline, "leakbpf's stderr to close")
            .is_some()
        {}
        Finished {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Finished {
    /// Checks that leakbpf exited 0 without panicking.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "leakbpf exited with {}; stderr:\n{}",
            self.status,
            self.stderr
        );
        self.assert_no_panic();
    }

    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "leakbpf panicked; stderr:\n{}",
            self.stderr
        );
    }

    /// Checks the error contract: a non-zero exit, exactly one `leakbpf: error:` line, no
    /// panic. Returns the error line.
    pub fn assert_error(&self) -> &str {
        assert!(
            !self.status.success(),
            "leakbpf should have failed, but exited 0; stderr:\n{}",
            self.stderr
        );
        self.assert_no_panic();
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|line| line.starts_with("leakbpf: error:"))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "expected exactly one `leakbpf: error:` line; stderr:\n{}",
            self.stderr
        );
        errors[0]
    }

    /// The JSON reports it wrote to stdout.
    pub fn reports(&self) -> Vec<Report> {
        parse_reports(&self.stdout)
    }
}

/// A target traced from start to end in `--pid` mode.
pub struct PidRun {
    pub pid: u32,
    pub truth: TargetOutput,
    pub finished: Finished,
    pub reports: Vec<Report>,
}

impl PidRun {
    /// The final report, after checking the whole run (see [`check_reports`]).
    pub fn final_report(&self) -> &Report {
        check_reports(&self.reports, self.pid)
    }
}

/// Starts `target --wait args`, attaches `leakbpf --pid PID --format json leakbpf_args`,
/// lets the target work, reads its truth, lets it exit, and waits for leakbpf's final
/// report and exit (which must be 0).
pub fn trace_pid(leakbpf: &str, target: &str, args: &[&str], leakbpf_args: &[&str]) -> PidRun {
    trace_pid_with_env(leakbpf, target, args, leakbpf_args, &[])
}

/// [`trace_pid`] with variables added to the target's environment (not leakbpf's).
pub fn trace_pid_with_env(
    leakbpf: &str,
    target: &str,
    args: &[&str],
    leakbpf_args: &[&str],
    env: &[(&str, &str)],
) -> PidRun {
    let mut target = Target::start_with_env(target, args, env);
    let pid = target.pid();
    let pid_arg = pid.to_string();
    let mut agent = Agent::spawn(
        leakbpf,
        ["--pid", pid_arg.as_str(), "--format", "json"]
            .iter()
            .chain(leakbpf_args),
    );
    agent.wait_attached();
    target.go();
    let truth = target.read_until_done();
    target.finish();
    let finished = agent.wait();
    finished.assert_success();
    let reports = finished.reports();
    PidRun {
        pid,
        truth,
        finished,
        reports,
    }
}

/// A command traced from its first instruction in spawn mode.
pub struct SpawnRun {
    pub pid: u32,
    pub truth: TargetOutput,
    pub finished: Finished,
    pub reports: Vec<Report>,
}

impl SpawnRun {
    pub fn final_report(&self) -> &Report {
        check_reports(&self.reports, self.pid)
    }
}

/// Runs `leakbpf --format json --output FILE leakbpf_args -- target args`: the target
/// prints its truth on leakbpf's stdout, the reports go to FILE.
pub fn trace_spawn(leakbpf: &str, target: &str, args: &[&str], leakbpf_args: &[&str]) -> SpawnRun {
    trace_spawn_with_env(leakbpf, target, args, leakbpf_args, &[])
}

/// [`trace_spawn`] with variables added to leakbpf's environment, which the command it
/// starts inherits (e.g. `LD_PRELOAD`, which then applies to leakbpf too).
pub fn trace_spawn_with_env(
    leakbpf: &str,
    target: &str,
    args: &[&str],
    leakbpf_args: &[&str],
    env: &[(&str, &str)],
) -> SpawnRun {
    let dir = TempDir::new();
    let output = dir.path().join("reports.ndjson");
    let mut command = Command::new(leakbpf);
    command
        .envs(env.iter().copied())
        .args(["--format", "json", "--output"])
        .arg(&output)
        .args(leakbpf_args)
        .arg("--")
        .arg(target)
        .args(args);
    let mut agent = Agent::spawn_command(&mut command);
    let name = Path::new(target)
        .file_name()
        .map_or_else(|| target.to_owned(), |n| n.to_string_lossy().into_owned());
    let truth = agent.read_target_until_done(&name);
    let finished = agent.wait();
    finished.assert_success();
    let text = fs::read_to_string(&output)
        .unwrap_or_else(|err| panic!("cannot read leakbpf's --output {}: {err}", output.display()));
    let reports = parse_reports(&text);
    let pid = reports.first().map_or(0, |report| report.pid);
    assert_ne!(pid, 0, "no report; leakbpf's stderr:\n{}", finished.stderr);
    SpawnRun {
        pid,
        truth,
        finished,
        reports,
    }
}

// ---------------------------------------------------------------------------------------
// The allocator tests' checks.

/// How an allocator test traced its target, which decides what else its report may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traced {
    /// Attached to a `--wait` target stopped at `ready`: its start-up is over, so the
    /// report holds nothing but the leaks.
    ByPid,
    /// From the first instruction: the report also holds what the program's start-up
    /// keeps (stdio buffers, libstdc++'s emergency pool, an allocator's own state).
    FromSpawn,
}

/// At most this many allocations outstanding beyond the leaks in a [`Traced::FromSpawn`]
/// run: a start-up keeps a few; an allocation counted twice in the churn leaves one for
/// each block churned.
pub const START_UP_ALLOCATIONS: u64 = 64;

/// What every allocator test checks of its final report, against what the target said:
/// - it printed a truth for exactly `functions`, each a leak (count > 0);
/// - each function holds exactly its truth's bytes and allocations at `frames[0]`, and
///   together they hold exactly the truths' sum;
/// - nothing is counted twice: traced by pid, the whole report holds exactly the truths'
///   sum; from spawn, the call sites beyond the leaking functions hold at most
///   [`START_UP_ALLOCATIONS`];
/// - nothing `churn` allocated is outstanding, at `frames[0]` or deeper;
/// - leakbpf counted at least the frees the churn made, and dropped nothing.
pub fn assert_allocator_run(
    report: &Report,
    output: &TargetOutput,
    functions: &[&str],
    traced: Traced,
) {
    let mut printed: Vec<&str> = output.truths.iter().map(|t| t.function.as_str()).collect();
    let mut expected = functions.to_vec();
    printed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        printed, expected,
        "the target's truths are about other functions"
    );

    let (mut truth_bytes, mut truth_count) = (0, 0);
    for function in functions {
        let truth = output.truth(function);
        assert!(truth.count > 0, "the target leaked nothing from {function}");
        assert_eq!(
            report.outstanding_at(function),
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {function}:\n{}",
            report.describe()
        );
        truth_bytes += truth.bytes;
        truth_count += truth.count;
    }
    let at_leaks = |site: &Callsite| site.function(0).is_some_and(|f| functions.contains(&f));
    assert_eq!(
        sum(report.sites_where(at_leaks)),
        (truth_bytes, truth_count),
        "(bytes, allocations) outstanding at all the leaking functions together:\n{}",
        report.describe()
    );
    match traced {
        Traced::ByPid => assert_eq!(
            (
                report.totals.outstanding_bytes,
                report.totals.outstanding_allocations
            ),
            (truth_bytes, truth_count),
            "attached after start-up, the report holds exactly the leaks:\n{}",
            report.describe()
        ),
        Traced::FromSpawn => {
            let (_, beyond) = sum(report.sites_where(|site| !at_leaks(site)));
            assert!(
                beyond <= START_UP_ALLOCATIONS,
                "{beyond} allocations outstanding beyond the leaks, more than a start-up \
                 keeps (counted twice?):\n{}",
                report.describe()
            );
        }
    }

    assert_churn_freed(report);
    assert_eq!(
        sum(report.sites_where(|site| {
            site.frames
                .iter()
                .any(|frame| frame.name() == Some("churn"))
        })),
        (0, 0),
        "nothing churn allocated is outstanding, at any depth:\n{}",
        report.describe()
    );

    assert_churn_frees_counted(report, output, 500_000);
    assert_nothing_dropped(report);
}

/// Nothing the target's `churn` function allocated (as the allocator's direct caller) is
/// outstanding: it frees everything.
pub fn assert_churn_freed(report: &Report) {
    assert_eq!(
        report.outstanding_at("churn"),
        (0, 0),
        "churn frees everything it allocates:\n{}",
        report.describe()
    );
}

/// The target's churn freed at least `at_least` blocks (its `churn.frees`), and leakbpf
/// counted every one of those frees.
pub fn assert_churn_frees_counted(report: &Report, output: &TargetOutput, at_least: u64) {
    let churn = output.object("churn");
    let frees = churn["frees"].as_u64().expect("churn.frees");
    assert!(frees >= at_least, "the target churned too little: {churn}");
    assert!(
        report.counters.frees >= frees,
        "leakbpf counted {} frees, the churn alone made {frees}:\n{}",
        report.counters.frees,
        report.describe()
    );
}

/// leakbpf recorded every allocation and sent every event: no map overflowed, no probe
/// failed.
pub fn assert_nothing_dropped(report: &Report) {
    let counters = report.counters;
    assert_eq!(
        (
            counters.dropped_allocations,
            counters.dropped_calls,
            counters.probe_errors,
            counters.lost_events
        ),
        (0, 0, 0, 0),
        "leakbpf dropped events: {counters:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Odds and ends.

/// A fresh directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "leakbpf-tests.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap_or_else(|err| panic!("mkdir {}: {err}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A program on PATH, or in the sbin directories root's PATH may lack.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

// ---------------------------------------------------------------------------------------
// What a leakbpf process holds in the kernel.

/// The eBPF programs and links a process holds through its file descriptors.
#[derive(Clone, Debug, Default)]
pub struct KernelObjects {
    pub pid: u32,
    /// Program id -> name (from bpftool), for the programs its descriptors refer to.
    pub programs: BTreeMap<u64, String>,
    pub links: Vec<u64>,
}

impl KernelObjects {
    /// What `pid` holds now, read from `/proc/PID/fdinfo`.
    pub fn of(pid: u32) -> Self {
        let mut program_ids = Vec::new();
        let mut links = Vec::new();
        let dir = format!("/proc/{pid}/fdinfo");
        let entries = fs::read_dir(&dir).unwrap_or_else(|err| panic!("cannot list {dir}: {err}"));
        for entry in entries.flatten() {
            // A descriptor closed meanwhile is simply not there.
            let Ok(info) = fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in info.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                let Ok(id) = value.trim().parse::<u64>() else {
                    continue;
                };
                match key {
                    "prog_id" => program_ids.push(id),
                    "link_id" => links.push(id),
                    _ => {}
                }
            }
        }
        program_ids.sort_unstable();
        program_ids.dedup();
        links.sort_unstable();
        links.dedup();
        let names = bpf_program_names();
        let programs = program_ids
            .into_iter()
            .map(|id| (id, names.get(&id).cloned().unwrap_or_default()))
            .collect();
        Self {
            pid,
            programs,
            links,
        }
    }

    /// Checks that it holds eBPF programs, so that [`KernelObjects::assert_released`]
    /// has something to check.
    pub fn assert_probes_loaded(&self) {
        assert!(
            !self.programs.is_empty(),
            "leakbpf (pid {}) holds no eBPF program while attached",
            self.pid
        );
    }

    /// Checks that none of them is left in the kernel (run after the process exited):
    /// no program, no link (uprobe or perf_event) to one, no uprobe event it created.
    pub fn assert_released(&self) {
        let loaded = bpf_program_names();
        let left: Vec<_> = self
            .programs
            .iter()
            .filter(|(id, _)| loaded.contains_key(id))
            .collect();
        assert!(
            left.is_empty(),
            "programs of leakbpf (pid {}) are still loaded after it exited: {left:?}",
            self.pid
        );
        let links = bpftool(&["link", "show"]);
        let left: Vec<&Value> = links
            .as_array()
            .expect("bpftool link show: an array")
            .iter()
            .filter(|link| {
                link["id"]
                    .as_u64()
                    .is_some_and(|id| self.links.contains(&id))
                    || link["prog_id"]
                        .as_u64()
                        .is_some_and(|id| self.programs.contains_key(&id))
            })
            .collect();
        assert!(
            left.is_empty(),
            "links of leakbpf (pid {}) remain after it exited: {left:?}",
            self.pid
        );
        // Probes aya had to create through tracefs are named aya_PID_...
        let prefix = format!("aya_{}_", self.pid);
        for events in [
            "/sys/kernel/tracing/uprobe_events",
            "/sys/kernel/debug/tracing/uprobe_events",
        ] {
            if let Ok(text) = fs::read_to_string(events) {
                let left: Vec<&str> = text
                    .lines()
                    .filter(|line| line.contains(&prefix) || line.contains("leakbpf"))
                    .collect();
                assert!(
                    left.is_empty(),
                    "{events} still has leakbpf's probes: {left:?}"
                );
            }
        }
    }
}

/// `bpftool --json ARGS`, parsed; fails the test if bpftool is missing.
pub fn bpftool(args: &[&str]) -> Value {
    let bpftool = find_program("bpftool").unwrap_or_else(|| {
        panic!("bpftool is not installed: run the tests with `cargo xtask test`, which installs it")
    });
    let output = Command::new(&bpftool)
        .arg("--json")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", bpftool.display()));
    assert!(
        output.status.success(),
        "bpftool {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("bpftool {args:?} printed no JSON ({err})"))
}

/// Every loaded eBPF program: id -> name.
fn bpf_program_names() -> BTreeMap<u64, String> {
    bpftool(&["prog", "show"])
        .as_array()
        .expect("bpftool prog show: an array")
        .iter()
        .filter_map(|prog| Some((prog["id"].as_u64()?, prog["name"].as_str()?.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example line of the JSON schema (the README's contract) parses.
    const EXAMPLE: &str = r#"{"schema_version":3,"timestamp":"2026-11-25T10:00:00.123Z","pid":1234,"report":1,"final":false,"interval_s":5.0,"totals":{"outstanding_bytes":0,"outstanding_allocations":0,"callsites":0},"counters":{"allocations":0,"frees":0,"unknown_frees":0,"failed_allocations":0,"stack_failures":0,"dropped_allocations":0,"dropped_calls":0,"probe_errors":0,"lost_events":0},"callsites":[{"rank":1,"stack_id":"0x1f2e","bytes":123,"allocations":3,"average_size":41,"oldest_age_s":1.5,"growth_bytes":123,"growth_allocations":3,"frames":[{"address":"0x55d0c0de1234","function":"EventManager::subscribe(std::function<void (Message const&)>)","module":"/abs/path/chat_server","offset":"0x1234","file":"/abs/path/chat_server.cpp","line":42,"inlined":false},{"address":"0x55d0c0de5678","function":null,"module":null,"offset":null,"file":null,"line":null,"inlined":false}]}]}"#;

    #[test]
    fn parses_the_schema_example() {
        let reports = parse_reports(EXAMPLE);
        assert_eq!(reports.len(), 1);
        let site = &reports[0].callsites[0];
        assert_eq!(
            site.function(0),
            Some("EventManager::subscribe(std::function<void (Message const&)>)")
        );
        assert_eq!(site.function(1), None);
        assert_eq!(site.frames[0].line, Some(42));
        assert_eq!(
            reports[0].sites_where(|s| s.bytes == 123).count(),
            1,
            "{}",
            reports[0].describe()
        );
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
    fn the_rust_caller_is_the_first_frame_outside_the_allocator() {
        let frame = |name: &str, inlined| Frame {
            address: "0x1".into(),
            function: Some(name.into()),
            module: None,
            offset: None,
            file: None,
            line: None,
            inlined,
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
            frames: vec![
                frame("alloc::alloc::alloc", true),
                frame("<alloc::alloc::Global>::alloc_impl_runtime", true),
                frame("alloc::boxed::Box<T>::new", true),
                frame("rust_leaker::leak_boxes::h0123456789abcdef", false),
                frame("rust_leaker::main", false),
            ],
        };
        assert_eq!(site.rust_caller(), Some("rust_leaker::leak_boxes"));
        assert_eq!(site.function(0), Some("alloc::alloc::alloc"));
    }
}
