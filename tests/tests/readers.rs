//! leakbpf's outputs read by the real tools that read them, on the demo's chat server
//! (one leaked callback per join): `go tool pprof` reads the pprof profile, from a file
//! and from `--http`'s `/debug/pprof/heap`, and names the functions and bytes the table
//! names; a Prometheus server scrapes `/metrics` and its query API returns the report's
//! figures; promtool passes the exposition; headless Chromium draws the flame graph.
//! Network: 127.0.0.1 only.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::TcpListener,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use leakbpf_tests::{
    Agent, CHAT_SERVER, Report, Target, check_reports, parse_reports,
    readers::{
        Picture, PprofTop, Prometheus, TopRow, get, head, post, pprof_raw, pprof_top,
        promtool_check_metrics, rendered_dom, require_program, screenshot,
    },
    require_root,
};
use tempfile::TempDir;

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// The leaking function, as leakbpf names it.
const SUBSCRIBE: &str = "EventManager::subscribe(std::__cxx11::basic_string<char, \
                         std::char_traits<char>, std::allocator<char> > const&, \
                         std::function<void (Message const&)>)";

/// A name as `go tool pprof` shows it: leakbpf's, or, for an address no symbol covers,
/// the file it is in, bracketed (`[libstdc++.so.6.0.30]`).
fn pprof_name(function: Option<&str>, module: Option<&str>) -> String {
    match (function, module) {
        (Some(function), _) => function.to_owned(),
        (None, Some(module)) => format!("[{}]", module.rsplit('/').next().unwrap_or(module)),
        (None, None) => panic!("a frame without function or module"),
    }
}

/// A table's call sites: the bytes of each, and its first frame's function as pprof
/// names it.
fn table_sites(table: &str) -> Vec<(u64, String)> {
    let mut sites = Vec::new();
    let mut lines = table
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("RANK"))
        .skip(1);
    while let Some(line) = lines.next() {
        let indent = line.len() - line.trim_start().len();
        let columns: Vec<&str> = line.split_whitespace().collect();
        // Rank rows are indented less than the frames under them.
        if line.trim().is_empty() || indent >= 10 || columns[0].parse::<u64>().is_err() {
            continue;
        }
        let bytes = columns[1].parse().expect("the BYTES column");
        let frame = lines
            .by_ref()
            .find(|line| {
                let line = line.trim_start();
                !["LEAK:", "suspect:", "via "]
                    .iter()
                    .any(|evidence| line.starts_with(evidence))
            })
            .unwrap_or_else(|| panic!("no frame under {line:?}"));
        let (name, place) = frame
            .trim_start()
            .split_once("  ")
            .unwrap_or_else(|| panic!("no place in {frame:?}"));
        let (name, inlined) = match name.strip_suffix(" [inlined]") {
            Some(name) => (name, true),
            None => (name, false),
        };
        let module = place.rsplit_once("+0x").map_or(place, |(module, _)| module);
        let function = (name != "[unknown]").then_some(name);
        sites.push((
            bytes,
            pprof_label(pprof_name(function, Some(module)), inlined),
        ));
    }
    sites
}

/// Bytes per innermost function (what pprof's flat column sums), largest first.
fn flat_by_function(sites: impl IntoIterator<Item = (u64, String)>) -> Vec<(u64, String)> {
    let mut flat: BTreeMap<String, u64> = BTreeMap::new();
    for (bytes, function) in sites {
        *flat.entry(function).or_default() += bytes;
    }
    sorted(flat.into_iter().map(|(function, bytes)| (bytes, function)))
}

fn sorted(rows: impl IntoIterator<Item = (u64, String)>) -> Vec<(u64, String)> {
    let mut rows: Vec<(u64, String)> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    rows
}

/// pprof's functions that hold bytes themselves, largest first.
fn pprof_flat(top: &PprofTop) -> Vec<(u64, String)> {
    sorted(
        top.rows
            .iter()
            .filter(|row| row.flat > 0)
            .map(|TopRow { flat, function, .. }| (*flat, function.clone())),
    )
}

