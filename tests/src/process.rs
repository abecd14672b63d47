//! The processes a test runs, target programs and the agent, and their output, read on
//! threads of their own so that every wait for a line, a report or an exit has a
//! deadline and fails saying what it waited for.

use std::{
    ffi::{CString, OsStr},
    fmt::Display,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Read, Write},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;
use wait_timeout::ChildExt;

use crate::{
    report::{Report, parse_reports},
    truth::TargetOutput,
};

/// How long a target may take to start and print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long leakbpf may take to attach (load, find the allocator, place the probes).
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a traced target may take to do its work and print `done`.
pub const WORK_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a report awaited may take to come: a few intervals, on a loaded machine.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long leakbpf may take to write its final report and exit once told to, and a
/// target to exit once its stdin is closed.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts of a program found busy (`ETXTBSY`) tried again, 10 ms apart.
const TEXT_BUSY_RETRIES: usize = 100;

/// Lines read from a pipe on a thread, so that they can be awaited with a deadline;
/// every line is kept, taken or not.
struct LineReader {
    lines: Receiver<String>,
    all: Arc<Mutex<String>>,
}

impl LineReader {
    fn new(pipe: impl Read + Send + 'static) -> Self {
        Self::opening(move || Some(pipe))
    }

    /// Reads what `open` returns once the thread has opened it (None: nothing to read).
    fn opening<R: Read>(open: impl FnOnce() -> Option<R> + Send + 'static) -> Self {
        let (sender, lines) = mpsc::channel();
        let all = Arc::new(Mutex::new(String::new()));
        let kept = Arc::clone(&all);
        thread::spawn(move || {
            let Some(pipe) = open() else { return };
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

    /// The next line not taken yet; None at end of file; panics after `deadline`,
    /// naming `what` it waited for.
    fn next_line(&self, deadline: Instant, what: &dyn Display) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "timed out waiting for {what}; the last lines:\n{}",
                    self.tail()
                )
            }
        }
    }

    /// Takes lines until one satisfies `found`, and returns it; None at end of file;
    /// panics after `timeout`.
    fn wait_for(
        &self,
        what: &dyn Display,
        timeout: Duration,
        mut found: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Some(line) = self.next_line(deadline, what) {
            if found(&line) {
                return Some(line);
            }
        }
        None
    }

    /// Takes every line up to end of file; panics after `deadline`.
    fn drain(&self, deadline: Instant, what: &dyn Display) {
        while self.next_line(deadline, what).is_some() {}
    }

    fn text(&self) -> String {
        self.all.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last lines, for failure messages.
    fn tail(&self) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Reads a target's lines up to `marker` (`done`, `paused`), the protocol's words.
fn read_until(lines: &LineReader, marker: &str, timeout: Duration, name: &str) -> TargetOutput {
    let mut output = TargetOutput::default();
    let what = format!("{name} to print {marker}");
    let found = lines.wait_for(&what, timeout, |line| {
        line == marker || {
            output.add_line(name, line);
            false
        }
    });
    assert!(
        found.is_some(),
        "{name} closed its stdout before {marker}; it printed:\n{}",
        lines.text()
    );
    output
}

/// Waits (at most `timeout`) for `child` to exit; kills it and panics after that.
fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    match child.wait_timeout(timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}: killed it");
        }
        Err(err) => panic!("waiting for {what}: {err}"),
    }
}

