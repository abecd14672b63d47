//! Stripped programs (strip --strip-all, frame pointers kept). With no debug file, a frame
//! in the program is its module and offset, and the offset is inside the right function;
//! with a debug file that blazesym reaches through the `.gnu_debuglink`, next to the
//! program or by build-id under /usr/lib/debug, or that a debuginfod server serves by
//! build-id, frames have their names and file:line.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use leakbpf_tests::{
    Report, STRIPPED, STRIPPED_BUILDID, STRIPPED_DEBUGLINK, STRIPPED_FULL, TargetOutput, Traced,
    assert_allocator_run, readers::DebuginfodServer, require_root, trace, trace_pid,
};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// stripped.c's leaking functions.
const FUNCTIONS: [&str; 2] = ["leak_malloc", "leak_calloc"];

#[test]
fn a_stripped_program_is_reported_by_module_and_offset() {
    require_root();
    let elf = Elf::read(STRIPPED);
    elf.assert_stripped();
    assert_eq!(elf.debug_link(), None, "{STRIPPED} has no debug link");

    let run = trace_pid(LEAKBPF, STRIPPED, &[], &["--top", "1000"]);
    let report = run.final_report();
    let module = real_path(STRIPPED);
    let symbols = Elf::read(STRIPPED_FULL);
    // Name the program's frames from the unstripped build's symbol table: the figures
    // then hold at a function only if every offset leakbpf gave is inside it.
    let mut named = report.clone();
    let frames = named.callsites.iter_mut().flat_map(|site| &mut site.frames);
    for frame in frames.filter(|frame| frame.module.as_deref() == Some(module.as_str())) {
        assert_eq!(
            (&frame.function, &frame.file),
            (&None, &None),
            "no name or source without symbols: {frame:?}"
        );
        let offset = frame
            .offset
            .as_deref()
            .expect("a module's frame has an offset");
        let offset = u64::from_str_radix(offset.trim_start_matches("0x"), 16)
            .unwrap_or_else(|err| panic!("offset {offset}: {err}"));
        let function = symbols.function_at(offset).unwrap_or_else(|| {
            panic!("offset {offset:#x} of {module} is in no function of {STRIPPED_FULL}")
        });
        frame.function = Some(function);
    }
    assert_allocator_run(&named, &run.truth, &FUNCTIONS, Traced::ByPid);
    assert_called_from_main(&named);
}

#[test]
fn a_debug_file_next_to_a_stripped_program_names_its_frames() {
    require_root();
    let elf = Elf::read(STRIPPED_DEBUGLINK);
    elf.assert_stripped();
    let debug_file = Path::new(STRIPPED_DEBUGLINK).with_extension("debug");
    assert_eq!(
        elf.debug_link().as_deref(),
        debug_file.file_name().and_then(|name| name.to_str()),
        "{STRIPPED_DEBUGLINK} links to its debug file"
    );
    assert!(debug_file.is_file(), "{} exists", debug_file.display());

    let run = trace_pid(LEAKBPF, STRIPPED_DEBUGLINK, &[], &["--top", "1000"]);
    assert_named(
        run.final_report(),
        &run.truth,
        STRIPPED_DEBUGLINK,
        Traced::ByPid,
    );
}

#[test]
fn a_debug_file_found_by_build_id_names_a_stripped_programs_frames() {
    require_root();
    let elf = Elf::read(STRIPPED_BUILDID);
    elf.assert_stripped();
    let build_id = elf.build_id();
    let (first, rest) = build_id.split_at(2);
    let name = format!("{rest}.debug");
    assert_eq!(
        elf.debug_link().as_deref(),
        Some(name.as_str()),
        "{STRIPPED_BUILDID} links to its debug file by its build-id's name"
    );
    let next_to_program = Path::new(STRIPPED_BUILDID).with_file_name(&name);
    assert!(
        !next_to_program.exists(),
        "only the build-id finds the debug file, not its name"
    );
    let built = PathBuf::from(format!("{STRIPPED_BUILDID}.build-id/{first}/{name}"));
    let _installed = Installed::copy(
        &built,
        &Path::new("/usr/lib/debug/.build-id")
            .join(first)
            .join(&name),
    );

    let run = trace_pid(LEAKBPF, STRIPPED_BUILDID, &[], &["--top", "1000"]);
    assert_named(
        run.final_report(),
        &run.truth,
        STRIPPED_BUILDID,
        Traced::ByPid,
    );
}

#[test]
fn a_stripped_programs_frames_are_named_through_debuginfod() {
    require_root();
    let elf = Elf::read(STRIPPED);
    elf.assert_stripped();
    let build_id = elf.build_id();
    assert_eq!(build_id, Elf::read(STRIPPED_FULL).build_id());
    let server = DebuginfodServer::serving(Path::new(STRIPPED_FULL), &build_id);
    let cache = tempfile::tempdir().expect("a cache directory");
    let cache_path = cache.path().to_str().expect("a UTF-8 path");

    // From spawn: leakbpf's environment is the one that names the server.
    let env = [
        ("DEBUGINFOD_URLS", server.url()),
        ("DEBUGINFOD_CACHE_PATH", cache_path),
    ];
    let run = trace(
        LEAKBPF,
        Traced::FromSpawn,
        STRIPPED,
        &[],
        &["--top", "1000"],
        &env,
    );
    assert_named(run.final_report(), &run.truth, STRIPPED, Traced::FromSpawn);
    // Cached where every debuginfod client looks first: the server's copy of the
    // unstripped build.
    let cached = cache.path().join(&build_id).join("debuginfo");
    let cached = fs::read(&cached).unwrap_or_else(|err| panic!("{}: {err}", cached.display()));
    assert!(
        cached == Elf::read(STRIPPED_FULL).data,
        "the cached debug file is {STRIPPED_FULL}"
    );
}

