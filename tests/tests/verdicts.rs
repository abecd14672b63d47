//! Telling a leak from normal growth in one process running several patterns at once
//! (tests/targets/patterns.c): a steady leak at its true rate, a stepped leak, a cache
//! that fills then holds, a churn; RSS grown through mmap with a flat heap; the leak
//! check's exit status, with and without suppressions; the diff of the buggy and fixed
//! chat server.

use std::{fs, path::Path, process::Command};

use leakbpf_tests::{Agent, CHAT_SERVER, Finished, LEAKER, PATTERNS, require_root};
use serde_json::Value;

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// The exit status of a failed leak check.
const LEAK_FOUND: i32 = 3;

/// `leakbpf --format json --output DIR/NAME args -- target target_args`, to its end:
/// how it ended, its reports, and what the target printed.
fn run(dir: &Path, name: &str, args: &[&str], target: &[&str]) -> (Finished, Vec<Value>) {
    let output = dir.join(name);
    let mut command = Command::new(LEAKBPF);
    command
        .args(["--format", "json", "--output"])
        .arg(&output)
        .args(args)
        .arg("--")
        .args(target);
    let finished = Agent::spawn_command(&mut command).wait();
    finished.assert_no_panic();
    let reports = fs::read_to_string(&output)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON report"))
        .collect();
    (finished, reports)
}

/// The truth line the target printed for `function`.
fn truth(finished: &Finished, function: &str) -> Value {
    finished
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["truth"]["function"] == function)
        .map(|line| line["truth"].clone())
        .unwrap_or_else(|| panic!("no truth for {function}:\n{}", finished.stdout))
}

/// The call site whose first frame is `function`, in `report`.
fn site<'a>(report: &'a Value, function: &str) -> &'a Value {
    report["callsites"]
        .as_array()
        .expect("callsites")
        .iter()
        .find(|site| site["frames"][0]["function"] == function)
        .unwrap_or_else(|| panic!("no call site at {function} in {report}"))
}

fn final_report(reports: &[Value]) -> &Value {
    let last = reports.last().expect("no report");
    assert_eq!(last["final"], true, "the last report is the final one");
    last
}

#[test]
fn several_patterns_at_once_each_get_their_verdict() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let args = ["--interval", "1s", "--top", "100"];
    let (finished, reports) = run(dir.path(), "patterns.ndjson", &args, &[PATTERNS]);
    finished.assert_success();
    let report = final_report(&reports);

    let steady = site(report, "leak_steady");
    let truth_steady = truth(&finished, "leak_steady");
    assert_eq!(steady["bytes"], truth_steady["bytes"], "{steady}");
    assert_eq!(steady["trend"]["verdict"], "leak", "{steady}");
    assert_eq!(steady["trend"]["pattern"], "steady_growth", "{steady}");
    let rate = steady["trend"]["bytes_per_s"].as_f64().unwrap();
    let true_rate = truth_steady["bytes_per_s"].as_f64().unwrap();
    assert!(
        (rate - true_rate).abs() <= 0.1 * true_rate,
        "rate {rate} B/s, truly {true_rate}"
    );

    let stepped = site(report, "leak_stepped");
    assert_eq!(stepped["bytes"], truth(&finished, "leak_stepped")["bytes"]);
    assert_eq!(stepped["trend"]["pattern"], "stepped_growth", "{stepped}");
    assert_eq!(stepped["trend"]["verdict"], "leak", "{stepped}");

    let cache = site(report, "cache_put");
    assert_eq!(cache["bytes"], truth(&finished, "cache_put")["bytes"]);
    assert_eq!(cache["trend"]["pattern"], "grows_then_holds", "{cache}");
    assert_eq!(cache["trend"]["verdict"], "no_leak", "{cache}");

    // The churn frees within its tick: never outstanding long enough to be a leak.
    let churn = report["callsites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|site| site["frames"][0]["function"] == "churn");
    assert!(
        churn.is_none_or(|churn| churn["trend"]["verdict"] == "no_leak"),
        "{churn:?}"
    );
    assert_eq!(
        report["totals"]["leak_callsites"], 2,
        "{}",
        report["totals"]
    );

    // The same run as a table: verdict and rate columns, sorted by growth.
    let table = Agent::spawn(
        LEAKBPF,
        [
            "report".as_ref(),
            dir.path().join("patterns.ndjson").as_os_str(),
        ],
    )
    .wait();
    table.assert_success();
    assert!(table.stdout.contains("VERDICT") && table.stdout.contains("LEAK"));
}

