//! Attaches the loaded eBPF programs to the planned probes and to the process
//! tracepoints.
//!
//! Every link belongs to [`Programs`]: dropping it, or the agent's exit in any way
//! (even SIGKILL, which closes the file descriptors), detaches every probe.

use std::{
    collections::HashSet,
    ffi::CString,
    num::NonZeroU32,
    os::{
        fd::OwnedFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
};

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
use crate::kernel::{self, KernelError, MultiPrograms};

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
    /// The uprobe programs for uprobe_multi links, where the kernel has them; else those
    /// of `ebpf`, a perf-event link per probe.
    multi: Option<MultiPrograms>,
    /// What is attached already: program, object file (device and inode: processes
    /// name one file by many paths), file offset, scope.
    attached: HashSet<(&'static str, (u64, u64), u64, Scope)>,
    /// Every link, for [`Programs::detach_all`].
    multi_links: Vec<OwnedFd>,
    uprobe_links: Vec<(&'static str, UProbeLinkId)>,
    tracepoint_links: Vec<(&'static str, TracePointLinkId)>,
}

/// Links detached by one thread at most, at the end: each detach waits for the kernel's
/// grace period, and concurrent ones share it.
const DETACH_THREADS: usize = 256;

impl Programs {
    /// The programs of `ebpf` and `multi`, loaded (see [`crate::kernel::load`]), none
    /// attached yet.
    pub fn new(ebpf: Ebpf, multi: Option<MultiPrograms>) -> Self {
        Self {
            ebpf,
            multi,
            attached: HashSet::new(),
            multi_links: Vec::new(),
            uprobe_links: Vec::new(),
            tracepoint_links: Vec::new(),
        }
    }

    /// Detaches every probe at once. Dropping links one by one costs the kernel's grace
    /// periods each (0.1 s and more per uprobe here: 2 s for glibc's 17 perf-event
    /// links); dropped from threads of their own, uprobe_multi links wait for the same
    /// ones (perf-event links still wait in turn: the kernel holds a lock across them).
    pub fn detach_all(&mut self) {
        let mut links: Vec<Box<dyn Send>> = Vec::new();
        for link in std::mem::take(&mut self.multi_links) {
            links.push(Box::new(link));
        }
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
        // The return probes first: a call whose entry is seen must have its return seen
        // too, or its thread's call stays open and every later one looks nested; a
        // return without its entry is ignored.
        let mut returns = Vec::new();
        let mut entries = Vec::new();
        for probe in probes {
            let (entry, cookie) = match probe.probed {
                Probed::Alloc(kind) => {
                    let moved = moved_arguments(probe.arguments);
                    (ALLOC_ENTER, cookie_for(kind, probe.first_frame, moved))
                }
                Probed::Free => (FREE_ENTER, 0),
                Probed::Delete => (DELETE_ENTER, 0),
                // Left out of the stacks by the walk instead (see `plan::wrappers`).
                Probed::New => continue,
                // Nothing to measure there.
                Probed::LoaderNotice if floor => continue,
                Probed::LoaderNotice => (LOADER_NOTICE, 0),
            };
            let file = std::fs::metadata(&probe.object.host_path)
                .map(|meta| (meta.dev(), meta.ino()))
                .map_err(|source| AttachError::Attach {
                    probe: probe.to_string(),
                    source: source.into(),
                })?;
            if matches!(probe.probed, Probed::Alloc(_)) {
                let name = if floor { FLOOR_EXIT } else { ALLOC_EXIT };
                returns.push((name, file, probe, 0));
            }
            let name = if floor { FLOOR_ENTER } else { entry };
            entries.push((name, file, probe, cookie));
        }
        let mut attached = Vec::new();
        for planned in [returns, entries] {
            let mut keys = HashSet::new();
            let new: Vec<_> = planned
                .into_iter()
                .filter(|&(name, file, probe, _)| {
                    let key = (name, file, probe.file_offset, scope);
                    !self.attached.contains(&key) && keys.insert(key)
                })
                .collect();
            match &self.multi {
                Some(multi) => self.multi_links.extend(link_multi(multi, &new, scope)?),
                None => self.attach_each(&new, scope)?,
            }
            self.attached.extend(keys);
            attached.extend(new.iter().map(|&(program, _, probe, _)| Attached {
                program,
                probe: probe.to_string(),
            }));
        }
        Ok(attached)
    }

    /// A perf-event link per probe of `planned`.
    fn attach_each(&mut self, planned: &[Planned<'_>], scope: Scope) -> Result<(), AttachError> {
        for &(name, _, probe, cookie) in planned {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
                cookie: Some(cookie),
            };
            let kernel_scope = match scope {
                Scope::Process(pid) => UProbeScope::OneProcess(pid),
                Scope::System => UProbeScope::AllProcesses,
            };
            let link = kernel::program::<UProbe>(&mut self.ebpf, name)?
                .attach(point, &probe.object.host_path, kernel_scope)
                .map_err(|source| attach_error(probe.to_string(), source))?;
            self.uprobe_links.push((name, link));
        }
        Ok(())
    }
}

/// One uprobe_multi link of `multi`'s programs per program and object for `planned`.
fn link_multi(
    multi: &MultiPrograms,
    planned: &[Planned<'_>],
    scope: Scope,
) -> Result<Vec<OwnedFd>, AttachError> {
    let mut links = Vec::new();
    let mut groups: Vec<(&'static str, (u64, u64), Vec<&Planned<'_>>)> = Vec::new();
    for item in planned {
        let (name, file, _, _) = *item;
        match groups.iter_mut().find(|(n, f, _)| (*n, *f) == (name, file)) {
            Some((_, _, members)) => members.push(item),
            None => groups.push((name, file, vec![item])),
        }
    }
    for (name, _, members) in groups {
        let first = members[0].2;
        let describe = || match members.len() {
            1 => first.to_string(),
            n => format!("{first} and {} other probes in the same object", n - 1),
        };
        let path = CString::new(first.object.host_path.as_os_str().as_bytes()).map_err(|err| {
            AttachError::Attach {
                probe: describe(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, err).into(),
            }
        })?;
        let offsets: Vec<u64> = members.iter().map(|item| item.2.file_offset).collect();
        let cookies: Vec<u64> = members.iter().map(|item| item.3).collect();
        let pid = match scope {
            Scope::Process(pid) => pid.get(),
            Scope::System => 0,
        };
        let at_return = matches!(name, ALLOC_EXIT | FLOOR_EXIT);
        let link = multi
            .link(name, &path, &offsets, &cookies, at_return, pid)
            .map_err(|source| attach_error(describe(), source.into()))?;
        links.push(link);
    }
    Ok(links)
}

/// A probe to attach: program, object file (device and inode), the probe, its cookie.
type Planned<'a> = (&'static str, (u64, u64), &'a Probe, u64);

/// The error of an attach to `probe` that failed with `source`.
fn attach_error(probe: String, source: ProgramError) -> AttachError {
    if os_error(&source) == Some(libc::EINVAL) {
        AttachError::Conflict { probe }
    } else {
        AttachError::Attach { probe, source }
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
