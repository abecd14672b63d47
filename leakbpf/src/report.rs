//! A report: the top call sites by outstanding bytes at one moment, with what changed
//! since the previous report. Serialized as one JSON line (schema in the README).

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{
    kernel_maps::{Counters, SiteState},
    symbolizer::Frame,
};

/// Bumped on any change a consumer of the JSON lines would notice.
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub pid: u32,
    /// 1 for the first report of the run.
    pub report: u64,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub interval_s: f64,
    pub totals: Totals,
    pub counters: Counters,
    pub callsites: Vec<Callsite>,
}

/// Over every call site of the process, not only those shown.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Totals {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub callsites: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Callsite {
    pub rank: usize,
    #[serde(serialize_with = "hex")]
    pub stack_id: u64,
    pub bytes: u64,
    pub allocations: u64,
    pub average_size: u64,
    /// Age of the oldest outstanding allocation, in seconds.
    pub oldest_age_s: f64,
    /// Change since the previous report (all of it for the first).
    pub growth_bytes: i64,
    pub growth_allocations: i64,
    /// Innermost first: `frames[0]` is the function that called the allocator.
    pub frames: Arc<[Frame]>,
}

fn hex<S: serde::Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{value:#x}"))
}

/// What a report is made of, besides the sites.
pub struct Moment {
    pub pid: u32,
    pub number: u64,
    pub is_final: bool,
    pub interval: Duration,
    pub timestamp: String,
    /// CLOCK_BOOTTIME now, in the units of the allocation timestamps.
    pub now_ns: u64,
    pub counters: Counters,
}

/// Builds successive reports, remembering each site's figures for the next growth.
#[derive(Default)]
pub struct ReportBuilder {
    previous: HashMap<u64, (u64, u64)>,
}

impl ReportBuilder {
    /// The report of `sites`, the `top` largest first, with their frames from `frames`.
    pub fn build(
        &mut self,
        moment: Moment,
        mut sites: Vec<SiteState>,
        top: usize,
        frames: impl Fn(u64) -> Arc<[Frame]>,
    ) -> Report {
        let totals = Totals {
            outstanding_bytes: sites.iter().map(|s| s.bytes).sum(),
            outstanding_allocations: sites.iter().map(|s| s.allocations).sum(),
            callsites: sites.len() as u64,
        };
        rank(&mut sites);
        let callsites = sites
            .iter()
            .take(top)
            .enumerate()
            .map(|(index, site)| {
                let (bytes_before, allocations_before) = self
                    .previous
                    .get(&site.stack_id)
                    .copied()
                    .unwrap_or_default();
                Callsite {
                    rank: index + 1,
                    stack_id: site.stack_id,
                    bytes: site.bytes,
                    allocations: site.allocations,
                    average_size: site.bytes / site.allocations.max(1),
                    oldest_age_s: Duration::from_nanos(
                        moment.now_ns.saturating_sub(site.oldest_ns),
                    )
                    .as_secs_f64(),
                    growth_bytes: difference(site.bytes, bytes_before),
                    growth_allocations: difference(site.allocations, allocations_before),
                    frames: frames(site.stack_id),
                }
            })
            .collect();
        self.previous = sites
            .iter()
            .map(|s| (s.stack_id, (s.bytes, s.allocations)))
            .collect();
        Report {
            schema_version: SCHEMA_VERSION,
            timestamp: moment.timestamp,
            pid: moment.pid,
            report: moment.number,
            is_final: moment.is_final,
            interval_s: moment.interval.as_secs_f64(),
            totals,
            counters: moment.counters,
            callsites,
        }
    }
}

/// Orders call sites as reports show them: most outstanding bytes first.
pub fn rank(sites: &mut [SiteState]) {
    sites.sort_unstable_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.allocations.cmp(&a.allocations))
            .then(a.stack_id.cmp(&b.stack_id))
    });
}

fn difference(now: u64, before: u64) -> i64 {
    i64::try_from(i128::from(now) - i128::from(before)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moment(number: u64) -> Moment {
        Moment {
            pid: 42,
            number,
            is_final: false,
            interval: Duration::from_secs(5),
            timestamp: "2026-11-25T10:00:00Z".into(),
            now_ns: 10_000_000_000,
            counters: Counters::default(),
        }
    }

    fn site(stack_id: u64, bytes: u64, allocations: u64) -> SiteState {
        SiteState {
            stack_id,
            bytes,
            allocations,
            oldest_ns: 4_000_000_000,
        }
    }

    fn no_frames(_: u64) -> Arc<[Frame]> {
        Arc::from(Vec::new())
    }

    #[test]
    fn ranks_by_bytes_limits_to_top_and_totals_everything() {
        let mut builder = ReportBuilder::default();
        let report = builder.build(
            moment(1),
            vec![site(1, 100, 1), site(2, 300, 3), site(3, 200, 4)],
            2,
            no_frames,
        );
        let ids: Vec<u64> = report.callsites.iter().map(|c| c.stack_id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(report.callsites[1].rank, 2);
        assert_eq!(report.callsites[1].average_size, 50);
        assert_eq!(report.totals.outstanding_bytes, 600);
        assert_eq!(report.totals.outstanding_allocations, 8);
        assert_eq!(report.totals.callsites, 3);
        assert_eq!(report.callsites[0].oldest_age_s, 6.0);
    }

    #[test]
    fn growth_is_against_the_previous_report() {
        let mut builder = ReportBuilder::default();
        builder.build(
            moment(1),
            vec![site(1, 100, 1), site(2, 50, 5)],
            10,
            no_frames,
        );
        let report = builder.build(
            moment(2),
            vec![site(1, 40, 1), site(3, 7, 1)],
            10,
            no_frames,
        );
        let growth: Vec<(u64, i64, i64)> = report
            .callsites
            .iter()
            .map(|c| (c.stack_id, c.growth_bytes, c.growth_allocations))
            .collect();
        assert_eq!(growth, [(1, -60, 0), (3, 7, 1)]);
    }

    #[test]
    fn serializes_the_documented_fields() {
        let mut builder = ReportBuilder::default();
        let report = builder.build(moment(1), vec![site(0x1f, 10, 2)], 10, no_frames);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["schema_version"], 3);
        assert_eq!(json["final"], false);
        assert_eq!(json["callsites"][0]["stack_id"], "0x1f");
        assert_eq!(json["callsites"][0]["average_size"], 5);
        assert_eq!(json["counters"]["dropped_allocations"], 0);
        assert_eq!(json["counters"]["probe_errors"], 0);
        assert_eq!(json["counters"]["lost_events"], 0);
        assert_eq!(json["totals"]["outstanding_bytes"], 10);
    }
}
