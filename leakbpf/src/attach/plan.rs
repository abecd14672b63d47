//! Which functions are probed, in which object, and at which instruction.

use std::{fmt, ops::Range};

use leakbpf_common::{AllocKind, UnwindRule};

use super::{
    elf::{ElfError, ElfObject},
    objects::MappedObject,
    placement::{self, Role},
};

/// What a probed function is, which decides the eBPF program attached to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probed {
    Alloc(AllocKind),
    Free,
    /// `operator new` in one of its forms. Where the object that provides it also
    /// provides `malloc` (jemalloc, tcmalloc, mimalloc) it allocates by itself and is
    /// probed as an allocation function; otherwise (libstdc++) it is a wrapper that
    /// calls `malloc`, and is not probed: the stack walk leaves its frame out (see
    /// [`wrappers`]).
    New,
    /// `operator delete` in one of its forms: probed as a free only where its object
    /// also provides `free`; libstdc++'s calls `free`, which is probed anyway.
    Delete,
    /// The dynamic linker's notice that it mapped or unmapped objects: the stack walk
    /// must learn of their code.
    LoaderNotice,
}

/// The function the dynamic linker calls after it maps or unmaps objects, for debuggers.
const LOADER_NOTICE: &str = "_dl_debug_state";

/// The C allocation interface: these also get `--symbol-prefix`ed twins.
const C_FUNCTIONS: [(&str, Probed); 15] = [
    ("malloc", Probed::Alloc(AllocKind::Malloc)),
    ("calloc", Probed::Alloc(AllocKind::Calloc)),
    ("realloc", Probed::Alloc(AllocKind::Realloc)),
    ("reallocarray", Probed::Alloc(AllocKind::ReallocArray)),
    ("posix_memalign", Probed::Alloc(AllocKind::PosixMemalign)),
    ("aligned_alloc", Probed::Alloc(AllocKind::AlignedAlloc)),
    ("memalign", Probed::Alloc(AllocKind::AlignedAlloc)),
    ("valloc", Probed::Alloc(AllocKind::Malloc)),
    ("pvalloc", Probed::Alloc(AllocKind::Malloc)),
    // jemalloc's own interface: the flags come after the arguments malloc and realloc have.
    ("mallocx", Probed::Alloc(AllocKind::Malloc)),
    ("rallocx", Probed::Alloc(AllocKind::Realloc)),
    ("free", Probed::Free),
    ("cfree", Probed::Free),
    ("sdallocx", Probed::Free),
    ("dallocx", Probed::Free),
];

/// Prefixes under which allocators export the C interface without replacing it: jemalloc
/// built with `--with-jemalloc-prefix=je_`, and Rust's `tikv-jemallocator`, linked into
/// the executable. Others are named with `--symbol-prefix`.
const KNOWN_PREFIXES: [&str; 2] = ["je_", "_rjem_"];

/// mimalloc's and tcmalloc's own interfaces, which programs (the Rust `mimalloc` crate, a
/// static mimalloc) call directly. Where they are the same functions as `malloc` and
/// `free` (aliases in the shared libraries) they get no probe of their own.
const OWN_INTERFACES: [(&str, Probed); 27] = [
    ("mi_malloc", Probed::Alloc(AllocKind::Malloc)),
    ("mi_zalloc", Probed::Alloc(AllocKind::Malloc)),
    ("mi_malloc_aligned", Probed::Alloc(AllocKind::Malloc)),
    ("mi_zalloc_aligned", Probed::Alloc(AllocKind::Malloc)),
    ("mi_calloc", Probed::Alloc(AllocKind::Calloc)),
    ("mi_mallocn", Probed::Alloc(AllocKind::Calloc)),
    ("mi_calloc_aligned", Probed::Alloc(AllocKind::Calloc)),
    ("mi_realloc", Probed::Alloc(AllocKind::Realloc)),
    ("mi_realloc_aligned", Probed::Alloc(AllocKind::Realloc)),
    ("mi_reallocn", Probed::Alloc(AllocKind::ReallocArray)),
    ("mi_free", Probed::Free),
    ("mi_free_size", Probed::Free),
    ("mi_free_aligned", Probed::Free),
    ("mi_free_size_aligned", Probed::Free),
    ("tc_malloc", Probed::Alloc(AllocKind::Malloc)),
    ("tc_valloc", Probed::Alloc(AllocKind::Malloc)),
    ("tc_pvalloc", Probed::Alloc(AllocKind::Malloc)),
    ("tc_new", Probed::Alloc(AllocKind::Malloc)),
    ("tc_newarray", Probed::Alloc(AllocKind::Malloc)),
    ("tc_calloc", Probed::Alloc(AllocKind::Calloc)),
    ("tc_realloc", Probed::Alloc(AllocKind::Realloc)),
    ("tc_memalign", Probed::Alloc(AllocKind::AlignedAlloc)),
    ("tc_posix_memalign", Probed::Alloc(AllocKind::PosixMemalign)),
    ("tc_free", Probed::Free),
    ("tc_free_sized", Probed::Free),
    ("tc_delete", Probed::Free),
    ("tc_deletearray", Probed::Free),
];

