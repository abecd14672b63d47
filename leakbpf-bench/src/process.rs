//! Children of the bench: started, waited for with time limits, and never left behind.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use devutil::describe;
use wait_timeout::ChildExt;

use crate::procinfo;

const POLL: Duration = Duration::from_millis(20);
/// How long a tool's uprobes must stay unchanged before the workload is let go.
const SETTLE: Duration = Duration::from_millis(300);

/// A child process; killed (SIGKILL) and reaped if still running when dropped.
pub struct Proc {
    child: Child,
    label: String,
    done: bool,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, label: &str) -> Result<Proc> {
        // SIGINT is how tools are stopped, but a bench started in the background of a
        // shell without job control inherits it ignored, and Python keeps it so.
        // SAFETY: signal() is async-signal-safe, as the code between fork and exec must be.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
        Ok(Proc {
            child,
            label: label.to_owned(),
            done: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (reaping it then).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        self.done |= status.is_some();
        Ok(status)
    }

    /// Waits up to `limit` for it to exit; kills it after that and fails.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let status = self
            .child
            .wait_timeout(limit)
            .with_context(|| format!("cannot wait for {}", self.label))?;
        match status {
            Some(status) => {
                self.done = true;
                Ok(status)
            }
            None => {
                self.kill();
                bail!("{} did not exit within {limit:?}: killed", self.label);
            }
        }
    }

    /// Sends `signal` (unless it has exited).
    fn signal(&mut self, signal: libc::c_int) {
        if self.exited().ok().flatten().is_none() {
            let pid = libc::pid_t::try_from(self.pid()).unwrap_or(libc::pid_t::MAX);
            // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// SIGINT, then waits up to `limit` (and kills it after that).
    pub fn interrupt(&mut self, limit: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGINT);
        self.wait(limit)
    }

    fn kill(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.done = true;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running workload (see `leakbpf-bench/workloads/bench_protocol.h`): told to go, read for its
/// results, and let exit by closing its stdin.
pub struct WorkloadProc {
    /// Declared first: its stdin closes before the process is killed.
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Its own pid (under valgrind, valgrind's; under heaptrack, not the script's).
    pub pid: u32,
    pub proc: Proc,
}

impl WorkloadProc {
    /// Starts `cmd` (stderr to `log`) and waits up to `limit` for its `ready PID` line.
    pub fn start(cmd: &mut Command, log: &Path, limit: Duration) -> Result<WorkloadProc> {
        let stderr =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut proc = Proc::spawn(cmd, "the workload")?;
        let stdin = proc.child.stdin.take();
        let stdout = proc.child.stdout.take().context("no stdout pipe")?;
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut workload = WorkloadProc {
            stdin,
            lines,
            pid: 0,
            proc,
        };
        workload.pid = workload
            .wait_line(limit, log, |line| {
                line.strip_prefix("ready ")
                    .and_then(|pid| pid.trim().parse().ok())
            })
            .context("the workload did not start")?;
        Ok(workload)
    }

    /// Sends the go line.
    pub fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .context("cannot tell the workload to go")
    }

    /// Its `KEY VALUE` lines up to `done`, waiting at most `limit`.
    pub fn results(&mut self, limit: Duration, log: &Path) -> Result<BTreeMap<String, f64>> {
        let mut results = BTreeMap::new();
        self.wait_line(limit, log, |line| {
            if line == "done" {
                return Some(());
            }
            if let Some((key, value)) = line.split_once(' ')
                && let Ok(value) = value.trim().parse::<f64>()
            {
                results.insert(key.to_owned(), value);
            }
            None
        })?;
        Ok(results)
    }

    /// Closes its stdin and waits up to `limit` for the process to end.
    pub fn finish(&mut self, limit: Duration) -> Result<ExitStatus> {
        self.stdin = None;
        self.proc.wait(limit)
    }

    fn wait_line<T>(
        &mut self,
        limit: Duration,
        log: &Path,
        mut accept: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = accept(line.trim_end()) {
                        return Ok(found);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no answer within {limit:?}{}", tail(log))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.proc.wait(Duration::from_secs(5)).ok();
                    bail!(
                        "it closed its output (exit: {}){}",
                        status.map_or("unknown".to_owned(), |s| s.to_string()),
                        tail(log)
                    )
                }
            }
        }
    }
}

