//! A saved run (the JSON lines of `--format json --output FILE`) read back by
//! `leakbpf report FILE`: as JSON, it is the same run; as a table, it names the same
//! leaks; filters pick a process's or the final reports; bad files are one-line errors.

use std::fs;

use leakbpf_tests::{Agent, LEAKER, check_reports, parse_reports, require_root};
use tempfile::TempDir;

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// Traces the leaker from spawn, reporting every 200 ms into a file; returns the file's
/// text and the traced pid.
fn saved_run(dir: &TempDir) -> (std::path::PathBuf, String, u32) {
    let file = dir.path().join("run.ndjson");
    let output = file.to_string_lossy().into_owned();
    let agent = Agent::spawn(
        LEAKBPF,
        [
            "--format",
            "json",
            "--output",
            &output,
            "--interval",
            "200ms",
            "--top",
            "1000",
            "--",
            LEAKER,
        ],
    );
    agent.read_target_until_done("leaker");
    agent.wait().assert_success();
    let text = fs::read_to_string(&file).expect("the saved run");
    let reports = parse_reports(&text);
    let pid = reports.first().expect("a report").pid;
    check_reports(&reports, pid);
    (file, text, pid)
}

#[test]
fn a_saved_run_renders_again_as_json_and_as_a_table() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (file, text, pid) = saved_run(&dir);
    let file = file.to_string_lossy().into_owned();

    let json = Agent::spawn(LEAKBPF, ["report", "--format", "json", &file]).wait();
    json.assert_success();
    assert_eq!(
        json.stdout, text,
        "the JSON rendering is the saved run itself"
    );

    let final_only = Agent::spawn(
        LEAKBPF,
        [
            "report",
            "--format",
            "json",
            "--final-only",
            "--pid",
            &pid.to_string(),
            &file,
        ],
    )
    .wait();
    final_only.assert_success();
    let reports = parse_reports(&final_only.stdout);
    assert_eq!(reports.len(), 1);
    assert!(reports[0].is_final);
    assert_eq!(
        final_only.stdout.lines().collect::<Vec<_>>(),
        [text.lines().last().unwrap()]
    );

    let table = Agent::spawn(LEAKBPF, ["report", &file]).wait();
    table.assert_success();
    let last = parse_reports(&text).pop().unwrap();
    let header = format!("leakbpf report #{} (final) pid {pid}", last.report);
    assert!(
        table.stdout.contains(&header),
        "{header:?} in:\n{}",
        table.stdout
    );
    for site in last.callsites.iter().take(5) {
        let function = site.frames[0].function.clone().unwrap_or_default();
        assert!(
            table.stdout.contains(&function),
            "{function} is in the saved run but not in its table:\n{}",
            table.stdout
        );
    }
    assert_eq!(
        table.stdout.matches("leakbpf report #").count(),
        parse_reports(&text).len(),
        "one table per saved report"
    );
}

#[test]
fn bad_saved_runs_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("missing.ndjson");
    let garbage = dir.path().join("garbage.ndjson");
    fs::write(&garbage, "{\"schema_version\":4}\nnot json\n").unwrap();
    let older = dir.path().join("older.ndjson");
    fs::write(&older, "{\"schema_version\":2,\"pid\":1}\n").unwrap();
    for (file, says) in [
        (&missing, "cannot open"),
        (&garbage, "line 1"),
        (&older, "schema version 2"),
    ] {
        let finished = Agent::spawn(LEAKBPF, ["report".as_ref(), file.as_os_str()]).wait();
        let error = finished.assert_error();
        assert!(error.contains(says), "{says:?} in {error:?}");
    }
}
