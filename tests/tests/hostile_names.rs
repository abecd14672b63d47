//! Functions whose names are hostile to whoever prints them (tests/targets/hostile_names.c):
//! 4,111 characters long, with control characters, with bytes that are not UTF-8. The
//! agent names what it can read, escapes what a terminal would obey, loses no other
//! frame's name to them, and keeps exact figures.

use leakbpf_tests::{
    Agent, Callsite, HOSTILE_NAMES, Target, TargetOutput, Truth, assert_churn_freed,
    assert_churn_frees_counted, assert_nothing_dropped, require_root, trace_pid,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// The name the Makefile patches into the program for the `control_chars` truth.
const CONTROL_NAME: &str = "leak_control_chars_\u{1}\u{1b}[2J\n\t";
/// The long name's length (hostile_names.c: a prefix and 256 times 16 characters).
const LONG_NAME_LEN: usize = "leak_long_name_".len() + 256 * 16;

/// The truth about the long-named function, whose name is its `function`.
fn long_truth(output: &TargetOutput) -> &Truth {
    let truth = output
        .truths
        .iter()
        .find(|truth| truth.function.starts_with("leak_long_name_"))
        .unwrap_or_else(|| panic!("no truth about the long name: {output:?}"));
    assert_eq!(truth.function.len(), LONG_NAME_LEN, "{}", truth.function);
    truth
}

/// Whether `text` holds a control character other than the line ends.
fn has_raw_control(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n')
}

#[test]
fn hostile_names_are_reported_as_json_with_exact_figures() {
    require_root();
    let run = trace_pid(LEAKBPF, HOSTILE_NAMES, &[], &["--top", "1000"]);
    let report = run.final_report();
    assert!(
        !has_raw_control(&run.finished.stdout),
        "JSON escapes every control character"
    );

    let long = long_truth(&run.truth);
    for (name, truth) in [
        (long.function.as_str(), long),
        (CONTROL_NAME, run.truth.truth("control_chars")),
        ("leak_plain_name", run.truth.truth("leak_plain_name")),
    ] {
        assert_eq!(
            report.outstanding_at(name),
            (truth.bytes, truth.count),
            "(bytes, allocations) outstanding at {name:?}:\n{}",
            report.describe()
        );
    }

    // blazesym reads no name that is not UTF-8: that frame is its module and offset.
    let invalid = run.truth.truth("invalid_utf8");
    let unnamed: Vec<&Callsite> = report
        .sites_where(|site| {
            let first = &site.frames[0];
            first.function.is_none() && first.module.as_deref() == Some(HOSTILE_NAMES)
        })
        .collect();
    assert_eq!(unnamed.len(), 1, "{}", report.describe());
    assert!(unnamed[0].frames[0].offset.is_some());
    assert_eq!(
        (unnamed[0].bytes, unnamed[0].allocations),
        (invalid.bytes, invalid.count),
        "the site of the name that is not UTF-8:\n{}",
        report.describe()
    );

    // Every other frame keeps its name: each leaking function was called by main.
    for site in &report.callsites {
        assert_eq!(
            site.function(1),
            Some("main"),
            "a hostile name cost another frame its name:\n{}",
            report.describe()
        );
    }
    let truths = &run.truth.truths;
    assert_eq!(
        report.outstanding(),
        (
            truths.iter().map(|t| t.bytes).sum(),
            truths.iter().map(|t| t.count).sum()
        ),
        "attached after start-up, the report holds exactly the leaks:\n{}",
        report.describe()
    );
    assert_churn_freed(report);
    assert_churn_frees_counted(report, &run.truth, 100_000);
    assert_nothing_dropped(report);
}

/// A call site of the table: its bytes, its allocations, its frame lines (trimmed).
struct TableSite<'a> {
    bytes: u64,
    allocations: u64,
    frames: Vec<&'a str>,
}

/// The call sites of the table's last (final) report.
fn table_sites(table: &str) -> Vec<TableSite<'_>> {
    let last = table
        .rfind("leakbpf report #")
        .expect("the table has a report");
    let mut sites: Vec<TableSite<'_>> = Vec::new();
    for line in table[last..].lines().skip(1) {
        // Site lines are indented by 2, frames by 10.
        if line.starts_with("          ") {
            if let Some(site) = sites.last_mut() {
                site.frames.push(line.trim_start());
            }
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [rank, bytes, allocations, ..] = fields[..]
            && rank.parse::<u64>().is_ok()
        {
            sites.push(TableSite {
                bytes: bytes.parse().expect("bytes"),
                allocations: allocations.parse().expect("allocations"),
                frames: Vec::new(),
            });
        }
    }
    sites
}

#[test]
fn hostile_names_are_escaped_in_the_table_with_exact_figures() {
    require_root();
    let mut target = Target::start(HOSTILE_NAMES, &[]);
    let pid = target.pid().to_string();
    let agent = Agent::spawn(LEAKBPF, ["--pid", pid.as_str(), "--top", "1000"]);
    agent.wait_attached();
    target.go();
    let truth = target.read_until_done();
    target.finish();
    let finished = agent.wait();
    finished.assert_success();
    let table = &finished.stdout;
    assert!(
        !has_raw_control(table),
        "the table sends a control character to the terminal:\n{table:?}"
    );

    let sites = table_sites(table);
    let at = |first_frame: &str| -> (u64, u64) {
        let matching: Vec<&TableSite<'_>> = sites
            .iter()
            .filter(|site| {
                site.frames
                    .first()
                    .is_some_and(|f| f.starts_with(first_frame))
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one call site whose first frame is {first_frame:?}:\n{table}"
        );
        (matching[0].bytes, matching[0].allocations)
    };
    let long = long_truth(&truth);
    let control = truth.truth("control_chars");
    let invalid = truth.truth("invalid_utf8");
    let plain = truth.truth("leak_plain_name");
    // The frame line is the name, two spaces, the place: the long name is shown whole.
    assert_eq!(
        at(&format!("{}  ", long.function)),
        (long.bytes, long.count)
    );
    assert_eq!(
        at(&format!("{}  ", CONTROL_NAME.escape_debug())),
        (control.bytes, control.count)
    );
    assert_eq!(
        at(&format!("[unknown]  {HOSTILE_NAMES}+0x")),
        (invalid.bytes, invalid.count)
    );
    assert_eq!(at("leak_plain_name  "), (plain.bytes, plain.count));
}
