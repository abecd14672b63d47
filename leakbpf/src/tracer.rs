//! Loads leakbpf's eBPF object and attaches its programs to the planned probes.
//!
//! Every link belongs to the [`Tracer`]: dropping it, or the agent's exit in any way
//! (even SIGKILL, which closes the file descriptors), detaches every probe.

use std::{collections::HashSet, num::NonZeroU32, os::unix::fs::MetadataExt};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapError},
    programs::{
        ProgramError, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use leakbpf_common::{
    ALL_PROCESSES, MAX_CALL_SLOTS, NO_FIELD, Setting, WrapperFrame, cookie_for, global_names,
    map_names,
    program_names::{
        ALLOC_ENTER, ALLOC_EXIT, DELETE_ENTER, FLOOR_ENTER, FLOOR_EXIT, FREE_ENTER, PROCESS_EXEC,
        PROCESS_EXIT, PROCESS_FORK, TRACEPOINTS, UPROBES, URETPROBES,
    },
};

use crate::{
    clock::Clock,
    kernel_maps::KernelMaps,
    probes::{Probe, Probed},
    tracefs::ProcessFields,
};

/// The object `cargo xtask build-ebpf` builds from `leakbpf-ebpf`, checked by CI to be
/// exactly what the current source builds to.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/leakbpf.bpf.o");

/// How many entries the kernel maps hold.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Outstanding allocations (`--max-allocs`).
    pub allocations: u32,
    /// Distinct stacks, and call sites (`--max-stacks`).
    pub stacks: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error("cannot load the eBPF programs")]
    Load(#[source] EbpfError),
    #[error("cannot load eBPF program {name}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("the eBPF object lacks {0}")]
    Missing(&'static str),
    #[error("cannot attach to {probe}")]
    Attach { probe: String, source: ProgramError },
    #[error(
        "cannot attach to {probe}: another tool holds a uprobe there with a different \
         reference counter (Debian's BCC memleak-bpfcc does; the kernel log says \
         'ref_ctr_offset mismatch'): stop it and retry"
    )]
    Conflict { probe: String },
    #[error("cannot use eBPF map {name}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("cannot start the clock thread")]
    Clock(#[source] std::io::Error),
    #[error("cannot read eBPF map {name}")]
    Read {
        name: &'static str,
        source: std::io::Error,
    },
}

/// A probe attached, for `--verbose`.
pub struct Attached {
    pub program: &'static str,
    pub probe: String,
}

/// Which processes the programs record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One process, told apart by a constant: the cheapest.
    One(NonZeroU32),
    /// The processes in the kernel's TRACED_PIDS set (several `--pid`s,
    /// `--follow-forks`).
    Set,
    /// Every process (`--all`).
    All,
}

/// Where a probe fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// In this process only: the kernel does not even trap elsewhere.
    Process(NonZeroU32),
    /// In every process that maps the object; the programs filter by [`Mode`].
    System,
}

pub struct Tracer {
    ebpf: Ebpf,
    _clock: Clock,
    /// What is attached already: program, object file (device and inode: processes
    /// name one file by many paths), file offset, scope.
    attached: HashSet<(&'static str, (u64, u64), u64, Scope)>,
}

impl Tracer {
    /// Loads the programs for `mode`, tracing the processes the traced ones create with
    /// `follow_forks`; `fields` are the process tracepoints' offsets, when tracefs has them.
    pub fn load(
        capacity: Capacity,
        mode: Mode,
        follow_forks: bool,
        fields: Option<ProcessFields>,
    ) -> Result<(Self, KernelMaps), TracerError> {
        let target = match mode {
            Mode::One(pid) => pid.get(),
            Mode::Set => 0,
            Mode::All => ALL_PROCESSES,
        };
        let follow_forks = u32::from(follow_forks);
        let fields = fields.unwrap_or(ProcessFields {
            newtask_pid: 0,
            newtask_flags: 0,
            exit_group_dead: NO_FIELD,
        });
        let agent = std::process::id();
        let mut ebpf = EbpfLoader::new()
            .override_global(global_names::TARGET_TGID, &target, true)
            .override_global(global_names::AGENT_TGID, &agent, true)
            .override_global(global_names::FOLLOW_FORKS, &follow_forks, true)
            .override_global(global_names::NEWTASK_PID_OFFSET, &fields.newtask_pid, true)
            .override_global(
                global_names::NEWTASK_FLAGS_OFFSET,
                &fields.newtask_flags,
                true,
            )
            .override_global(
                global_names::EXIT_GROUP_DEAD_OFFSET,
                &fields.exit_group_dead,
                true,
            )
            .map_max_entries(map_names::ALLOCS, capacity.allocations)
            .map_max_entries(map_names::STACKS, capacity.stacks)
            .map_max_entries(map_names::CALL_SLOTS, call_slots())
            .load(OBJECT)
            .map_err(TracerError::Load)?;
        for name in UPROBES.into_iter().chain(URETPROBES) {
            uprobe(&mut ebpf, name)?
                .load()
                .map_err(|source| TracerError::Program { name, source })?;
        }
        for name in TRACEPOINTS {
            tracepoint(&mut ebpf, name)?
                .load()
                .map_err(|source| TracerError::Program { name, source })?;
        }
        let name = map_names::CLOCK;
        let clock = ebpf
            .take_map(name)
            .ok_or(TracerError::Missing(name))?
            .try_into()
            .map_err(|source| TracerError::Map { name, source })?;
        let clock = Clock::start(clock).map_err(TracerError::Clock)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        Ok((
            Self {
                ebpf,
                _clock: clock,
                attached: HashSet::new(),
            },
            maps,
        ))
    }