/// How many leading arguments the entry program reads for `kind` (the eBPF side's
/// `read_call`): the registers its probe must still find as they were at entry.
fn arguments_read(kind: AllocKind) -> usize {
    match kind {
        AllocKind::Malloc => 1,
        AllocKind::Calloc | AllocKind::Realloc | AllocKind::AlignedAlloc => 2,
        AllocKind::ReallocArray | AllocKind::PosixMemalign => 3,
    }
}

/// The C++ allocation operators, by mangled name.
const CXX_FUNCTIONS: [(&str, Probed); 20] = [
    ("_Znwm", Probed::New),
    ("_Znam", Probed::New),
    ("_ZnwmRKSt9nothrow_t", Probed::New),
    ("_ZnamRKSt9nothrow_t", Probed::New),
    ("_ZnwmSt11align_val_t", Probed::New),
    ("_ZnamSt11align_val_t", Probed::New),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", Probed::New),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", Probed::New),
    ("_ZdlPv", Probed::Delete),
    ("_ZdaPv", Probed::Delete),
    ("_ZdlPvm", Probed::Delete),
    ("_ZdaPvm", Probed::Delete),
    ("_ZdlPvSt11align_val_t", Probed::Delete),
    ("_ZdaPvSt11align_val_t", Probed::Delete),
    ("_ZdlPvmSt11align_val_t", Probed::Delete),
    ("_ZdaPvmSt11align_val_t", Probed::Delete),
    ("_ZdlPvRKSt9nothrow_t", Probed::Delete),
    ("_ZdaPvRKSt9nothrow_t", Probed::Delete),
    ("_ZdlPvSt11align_val_tRKSt9nothrow_t", Probed::Delete),
    ("_ZdaPvSt11align_val_tRKSt9nothrow_t", Probed::Delete),
];

/// One probe to attach: a function, in the object that provides it to the process.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The symbol names of the function; aliases share one probe (glibc's `memalign`
    /// and `aligned_alloc` are one function: two probes would count each call twice).
    pub symbols: Vec<String>,
    pub probed: Probed,
    pub object: MappedObject,
    /// The probe's position from the function's start (see [`placement`]).
    pub offset: u64,
    /// Where the first three arguments are there: indexes into `rdi`, `rsi`, `rdx`,
    /// `rcx` (see [`placement::Placement`]).
    pub arguments: [u8; 3],
    /// The probed instruction's offset in the object file.
    pub file_offset: u64,
    /// The probed instruction's address in the object's own numbering.
    pub address: u64,
    /// The unwind rule of the probed instruction, once the object's table is read: the
    /// first frame of every stack the probe takes.
    pub first_frame: Option<UnwindRule>,
}

impl Probe {
    fn start(&self) -> u64 {
        self.file_offset - self.offset
    }
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
        )?;
        let moved: Vec<String> = (0..self.arguments.len())
            .filter(|&index| usize::from(self.arguments[index]) != index)
            .map(|index| {
                let register = placement::register_name(self.arguments[index]);
                format!("argument {} in {register}", index + 1)
            })
            .collect();
        if moved.is_empty() {
            Ok(())
        } else {
            write!(f, ", {}", moved.join(", "))
        }
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