/// pprof's `-top` label of a function named `name`: marked when it is inlined into its
/// caller there.
fn pprof_label(name: String, inlined: bool) -> String {
    if inlined {
        format!("{name} (inline)")
    } else {
        name
    }
}

/// A report's call sites, as pprof would name the frames they are shown at.
fn report_sites(report: &Report) -> Vec<(u64, String)> {
    report
        .callsites
        .iter()
        .map(|site| {
            let frame = &site.frames[site.site_frame];
            let name = pprof_name(frame.function.as_deref(), frame.module.as_deref());
            (site.bytes, pprof_label(name, frame.inlined))
        })
        .collect()
}

/// The bytes of the row of `function` in pprof's output.
fn flat_of(top: &PprofTop, function: &str) -> u64 {
    top.rows
        .iter()
        .find(|row| row.function == function)
        .unwrap_or_else(|| panic!("no {function} in go tool pprof's output:\n{}", top.text))
        .flat
}

/// The build id of the ELF file at `path`, in hex.
fn build_id(path: &str) -> String {
    use object::Object;
    let data = fs::read(path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"));
    let file = object::File::parse(&*data).expect("an ELF file");
    let id = file
        .build_id()
        .expect("a readable note")
        .unwrap_or_else(|| panic!("{path} has no build id"));
    id.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn leakbpf(args: &[&str]) -> String {
    let finished = Agent::spawn(LEAKBPF, args).wait();
    finished.assert_success();
    finished.stdout
}

#[test]
fn a_saved_run_as_pprof_folded_and_svg_names_what_its_table_names() {
    require_root();
    // The readers first: a missing one fails before the run.
    require_program("go", "golang-go");
    require_program("chromium", "chromium");
    let dir = TempDir::new().expect("a temporary directory");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let run = path("run.ndjson");
    let agent = Agent::spawn(
        LEAKBPF,
        [
            "--format",
            "json",
            "--output",
            &run,
            "--interval",
            "500ms",
            "--top",
            "1000",
            "--",
            CHAT_SERVER,
            "--joins",
            "2000",
        ],
    );
    let truth = agent.read_target_until_done("chat_server");
    agent.wait().assert_success();
    let reports = parse_reports(&fs::read_to_string(&run).expect("the saved run"));
    let report = check_reports(&reports, reports[0].pid);
    let leaked = truth.truth("EventManager::subscribe").bytes;
    assert_eq!(
        report.outstanding_at(SUBSCRIBE).0,
        leaked,
        "{}",
        report.describe()
    );

    // go tool pprof names the functions and bytes the table names, every one of them
    // (--top 1000 left none out), and the same total.
    let table = leakbpf(&["report", "--final-only", &run]);
    let heap = path("heap.pb.gz");
    leakbpf(&["report", "--format", "pprof", "--output", &heap, &run]);
    let top = pprof_top(&heap);
    assert_eq!(
        pprof_flat(&top),
        flat_by_function(table_sites(&table)),
        "go tool pprof:\n{}\ntable:\n{table}",
        top.text
    );
    assert_eq!(top.total, report.totals.outstanding_bytes, "{}", top.text);
    assert_eq!(flat_of(&top, SUBSCRIBE), leaked);
    // The callers hold it all (cumulative), through the inlined simulate into main.
    for caller in ["ChatRoom::addUser(User&)", "simulate (inline)", "main"] {
        let row = top.rows.iter().find(|row| row.function == caller);
        assert!(
            row.is_some_and(|row| row.cum >= leaked),
            "{caller} does not hold the leak:\n{}",
            top.text
        );
    }
    // The program's mapping carries its file name and build id.
    let raw = pprof_raw(&heap);
    let mapping = raw
        .lines()
        .skip_while(|line| *line != "Mappings")
        .find(|line| line.contains(&format!(" {CHAT_SERVER} ")))
        .unwrap_or_else(|| panic!("no mapping of {CHAT_SERVER}:\n{raw}"));
    assert!(mapping.contains(&build_id(CHAT_SERVER)), "{mapping}");

    // Folded stacks: outermost frame first, one line per call site, bytes last.
    let folded = leakbpf(&["report", "--format", "folded", &run]);
    let subscribe = report
        .sites_where(|site| site.site() == Some(SUBSCRIBE))
        .next()
        .expect("the leaking call site");
    let stack: Vec<&str> = subscribe.frames[subscribe.site_frame..]
        .iter()
        .rev()
        .map(|frame| frame.function.as_deref().expect("named frames"))
        .collect();
    let line = format!("{} {}", stack.join(";"), subscribe.bytes);
    assert!(
        folded.lines().any(|l| l == line),
        "{line:?} is not in:\n{folded}"
    );
    let total: u64 = folded
        .lines()
        .map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .expect("BYTES")
        })
        .sum();
    assert_eq!(total, report.totals.outstanding_bytes, "{folded}");
    assert_eq!(folded.lines().count(), report.callsites.len());

    // The flame graph, drawn by a browser: a picture, not a blank page, whose text names
    // the process, its total and the leaking function and its callers.
    let svg = path("heap.svg");
    fs::write(&svg, leakbpf(&["report", "--format", "svg", &run])).expect("writing the SVG");
    let png = dir.path().join("heap.png");
    screenshot(Path::new(&svg), &png, 1200, 300);
    let picture = Picture::read(&png);
    assert_eq!((picture.width, picture.height), (1200, 300));
    assert!(
        picture.colored_share() > 0.15 && picture.colors() > 20,
        "the screenshot looks blank: {:.1}% in colour, {} colours",
        picture.colored_share() * 100.0,
        picture.colors()
    );
    let dom = rendered_dom(Path::new(&svg));
    let title = format!(
        "leakbpf: chat_server (pid {}), {} B outstanding",
        report.pid, report.totals.outstanding_bytes
    );
    for text in [
        title.as_str(),
        ">EventManager::subscribe(std::",
        ">ChatRoom::addUser(User&amp;) <",
        ">main <",
    ] {
        assert!(
            dom.contains(text),
            "{text:?} is not in the drawn page:\n{dom}"
        );
    }
}

