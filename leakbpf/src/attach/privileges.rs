//! Checks, before anything is loaded, that this process may load eBPF programs and read
//! other processes, and names what is missing.

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
#[error(
    "leakbpf needs root, or the capabilities {missing}: run it with sudo \
     (or grant them with setcap)"
)]
pub struct MissingPrivileges {
    missing: String,
}

/// Ok when running as root or with every capability leakbpf uses.
pub fn check() -> Result<(), MissingPrivileges> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| capabilities(&status))
        .unwrap_or(0);
    let needed = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        // Reading another process's files through /proc/PID/map_files and root.
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingPrivileges {
            missing: missing.join(", "),
        })
    }
}

/// The effective capability set from `/proc/self/status`.
fn capabilities(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Lifts the locked-memory limit that kernels before 5.11 charge eBPF maps to; newer
/// ones charge the memory cgroup. Best effort: failing here only matters on old kernels.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: passes a valid rlimit by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "cannot lift the memlock limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(capabilities(status), Some(0x1ff_ffff_ffff));
        assert_eq!(capabilities("Name:\tx\n"), None);
    }

    #[test]
    fn names_every_missing_capability() {
        let err = MissingPrivileges {
            missing: "CAP_BPF, CAP_PERFMON".into(),
        };
        assert!(err.to_string().contains("CAP_BPF, CAP_PERFMON"));
    }
}