/// The allocator test's figures, by name, and each leaking function's frame has the file
/// and line of its allocating call (the target prints them), is in `program`, and was
/// called from `main`.
fn assert_named(report: &Report, output: &TargetOutput, program: &str, traced: Traced) {
    assert_allocator_run(report, output, &FUNCTIONS, traced);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/stripped.c");
    let module = real_path(program);
    for function in FUNCTIONS {
        let line = output.line_of(function);
        for site in report.sites_where(|site| site.function(0) == Some(function)) {
            let frame = &site.frames[0];
            assert_eq!(
                (frame.file.as_deref(), frame.line),
                (source.to_str(), Some(line)),
                "{function}'s allocating call, from the debug file:\n{}",
                report.describe()
            );
            assert_eq!(frame.module.as_deref(), Some(module.as_str()));
        }
    }
    assert_called_from_main(report);
}

/// Each leaking function's call sites continue with `main`: the frame-pointer walk goes
/// on through the stripped program.
fn assert_called_from_main(report: &Report) {
    for function in FUNCTIONS {
        for site in report.sites_where(|site| site.function(0) == Some(function)) {
            assert_eq!(
                site.function(1),
                Some("main"),
                "{function}'s caller:\n{}",
                report.describe()
            );
        }
    }
}

/// The path /proc/PID/maps names `program` by.
fn real_path(program: &str) -> String {
    fs::canonicalize(program)
        .unwrap_or_else(|err| panic!("{program}: {err}"))
        .display()
        .to_string()
}

/// A target's ELF file.
struct Elf {
    path: &'static str,
    data: Vec<u8>,
}

impl Elf {
    fn read(path: &'static str) -> Self {
        let data = fs::read(path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"));
        Self { path, data }
    }

    fn parse(&self) -> object::File<'_> {
        object::File::parse(&*self.data).unwrap_or_else(|err| panic!("{}: {err}", self.path))
    }

    /// Checks that it has neither a symbol table nor debug information of its own.
    fn assert_stripped(&self) {
        let file = self.parse();
        for section in [".symtab", ".debug_info", ".debug_line"] {
            assert!(
                file.section_by_name(section).is_none(),
                "{} is not stripped: it has {section}",
                self.path
            );
        }
    }

    /// The file name its `.gnu_debuglink` names.
    fn debug_link(&self) -> Option<String> {
        let link = self.parse().gnu_debuglink().expect(".gnu_debuglink");
        link.map(|(name, _crc)| String::from_utf8_lossy(name).into_owned())
    }

    /// Its build-id, in hex.
    fn build_id(&self) -> String {
        let id = self.parse().build_id().expect("the build-id note");
        let id = id.unwrap_or_else(|| panic!("{} has no build-id", self.path));
        id.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The function of its symbol table whose code holds file offset `offset`.
    fn function_at(&self, offset: u64) -> Option<String> {
        let file = self.parse();
        let address = file.segments().find_map(|segment| {
            let (start, size) = segment.file_range();
            (start..start + size)
                .contains(&offset)
                .then(|| segment.address() + (offset - start))
        })?;
        file.symbols()
            .filter(|symbol| symbol.kind() == SymbolKind::Text)
            .find(|symbol| (symbol.address()..symbol.address() + symbol.size()).contains(&address))
            .and_then(|symbol| symbol.name().ok().map(str::to_owned))
    }
}

/// A file copied into a system directory for one test: removed on drop, even when the
/// test fails, with the directories made for it.
struct Installed {
    path: Option<PathBuf>,
    made_dirs: Vec<PathBuf>,
}

impl Installed {
    fn copy(from: &Path, to: &Path) -> Self {
        let dir = to.parent().expect("a file in a directory");
        let mut installed = Self {
            path: None,
            made_dirs: dir
                .ancestors()
                .take_while(|dir| !dir.exists())
                .map(Path::to_path_buf)
                .collect(),
        };
        fs::create_dir_all(dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        let contents = fs::read(from).unwrap_or_else(|err| panic!("{}: {err}", from.display()));
        // Never overwrite, then remove, a file some package or other build put there; the
        // same contents can only be a killed run's of this build (its build-id is random).
        if fs::read(to).is_ok_and(|there| there == contents) {
            installed.path = Some(to.to_path_buf());
            return installed;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", to.display()));
        installed.path = Some(to.to_path_buf());
        file.write_all(&contents)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", to.display()));
        installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
        // Innermost first; one that is not empty stays.
        for dir in &self.made_dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}
