//! Allocation plumbing folded: a call site is shown at the first frame outside it, and
//! stacks that differ only inside it are one site. Rust's is checked in rust_leaker.rs;
//! here a program's own wrapper, named by `--alloc-fn`, and the same run without it;
//! C++ containers that grow through libstdc++'s templates, and a C program that
//! allocates through Debian's GLib (no frame pointers in either), with no flag.

use leakbpf_tests::{
    CONTAINERS_GROWTH, GLIB_STRINGS, Report, Traced, WRAPPERS, require_root, sum, trace, trace_pid,
};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

const CALLERS: [&str; 2] = ["leak_through_wrapper_a", "leak_through_wrapper_b"];

fn at_site(report: &Report, function: &str) -> (u64, u64) {
    sum(report.sites_where(|site| site.site() == Some(function)))
}

#[test]
fn a_program_s_own_wrapper_named_by_alloc_fn_is_folded() {
    require_root();
    let run = trace_pid(
        LEAKBPF,
        WRAPPERS,
        &[],
        &["--top", "1000", "--alloc-fn", "app_*alloc"],
    );
    let report = run.final_report();
    for caller in CALLERS {
        let truth = run.truth.truth(caller);
        assert_eq!(
            at_site(report, caller),
            (truth.bytes, truth.count),
            "at {caller}:\n{}",
            report.describe()
        );
        let site = report
            .sites_where(|site| site.site() == Some(caller))
            .next()
            .expect("a site");
        assert_eq!(site.function(0), Some("app_xalloc"));
        assert!(site.frames[0].allocator && !site.frames[site.site_frame].allocator);
    }
    assert_eq!(at_site(report, "churn"), (0, 0), "{}", report.describe());
}

#[test]
fn without_alloc_fn_the_wrapper_is_the_site() {
    require_root();
    let run = trace_pid(LEAKBPF, WRAPPERS, &[], &["--top", "1000"]);
    let report = run.final_report();
    let (bytes, count) = CALLERS
        .iter()
        .map(|caller| run.truth.truth(caller))
        .fold((0, 0), |(b, c), t| (b + t.bytes, c + t.count));
    assert_eq!(
        at_site(report, "app_xalloc"),
        (bytes, count),
        "{}",
        report.describe()
    );
    // Still two call sites: the stacks differ past the wrapper.
    let sites = report
        .sites_where(|site| site.site() == Some("app_xalloc"))
        .count();
    assert_eq!(sites, 2, "{}", report.describe());
}

#[test]
fn cxx_container_growth_is_reported_at_the_function_that_grew_it() {
    require_root();
    for traced in [Traced::ByPid, Traced::FromSpawn] {
        let run = trace(
            LEAKBPF,
            traced,
            CONTAINERS_GROWTH,
            &[],
            &["--top", "1000"],
            &[],
        );
        let report = run.final_report();
        for (function, container) in [("leak_records", "std::vector"), ("leak_index", "std::map")] {
            let truth = run.truth.truth(function);
            let name = format!("{function}(unsigned long)");
            assert_eq!(
                at_site(report, &name),
                (truth.bytes, truth.count),
                "{traced:?}: the {container} and its object at {function}:\n{}",
                report.describe()
            );
            // Every frame above the site is the allocator's or the library's.
            for site in report.sites_where(|site| site.site() == Some(name.as_str())) {
                let folded = &site.frames[..site.site_frame];
                assert!(
                    folded.iter().all(|frame| frame.allocator),
                    "{traced:?}: {:?}",
                    site.frames
                );
            }
        }
        assert_eq!(
            at_site(report, "churn(unsigned long)"),
            (0, 0),
            "{}",
            report.describe()
        );
    }
}

#[test]
fn glib_allocations_are_reported_at_the_function_that_called_glib() {
    require_root();
    let run = trace_pid(LEAKBPF, GLIB_STRINGS, &[], &["--top", "1000"]);
    let report = run.final_report();
    for (function, through) in [
        ("leak_names", ["g_malloc", "g_strdup"].as_slice()),
        ("leak_buffers", ["g_malloc0"].as_slice()),
    ] {
        let truth = run.truth.truth(function);
        assert_eq!(
            at_site(report, function),
            (truth.bytes, truth.count),
            "through {through:?} at {function}:\n{}",
            report.describe()
        );
        for site in report.sites_where(|site| site.site() == Some(function)) {
            // Unwound through libglib's frames, which have no frame pointers: GLib's
            // functions, then the program's, then its main.
            let expected: Vec<&str> = through.iter().copied().chain([function, "main"]).collect();
            assert_eq!(site.chain_to("main"), Some(expected), "{:?}", site.names());
        }
    }
    assert_eq!(at_site(report, "churn"), (0, 0), "{}", report.describe());
}