#[test]
fn rss_grown_outside_malloc_is_said_to_be_elsewhere() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let args = ["--interval", "1s"];
    let target = [PATTERNS, "--mmap", "--seconds", "8"];
    let (finished, reports) = run(dir.path(), "mmap.ndjson", &args, &target);
    finished.assert_success();
    let memory = &final_report(&reports)["memory"];
    // 1 MiB every 100 ms.
    let rss_rate = memory["rss_bytes_per_s"].as_f64().expect("an RSS rate");
    assert!(
        (rss_rate - 10.0 * 1048576.0).abs() < 2.0 * 1048576.0,
        "{memory}"
    );
    assert!(memory["heap_bytes_per_s"].as_f64().unwrap().abs() < 64.0 * 1024.0);
    assert_eq!(memory["growth_elsewhere"], true, "{memory}");
}

#[test]
fn the_leak_check_fails_the_run_unless_suppressed() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let target = [PATTERNS, "--seconds", "8"];
    let gate = ["--interval", "1s", "--fail-on-leak"];
    let (failed, _) = run(dir.path(), "gate.ndjson", &gate, &target);
    assert_eq!(failed.status.code(), Some(LEAK_FOUND), "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains("leakbpf: leak check failed: leaking call sites: 2")
    );

    let suppressions = dir.path().join("known.supp");
    fs::write(
        &suppressions,
        "# known leaks\nleak:leak_steady\nleak:^leak_stepped$\n",
    )
    .unwrap();
    let suppressions = suppressions.to_string_lossy().into_owned();
    let mut suppressed_gate = gate.to_vec();
    suppressed_gate.extend(["--suppressions", &suppressions]);
    let (passed, reports) = run(dir.path(), "suppressed.ndjson", &suppressed_gate, &target);
    passed.assert_success();
    let report = final_report(&reports);
    let patterns: Vec<&str> = report["suppressed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(patterns, ["leak_steady", "^leak_stepped$"], "{report}");
    assert_eq!(report["totals"]["leak_callsites"], 0);
}

#[test]
fn the_outstanding_check_is_lsan_s_view_at_exit() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (plain, reports) = run(dir.path(), "plain.ndjson", &[], &[LEAKER]);
    plain.assert_success();
    let outstanding = final_report(&reports)["totals"]["outstanding_bytes"]
        .as_u64()
        .unwrap();
    for (limit, status) in [(outstanding - 1, LEAK_FOUND), (outstanding, 0)] {
        let limit = limit.to_string();
        let (finished, _) = run(
            dir.path(),
            &format!("limit-{limit}.ndjson"),
            &["--fail-on-outstanding", &limit],
            &[LEAKER],
        );
        assert_eq!(finished.status.code(), Some(status), "{}", finished.stderr);
    }
}

#[test]
fn the_diff_of_the_buggy_and_the_fixed_chat_server_shows_the_leak_gone() {
    require_root();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let args = ["--top", "1000"];
    let (buggy, _) = run(
        dir.path(),
        "buggy.ndjson",
        &args,
        &[CHAT_SERVER, "--duration", "2"],
    );
    buggy.assert_success();
    let (fixed, _) = run(
        dir.path(),
        "fixed.ndjson",
        &args,
        &[CHAT_SERVER, "--duration", "2", "--fixed"],
    );
    fixed.assert_success();
    let before = dir.path().join("buggy.ndjson");
    let after = dir.path().join("fixed.ndjson");
    let json = Agent::spawn(
        LEAKBPF,
        [
            "diff".as_ref(),
            "--format".as_ref(),
            "json".as_ref(),
            before.as_os_str(),
            after.as_os_str(),
        ],
    )
    .wait();
    json.assert_success();
    let diff: Value = serde_json::from_str(&json.stdout).expect("one JSON object");
    let gone = diff["callsites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|site| {
            site["frames"][0]["function"]
                .as_str()
                .is_some_and(|f| f.starts_with("EventManager::subscribe"))
        })
        .unwrap_or_else(|| panic!("EventManager::subscribe not in the diff: {diff}"));
    assert_eq!(gone["change"], "gone", "{gone}");
    let leaked = gone["before"]["bytes"].as_i64().unwrap();
    assert!(leaked > 0 && leaked % 184 == 0, "{gone}");
    assert_eq!(gone["bytes_change"].as_i64(), Some(-leaked));

    let table = Agent::spawn(
        LEAKBPF,
        ["diff".as_ref(), before.as_os_str(), after.as_os_str()],
    )
    .wait();
    table.assert_success();
    assert!(
        table
            .stdout
            .lines()
            .any(|line| line.trim_start().starts_with("gone")),
        "{}",
        table.stdout
    );
}
