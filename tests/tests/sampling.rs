//! `--sample-bytes`: a block of `size` bytes is recorded with probability
//! 1 − exp(−size/N), and the report's figures are estimates of the whole, with their
//! standard error. Against the target's exact truth: small blocks (each a small chance),
//! blocks of 8 to 16 KiB, and 1 MiB blocks (each recorded for sure), among a churn of
//! short-lived blocks that all go back.

use leakbpf_tests::{Callsite, Report, SAMPLING, Traced, require_root, trace};

const LEAKBPF: &str = env!("CARGO_BIN_EXE_leakbpf-under-test");

/// The mean gap between sample points: 64 KiB, against 64 MiB of 256-byte blocks, has
/// about a thousand of them recorded, a standard error of about 3%.
const MEAN: u64 = 65536;
const SMALL_SIZE: f64 = 256.0;

/// The call site whose site frame is `function`: one, with an estimate.
fn site<'a>(report: &'a Report, function: &str) -> &'a Callsite {
    let sites: Vec<&Callsite> = report
        .callsites
        .iter()
        .filter(|site| site.function(site.site_frame) == Some(function))
        .collect();
    match &sites[..] {
        [site] => site,
        _ => panic!("one call site at {function}:\n{}", report.describe()),
    }
}

#[test]
fn sampled_estimates_hold_the_truth_within_their_error() {
    require_root();
    let mean = MEAN.to_string();
    let run = trace(
        LEAKBPF,
        Traced::ByPid,
        SAMPLING,
        &["--rounds", "256"],
        &["--sample-bytes", &mean],
        &[],
    );
    let report = run.final_report();
    let sampling = report
        .sampling
        .unwrap_or_else(|| panic!("a sampled report says so:\n{}", report.describe()));
    assert_eq!(sampling.mean_bytes, MEAN);

    for function in ["leak_small", "leak_mixed", "leak_large"] {
        let truth = run.truth.truth(function);
        let site = site(report, function);
        let estimate = site
            .estimate
            .unwrap_or_else(|| panic!("{function}'s figures are estimates: {site:?}"));
        // Four standard errors: a failure once in 16,000 runs.
        for (what, ours, true_value, error) in [
            ("bytes", site.bytes, truth.bytes, estimate.bytes_error),
            (
                "allocations",
                site.allocations,
                truth.count,
                estimate.allocations_error,
            ),
        ] {
            assert!(
                ours.abs_diff(true_value) <= 4 * error + 1,
                "{function}: {ours} {what} estimated ±{error}, {true_value} true:\n{}",
                report.describe()
            );
        }
        assert!(
            estimate.sampled_allocations < truth.count || truth.count < 1000,
            "{function}: {} of its {} blocks recorded",
            estimate.sampled_allocations,
            truth.count
        );
    }

    // The small blocks: the error said is the error sampling has, √(bytes · N) for blocks
    // much smaller than N, and their recorded share is their chance.
    let small = run.truth.truth("leak_small");
    let estimate = site(report, "leak_small").estimate.expect("checked above");
    let expected_error = (small.bytes as f64 * MEAN as f64).sqrt();
    let said = estimate.bytes_error as f64 / expected_error;
    assert!(
        (0.8..1.25).contains(&said),
        "error said {said:.2} of its expected size"
    );
    let chance = -(-SMALL_SIZE / MEAN as f64).exp_m1();
    let recorded = estimate.sampled_allocations as f64 / (small.count as f64 * chance);
    assert!(
        (0.8..1.25).contains(&recorded),
        "{} small blocks recorded, {recorded:.2} of those expected",
        estimate.sampled_allocations
    );

    // A block much larger than N is always recorded: its figures are exact.
    let large = run.truth.truth("leak_large");
    let site_large = site(report, "leak_large");
    assert_eq!(site_large.allocations, large.count);
    assert!(site_large.bytes.abs_diff(large.bytes) <= large.count);

    // The churn left nothing; what was passed over was not stored, and its frees were
    // neither found nor counted as frees of unknown blocks.
    assert!(
        report
            .sites_where(|site| site.function(site.site_frame) == Some("churn"))
            .next()
            .is_none(),
        "the churn's blocks all went back:\n{}",
        report.describe()
    );
    let churn = run.truth.churn();
    let all = churn.frees + small.count + large.count + run.truth.truth("leak_mixed").count;
    assert!(
        report.counters.allocations * 20 < all,
        "{} of {all} allocations recorded",
        report.counters.allocations
    );
    assert_eq!(report.counters.unknown_frees, 0, "{}", report.describe());
    let recorded: u64 = report
        .callsites
        .iter()
        .filter_map(|site| site.estimate)
        .map(|estimate| estimate.sampled_allocations)
        .sum();
    assert_eq!(recorded, sampling.sampled_allocations);
}