#[test]
fn a_pprof_profile_per_report_from_a_file_name_template() {
    require_root();
    require_program("go", "golang-go");
    let dir = TempDir::new().expect("a temporary directory");
    let template = dir.path().join("heap-{n}.pb.gz");
    let agent = Agent::spawn(
        LEAKBPF,
        [
            "--format".as_ref(),
            "pprof".as_ref(),
            "--output".as_ref(),
            template.as_os_str(),
            "--interval".as_ref(),
            "300ms".as_ref(),
            "--".as_ref(),
            CHAT_SERVER.as_ref(),
            "--duration".as_ref(),
            "2".as_ref(),
        ],
    );
    let truth = agent.read_target_until_done("chat_server");
    let finished = agent.wait();
    finished.assert_success();
    assert_eq!(finished.stdout.matches("leakbpf report").count(), 0);
    let numbers: BTreeSet<u64> = fs::read_dir(dir.path())
        .expect("the output directory")
        .map(|entry| {
            let name = entry
                .expect("an entry")
                .file_name()
                .into_string()
                .expect("UTF-8");
            let number = name
                .strip_prefix("heap-")
                .and_then(|n| n.strip_suffix(".pb.gz"));
            number
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name} is not heap-N.pb.gz"))
        })
        .collect();
    let last = *numbers.last().expect("no profile written");
    assert!(last >= 3, "only {last} reports in 2 s at 300 ms");
    assert_eq!(
        numbers,
        (1..=last).collect(),
        "one file per report, numbered from 1"
    );
    // The last is the final report, at the command's exit: the whole leak.
    let final_profile = dir.path().join(format!("heap-{last}.pb.gz"));
    let top = pprof_top(&final_profile.to_string_lossy());
    assert!(
        top.text
            .contains(&format!("leakbpf report #{last} (final)")),
        "{}",
        top.text
    );
    assert_eq!(
        flat_of(&top, SUBSCRIBE),
        truth.truth("EventManager::subscribe").bytes
    );
}

/// The first line on leakbpf's stderr that says where it serves: its base URL.
fn served_at(agent: &Agent) -> String {
    let line = agent.wait_for_stderr("the --http address", |line| {
        line.starts_with("leakbpf: serving http://")
    });
    let url = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    url.to_owned()
}

