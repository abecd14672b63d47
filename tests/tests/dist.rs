//! The build for production hosts (`cargo xtask dist`): one static executable that needs
//! nothing of the host but its kernel, its checksum, and its Debian package.
//!
//! `cargo xtask test` builds it once, before the tests (a release build for musl costs
//! minutes; as a build step it runs unprivileged and outside the tests' deadlines), and
//! gives its path as `LEAKBPF_DIST`. Without that these tests fail, saying so.

use std::{
    env,
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use leakbpf_tests::{
    Agent, CHAT_SERVER, LEAKER, LEAKER_FUNCTIONS, STATIC_GLIBC, STATIC_GLIBC_FUNCTIONS, Target,
    Traced, assert_allocator_run, check_reports, find_program, parse_reports, require_root,
    trace_spawn,
};
use tempfile::TempDir;

/// The path `cargo xtask dist` printed last.
const DIST_ENV: &str = "LEAKBPF_DIST";
/// The Debian package's name, and where it puts the binary.
const PACKAGE: &str = "leakbpf";
const INSTALLED: &str = "/usr/bin/leakbpf";
/// How long `dpkg` may wait for another apt or dpkg on this machine to let go of its lock.
const DPKG_LOCK_TIMEOUT: Duration = Duration::from_secs(180);

/// The static binary of `cargo xtask dist`.
fn dist_binary() -> PathBuf {
    let path = env::var_os(DIST_ENV).unwrap_or_else(|| {
        panic!(
            "{DIST_ENV} is not set: these tests check the static build for production \
             hosts. Run `cargo xtask dist` and set {DIST_ENV} to the path it prints last \
             (`cargo xtask test` does both)"
        )
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{DIST_ENV}={} is no file: run `cargo xtask dist`",
        path.display()
    );
    path
}

/// A program the tests need, which `cargo xtask setup` installs.
fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| panic!("{name} is not installed: run `cargo xtask setup`"))
}