/// Starts a tool with stdout and stderr into `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path, label: &str) -> Result<Proc> {
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    Proc::spawn(cmd, label)
}

/// Runs `cmd` to its end, at most `limit`, its stdout and stderr into `log`; their text,
/// or an error with its last lines if it fails.
pub fn output_within(cmd: &mut Command, log: &Path, limit: Duration) -> Result<String> {
    let label = describe(cmd);
    let status = spawn_logged(cmd, log, &label)?.wait(limit)?;
    if !status.success() {
        bail!("`{label}` exited with {status}{}", tail(log));
    }
    fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))
}

/// leakbpf (`agent`) started with `args` (which name the traced `pid`), its reports into
/// `reports` and its stderr into `log`, once attached; with its command line as the
/// results show it (the pid as PID).
pub fn attach_agent(
    agent: &Path,
    args: &[&str],
    pid: &str,
    reports: &Path,
    log: &Path,
    limit: Duration,
) -> Result<(Proc, String)> {
    let command = format!(
        "target/release/leakbpf {}",
        args.join(" ").replace(pid, "PID")
    );
    let mut cmd = Command::new(agent);
    cmd.args(args)
        .stdout(
            File::create(reports)
                .with_context(|| format!("cannot create {}", reports.display()))?,
        )
        .stderr(File::create(log).with_context(|| format!("cannot create {}", log.display()))?)
        .stdin(Stdio::null());
    let mut proc = Proc::spawn(&mut cmd, "leakbpf")?;
    wait_attached(&mut proc, log, "leakbpf: attached", limit)?;
    Ok((proc, command))
}

/// Waits up to `limit` for `marker` in `log` and then for the tool's perf-event file
/// descriptors to stay unchanged for a moment: its uprobes are in place.
pub fn wait_attached(tool: &mut Proc, log: &Path, marker: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut seen = false;
    let mut last: Option<(usize, Instant)> = None;
    loop {
        if let Some(status) = tool.exited()? {
            bail!(
                "{} exited ({status}) before attaching{}",
                tool.label,
                tail(log)
            );
        }
        if start.elapsed() > limit {
            bail!(
                "{} did not attach within {limit:?}{}",
                tool.label,
                tail(log)
            );
        }
        seen = seen || fs::read_to_string(log).is_ok_and(|text| text.contains(marker));
        if seen {
            let fds = procinfo::perf_event_fds(tool.pid());
            match last {
                Some((count, since)) if count == fds => {
                    // A tool without perf-event fds gets a longer settle.
                    let settle = if fds == 0 { SETTLE * 3 } else { SETTLE };
                    if since.elapsed() >= settle {
                        return Ok(());
                    }
                }
                _ => last = Some((fds, Instant::now())),
            }
        }
        thread::sleep(POLL);
    }
}

/// The last lines of `log`, for an error message.
pub fn tail(log: &Path) -> String {
    tail_lines(log, 4)
}

/// The last `count` lines of `log`, for an error message.
pub fn tail_lines(log: &Path, count: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(count);
    if lines.is_empty() {
        format!(" (nothing in {})", log.display())
    } else {
        format!(": {} (in {})", lines[start..].join(" | "), log.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_the_status_or_kills_after_the_limit() {
        let mut quick = Proc::spawn(Command::new("sh").args(["-c", "exit 3"]), "sh").unwrap();
        let status = quick.wait(Duration::from_secs(30)).unwrap();
        assert_eq!(status.code(), Some(3));

        let mut slow = Proc::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let pid = slow.pid();
        let start = Instant::now();
        let error = slow.wait(Duration::from_millis(200)).unwrap_err();
        let waited = start.elapsed();
        assert!(
            error
                .to_string()
                .contains("sleep did not exit within 200ms: killed"),
            "{error}"
        );
        // wait-timeout's own clock may end a fraction of a millisecond early.
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        // Killed and reaped: no process of that pid is left (not even a zombie).
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
