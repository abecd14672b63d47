//! An object file from the target (any file it maps, or a container's): the functions
//! leakbpf probes, their file offsets and first bytes, the interpreter, the dependencies.

#![no_main]

use leakbpf::attach::{
    elf::{ElfObject, PROLOGUE_BYTES},
    placement::{Role, probe_offset},
};
use libfuzzer_sys::fuzz_target;

/// Names as the agent asks for them: C functions and mangled `operator new`.
const NAMES: &[&str] = &["malloc", "free", "calloc", "realloc", "_Znwm", "_ZdlPv"];

fuzz_target!(|data: &[u8]| {
    let object = ElfObject::from_bytes("fuzz-input".into(), data.to_vec());
    if let Ok(functions) = object.functions(NAMES) {
        for (name, function) in functions {
            assert!(
                NAMES.contains(&name.as_str()),
                "found {name:?}, not asked for"
            );
            let length = function.prologue.len();
            assert!(length as u64 <= PROLOGUE_BYTES);
            // The prologue is the file's bytes at the offset a uprobe is attached to.
            if length > 0 {
                let start = usize::try_from(function.file_offset).unwrap();
                assert_eq!(&data[start..start + length], &function.prologue[..]);
            }
            // What the agent does next with them.
            let offset = probe_offset(&function.prologue, Role::Entry);
            assert!(offset == 0 || offset < length as u64);
        }
    }
    // No panic is all there is to check: any answer, or an error, will do.
    let _ = object.interpreter();
    let _ = object.dependencies();
});
