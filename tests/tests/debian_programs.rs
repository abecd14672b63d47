//! Real programs from Debian's packages, built as Debian builds them (-O2, no frame
//! pointers, stripped: named by their dynamic symbol tables), whose allocations go
//! through wrappers: Perl's `Perl_safesysmalloc`, CPython's object allocator. Each runs
//! a known number of operations through its public interface (the language it
//! interprets) while traced by `--pid`, and leakbpf reports exactly the blocks they leave,
//! at call sites named through the wrapper down to the code that asked for the memory,
//! and on to `main`; valgrind, on the same binary doing the same work, reports the same
//! blocks at the same stacks. `cargo xtask setup` installs them (perl, python3).

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use leakbpf_tests::{
    Agent, Callsite, Report, check_reports, require_root,
    valgrind::{self, LossRecord},
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// A real program driven through stdin: it prints `ready`, waits for a line, works,
/// prints `done`, and waits for its stdin to close.
struct Program {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Program {
    fn start(program: &str, args: &[&str]) -> Self {
        assert!(
            Path::new(program).is_file(),
            "{program} is missing: install it (`cargo xtask setup` does)"
        );
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut program = Self {
            child,
            stdin,
            stdout,
        };
        program.expect("ready");
        program
    }

    fn expect(&mut self, word: &str) {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|err| panic!("cannot read the program's output: {err}"));
        assert_eq!(line.trim(), word, "the program said {line:?}");
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "go")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|err| panic!("cannot tell the program to go: {err}"));
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}

/// Runs `program args` traced by `leakbpf --pid`: attached once it is ready, its work
/// done, then leakbpf's final report, taken while the program still holds what its work
/// left (it exits once leakbpf is done).
fn traced(program: &str, args: &[&str]) -> Report {
    require_root();
    let mut target = Program::start(program, args);
    let pid = target.child.id();
    let agent = Agent::spawn(
        LEAKBPF,
        [
            "--pid",
            &pid.to_string(),
            "--format",
            "json",
            "--top",
            "1000",
            "--interval",
            "1h",
        ],
    );
    agent.wait_attached();
    target.go();
    target.expect("done");
    agent.signal(libc::SIGINT);
    let finished = agent.wait();
    finished.assert_success();
    check_reports(&finished.reports(), pid).clone()
}

/// The one call site `matches`.
fn one_site<'a>(report: &'a Report, matches: impl FnMut(&Callsite) -> bool + 'a) -> &'a Callsite {
    let sites: Vec<&Callsite> = report.sites_where(matches).collect();
    assert_eq!(
        sites.len(),
        1,
        "one call site expected:\n{}",
        report.describe()
    );
    sites[0]
}

/// `site` holds `count` blocks, its stack has `expected` in it, in order, up to the
/// outermost frame, no stack is cut, and valgrind reports the same blocks at the same
/// stack, up to `expected`'s last function (valgrind stops at `main`).
fn check(report: &Report, records: &[LossRecord], site: &Callsite, count: u64, expected: &[&str]) {
    assert_eq!(
        site.allocations,
        count,
        "{count} operations leave {count} blocks:\n{}",
        report.describe()
    );
    let names = valgrind::functions(site);
    let last = expected.last().expect("a chain has a last function");
    let end = names
        .iter()
        .position(|name| name == last)
        .unwrap_or_else(|| panic!("{last} is not in the stack: {names:?}"));
    let names = &names[..=end];
    let mut from = 0;
    for name in expected {
        let at = names[from..]
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name} is not in the stack, after {from}: {names:?}"));
        from += at + 1;
    }
    assert_eq!(
        report.counters.truncated_stacks, 0,
        "every stack reaches its outermost frame: {:?}",
        report.counters
    );
    let theirs: Vec<&LossRecord> = records
        .iter()
        .filter(|record| {
            record
                .functions
                .get(..=end)
                .is_some_and(|theirs| theirs == names)
        })
        .collect();
    assert_eq!(
        theirs
            .iter()
            .fold((0, 0), |(b, n), r| (b + r.bytes, n + r.blocks)),
        (site.bytes, site.allocations),
        "valgrind's records of the stack {names:?}: {records:?}"
    );
}

/// `perl`'s strings: each `push` copies a 1000-byte string into the array's new scalar,
/// whose buffer `Perl_sv_grow` asks `Perl_safesysmalloc` for; the site is shown past the
/// wrapper, at `Perl_sv_grow`.
#[test]
fn perl_strings_are_reported_at_sv_grow_through_safesysmalloc() {
    const PUSHES: u64 = 500;
    let script = format!(
        "$| = 1; print \"ready\\n\"; <STDIN>; push @kept, 'x' x 1000 for 1..{PUSHES}; \
         print \"done\\n\"; <STDIN>;"
    );
    let report = traced("/usr/bin/perl", &["-e", &script]);
    let records = valgrind::run("/usr/bin/perl", &["-e", &script], "go\n");
    let site = one_site(&report, |site| site.site() == Some("Perl_sv_grow"));
    check(
        &report,
        &records,
        site,
        PUSHES,
        &[
            "Perl_safesysmalloc",
            "Perl_sv_grow",
            "Perl_sv_setsv_flags",
            "Perl_pp_push",
            "Perl_runops_standard",
            "perl_run",
            "main",
        ],
    );
}

/// CPython's bytearrays: each one's buffer, past the object allocator (CPython's own
/// static functions, which a stripped binary does not name, so the site is shown
/// there), is asked for by `PyByteArray_Resize`, from the interpreter's loop. The script
/// ends with `os._exit`: the interpreter's finalization would free them before valgrind
/// counts what is left.
#[test]
fn python_bytearrays_are_reported_at_pybytearray_resize() {
    const BYTEARRAYS: u64 = 300;
    let script = format!(
        "import os, sys\nkept = []\nprint('ready', flush=True)\nsys.stdin.readline()\n\
         for i in range({BYTEARRAYS}): kept.append(bytearray(10000))\n\
         print('done', flush=True)\nsys.stdin.readline()\nos._exit(0)\n"
    );
    let report = traced("/usr/bin/python3.11", &["-c", &script]);
    let records = valgrind::run("/usr/bin/python3.11", &["-c", &script], "go\n");
    let site = one_site(&report, |site| {
        site.function(1) == Some("PyByteArray_Resize")
    });
    check(
        &report,
        &records,
        site,
        BYTEARRAYS,
        &[
            "PyByteArray_Resize",
            "_PyEval_EvalFrameDefault",
            "PyEval_EvalCode",
            "Py_RunMain",
            "Py_BytesMain",
        ],
    );
}
