//! A loaded library whose section headers, DWARF or call frame information were broken
//! after linking, which the dynamic linker loads all the same (tests/targets/break_elf.py),
//! or which was built without unwind tables: the agent neither fails nor loses the names
//! of other objects' frames, names the library's frame as well as what is left of it
//! allows, walks the stack on through it when its unwind information allows (and cuts
//! it there, counted, when not: never a wrong frame), and keeps exact figures. One test
//! per way of breaking it.

use std::path::{Path, PathBuf};

use leakbpf_tests::{
    BROKEN_ELF, Frame, Traced, assert_churn_freed, assert_churn_frees_counted,
    assert_nothing_dropped, require_root, trace,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// What the library's frame, the allocator's direct caller, can be named with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    /// Name, file and line, from its DWARF.
    WithSource,
    /// Its name from the symbol table; no file or line, as the DWARF is unreadable.
    BySymbolTable,
    /// No name: without section headers there is no symbol table to read. Still its
    /// module and offset.
    Unnamed,
}

/// How the stack walk gets through the library's frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walked {
    /// On to the program's frames: its unwind information is there to read.
    Through,
    /// Not: it has none, or none that parses. The stack ends at its frame, cut.
    CutThere,
}

/// The copy of libbroken_elf.so broken by `how` (tests/targets/Makefile puts it there).
fn library(how: &str) -> PathBuf {
    Path::new(BROKEN_ELF)
        .with_file_name("broken_elf.libs")
        .join(how)
        .join("libbroken_elf.so")
}

/// Whether `frame` has a line in the source file `name`.
fn has_source(frame: &Frame, name: &str) -> bool {
    frame.file.as_deref().is_some_and(|f| f.ends_with(name)) && frame.line.is_some()
}

/// Traces broken_elf with the library broken by `how`, and checks the report.
fn check(how: &str, named: Named) {
    check_walked(how, named, Walked::Through);
}

/// As [`check`], the library's unwind information allowing the walk as `walked` says.
fn check_walked(how: &str, named: Named, walked: Walked) {
    require_root();
    let library = library(how);
    assert!(library.is_file(), "{} was not built", library.display());
    let dir = library
        .parent()
        .and_then(Path::to_str)
        .expect("a UTF-8 directory");
    let run = trace(
        LEAKBPF,
        Traced::ByPid,
        BROKEN_ELF,
        &[],
        &["--top", "1000"],
        &[("LD_LIBRARY_PATH", dir)],
    );
    let report = run.final_report();
    let truth = run.truth.truth("leak_through_library");

    assert_eq!(
        report.callsites.len(),
        1,
        "only the leak is outstanding:\n{}",
        report.describe()
    );
    let site = &report.callsites[0];
    assert_eq!(
        (site.bytes, site.allocations),
        (truth.bytes, truth.count),
        "(bytes, allocations) of the leak:\n{}",
        report.describe()
    );
    assert_eq!(report.outstanding(), (truth.bytes, truth.count));

    let first = &site.frames[0];
    assert_eq!(
        first.module.as_deref(),
        library.to_str(),
        "the allocator's caller is in the broken copy:\n{}",
        report.describe()
    );
    assert!(first.offset.is_some(), "{first:?}");
    let function = first.name();
    match named {
        Named::WithSource => {
            assert_eq!(function, Some("broken_lib_malloc"), "{first:?}");
            assert!(has_source(first, "broken_lib.c"), "{first:?}");
        }
        Named::BySymbolTable => {
            assert_eq!(function, Some("broken_lib_malloc"), "{first:?}");
            assert_eq!((&first.file, first.line), (&None, None), "{first:?}");
        }
        Named::Unnamed => assert_eq!(function, None, "{first:?}"),
    }
    match walked {
        Walked::Through => {
            // The program itself is intact: its frame keeps name, file and line.
            let caller = &site.frames[1];
            assert_eq!(
                caller.name(),
                Some("leak_through_library"),
                "the broken library cost the program's frame its name:\n{}",
                report.describe()
            );
            assert!(has_source(caller, "broken_elf.c"), "{caller:?}");
            assert_eq!(report.counters.truncated_stacks, 0, "{:?}", report.counters);
        }
        Walked::CutThere => {
            assert_eq!(
                site.frames.len(),
                1,
                "without unwind information for the library, its frame is the last:\n{}",
                report.describe()
            );
            // Each walk through the library was cut, and only those.
            assert_eq!(
                report.counters.truncated_stacks, truth.count,
                "{:?}",
                report.counters
            );
        }
    }

    assert_churn_freed(report);
    assert_churn_frees_counted(report, &run.truth, 100_000);
    assert_nothing_dropped(report);
}

#[test]
fn intact() {
    check("intact", Named::WithSource);
}

#[test]
fn debug_info_garbage() {
    check("debug_info_garbage", Named::BySymbolTable);
}

#[test]
fn debug_abbrev_garbage() {
    check("debug_abbrev_garbage", Named::BySymbolTable);
}

#[test]
fn debug_line_garbage() {
    check("debug_line_garbage", Named::BySymbolTable);
}

#[test]
fn debug_str_garbage() {
    check("debug_str_garbage", Named::BySymbolTable);
}

#[test]
fn debug_info_truncated() {
    check("debug_info_truncated", Named::BySymbolTable);
}

#[test]
fn section_headers_past_eof() {
    check("section_headers_past_eof", Named::Unnamed);
}

#[test]
fn section_headers_cut() {
    check("section_headers_cut", Named::Unnamed);
}

#[test]
fn section_names_garbage() {
    check("section_names_garbage", Named::Unnamed);
}

#[test]
fn no_section_name_table() {
    check("no_section_name_table", Named::Unnamed);
}

/// Built without unwind tables, but with debuggers' call frame information
/// (`.debug_frame`): the walk uses that.
#[test]
fn no_eh_frame() {
    check("no_eh_frame", Named::WithSource);
}

/// Built with no call frame information at all, nor DWARF.
#[test]
fn no_unwind_info() {
    check_walked("no_unwind_info", Named::BySymbolTable, Walked::CutThere);
}

#[test]
fn eh_frame_garbage() {
    check_walked("eh_frame_garbage", Named::WithSource, Walked::CutThere);
}