/// The functions to look for: the C interface, its twins under the known prefixes and
/// `prefix`, the allocators' own interfaces, and C++'s operators.
fn wanted(prefix: Option<&str>) -> Vec<(String, Probed)> {
    let mut wanted: Vec<(String, Probed)> = C_FUNCTIONS
        .iter()
        .chain(&CXX_FUNCTIONS)
        .chain(&OWN_INTERFACES)
        .chain(&[(LOADER_NOTICE, Probed::LoaderNotice)])
        .map(|&(name, probed)| (name.to_owned(), probed))
        .collect();
    let prefixes = KNOWN_PREFIXES
        .iter()
        .copied()
        .chain(prefix.filter(|p| !p.is_empty() && !KNOWN_PREFIXES.contains(p)));
    for prefix in prefixes {
        wanted.extend(
            C_FUNCTIONS
                .iter()
                .map(|&(name, probed)| (format!("{prefix}{name}"), probed)),
        );
    }
    wanted
}

/// The probes for a process whose objects are `objects`, in binding order: each function
/// is probed in the first object that defines it, as the dynamic linker binds it.
pub fn plan(objects: &[MappedObject], prefix: Option<&str>) -> Result<Vec<Probe>, PlanError> {
    let wanted = wanted(prefix);
    let mut probes: Vec<Probe> = Vec::new();
    let mut bound: Vec<&str> = Vec::new();
    for object in objects {
        let names: Vec<&str> = wanted
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !bound.contains(name))
            .collect();
        if names.is_empty() {
            break;
        }
        let elf = match ElfObject::open(&object.host_path) {
            Ok(elf) => elf,
            // A mapped file that is gone or unreadable provides nothing to probe.
            Err(ElfError::Read { .. }) => continue,
            Err(err) => return Err(err.into()),
        };
        let found = match elf.functions(&names) {
            Ok(found) => found,
            Err(ElfError::Parse { .. }) => continue,
            Err(err) => return Err(err.into()),
        };
        for (name, probed) in &wanted {
            let Some(function) = found.get(name) else {
                continue;
            };
            bound.push(name);
            let same_function = probes
                .iter_mut()
                .find(|probe| probe.object == *object && probe.start() == function.file_offset);
            if let Some(probe) = same_function {
                probe.symbols.push(name.clone());
                continue;
            }
            let role = match probed {
                Probed::Free | Probed::Delete => Role::Free,
                Probed::Alloc(kind) => Role::Entry(arguments_read(*kind)),
                Probed::New => Role::Entry(1),
                // Reads no argument: stops the thread for the agent.
                Probed::LoaderNotice => Role::Entry(0),
            };
            let placement = placement::probe_offset(&function.prologue, role);
            let offset = placement.offset;
            probes.push(Probe {
                symbols: vec![name.clone()],
                probed: *probed,
                object: object.clone(),
                offset,
                arguments: placement.registers,
                file_offset: function.file_offset + offset,
                address: function.address + offset,
                first_frame: None,
            });
        }
    }
    let provider = |symbol: &str| {
        probes
            .iter()
            .find(|p| p.symbols.iter().any(|s| s == symbol))
            .map(|p| p.object.clone())
    };
    let (Some(malloc), Some(free)) = (provider("malloc"), provider("free")) else {
        return Err(PlanError::NoAllocator {
            searched: objects.len(),
        });
    };
    probes.retain_mut(|probe| match probe.probed {
        Probed::New if probe.object == malloc => {
            probe.probed = Probed::Alloc(AllocKind::Malloc);
            true
        }
        Probed::Delete => probe.object == free,
        _ => true,
    });
    Ok(probes)
}