    /// The eBPF side's own log, shown by `--verbose`.
    pub fn logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).ok()
    }

    /// Attaches the process tracepoints: fork (which follows the new process, or tells of
    /// it), exec and exit.
    pub fn attach_process_tracepoints(&mut self) -> Result<(), TracerError> {
        for (name, category, event) in [
            (PROCESS_EXEC, "sched", "sched_process_exec"),
            (PROCESS_EXIT, "sched", "sched_process_exit"),
            (PROCESS_FORK, "task", "task_newtask"),
        ] {
            tracepoint(&mut self.ebpf, name)?
                .attach(category, event)
                .map_err(|source| TracerError::Attach {
                    probe: format!("tracepoint {category}/{event}"),
                    source,
                })?;
        }
        Ok(())
    }

    /// Attaches `probes` in `scope`, but for those attached already; with `floor`, empty
    /// programs at the same places, which cost what the uprobes themselves cost and
    /// record nothing. The frameless wrappers among them are given to the stack walk.
    pub fn attach(
        &mut self,
        probes: &[Probe],
        scope: Scope,
        floor: bool,
    ) -> Result<Vec<Attached>, TracerError> {
        self.add_wrapper_calls(probes)?;
        // Before the probes: a delete's own call of `free` must never count as a free
        // of an unknown block.
        if probes.iter().any(|probe| probe.probed == Probed::Delete) {
            self.switch_on(Setting::DeleteProbed)?;
        }
        let mut attached = Vec::new();
        for probe in probes {
            let (entry, cookie) = match probe.probed {
                Probed::Alloc(kind) => (ALLOC_ENTER, Some(cookie_for(kind))),
                Probed::Free => (FREE_ENTER, None),
                Probed::Delete => (DELETE_ENTER, None),
                // Stepped over by the stack walk instead (see `frameless`).
                Probed::New => continue,
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
                .map_err(|source| TracerError::Attach {
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
                uprobe(&mut self.ebpf, name)?
                    .attach(point, &probe.object.host_path, kernel_scope)
                    .map_err(|source| {
                        let probe = probe.to_string();
                        if os_error(&source) == Some(libc::EINVAL) {
                            TracerError::Conflict { probe }
                        } else {
                            TracerError::Attach { probe, source }
                        }
                    })?;
                self.attached.insert(key);
                attached.push(Attached {
                    program: name,
                    probe: probe.to_string(),
                });
            }
        }
        Ok(attached)
    }

    /// Tells the stack walk about the calls of the frameless wrappers among `probes`.
    fn add_wrapper_calls(&mut self, probes: &[Probe]) -> Result<(), TracerError> {
        let mut wrapper_calls = probes.iter().flat_map(|p| &p.wrapper_calls).peekable();
        if wrapper_calls.peek().is_none() {
            return Ok(());
        }
        let name = map_names::WRAPPER_CALLS;
        let mut calls: HashMap<_, [u64; 2], WrapperFrame> = self
            .ebpf
            .map_mut(name)
            .ok_or(TracerError::Missing(name))?
            .try_into()
            .map_err(|source| TracerError::Map { name, source })?;
        for call in wrapper_calls {
            calls
                .insert(call.code, call.frame, 0)
                .map_err(|source| TracerError::Map { name, source })?;
        }
        self.switch_on(Setting::WrappersKnown)
    }

    /// Switches `setting` on for the programs.
    fn switch_on(&mut self, setting: Setting) -> Result<(), TracerError> {
        let name = map_names::SETTINGS;
        let mut settings: Array<_, u32> = self
            .ebpf
            .map_mut(name)
            .ok_or(TracerError::Missing(name))?
            .try_into()
            .map_err(|source| TracerError::Map { name, source })?;
        settings
            .set(setting as u32, 1, 0)
            .map_err(|source| TracerError::Map { name, source })
    }
}

/// Elements of the in-flight call array: one per possible thread id, within a bound.
fn call_slots() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|max| max.trim().parse::<u32>().ok())
        .map_or(MAX_CALL_SLOTS, |max| max.min(MAX_CALL_SLOTS))
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

fn tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut TracePoint, TracerError> {
    ebpf.program_mut(name)
        .ok_or(TracerError::Missing(name))?
        .try_into()
        .map_err(|source| TracerError::Program { name, source })
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, TracerError> {
    ebpf.program_mut(name)
        .ok_or(TracerError::Missing(name))?
        .try_into()
        .map_err(|source| TracerError::Program { name, source })
}
