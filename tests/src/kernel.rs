//! The system the tests run on, and what the kernel holds: root, programs root's PATH may
//! lack, and the eBPF programs and links of a leakbpf process, read from its file
//! descriptors and checked against bpftool's view once it has gone.

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

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

/// A program on PATH, or in the sbin directories root's PATH may lack.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    let dirs = std::env::join_paths(dirs).ok()?;
    which::which_in(name, Some(dirs), "/").ok()
}

/// `bpftool --json ARGS`, parsed; fails the test if bpftool is missing.
fn bpftool(args: &[&str]) -> Value {
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

/// How long after a process's exit the kernel may still hold what it released.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Every loaded eBPF program: id -> name.
fn bpf_program_names() -> BTreeMap<u64, String> {
    bpftool(&["prog", "show"])
        .as_array()
        .expect("bpftool prog show: an array")
        .iter()
        .filter_map(|prog| Some((prog["id"].as_u64()?, prog["name"].as_str()?.to_owned())))
        .collect()
}

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
        // The kernel frees a uprobe_multi link, and then its program, after a grace
        // period once the link is released: moments after the process's exit.
        let deadline = Instant::now() + RELEASE_GRACE;
        let left = loop {
            let loaded = bpf_program_names();
            let left: Vec<_> = self
                .programs
                .iter()
                .filter(|(id, _)| loaded.contains_key(id))
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            left.is_empty(),
            "programs of leakbpf (pid {}) are still loaded {RELEASE_GRACE:?} after it \
             exited: {left:?}",
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
