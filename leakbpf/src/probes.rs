//! Which functions are probed, in which object, and at which instruction.

use std::fmt;

use leakbpf_common::AllocKind;

use crate::{
    elf::{ElfError, ElfObject},
    objects::MappedObject,
    placement::{self, Role},
};

/// What a probed function is, which decides the eBPF program attached to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probed {
    Alloc(AllocKind),
    Free,
    /// `operator new` in one of its forms: takes the stack for the `malloc` it calls.
    New,
}

/// The functions leakbpf probes, by symbol name.
pub const FUNCTIONS: [(&str, Probed); 18] = [
    ("malloc", Probed::Alloc(AllocKind::Malloc)),
    ("calloc", Probed::Alloc(AllocKind::Calloc)),
    ("realloc", Probed::Alloc(AllocKind::Realloc)),
    ("reallocarray", Probed::Alloc(AllocKind::ReallocArray)),
    ("posix_memalign", Probed::Alloc(AllocKind::PosixMemalign)),
    ("aligned_alloc", Probed::Alloc(AllocKind::AlignedAlloc)),
    ("memalign", Probed::Alloc(AllocKind::AlignedAlloc)),
    ("valloc", Probed::Alloc(AllocKind::Malloc)),
    ("pvalloc", Probed::Alloc(AllocKind::Malloc)),
    ("free", Probed::Free),
    ("_Znwm", Probed::New),
    ("_Znam", Probed::New),
    ("_ZnwmRKSt9nothrow_t", Probed::New),
    ("_ZnamRKSt9nothrow_t", Probed::New),
    ("_ZnwmSt11align_val_t", Probed::New),
    ("_ZnamSt11align_val_t", Probed::New),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", Probed::New),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", Probed::New),
];

/// One probe to attach: a function, in the object that provides it to the process.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The symbol names of the function; aliases share one probe (glibc's `memalign`
    /// and `aligned_alloc` are one function: two probes would count each call twice).
    pub symbols: Vec<&'static str>,
    pub probed: Probed,
    pub object: MappedObject,
    /// The probe's position from the function's start (see [`placement`]).
    pub offset: u64,
    /// The probed instruction's offset in the object file.
    pub file_offset: u64,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}+{:#x} in {} (file offset {:#x})",
            self.symbols.join("="),
            self.offset,
            self.object.path.display(),
            self.file_offset
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "no object of the target defines malloc and free (searched {searched}): \
         it has no libc leakbpf can probe"
    )]
    NoAllocator { searched: usize },
    #[error(transparent)]
    Elf(#[from] ElfError),
}

/// The probes for a process whose objects are `objects`, in binding order: each function
/// is probed in the first object that defines it, as the dynamic linker binds it.
pub fn plan(objects: &[MappedObject]) -> Result<Vec<Probe>, PlanError> {
    let mut probes: Vec<Probe> = Vec::new();
    let mut bound: Vec<&str> = Vec::new();
    for object in objects {
        let wanted: Vec<&str> = FUNCTIONS
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !bound.contains(name))
            .collect();
        if wanted.is_empty() {
            break;
        }
        let elf = match ElfObject::open(&object.host_path) {
            Ok(elf) => elf,
            // A mapped file that is gone or unreadable provides nothing to probe.
            Err(ElfError::Read { .. }) => continue,
            Err(err) => return Err(err.into()),
        };
        let found = match elf.functions(&wanted) {
            Ok(found) => found,
            Err(ElfError::Parse { .. }) => continue,
            Err(err) => return Err(err.into()),
        };
        for (name, probed) in FUNCTIONS {
            let Some(function) = found.get(name) else {
                continue;
            };
            bound.push(name);
            let same_function = probes.iter_mut().find(|probe| {
                probe.object == *object && probe.file_offset - probe.offset == function.file_offset
            });
            if let Some(probe) = same_function {
                probe.symbols.push(name);
                continue;
            }
            let role = if probed == Probed::Free {
                Role::Free
            } else {
                Role::Entry
            };
            let offset = placement::probe_offset(&function.prologue, role);
            probes.push(Probe {
                symbols: vec![name],
                probed,
                object: object.clone(),
                offset,
                file_offset: function.file_offset + offset,
            });
        }
    }
    let provides = |symbol| probes.iter().any(|p| p.symbols.contains(&symbol));
    if !provides("malloc") || !provides("free") {
        return Err(PlanError::NoAllocator {
            searched: objects.len(),
        });
    }
    Ok(probes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects;

    #[test]
    fn plans_libc_functions_once_each_with_aliases_merged() {
        let probes = plan(&objects::of_process(std::process::id()).unwrap()).unwrap();
        let malloc = probes
            .iter()
            .find(|p| p.symbols.contains(&"malloc"))
            .unwrap();
        assert!(malloc.object.path.to_string_lossy().contains("libc.so"));
        let aligned = probes
            .iter()
            .filter(|p| p.symbols.contains(&"aligned_alloc") || p.symbols.contains(&"memalign"))
            .count();
        assert_eq!(
            aligned, 1,
            "glibc's aligned_alloc and memalign are one function"
        );
        let free = probes.iter().find(|p| p.probed == Probed::Free).unwrap();
        assert!(free.offset > 0, "free's probe moves past its NULL test");
    }

    #[test]
    fn an_object_without_libc_is_refused() {
        let not_elf = MappedObject {
            path: "/etc/hostname".into(),
            host_path: "/etc/hostname".into(),
        };
        let err = plan(&[not_elf]).unwrap_err();
        assert!(
            matches!(err, PlanError::NoAllocator { searched: 1 }),
            "{err}"
        );
    }
}
