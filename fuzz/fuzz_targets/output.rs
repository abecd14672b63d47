//! Names from the target (function, module and source file names in its symbols) in a
//! report: the table shows them with no control character, so nothing in a name can
//! drive the terminal or forge a line; the JSON line parses back to the same names.

#![no_main]

use std::sync::Arc;

use leakbpf::{
    Counters,
    output::table,
    snapshot::{Callsite, Pattern, ProcessFacts, Snapshot, Totals, Trend, Verdict},
    symbolize::Frame,
};
use libfuzzer_sys::fuzz_target;

/// A report of one call site whose frames carry the names: one frame shows its source
/// file, the other its module, so every name reaches the table.
fn report(function: &str, module: &str, file: &str) -> Snapshot {
    let frame = |file: Option<&str>| Frame {
        address: 0x55d0_c0de_1b2f,
        function: Some(function.to_owned()),
        module: Some(module.to_owned()),
        offset: Some(0x1b2e),
        build_id: Some("5ac1e4f0".to_owned()),
        file: file.map(str::to_owned),
        line: Some(7),
        inlined: false,
        allocator: false,
    };
    Snapshot {
        schema_version: leakbpf::snapshot::SCHEMA_VERSION,
        timestamp: "2026-11-25T10:33:07.412Z".to_owned(),
        pid: 1,
        report: 1,
        is_final: true,
        interval_s: 1.0,
        process: ProcessFacts::default(),
        memory: None,
        totals: Totals {
            outstanding_bytes: 72,
            outstanding_allocations: 1,
            callsites: 1,
            leak_callsites: 1,
            suspect_callsites: 0,
        },
        counters: Counters::default(),
        suppressed: Vec::new(),
        callsites: vec![Callsite {
            rank: 1,
            stack_id: 1,
            bytes: 72,
            allocations: 1,
            average_size: 72,
            oldest_age_s: Default::default(),
            growth_bytes: 72,
            growth_allocations: 1,
            trend: Trend {
                bytes_per_s: 72.0,
                allocations_per_s: 1.0,
                fit: 1.0,
                samples: 4,
                pattern: Pattern::SteadyGrowth,
                old_allocations: 1,
                old_after_s: 3.0,
                verdict: Verdict::Leak,
            },
            site_frame: 0,
            frames: Arc::from([frame(Some(file)), frame(None)]),
        }],
    }
}

fuzz_target!(|names: (Vec<u8>, Vec<u8>, Vec<u8>)| {
    // Names reach the report as Rust strings, lossily where they are not UTF-8.
    let function = String::from_utf8_lossy(&names.0);
    let module = String::from_utf8_lossy(&names.1);
    let file = String::from_utf8_lossy(&names.2);
    let report = report(&function, &module, &file);

    let text = table(&report, false);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in the table: {text:?}"
    );
    let plain = table(&self::report("f", "m", "s"), false);
    assert_eq!(
        text.lines().count(),
        plain.lines().count(),
        "a name added lines: {text:?}"
    );

    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains('\n'), "not one line: {json:?}");
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    for frame in parsed["callsites"][0]["frames"].as_array().unwrap() {
        assert_eq!(frame["function"].as_str(), Some(&*function));
        assert_eq!(frame["module"].as_str(), Some(&*module));
    }
    assert_eq!(
        parsed["callsites"][0]["frames"][0]["file"].as_str(),
        Some(&*file)
    );
});
