//! valgrind's memcheck as a second opinion on a program's leaks: run to its end under
//! valgrind, its loss records read back (bytes, blocks, the stack's functions), to put
//! next to leakbpf's call sites for the same binary doing the same work.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use crate::{
    kernel::find_program,
    report::{Callsite, short_name, strip_rust_hash},
};

/// A function valgrind could not name: `???`, as leakbpf's frames without a name.
pub const UNNAMED: &str = "?";

/// One of valgrind's loss records: its bytes, its blocks, and the functions of its stack
/// past valgrind's own allocator, innermost first, by their short names ([`UNNAMED`]
/// where it has none).
#[derive(Debug)]
pub struct LossRecord {
    pub bytes: u64,
    pub blocks: u64,
    pub functions: Vec<String>,
}

/// `program args` run to its end under valgrind's memcheck, every leak kind reported,
/// with `input` on its standard input.
pub fn run(program: &str, args: &[&str], input: &str) -> Vec<LossRecord> {
    let valgrind = find_program("valgrind")
        .unwrap_or_else(|| panic!("valgrind is not installed: `apt-get install valgrind`"));
    let mut child = Command::new(valgrind)
        .args([
            "--leak-check=full",
            "--show-leak-kinds=all",
            "--num-callers=50",
        ])
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run valgrind: {err}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input.as_bytes())
        .unwrap_or_else(|err| panic!("cannot feed {program} under valgrind: {err}"));
    drop(stdin);
    let output = child
        .wait_with_output()
        .unwrap_or_else(|err| panic!("cannot wait for valgrind: {err}"));
    assert!(
        output.status.success(),
        "valgrind {program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse(&String::from_utf8_lossy(&output.stderr))
}

/// The loss records of memcheck's report.
pub fn parse(text: &str) -> Vec<LossRecord> {
    let mut records: Vec<LossRecord> = Vec::new();
    let mut in_record = false;
    for line in text.lines() {
        // `==PID== ` then the message.
        let message = line.split_once("== ").map_or("", |(_, message)| message);
        if let Some((figures, _)) = message.split_once(" are ")
            && message.contains(" in loss record ")
        {
            let number = |text: &str| text.replace(',', "").parse::<u64>().ok();
            let words: Vec<&str> = figures.split_whitespace().collect();
            // `1,234 bytes in 5 blocks`, or `1,234 (1,000 direct, 234 indirect) bytes in 5
            // blocks`.
            let bytes = words.first().and_then(|w| number(w));
            let blocks = words
                .iter()
                .position(|&w| w == "in")
                .and_then(|at| words.get(at + 1))
                .and_then(|w| number(w));
            if let (Some(bytes), Some(blocks)) = (bytes, blocks) {
                records.push(LossRecord {
                    bytes,
                    blocks,
                    functions: Vec::new(),
                });
                in_record = true;
            }
            continue;
        }
        let frame = message.trim_start();
        if !in_record || !(frame.starts_with("at ") || frame.starts_with("by ")) {
            in_record = in_record && !frame.is_empty();
            continue;
        }
        // `by 0x10DFFE: ChatRoom::addUser(User&) (chat_server.cpp:188)`: the function
        // is what lies between the address and the last parenthesis.
        let Some((_, described)) = frame.split_once(": ") else {
            continue;
        };
        if described.contains("/valgrind/") {
            continue;
        }
        let function = described
            .rsplit_once(" (")
            .map_or(described, |(function, _)| function);
        let function = match function.trim() {
            "???" => UNNAMED,
            named => short_name(strip_rust_hash(named)),
        };
        if let Some(record) = records.last_mut() {
            record.functions.push(function.to_owned());
        }
    }
    records
}

/// A call site's functions, innermost first, as [`LossRecord::functions`] has them.
pub fn functions(site: &Callsite) -> Vec<&str> {
    site.frames
        .iter()
        .map(|frame| frame.name().map_or(UNNAMED, short_name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memcheck_s_loss_records() {
        let text = "\
==9304== 9,200 bytes in 50 blocks are definitely lost in loss record 1 of 2
==9304==    at 0x4841F2F: operator new(unsigned long) (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)
==9304==    by 0x10DD71: EventManager::subscribe(std::function<void (Message const&)>) (chat_server.cpp:117)
==9304==    by 0x10DFFE: ???  (in /usr/bin/chat)
==9304==    by 0x10AC1C: main (chat_server.cpp:345)
==9304== 
==9304== 52,385 (8,325 direct, 44,060 indirect) bytes in 30 blocks are definitely lost in loss record 2 of 2
==9304==    at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)
==9304==    by 0x1FF145: Perl_safesysmalloc (in /usr/bin/perl)
==9304== 
==9304== LEAK SUMMARY:
==9304==    definitely lost: 9,200 bytes in 50 blocks
";
        let records = parse(text);
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!((records[0].bytes, records[0].blocks), (9200, 50));
        assert_eq!(
            records[0].functions,
            ["EventManager::subscribe", UNNAMED, "main"]
        );
        assert_eq!((records[1].bytes, records[1].blocks), (52385, 30));
        assert_eq!(records[1].functions, ["Perl_safesysmalloc"]);
    }
}