/// The allocation wrappers of `elf`, by address: its forms of `operator new` when it
/// has no `malloc` of its own (libstdc++'s), which the stack walk leaves out of the
/// stacks they start, so that each names the code that said `new`.
pub fn wrappers(elf: &ElfObject) -> Vec<Range<u64>> {
    let new_names: Vec<&str> = CXX_FUNCTIONS
        .iter()
        .filter(|(_, probed)| *probed == Probed::New)
        .map(|&(name, _)| name)
        .chain(["malloc"])
        .collect();
    let Ok(found) = elf.functions(&new_names) else {
        return Vec::new();
    };
    if found.contains_key("malloc") {
        return Vec::new();
    }
    let mut ranges: Vec<Range<u64>> = found
        .values()
        .filter(|function| function.size > 0)
        .map(|function| function.address..function.address + function.size)
        .collect();
    ranges.sort_by_key(|range| range.start);
    ranges.dedup();
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::objects;

    fn with_symbol<'a>(probes: &'a [Probe], symbol: &str) -> Option<&'a Probe> {
        probes
            .iter()
            .find(|p| p.symbols.iter().any(|s| s == symbol))
    }

    #[test]
    fn plans_libc_functions_once_each_with_aliases_merged() {
        let probes = plan(&objects::of_process(std::process::id()).unwrap(), None).unwrap();
        let malloc = with_symbol(&probes, "malloc").unwrap();
        assert!(malloc.object.path.to_string_lossy().contains("libc.so"));
        let aligned = probes
            .iter()
            .filter(|p| {
                p.symbols
                    .iter()
                    .any(|s| s == "aligned_alloc" || s == "memalign")
            })
            .count();
        assert_eq!(
            aligned, 1,
            "glibc's aligned_alloc and memalign are one function"
        );
        let free = with_symbol(&probes, "free").unwrap();
        assert!(free.offset > 0, "free's probe moves past its NULL test");
    }

    #[test]
    fn libstdcxx_new_is_a_wrapper_and_jemalloc_new_is_not() {
        let libstdcxx = ElfObject::open("/usr/lib/x86_64-linux-gnu/libstdc++.so.6".as_ref())
            .expect("libstdc++ is installed with g++ (cargo xtask setup)");
        let wrappers = wrappers(&libstdcxx);
        let new = &libstdcxx.functions(&["_Znwm"]).unwrap()["_Znwm"];
        assert!(
            wrappers.iter().any(|range| range.contains(&new.address)),
            "{wrappers:x?}"
        );
        let jemalloc = ElfObject::open("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2".as_ref())
            .expect("libjemalloc2 is installed (cargo xtask setup)");
        assert!(super::wrappers(&jemalloc).is_empty());
    }

    #[test]
    fn libstdcxx_new_marks_stacks_and_its_delete_is_left_to_free() {
        let libstdcxx = MappedObject {
            path: "/usr/lib/x86_64-linux-gnu/libstdc++.so.6".into(),
            host_path: "/usr/lib/x86_64-linux-gnu/libstdc++.so.6".into(),
        };
        let mut objects = vec![libstdcxx];
        objects.extend(objects::of_process(std::process::id()).unwrap());
        let probes = plan(&objects, None).unwrap();
        assert_eq!(with_symbol(&probes, "_Znwm").unwrap().probed, Probed::New);
        assert!(with_symbol(&probes, "_ZdlPv").is_none());
    }

    #[test]
    fn an_allocator_s_own_operators_are_allocation_and_free_functions() {
        let path = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
        if !crate::test_support::file(
            "plan::an_allocator_s_own_operators_are_allocation_and_free_functions",
            path,
            "Debian's libjemalloc2, which cargo xtask setup installs",
        ) {
            return;
        }
        let jemalloc = std::path::Path::new(path);
        let jemalloc = MappedObject {
            path: jemalloc.into(),
            host_path: jemalloc.into(),
        };
        let probes = plan(&[jemalloc], None).unwrap();
        assert_eq!(
            with_symbol(&probes, "_Znwm").unwrap().probed,
            Probed::Alloc(AllocKind::Malloc)
        );
        assert_eq!(
            with_symbol(&probes, "_ZdlPv").unwrap().probed,
            Probed::Delete
        );
        assert_eq!(
            with_symbol(&probes, "rallocx").unwrap().probed,
            Probed::Alloc(AllocKind::Realloc)
        );
        assert_eq!(
            with_symbol(&probes, "sdallocx").unwrap().probed,
            Probed::Free
        );
    }

    #[test]
    fn a_prefix_adds_twins_of_the_c_functions_only() {
        let names: Vec<String> = wanted(Some("my_")).into_iter().map(|(n, _)| n).collect();
        let has = |name: &str| names.iter().filter(|n| *n == name).count();
        for name in [
            "my_malloc",
            "my_free",
            "malloc",
            "je_mallocx",
            "_rjem_sdallocx",
            "mi_free",
        ] {
            assert_eq!(has(name), 1, "{name}");
        }
        assert_eq!(has("my__Znwm"), 0);
        // A known prefix given again is looked for once.
        let again: Vec<String> = wanted(Some("je_")).into_iter().map(|(n, _)| n).collect();
        assert_eq!(again.iter().filter(|n| *n == "je_malloc").count(), 1);
    }

    #[test]
    fn an_object_without_libc_is_refused() {
        let not_elf = MappedObject {
            path: "/etc/hostname".into(),
            host_path: "/etc/hostname".into(),
        };
        let err = plan(&[not_elf], None).unwrap_err();
        assert!(
            matches!(err, PlanError::NoAllocator { searched: 1 }),
            "{err}"
        );
    }
}