/// `program args` run to its end.
fn run(program_name: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(program(program_name))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program_name}: {err}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `sha256sum -c FILE.sha256` beside `file` passes.
fn assert_checksum_matches(file: &Path) {
    let dir = file.parent().expect("a directory");
    let name = file.file_name().expect("a file name").to_string_lossy();
    let sums = format!("{name}.sha256");
    let output = run("sha256sum", &["--check", "--strict", &sums], dir);
    assert!(
        output.status.success() && text(&output.stdout) == format!("{name}: OK\n"),
        "sha256sum --check {sums} in {}: {}{}",
        dir.display(),
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// The kernel's BTF names this constant (of an enum of its uapi): `bpftool btf dump`.
fn kernel_btf_names(constant: &str) -> bool {
    let output = run(
        "bpftool",
        &[
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ],
        Path::new("/"),
    );
    assert!(output.status.success(), "bpftool: {}", text(&output.stderr));
    text(&output.stdout).contains(&format!("'{constant}' val="))
}

#[test]
fn the_static_binary_is_static_checksummed_and_says_what_it_was_built_from() {
    require_root();
    let binary = dist_binary();
    let path = binary.to_str().expect("a UTF-8 path");

    let file = text(&run("file", &["--brief", path], Path::new("/")).stdout);
    assert!(
        file.contains("static") && !file.contains("interpreter"),
        "file says it is not a static executable: {file}"
    );
    assert!(
        file.contains("not stripped") || file.contains("with debug_info"),
        "the binary keeps its symbols, for its crashes' backtraces: {file}"
    );
    let ldd = run("ldd", &[path], Path::new("/"));
    let ldd_says = text(&ldd.stdout) + &text(&ldd.stderr);
    assert!(
        ldd_says.contains("not a dynamic executable") || ldd_says.contains("statically linked"),
        "ldd finds shared libraries: {ldd_says}"
    );
    assert!(!ldd_says.contains(".so"), "ldd lists libraries: {ldd_says}");
    assert_checksum_matches(&binary);

    let output = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("run --version");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let version = text(&output.stdout);
    let lines: Vec<&str> = version.lines().collect();
    assert_eq!(
        lines[0],
        format!("leakbpf {}", env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    let head = run(
        "git",
        &["rev-parse", "--short=12", "HEAD"],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert!(head.status.success(), "git: {}", text(&head.stderr));
    let head = text(&head.stdout).trim().to_owned();
    assert!(
        lines[1] == format!("commit: {head}") || lines[1] == format!("commit: {head}-dirty"),
        "built from {head}, says:\n{version}"
    );
    assert_eq!(
        lines[2], "built for: x86_64-unknown-linux-musl",
        "{version}"
    );
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(
        lines[3],
        format!("kernel: {} x86_64", release.trim()),
        "{version}"
    );
    let found = |yes: bool| if yes { "yes" } else { "no" };
    let btf = Path::new("/sys/kernel/btf/vmlinux").is_file();
    assert_eq!(
        lines[4],
        format!("BTF: {} (/sys/kernel/btf/vmlinux)", found(btf)),
        "{version}"
    );
    assert!(btf, "the tests need a kernel with BTF");
    // The probe asks the kernel; its BTF, read by bpftool, must agree on this kernel.
    for (line, constant) in [
        (lines[5], "uprobe_multi links: BPF_TRACE_UPROBE_MULTI"),
        (lines[6], "uprobe session links: BPF_TRACE_UPROBE_SESSION"),
    ] {
        let (feature, constant) = constant.split_once(": ").expect("a pair");
        let said = line
            .strip_prefix(&format!("{feature}: "))
            .unwrap_or_else(|| panic!("no {feature} line:\n{version}"));
        let expected = found(kernel_btf_names(constant));
        assert!(
            said == expected || said.starts_with(&format!("{expected} (")),
            "{feature}: the kernel's BTF says {expected}, leakbpf says {said}"
        );
    }
    assert_eq!(lines.len(), 7, "{version}");
}

/// A directory holding nothing but copies of the static leakbpf and of `programs`, with
/// `/proc` and `/sys` mounted (new instances: nothing is mounted under them, not even
/// tracefs). Dropped, it unmounts them, and what leakbpf mounted under them, before the
/// directory is removed: a failing test leaves no mount behind.
struct Chroot {
    dir: Option<TempDir>,
    /// What it mounted, to unmount.
    mounts: Vec<PathBuf>,
}

impl Chroot {
    fn new(programs: &[&str]) -> Self {
        let binary = dist_binary();
        let dir = tempfile::Builder::new()
            .prefix("leakbpf-chroot.")
            .tempdir()
            .expect("a temporary directory");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut chroot = Self {
            dir: Some(dir),
            mounts: Vec::new(),
        };
        let copy = |from: &Path| {
            let to = chroot.path().join(from.file_name().expect("a file name"));
            fs::copy(from, &to).unwrap_or_else(|err| panic!("copy {}: {err}", from.display()));
        };
        copy(&binary);
        for program in programs {
            copy(Path::new(program));
        }
        for (fstype, dir) in [("proc", "proc"), ("sysfs", "sys")] {
            let point = chroot.path().join(dir);
            fs::create_dir(&point).expect("mkdir");
            mount(fstype, &point);
            chroot.mounts.push(point);
        }
        assert!(
            chroot.path().join("sys/kernel/tracing").is_dir(),
            "sysfs has tracefs's mount point"
        );
        assert_eq!(
            chroot.tracefs_mounts(),
            0,
            "tracefs is not mounted in the new root"
        );
        chroot
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("the directory").path()
    }

    /// tracefs mounts at `sys/kernel/tracing` in the new root, seen from this process's
    /// mount namespace.
    fn tracefs_mounts(&self) -> usize {
        let point = self.path().join("sys/kernel/tracing");
        let point = point.to_str().expect("a UTF-8 path");
        fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                fields.get(4) == Some(&point) && line.contains(" - tracefs ")
            })
            .count()
    }

    /// `chroot DIR /leakbpf args`, in this mount namespace or, `unshared`, in one of its
    /// own.
    fn leakbpf(&self, unshared: bool, args: &[&str]) -> Command {
        let mut command = if unshared {
            let mut command = Command::new(program("unshare"));
            command
                .args(["--mount", "--propagation", "private"])
                .arg(program("chroot"));
            command
        } else {
            Command::new(program("chroot"))
        };
        command.arg(self.path()).arg("/leakbpf").args(args);
        command
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        let mut unmounted = true;
        for point in self.mounts.iter().rev() {
            let c_point = CString::new(point.as_os_str().as_bytes()).expect("no NUL");
            // SAFETY: a NUL-terminated path alive for the call. MNT_DETACH takes the
            // mounts below too (tracefs, if leakbpf mounted it), busy or not.
            if unsafe { libc::umount2(c_point.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!(
                    "cannot unmount {}: {}",
                    point.display(),
                    std::io::Error::last_os_error()
                );
                unmounted = false;
            }
        }
        if !unmounted {
            // Removing the directory would walk into what is still mounted.
            let kept = self.dir.take().expect("the directory").keep();
            eprintln!("left {} in place", kept.display());
        }
    }
}

/// A new instance of `fstype` at `point`.
fn mount(fstype: &str, point: &Path) {
    let c_fstype = CString::new(fstype).expect("no NUL");
    let c_point = CString::new(point.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: NUL-terminated strings alive for the call; no data argument.
    let status = unsafe {
        libc::mount(
            c_fstype.as_ptr(),
            c_point.as_ptr(),
            c_fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(
        status,
        0,
        "mount -t {fstype} {}: {}",
        point.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn alone_in_an_empty_root_it_traces_a_static_program_exactly() {
    require_root();
    let chroot = Chroot::new(&[STATIC_GLIBC]);
    let mut names: Vec<String> = fs::read_dir(chroot.path())
        .expect("list the root")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["leakbpf", "proc", "static_glibc", "sys"]);

    let agent = Agent::spawn_command(&mut chroot.leakbpf(
        false,
        &[
            "--format",
            "json",
            "--output",
            "/reports.ndjson",
            "--top",
            "1000",
            "--",
            "/static_glibc",
        ],
    ));
    let pid = agent.wait_attached_to_command();
    let truth = agent.read_target_until_done("static_glibc");
    let finished = agent.wait();
    finished.assert_success();

    let saved = fs::read_to_string(chroot.path().join("reports.ndjson")).expect("the reports");
    let reports = parse_reports(&saved);
    let report = check_reports(&reports, pid);
    assert_allocator_run(report, &truth, &STATIC_GLIBC_FUNCTIONS, Traced::FromSpawn);
    assert_eq!(
        chroot.tracefs_mounts(),
        1,
        "leakbpf mounted tracefs in the new root, for its process tracepoints"
    );
}

#[test]
fn from_the_new_roots_own_mount_namespace_it_traces_a_host_process_by_pid() {
    require_root();
    let chroot = Chroot::new(&[]);
    let mut target = Target::start(LEAKER, &[]);
    let pid = target.pid().to_string();
    let agent = Agent::spawn_command(
        &mut chroot.leakbpf(true, &["--pid", &pid, "--format", "json", "--top", "1000"]),
    );
    agent.wait_attached();

    // The premise: leakbpf runs in the new root, in a mount namespace of its own.
    let of = |pid: u32, link: &str| {
        fs::read_link(format!("/proc/{pid}/{link}")).expect("a /proc link of a live process")
    };
    let ours = std::process::id();
    assert_ne!(of(agent.pid(), "ns/mnt"), of(ours, "ns/mnt"));
    assert_eq!(of(agent.pid(), "root"), chroot.path());

    target.go();
    let truth = target.read_until_done();
    target.finish();
    let finished = agent.wait();
    finished.assert_success();
    let reports = finished.reports();
    let report = check_reports(&reports, target.pid());
    assert_allocator_run(report, &truth, &LEAKER_FUNCTIONS, Traced::ByPid);
    assert_eq!(
        chroot.tracefs_mounts(),
        0,
        "what leakbpf mounted stayed in its namespace"
    );
}

/// The package installed with `dpkg -i`; removed with `dpkg -r` when dropped, whether the
/// test passed or not.
struct Installed;

impl Installed {
    fn new(deb: &Path) -> Self {
        let status = run(
            "dpkg-query",
            &["--show", "--showformat=${Status}", PACKAGE],
            Path::new("/"),
        );
        assert!(
            !text(&status.stdout).ends_with(" installed"),
            "a {PACKAGE} package is installed on this system already; this test installs \
             its own and removes it: remove that one first (dpkg -r {PACKAGE})"
        );
        let installed = Self;
        // Even a failed install may leave the package half there: removed on drop.
        dpkg(&["--install", deb.to_str().expect("a UTF-8 path")]).unwrap_or_else(|e| panic!("{e}"));
        installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // No panic here: it may run while a failing test unwinds.
        if let Err(err) = dpkg(&["--remove", PACKAGE]) {
            eprintln!("{err}");
        }
    }
}

/// `dpkg args`, waiting while another apt or dpkg holds dpkg's lock (the machine may be
/// shared).
fn dpkg(args: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + DPKG_LOCK_TIMEOUT;
    loop {
        let output = run("dpkg", args, Path::new("/"));
        if output.status.success() {
            return Ok(());
        }
        let stderr = text(&output.stderr);
        if !stderr.contains("lock") || Instant::now() > deadline {
            return Err(format!(
                "dpkg {args:?} failed ({}): {stderr}",
                output.status
            ));
        }
        thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn the_deb_installs_and_its_leakbpf_finds_the_demos_leak() {
    require_root();
    let binary = dist_binary();
    let dir = binary.parent().expect("the binary's directory");
    let debs: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list the dist directory")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    let [deb] = &debs[..] else {
        panic!("one .deb beside {}, found {debs:?}", binary.display())
    };
    assert_checksum_matches(deb);

    let installed = Installed::new(deb);
    assert_eq!(
        fs::read(INSTALLED).expect("the package installs leakbpf"),
        fs::read(&binary).expect("the static binary"),
        "the package's {INSTALLED} is the static binary"
    );
    let run = trace_spawn(INSTALLED, CHAT_SERVER, &["--joins", "500"], &["--top", "5"]);
    let report = run.final_report();
    let truth = run.truth.truth("EventManager::subscribe");
    let top = &report.callsites[0];
    assert!(
        top.function(0)
            .is_some_and(|f| f.starts_with("EventManager::subscribe(")),
        "the top call site is the demo's leak:\n{}",
        report.describe()
    );
    assert_eq!(
        (top.allocations, top.bytes),
        (truth.count, truth.bytes),
        "{truth:?}\n{}",
        report.describe()
    );
    drop(installed);
    assert!(
        !Path::new(INSTALLED).exists(),
        "dpkg -r removed {INSTALLED}"
    );
}
