//! What this kernel offers, for `leakbpf --version` and so for every bug report: its
//! release, its BTF, and the uprobe link types newer kernels have (uprobe_multi, 6.6;
//! uprobe sessions, 6.13).
//!
//! A link type is asked of the kernel itself: a `BPF_LINK_CREATE` that only the kernel's
//! uprobe_multi code answers with `EBADF` (the path `/` is no regular file), any kernel
//! without it with `EINVAL`. Neither the kernel's version nor its BTF would do: BTF names
//! the attach type wherever the uapi header has it, even when the code behind it is
//! compiled out (CONFIG_UPROBES, CONFIG_BPF_EVENTS) or, without BTF, not known at all;
//! and a distribution's kernel backports features its version does not tell of.

use std::{fmt, io, path::Path};

use super::bpf::{self, BPF_TRACE_UPROBE_MULTI, BPF_TRACE_UPROBE_SESSION};

/// Where the kernel publishes its own BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Whether the kernel has a feature.
#[derive(Debug)]
pub enum Support {
    Yes,
    /// The kernel refused it, with this error.
    No(io::Error),
    /// Not found out: asking needs privileges this process lacks.
    Unknown(io::Error),
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Yes => write!(f, "yes"),
            Self::No(err) => write!(f, "no ({err})"),
            Self::Unknown(err) => write!(f, "unknown (probing needs root: {err})"),
        }
    }
}

/// What this kernel offers.
#[derive(Debug)]
pub struct Features {
    /// `uname -r`, `uname -m`.
    pub release: String,
    pub machine: String,
    /// Whether [`VMLINUX_BTF`] is there.
    pub btf: bool,
    pub uprobe_multi: Support,
    pub uprobe_session: Support,
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel: {} {}", self.release, self.machine)?;
        let btf = if self.btf { "yes" } else { "no" };
        writeln!(f, "BTF: {btf} ({VMLINUX_BTF})")?;
        writeln!(f, "uprobe_multi links: {}", self.uprobe_multi)?;
        writeln!(f, "uprobe session links: {}", self.uprobe_session)
    }
}

/// Probes this kernel. Loads two tiny programs for a moment; leaves nothing behind.
pub fn probe() -> Features {
    let (release, machine) = uname();
    Features {
        release,
        machine,
        btf: Path::new(VMLINUX_BTF).is_file(),
        uprobe_multi: link_type(BPF_TRACE_UPROBE_MULTI),
        uprobe_session: link_type(BPF_TRACE_UPROBE_SESSION),
    }
}

/// The kernel's release and machine, as `uname` has them (no /proc needed).
fn uname() -> (String, String) {
    // SAFETY: utsname is plain bytes; all zeros is a valid value.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `names` is a valid, writable utsname; uname fills it with NUL-terminated
    // strings within its fields.
    if unsafe { libc::uname(&mut names) } != 0 {
        let unknown = || "unknown".to_owned();
        return (unknown(), unknown());
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .map(|&c| c as u8)
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (text(&names.release), text(&names.machine))
}

/// `r0 = 0; exit`: a program every attach type of kprobe programs accepts.
const RETURN_ZERO: [u64; 2] = [0xb7, 0x95];

/// Whether the kernel creates uprobe_multi links of `attach_type`: see the module's doc.
fn link_type(attach_type: u32) -> Support {
    let program = match bpf::load_kprobe(&RETURN_ZERO, attach_type, None, None) {
        Ok(program) => program,
        Err(err) if matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            return Support::Unknown(err);
        }
        Err(err) => return Support::No(err),
    };
    match bpf::link_uprobe_multi(&program, attach_type, c"/", &[0], &[0], false, 0) {
        // A link on "/" cannot be: were there one, closing it detaches it.
        Ok(_link) => Support::Yes,
        Err(err) if err.raw_os_error() == Some(libc::EBADF) => Support::Yes,
        Err(err) => Support::No(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;

    #[test]
    fn an_attach_type_no_kernel_has_is_refused() {
        if !test_support::root("features::an_attach_type_no_kernel_has_is_refused") {
            return;
        }
        // The probe can say no: an attach type past every kernel's last one.
        match link_type(4096) {
            Support::No(err) => assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}"),
            other => panic!("attach type 4096 found {other}"),
        }
    }

    #[test]
    fn names_the_release_uname_gives() {
        let (release, machine) = uname();
        let features = Features {
            release,
            machine,
            btf: true,
            uprobe_multi: Support::Yes,
            uprobe_session: Support::No(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let text = features.to_string();
        let osrelease = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert!(
            text.starts_with(&format!("kernel: {} x86_64\n", osrelease.trim())),
            "{text}"
        );
        assert!(
            text.contains("\nuprobe session links: no (Invalid argument"),
            "{text}"
        );
    }
}
