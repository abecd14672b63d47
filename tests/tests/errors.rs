//! Bad input ends in one `leakbpf: error:` line and a non-zero exit, never a panic.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use leakbpf_tests::{Agent, Finished, TempDir, check_reports, find_program, require_root};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// A process to point --pid at, killed on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start(seconds: &str) -> Self {
        Self(
            Command::new("sleep")
                .arg(seconds)
                .spawn()
                .expect("cannot start sleep"),
        )
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> Finished {
    Agent::spawn(LEAKBPF, args).wait()
}

/// A process that vanishes around the attach: either a clean error, or a clean exit
/// with a final report.
fn assert_clean_outcome(finished: &Finished, pid: &str) {
    if finished.status.success() {
        finished.assert_no_panic();
        let reports = finished.reports();
        check_reports(&reports, pid.parse().expect("pid"));
    } else {
        finished.assert_error();
    }
}

#[test]
fn nonexistent_pid() {
    require_root();
    run(&["--pid", "999999999"]).assert_error();
}

#[test]
fn pid_of_a_zombie() {
    require_root();
    let mut child = Command::new("true").spawn().expect("cannot start true");
    let pid = child.id().to_string();
    // Exited but not reaped: /proc/PID is there, with no memory map.
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&stat).is_ok_and(|text| {
        text.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    }) {
        assert!(Instant::now() < deadline, "`true` did not exit");
        thread::sleep(Duration::from_millis(10));
    }
    let finished = run(&["--pid", &pid, "--format", "json"]);
    let _ = child.wait();
    assert_clean_outcome(&finished, &pid);
}

#[test]
fn pid_that_exits_while_leakbpf_attaches() {
    require_root();
    for delay in ["0.05", "0.3"] {
        let mut child = Command::new("sleep")
            .arg(delay)
            .spawn()
            .expect("cannot start sleep");
        let pid = child.id().to_string();
        // Reaped as soon as it exits, so its pid is gone altogether.
        let reaper = thread::spawn(move || child.wait());
        let finished = run(&["--pid", &pid, "--format", "json"]);
        assert_clean_outcome(&finished, &pid);
        reaper.join().expect("reaper").expect("wait for sleep");
    }
}

#[test]
fn unwritable_output_file() {
    require_root();
    let sleeper = Sleeper::start("60");
    run(&["--pid", &sleeper.pid(), "--output", "/proc/nonexistent/x"]).assert_error();
}

#[test]
fn not_root() {
    require_root();
    let setpriv = find_program("setpriv")
        .expect("setpriv is not installed: install util-linux (`cargo xtask test` does)");
    // A copy nobody can run, wherever the build directory is.
    let dir = TempDir::new();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = dir.path().join("leakbpf");
    fs::copy(LEAKBPF, &copy).expect("copy leakbpf");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
    let sleeper = Sleeper::start("60");
    let finished = Agent::spawn_command(
        Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy)
            .args(["--pid", &sleeper.pid()]),
    )
    .wait();
    let error = finished.assert_error();
    assert!(
        ["CAP_BPF", "CAP_PERFMON", "root"]
            .iter()
            .any(|word| error.contains(word)),
        "the error should say which privileges are missing: {error}"
    );
}
