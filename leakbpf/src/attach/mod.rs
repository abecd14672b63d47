//! Where the probes go: the objects a process maps ([`objects`], read with [`elf`]), the
//! allocation functions they provide in binding order ([`plan`]), the instruction of
//! each that the probe goes on ([`placement`]), and attaching the programs there.
//!
//! Every attach takes one path, objects → plan → attach ([`Attacher::attach_image`]),
//! whether for a target at start, a process found later (`--all`, `--follow-forks`)
//! or a new image after exec.

pub mod elf;
pub mod objects;
pub mod placement;
mod plan;
mod privileges;
mod programs;
mod tracefs;

use std::{fmt::Write as _, num::NonZeroU32};

use leakbpf_common::Setting;

use self::objects::ObjectsError;
pub use self::{
    plan::{PlanError, Probe, Probed, wrappers},
    privileges::{MissingPrivileges, check as check_privileges, raise_memlock_limit},
    programs::{AttachError, Attached, Programs, Scope},
    tracefs::{ProcessFields, TracefsError, process_fields},
};
use crate::{
    kernel::KernelMaps,
    unwind::{Described, FileTable, UnwindError, Unwinder, Wait},
};

/// How the objects of a process are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    /// A running process: what it maps, in binding order.
    Running(NonZeroU32),
    /// A process at exec, before its new image runs: the new executable and what its
    /// program interpreter will load for it, under its own environment.
    Exec(NonZeroU32),
}

impl Image {
    pub fn pid(self) -> NonZeroU32 {
        match self {
            Image::Running(pid) | Image::Exec(pid) => pid,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// The probes planned for one image, and those attached for them.
pub struct Attachment {
    pub probes: Vec<Probe>,
    pub attached: Vec<Attached>,
}

impl Attachment {
    /// The line that says what was attached to `whom`; with `verbose`, a line per probe.
    pub fn describe(&self, whom: &str, verbose: bool) -> String {
        let mut objects: Vec<String> = self
            .probes
            .iter()
            .map(|p| p.object.path.display().to_string())
            .collect();
        objects.dedup();
        let mut text = format!(
            "leakbpf: attached {} probes to {whom} in {}",
            self.attached.len(),
            objects.join(", ")
        );
        if verbose {
            for attached in &self.attached {
                let _ = write!(
                    text,
                    "\nleakbpf:   {:<13} {}",
                    attached.program, attached.probe
                );
            }
            for wrapper in self.probes.iter().filter(|p| p.probed == Probed::New) {
                let _ = write!(text, "\nleakbpf:   left out of stacks: {wrapper}");
            }
        }
        text
    }
}

/// The probes `image` needs: the functions of the C allocation interface, their
/// `prefix`ed twins and C++'s, each in the object that provides it to the process.
pub fn plan(image: Image, prefix: Option<&str>) -> Result<Vec<Probe>, ImageError> {
    let objects = match image {
        Image::Running(pid) => objects::of_process(pid.get())?,
        Image::Exec(pid) => objects::of_new_image(pid.get())?,
    };
    Ok(plan::plan(&objects, prefix)?)
}

/// The objects process `pid` maps that define `malloc`, in binding order: what to name
/// when no allocation is seen.
pub fn malloc_providers(pid: NonZeroU32) -> Vec<String> {
    objects::of_process(pid.get())
        .unwrap_or_default()
        .into_iter()
        .filter(|object| {
            elf::ElfObject::open(&object.host_path)
                .and_then(|elf| elf.functions(&["malloc"]))
                .is_ok_and(|found| !found.is_empty())
        })
        .map(|object| object.path.display().to_string())
        .collect()
}

/// Attaches the programs to the allocation functions of images, and gives the stack
/// walk the unwind tables of the code they run.
pub struct Attacher {
    programs: Programs,
    unwinder: Unwinder,
    /// `--symbol-prefix`.
    prefix: Option<String>,
    /// Empty programs instead (`--floor`).
    floor: bool,
}

impl Attacher {
    pub fn new(
        programs: Programs,
        unwinder: Unwinder,
        prefix: Option<String>,
        floor: bool,
    ) -> Self {
        Self {
            programs,
            unwinder,
            prefix,
            floor,
        }
    }

    pub fn programs(&mut self) -> &mut Programs {
        &mut self.programs
    }

    /// Tells the stack walk what process `pid` maps now, every object's table first
    /// (or, without `wait`, once built).
    pub fn describe(
        &mut self,
        maps: &mut KernelMaps,
        pid: u32,
        wait: Wait,
    ) -> Result<Described, UnwindError> {
        self.unwinder.describe(maps, pid, wait)
    }

    /// A table built on the unwinder's thread is ready: the processes to describe again.
    pub fn built(&mut self, maps: &mut KernelMaps, table: FileTable) -> Vec<u32> {
        self.unwinder.built(maps, table)
    }

    /// Whether the stack walk was told what process `pid` maps.
    pub fn describes(&self, pid: u32) -> bool {
        self.unwinder.describes(pid)
    }

    /// Process `pid` is gone: the stack walk forgets its mappings.
    pub fn forget(&mut self, maps: &mut KernelMaps, pid: u32) -> Result<(), UnwindError> {
        self.unwinder.forget(maps, pid)
    }

    /// The unwind rows in use and the kernel's room for them, and the kernel memory
    /// their arrays take.
    pub fn unwind_usage(&self, maps: &mut KernelMaps) -> (u32, usize, usize) {
        let (used, capacity) = self.unwinder.rows(maps);
        (used, capacity, maps.unwind_bytes())
    }

    /// Plans `image` and attaches its probes in `scope`.
    pub fn attach_image(
        &mut self,
        maps: &mut KernelMaps,
        image: Image,
        scope: Scope,
    ) -> Result<Attachment, ImageError> {
        let probes = plan(image, self.prefix.as_deref())?;
        Ok(self.attach(maps, probes, scope)?)
    }

    /// Attaches `probes` in `scope`, each entry probe with the unwind rule of its
    /// instruction, from its object's table, for the walks it starts.
    pub fn attach(
        &mut self,
        maps: &mut KernelMaps,
        mut probes: Vec<Probe>,
        scope: Scope,
    ) -> Result<Attachment, AttachError> {
        // Before the probes: a delete's own call of `free` must never count as a free of
        // an unknown block.
        if probes.iter().any(|probe| probe.probed == Probed::Delete) {
            maps.switch_on(Setting::DeleteProbed)?;
        }
        for probe in probes
            .iter_mut()
            .filter(|p| matches!(p.probed, Probed::Alloc(_)))
        {
            probe.first_frame = Some(self.unwinder.rule_at(
                maps,
                &probe.object.host_path,
                probe.address,
            ));
        }
        let attached = self.programs.attach(&probes, scope, self.floor)?;
        Ok(Attachment { probes, attached })
    }
}
