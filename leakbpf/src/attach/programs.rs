//! Attaches the loaded eBPF programs to the planned probes and to the process
//! tracepoints.
//!
//! Every link belongs to [`Programs`]: dropping it, or the agent's exit in any way
//! (even SIGKILL, which closes the file descriptors), detaches every probe.

use std::{collections::HashSet, num::NonZeroU32, os::unix::fs::MetadataExt};

use aya::{
    Ebpf,
    programs::{
        ProgramError, TracePoint, UProbe,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use leakbpf_common::{
    cookie_for, moved_arguments,
    program_names::{
        ALLOC_ENTER, ALLOC_EXIT, DELETE_ENTER, FLOOR_ENTER, FLOOR_EXIT, FREE_ENTER, LOADER_NOTICE,
        PROCESS_EXEC, PROCESS_EXIT, PROCESS_FORK,
    },
};

use super::plan::{Probe, Probed};
use crate::kernel::{self, KernelError};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("cannot attach to {probe}")]
    Attach { probe: String, source: ProgramError },
    #[error(
        "cannot attach to {probe}: another tool holds a uprobe there with a different \
         reference counter (Debian's BCC memleak-bpfcc does; the kernel log says \
         'ref_ctr_offset mismatch'): stop it and retry"
    )]
    Conflict { probe: String },
}

/// A probe attached, for `--verbose`.
pub struct Attached {
    pub program: &'static str,
    pub probe: String,
}

/// Where a probe fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// In this process only: the kernel does not even trap elsewhere.
    Process(NonZeroU32),
    /// In every process that maps the object; the programs filter by
    /// [`Mode`](crate::kernel::Mode).
    System,
}

pub struct Programs {
    ebpf: Ebpf,
    /// What is attached already: program, object file (device and inode: processes
    /// name one file by many paths), file offset, scope.
    attached: HashSet<(&'static str, (u64, u64), u64, Scope)>,
    /// Every link, for [`Programs::detach_all`].
    uprobe_links: Vec<(&'static str, UProbeLinkId)>,
    tracepoint_links: Vec<(&'static str, TracePointLinkId)>,
}

/// Links detached by one thread at most, at the end: each detach waits for the kernel's
/// grace period, and concurrent ones share it.
const DETACH_THREADS: usize = 256;

impl Programs {
    /// The programs of `ebpf`, loaded (see [`crate::kernel::load`]), none attached yet.
    pub fn new(ebpf: Ebpf) -> Self {
        Self {
            ebpf,
            attached: HashSet::new(),
            uprobe_links: Vec::new(),
            tracepoint_links: Vec::new(),
        }
    }

    /// Detaches every probe at once. Dropping links one by one costs one of the kernel's
    /// grace periods each (0.1 s and more per uprobe here: 2 s for glibc's 17 probes);
    /// dropped from threads of their own, they wait for the same one.
    pub fn detach_all(&mut self) {
        let mut links: Vec<Box<dyn Send>> = Vec::new();
        for (name, id) in std::mem::take(&mut self.uprobe_links) {
            if let Ok(program) = kernel::program::<UProbe>(&mut self.ebpf, name)
                && let Ok(link) = program.take_link(id)
            {
                links.push(Box::new(link));
            }
        }
        for (name, id) in std::mem::take(&mut self.tracepoint_links) {
            if let Ok(program) = kernel::program::<TracePoint>(&mut self.ebpf, name)
                && let Ok(link) = program.take_link(id)
            {
                links.push(Box::new(link));
            }
        }
        let per_thread = links.len().div_ceil(DETACH_THREADS).max(1);
        std::thread::scope(|scope| {
            while !links.is_empty() {
                let chunk = links.split_off(links.len().saturating_sub(per_thread));
                // Where no thread can be had, the chunk is dropped here, one by one.
                let _ = std::thread::Builder::new().spawn_scoped(scope, move || drop(chunk));
            }
        });
        self.attached.clear();
    }

    /// The eBPF side's own log, shown by `--verbose`.
    pub fn logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Attaches the process tracepoints: fork (which follows the new process, or tells of
    /// it), exec and exit.
    pub fn attach_process_tracepoints(&mut self) -> Result<(), AttachError> {
        for (name, category, event) in [
            (PROCESS_EXEC, "sched", "sched_process_exec"),
            (PROCESS_EXIT, "sched", "sched_process_exit"),
            (PROCESS_FORK, "task", "task_newtask"),
        ] {
            let link = kernel::program::<TracePoint>(&mut self.ebpf, name)?
                .attach(category, event)
                .map_err(|source| AttachError::Attach {
                    probe: format!("tracepoint {category}/{event}"),
                    source,
                })?;
            self.tracepoint_links.push((name, link));
        }
        Ok(())
    }

    /// Attaches `probes` in `scope`, but for those attached already; with `floor`, empty
    /// programs at the same places, which cost what the uprobes themselves cost and
    /// record nothing.
    pub fn attach(
        &mut self,
        probes: &[Probe],
        scope: Scope,
        floor: bool,
    ) -> Result<Vec<Attached>, AttachError> {
        let mut attached = Vec::new();
        for probe in probes {
            let (entry, cookie) = match probe.probed {
                Probed::Alloc(kind) => {
                    let moved = moved_arguments(probe.arguments);
                    (
                        ALLOC_ENTER,
                        Some(cookie_for(kind, probe.first_frame, moved)),
                    )
                }
                Probed::Free => (FREE_ENTER, None),
                Probed::Delete => (DELETE_ENTER, None),
                // Left out of the stacks by the walk instead (see `plan::wrappers`).
                Probed::New => continue,
                // Nothing to measure there.
                Probed::LoaderNotice if floor => continue,
                Probed::LoaderNotice => (LOADER_NOTICE, None),
            };
            // The return probe first: a call whose entry is seen must have its return
            // seen too, or its thread's call stays open and every later one looks
            // nested; a return without its entry is ignored.
            let mut programs = Vec::new();
            if matches!(probe.probed, Probed::Alloc(_)) {
                programs.push((ALLOC_EXIT, None));
            }
            programs.push((entry, cookie));
            let file = std::fs::metadata(&probe.object.host_path)
                .map(|meta| (meta.dev(), meta.ino()))
                .map_err(|source| AttachError::Attach {
                    probe: probe.to_string(),
                    source: source.into(),
                })?;
            for (name, cookie) in programs {
                let name = match (floor, name) {
                    (false, name) => name,
                    (true, ALLOC_EXIT) => FLOOR_EXIT,
                    (true, _) => FLOOR_ENTER,
                };
                let key = (name, file, probe.file_offset, scope);
                if self.attached.contains(&key) {
                    continue;
                }
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
                    cookie,
                };
                let kernel_scope = match scope {
                    Scope::Process(pid) => UProbeScope::OneProcess(pid),
                    Scope::System => UProbeScope::AllProcesses,
                };
                let link = kernel::program::<UProbe>(&mut self.ebpf, name)?
                    .attach(point, &probe.object.host_path, kernel_scope)
                    .map_err(|source| {
                        let probe = probe.to_string();
                        if os_error(&source) == Some(libc::EINVAL) {
                            AttachError::Conflict { probe }
                        } else {
                            AttachError::Attach { probe, source }
                        }
                    })?;
                self.attached.insert(key);
                self.uprobe_links.push((name, link));
                attached.push(Attached {
                    program: name,
                    probe: probe.to_string(),
                });
            }
        }
        Ok(attached)
    }
}

/// The OS error code at the root of `err`, if any.
fn os_error(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = err.source();
    }
    None
}