/// Kills `child` unless it exited already (what a test that fails midway leaves).
fn kill_if_running(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `signal` to process `pid`, which this test started.
fn send_signal(pid: u32, signal: libc::c_int) {
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

/// A program's file name, for messages.
fn name_of(program: &Path) -> String {
    program.file_name().map_or_else(
        || program.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
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
        let spawn = || {
            Command::new(program)
                .arg("--wait")
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
        };
        // A program a test just wrote (a script) is busy while another test's thread,
        // forking meanwhile, holds a copy of the descriptor it was written through, until
        // that child's exec closes it.
        let mut spawned = spawn();
        for _ in 0..TEXT_BUSY_RETRIES {
            match &spawned {
                Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(10));
                    spawned = spawn();
                }
                _ => break,
            }
        }
        let mut child =
            spawned.unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
        let stdin = child.stdin.take();
        let stdout = LineReader::new(child.stdout.take().expect("piped stdout"));
        let target = Self {
            name: name_of(program),
            child,
            stdin,
            stdout,
        };
        let what = format!("{} to be ready", target.name);
        match target
            .stdout
            .next_line(Instant::now() + READY_TIMEOUT, &what)
        {
            Some(line) if line == "ready" => target,
            other => panic!("{} printed {other:?} instead of ready", target.name),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it go on: to work after `ready`, or past a `paused`.
    pub fn go(&mut self) {
        tell(&mut self.stdin, &self.name);
    }

    /// Reads its output up to `marker`.
    pub fn read_until(&self, marker: &str) -> TargetOutput {
        read_until(&self.stdout, marker, WORK_TIMEOUT, &self.name)
    }

    /// Reads its output up to `done`.
    pub fn read_until_done(&self) -> TargetOutput {
        self.read_until("done")
    }

    /// Closes its stdin, so it exits, and waits until it is a zombie: exited, its memory
    /// released, its pid not reaped (until [`Target::finish`]).
    pub fn exit_unreaped(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            // SAFETY: a zeroed siginfo_t is a valid buffer for waitid to fill.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our own child; WNOWAIT leaves it to be reaped later.
            let found = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid(),
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
                )
            };
            assert_eq!(found, 0, "waitid on {}", self.name);
            // SAFETY: waitid filled `info`; si_pid is 0 while the child runs.
            if unsafe { info.si_pid() } != 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {EXIT_TIMEOUT:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Closes its stdin, so it exits, and checks that it exited 0.
    pub fn finish(&mut self) {
        self.stdin = None;
        let status = wait_child(&mut self.child, EXIT_TIMEOUT, &self.name);
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// Writes a line to a target's stdin: the protocol's go.
fn tell(stdin: &mut Option<ChildStdin>, name: &str) {
    let stdin = stdin
        .as_mut()
        .unwrap_or_else(|| panic!("{name}'s stdin is closed"));
    writeln!(stdin, "go")
        .and_then(|()| stdin.flush())
        .unwrap_or_else(|err| panic!("cannot tell {name} to go on: {err}"));
}

/// A named pipe given to leakbpf as `--output`, read as leakbpf writes it: in spawn
/// mode, where the command's output is on leakbpf's stdout, the reports can still be
/// awaited one by one.
struct OutputPipe {
    /// Holds the pipe; removed on drop.
    _dir: TempDir,
    path: PathBuf,
    reader: LineReader,
    /// A write end of the test's own, held until leakbpf is gone: the reader sees end of
    /// file then, whether leakbpf opened the pipe or failed before.
    writer: Option<File>,
}

impl OutputPipe {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("leakbpf-tests.")
            .tempdir()
            .expect("a temporary directory");
        let path = dir.path().join("reports.ndjson");
        let c_path = CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: c_path is a NUL-terminated string that outlives the call.
        let made = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(
            made,
            0,
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        // Each open of a named pipe waits for the other end's: the reader's thread and
        // this one meet here.
        let reader = LineReader::opening({
            let path = path.clone();
            move || File::open(path).ok()
        });
        let writer = OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("cannot open {} to write: {err}", path.display()));
        Self {
            _dir: dir,
            path,
            reader,
            writer: Some(writer),
        }
    }
}

/// A running leakbpf. Killed if dropped running.
pub struct Agent {
    child: Child,
    /// A pipe to the command it traces in spawn mode (which inherits it), else None:
    /// its stdin is /dev/null.
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    stderr: LineReader,
    /// Where its reports go in spawn mode, when the traced command has its stdout.
    output: Option<OutputPipe>,
}

/// How a leakbpf run ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// What it wrote to its `--output`, when started by [`Agent::start_command`].
    pub output: Option<String>,
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
        Self::start(command.stdin(Stdio::null()), None)
    }

    /// Starts `leakbpf --pid PID,... --format json options...` and waits until it has
    /// attached to each of `pids`.
    pub fn attach(leakbpf: &str, pids: &[u32], options: &[&str]) -> Self {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let list = pids.join(",");
        let agent = Self::spawn(
            leakbpf,
            ["--pid", list.as_str(), "--format", "json"]
                .iter()
                .chain(options),
        );
        // One line per process.
        for _ in &pids {
            agent.wait_attached();
        }
        agent
    }

    /// Starts `leakbpf --format json --output PIPE options... -- command...` in spawn
    /// mode, with variables added to its environment, which the command inherits (e.g.
    /// `LD_PRELOAD`, which then applies to leakbpf too). The command's stdout is
    /// leakbpf's (see [`Agent::read_target_until`]), its stdin a pipe from the test
    /// (see [`Agent::go`]); the reports come through the pipe.
    pub fn start_command(
        leakbpf: &str,
        options: &[&str],
        command: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let output = OutputPipe::new();
        let mut leakbpf = Command::new(leakbpf);
        leakbpf
            .envs(env.iter().copied())
            .args(["--format", "json", "--output"])
            .arg(&output.path)
            .args(options)
            .arg("--")
            .args(command);
        Self::start(leakbpf.stdin(Stdio::piped()), Some(output))
    }

    fn start(command: &mut Command, output: Option<OutputPipe>) -> Self {
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
            output,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.pid(), signal);
    }

    /// Waits for a `leakbpf: attached` line on stderr and returns it; panics if leakbpf
    /// exits first.
    pub fn wait_attached(&self) -> String {
        self.wait_for_stderr("leakbpf: attached", |line| {
            line.starts_with("leakbpf: attached")
        })
    }

    /// In spawn mode: waits for the `leakbpf: attached ... to pid PID` line, and returns
    /// the command's pid.
    pub fn wait_attached_to_command(&self) -> u32 {
        let line = self.wait_attached();
        line.split_once(" to pid ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"))
    }

    /// Waits for a line on stderr that satisfies `found`, and returns it.
    pub fn wait_for_stderr(&self, what: &str, found: impl FnMut(&str) -> bool) -> String {
        self.stderr
            .wait_for(&what, ATTACH_TIMEOUT, found)
            .unwrap_or_else(|| {
                panic!(
                    "leakbpf closed its stderr (it exited) before {what}; stderr:\n{}",
                    self.stderr.text()
                )
            })
    }

    /// Waits for a line on stdout (a table's, say) that satisfies `found`.
    pub fn wait_for_stdout(&self, what: &str, found: impl FnMut(&str) -> bool) -> String {
        self.stdout
            .wait_for(&what, REPORT_TIMEOUT, found)
            .unwrap_or_else(|| {
                panic!(
                    "leakbpf closed its stdout before {what}; stderr:\n{}",
                    self.stderr.text()
                )
            })
    }

    /// Takes its JSON reports as they come until one satisfies `found`, and returns it;
    /// panics if leakbpf ends first, or after [`REPORT_TIMEOUT`]. Every report stays in
    /// [`Finished::reports`].
    pub fn wait_for_report(&self, what: &str, mut found: impl FnMut(&Report) -> bool) -> Report {
        let reports = self
            .output
            .as_ref()
            .map_or(&self.stdout, |pipe| &pipe.reader);
        let what = format!("a report: {what}");
        let mut matched = None;
        reports.wait_for(&what, REPORT_TIMEOUT, |line| {
            if line.trim().is_empty() {
                return false;
            }
            let report = Report::parse(line);
            let done = found(&report);
            if done {
                matched = Some(report);
            }
            done
        });
        matched.unwrap_or_else(|| {
            panic!(
                "leakbpf ended before {what}; stderr:\n{}",
                self.stderr.text()
            )
        })
    }

    /// In spawn mode: the traced command's output up to `marker`.
    pub fn read_target_until(&self, marker: &str, name: &str) -> TargetOutput {
        read_until(&self.stdout, marker, WORK_TIMEOUT, name)
    }

    /// In spawn mode: the traced command's output up to `done`.
    pub fn read_target_until_done(&self, name: &str) -> TargetOutput {
        self.read_target_until("done", name)
    }

    /// In spawn mode: lets a `--wait` command go on, through the stdin it inherited.
    pub fn go(&mut self) {
        tell(&mut self.stdin, "the traced command");
    }

    /// Closes the stdin pipe: a `--wait` command traced in spawn mode then exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (at most [`EXIT_TIMEOUT`]) for leakbpf to exit by itself.
    pub fn wait(mut self) -> Finished {
        self.stdin = None;
        let status = wait_child(&mut self.child, EXIT_TIMEOUT, "leakbpf");
        // The readers see end of file once leakbpf (and any child sharing its pipes) is
        // gone; give them a moment to take the last lines.
        let deadline = Instant::now() + Duration::from_secs(10);
        self.stdout.drain(deadline, &"leakbpf's stdout to close");
        self.stderr.drain(deadline, &"leakbpf's stderr to close");
        let output = self.output.as_mut().map(|pipe| {
            pipe.writer = None;
            pipe.reader.drain(deadline, &"leakbpf's --output to close");
            pipe.reader.text()
        });
        Finished {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
            output,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
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

    /// The JSON reports it wrote: to its `--output` when it had one, else to stdout.
    pub fn reports(&self) -> Vec<Report> {
        parse_reports(self.output.as_deref().unwrap_or(&self.stdout))
    }
}
