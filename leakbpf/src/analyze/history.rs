//! A process's report history: each report's call sites, ranked, the top ones with
//! what changed since the previous report.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::rank;
use crate::{
    kernel::{Counters, SiteState},
    snapshot::{Callsite, ProcessFacts, SCHEMA_VERSION, Snapshot, Totals},
    symbolize::Frame,
};

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
    pub process: ProcessFacts,
}

/// Builds successive snapshots of one process, remembering each site's figures for the
/// next growth.
#[derive(Default)]
pub struct History {
    previous: HashMap<u64, (u64, u64)>,
}

impl History {
    /// The snapshot of `sites`, the `top` largest first, with their frames from `frames`.
    pub fn build(
        &mut self,
        moment: Moment,
        mut sites: Vec<SiteState>,
        top: usize,
        frames: impl Fn(u64) -> Arc<[Frame]>,
    ) -> Snapshot {
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
        Snapshot {
            schema_version: SCHEMA_VERSION,
            timestamp: moment.timestamp,
            pid: moment.pid,
            report: moment.number,
            is_final: moment.is_final,
            interval_s: moment.interval.as_secs_f64(),
            process: moment.process,
            totals,
            counters: moment.counters,
            callsites,
        }
    }
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
            process: ProcessFacts::default(),
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
        let mut builder = History::default();
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
        let mut builder = History::default();
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
        let mut builder = History::default();
        let report = builder.build(moment(1), vec![site(0x1f, 10, 2)], 10, no_frames);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["schema_version"], SCHEMA_VERSION);
        assert_eq!(json["final"], false);
        assert_eq!(json["callsites"][0]["stack_id"], "0x1f");
        assert_eq!(json["callsites"][0]["average_size"], 5);
        assert_eq!(json["counters"]["dropped_allocations"], 0);
        assert_eq!(json["totals"]["outstanding_bytes"], 10);
    }
}
