//! Bad input ends in one `leakbpf: error:` line and a non-zero exit, never a panic.

use std::{fs, os::unix::fs::PermissionsExt, process::Command, thread};

use leakbpf_tests::{Agent, Finished, LEAKER, Target, check_reports, find_program, require_root};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// A live process to point --pid at (killed on drop), as its pid.
fn live_process() -> (Target, String) {
    let target = Target::start(LEAKER, &[]);
    let pid = target.pid().to_string();
    (target, pid)
}

/// Waits until `child` has exited, without reaping it: a zombie.
fn wait_until_zombie(child: &std::process::Child) {
    let pid = libc::id_t::from(child.id());
    // SAFETY: siginfo_t is plain data, for which zeroes are a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid siginfo_t for waitid to fill; WNOWAIT leaves the
        // child unreaped, so its pid stays its own until `child.wait()`.
        let waited =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        let error = std::io::Error::last_os_error();
        match waited {
            0 => return,
            _ if error.kind() == std::io::ErrorKind::Interrupted => {}
            _ => panic!("waitid for {pid}: {error}"),
        }
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
    wait_until_zombie(&child);
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("a zombie's stat");
    assert!(
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        "not a zombie: {stat}"
    );
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
    let (_target, pid) = live_process();
    run(&["--pid", &pid, "--output", "/proc/nonexistent/x"]).assert_error();
}

#[test]
fn not_root() {
    require_root();
    let setpriv = find_program("setpriv")
        .expect("setpriv is not installed: install util-linux (`cargo xtask test` does)");
    // A copy nobody can run, wherever the build directory is.
    let dir = tempfile::tempdir().expect("a temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = dir.path().join("leakbpf");
    fs::copy(LEAKBPF, &copy).expect("copy leakbpf");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
    let (_target, pid) = live_process();
    let finished = Agent::spawn_command(
        Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy)
            .args(["--pid", &pid]),
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