/// The latest report `--http` serves, once it satisfies `found`.
fn served_report(base: &str, what: &str, mut found: impl FnMut(&Report) -> bool) -> Report {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = get(&format!("{base}/report.json"));
        if response.status == 200 {
            let reports = parse_reports(&response.text());
            assert_eq!(reports.len(), 1, "one traced process, one report");
            if found(&reports[0]) {
                return reports[0].clone();
            }
        } else {
            assert_eq!(
                response.status, 503,
                "before the first report: {response:?}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "/report.json never served {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn http_serves_prometheus_pprof_and_the_flame_graph_while_tracing() {
    require_root();
    require_program("go", "golang-go");
    require_program("prometheus", "prometheus");
    require_program("promtool", "prometheus");
    let dir = TempDir::new().expect("a temporary directory");
    let profile = dir.path().join("final.pb.gz");
    let mut target = Target::start(CHAT_SERVER, &["--duration", "3"]);
    let pid = target.pid();
    let agent = Agent::spawn(
        LEAKBPF,
        [
            "--pid".as_ref(),
            pid.to_string().as_ref(),
            "--interval".as_ref(),
            "200ms".as_ref(),
            "--top".as_ref(),
            "1000".as_ref(),
            "--format".as_ref(),
            "pprof".as_ref(),
            "--output".as_ref(),
            profile.as_os_str(),
            "--http".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
    );
    let base = served_at(&agent);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    agent.wait_attached();
    target.go();

    // 20 clients scraping at once while the reports come, every 200 ms: every scrape
    // answered, and they saw several reports go by.
    served_report(&base, "a first report", |_| true);
    let scraped: Vec<BTreeSet<String>> = thread::scope(|scope| {
        let clients: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    let mut times = BTreeSet::new();
                    for _ in 0..10 {
                        let response = get(&format!("{base}/metrics"));
                        assert_eq!(response.status, 200, "{response:?}");
                        let text = response.text();
                        let time = text
                            .lines()
                            .find(|line| line.starts_with("leakbpf_report_timestamp_seconds{"))
                            .unwrap_or_else(|| panic!("no report time in:\n{text}"));
                        times.insert(time.to_owned());
                        thread::sleep(Duration::from_millis(50));
                    }
                    times
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|client| client.join().expect("a scraping client"))
            .collect()
    });
    let reports_seen: BTreeSet<&String> = scraped.iter().flatten().collect();
    assert!(
        reports_seen.len() >= 2,
        "200 scrapes over at least 0.5 s saw one report: {reports_seen:?}"
    );

    // Once the target is done, it holds its leak and allocates nothing: every figure
    // served from then on is the same.
    let truth = target.read_until_done();
    let leaked = truth.truth("EventManager::subscribe").bytes;
    let report = served_report(&base, "the whole leak", |report| {
        report.outstanding_at(SUBSCRIBE).0 == leaked
    });
    assert_eq!(
        fs::metadata(&profile)
            .expect("--output is created at start")
            .len(),
        0,
        "a pprof --output without {{n}} holds the final report only, written at the end"
    );

    // go tool pprof, at Go's net/http/pprof path.
    let top = pprof_top(&format!("{base}/debug/pprof/heap"));
    assert_eq!(
        pprof_flat(&top),
        flat_by_function(report_sites(&report)),
        "{}\n{}",
        top.text,
        report.describe()
    );
    assert_eq!(flat_of(&top, SUBSCRIBE), leaked);

    // The exposition passes promtool, and a Prometheus server that scrapes it returns
    // the report's figures.
    let metrics = get(&format!("{base}/metrics"));
    assert_eq!(
        metrics.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    promtool_check_metrics(&metrics.text())
        .unwrap_or_else(|problems| panic!("promtool: {problems}\n{}", metrics.text()));
    let target_address = base.trim_start_matches("http://");
    let prometheus = Prometheus::start("leakbpf", target_address);
    let value = |query: &str| -> f64 {
        prometheus.wait(&format!("a value for {query}"), || {
            let samples = prometheus.query(query);
            match &samples[..] {
                [] => None,
                [sample] => Some(sample.value),
                _ => panic!("{query}: several series: {samples:?}"),
            }
        })
    };
    assert_eq!(value(r#"up{job="leakbpf"}"#), 1.0);
    let labels = format!(r#"pid="{pid}",command="chat_server""#);
    for (metric, expected) in [
        ("leakbpf_outstanding_bytes", report.totals.outstanding_bytes),
        (
            "leakbpf_outstanding_allocations",
            report.totals.outstanding_allocations,
        ),
        ("leakbpf_callsites", report.totals.callsites),
        ("leakbpf_allocations_total", report.counters.allocations),
        ("leakbpf_frees_total", report.counters.frees),
        (
            "leakbpf_stack_failures_total",
            report.counters.stack_failures,
        ),
    ] {
        assert_eq!(
            value(&format!("{metric}{{{labels}}}")),
            expected as f64,
            "{metric}"
        );
    }
    let site = format!(
        r#"leakbpf_callsite_outstanding_bytes{{{labels},function="{}"}}"#,
        SUBSCRIBE.replace('"', "\\\"")
    );
    assert_eq!(value(&site), leaked as f64);
    assert!(value(r#"process_resident_memory_bytes{job="leakbpf"}"#) > 1e6);
    assert!(value(r#"process_cpu_seconds_total{job="leakbpf"}"#) > 0.0);

    // The flame graph; what is not served, and what is not asked politely.
    let svg = get(&format!("{base}/flamegraph.svg"));
    assert_eq!(
        (svg.status, svg.content_type.as_str()),
        (200, "image/svg+xml")
    );
    assert!(
        svg.text().contains("EventManager::subscribe("),
        "{}",
        svg.text()
    );
    assert_eq!(get(&format!("{base}/debug/pprof/profile")).status, 404);
    let posted = post(&format!("{base}/metrics"));
    assert_eq!(
        (posted.status, posted.allow.as_deref()),
        (405, Some("GET, HEAD"))
    );
    let headed = head(&format!("{base}/report.json"));
    assert_eq!((headed.status, headed.body.len()), (200, 0));

    // At the end, the final report in the profile written to --output.
    drop(prometheus);
    target.finish();
    agent.wait().assert_success();
    let top = pprof_top(&profile.to_string_lossy());
    assert!(top.text.contains("(final)"), "{}", top.text);
    assert_eq!(flat_of(&top, SUBSCRIBE), leaked);
}

#[test]
fn a_port_in_use_is_a_one_line_error_before_anything_is_attached() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("its address").port();
    let target = Target::start(CHAT_SERVER, &[]);
    let finished = Agent::spawn(
        LEAKBPF,
        [
            "--pid",
            &target.pid().to_string(),
            "--http",
            &format!(":{port}"),
        ],
    )
    .wait();
    let error = finished.assert_error();
    assert!(
        error.contains(&format!("cannot listen on 127.0.0.1:{port}")) && error.contains("in use"),
        "{error}"
    );
    assert!(!finished.stderr.contains("attached"), "{}", finished.stderr);
}

#[test]
fn a_binary_format_is_not_written_to_a_terminal() {
    // `script` gives the command a terminal for its standard output.
    let script = require_program("script", "bsdutils");
    let dir = TempDir::new().expect("a temporary directory");
    let readme = include_str!("../../README.md");
    let (_, block) = readme
        .split_once("```json\n")
        .expect("the README's JSON line");
    let (line, _) = block.split_once('\n').expect("one line");
    let run = dir.path().join("run.ndjson");
    fs::write(&run, format!("{line}\n")).expect("writing the saved run");
    let command = format!("{LEAKBPF} report --format pprof {}", run.display());
    let output = Command::new(script)
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .output()
        .expect("running script");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains(
            "leakbpf: error: --format pprof is binary: refusing to write it to a terminal"
        ),
        "{text}"
    );
    // Into a pipe, the same is written: a gzip stream.
    let piped = Command::new(LEAKBPF)
        .args(["report", "--format", "pprof"])
        .arg(&run)
        .output()
        .expect("running leakbpf");
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(piped.stdout[..2], [0x1f, 0x8b], "gzip's magic number");
}
