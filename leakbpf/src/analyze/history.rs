//! A process's report history: each report's call sites with their trends, ranked, the
//! top ones with what changed since the previous report; and its memory next to them.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{
    Sort,
    suppressions::Suppressions,
    trend::{self, Sample},
};
use crate::{
    kernel::{Counters, Estimate, Sampling, SiteState},
    snapshot::{
        Callsite, Memory, ProcessFacts, SCHEMA_VERSION, Sampled, SiteEstimate, Snapshot,
        Suppressed, Totals, Trend, Verdict,
    },
    symbolize::Frame,
};

/// Intervals after which an outstanding block counts as old.
pub const OLD_AFTER_INTERVALS: u32 = 3;

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
    /// `VmRSS` and `RssAnon` in bytes, when the process could be read.
    pub rss: Option<(u64, u64)>,
    /// Only sampled allocations were recorded (`--sample-bytes`).
    pub sampling: Option<Sampling>,
}

/// A site's history: its samples, and its figures in the previous report.
#[derive(Default)]
struct Site {
    samples: trend::History,
    previous: (u64, u64),
}

/// The call sites of one report, with their trends, in the order it shows them.
pub struct Ranked {
    sites: Vec<(SiteState, Trend, (u64, u64))>,
}

/// Builds successive snapshots of one process.
#[derive(Default)]
pub struct History {
    sites: HashMap<u64, Site>,
    /// The process's RSS and its tracked heap, as samples.
    rss: trend::History,
    heap: trend::History,
    /// What the memory was when the process could last be read: after its exit, its
    /// final report still says.
    memory: Option<Memory>,
    started_ns: Option<u64>,
}

impl History {
    /// Adds this report's `sites` to their histories (forgetting those gone) and ranks
    /// them by `sort`.
    pub fn observe(
        &mut self,
        sites: Vec<SiteState>,
        now_ns: u64,
        interval: Duration,
        sort: Sort,
    ) -> Ranked {
        let time_s = self.time_s(now_ns);
        let old_after_s = (interval * OLD_AFTER_INTERVALS).as_secs_f64();
        let mut gone: HashMap<u64, Site> = std::mem::take(&mut self.sites);
        let mut ranked: Vec<(SiteState, Trend, (u64, u64))> = sites
            .into_iter()
            .map(|state| {
                let mut site = gone.remove(&state.stack_id).unwrap_or_default();
                site.samples.push(Sample {
                    time_s,
                    bytes: state.bytes,
                    allocations: state.allocations,
                    old_allocations: state.old_allocations,
                });
                let oldest_s =
                    Duration::from_nanos(now_ns.saturating_sub(state.oldest_ns)).as_secs_f64();
                let trend = site.samples.trend(old_after_s, oldest_s);
                let previous = site.previous;
                site.previous = (state.bytes, state.allocations);
                self.sites.insert(state.stack_id, site);
                (state, trend, previous)
            })
            .collect();
        ranked.sort_unstable_by(|(a, a_trend, _), (b, b_trend, _)| {
            let by_bytes = b
                .bytes
                .cmp(&a.bytes)
                .then(b.allocations.cmp(&a.allocations))
                .then(a.stack_id.cmp(&b.stack_id));
            match sort {
                Sort::Bytes => by_bytes,
                Sort::Growth => b_trend
                    .bytes_per_s
                    .total_cmp(&a_trend.bytes_per_s)
                    .then(by_bytes),
                Sort::Age => a.oldest_ns.cmp(&b.oldest_ns).then(by_bytes),
            }
        });
        Ranked { sites: ranked }
    }

    /// The snapshot of `ranked`: the `top` first not suppressed, with their frames from
    /// `frames`.
    pub fn snapshot(
        &mut self,
        moment: Moment,
        ranked: Ranked,
        top: usize,
        suppressions: &Suppressions,
        frames: impl Fn(u64) -> Arc<[Frame]>,
    ) -> Snapshot {
        let mut totals = Totals::default();
        let mut sampled = Estimate::default();
        let mut suppressed: Vec<Suppressed> = Vec::new();
        let mut callsites = Vec::new();
        for (state, trend, (bytes_before, allocations_before)) in ranked.sites {
            let site_frames = frames(state.stack_id);
            if let Some(pattern) = suppressions.matching(&site_frames) {
                let index = match suppressed.iter().position(|s| s.pattern == pattern) {
                    Some(index) => index,
                    None => {
                        suppressed.push(Suppressed {
                            pattern: pattern.to_owned(),
                            callsites: 0,
                            bytes: 0,
                            allocations: 0,
                        });
                        suppressed.len() - 1
                    }
                };
                let entry = &mut suppressed[index];
                entry.callsites += 1;
                entry.bytes += state.bytes;
                entry.allocations += state.allocations;
                continue;
            }
            if let Some(estimate) = &state.estimate {
                sampled.merge(estimate);
            }
            totals.outstanding_bytes += state.bytes;
            totals.outstanding_allocations += state.allocations;
            totals.callsites += 1;
            match trend.verdict {
                Verdict::Leak => totals.leak_callsites += 1,
                Verdict::Suspect => totals.suspect_callsites += 1,
                Verdict::NoLeak => {}
            }
            if callsites.len() < top {
                callsites.push(Callsite {
                    rank: callsites.len() + 1,
                    stack_id: state.stack_id,
                    bytes: state.bytes,
                    allocations: state.allocations,
                    average_size: state.bytes / state.allocations.max(1),
                    oldest_age_s: Duration::from_nanos(
                        moment.now_ns.saturating_sub(state.oldest_ns),
                    )
                    .as_secs_f64(),
                    growth_bytes: difference(state.bytes, bytes_before),
                    growth_allocations: difference(state.allocations, allocations_before),
                    trend,
                    site_frame: super::site_frame(&site_frames),
                    frames: site_frames,
                    estimate: state.estimate.as_ref().map(SiteEstimate::of),
                });
            }
        }
        // Suppressed or not, the heap is what RSS holds.
        let heap = totals.outstanding_bytes + suppressed.iter().map(|s| s.bytes).sum::<u64>();
        let memory = self.memory(&moment, heap);
        Snapshot {
            schema_version: SCHEMA_VERSION,
            timestamp: moment.timestamp,
            pid: moment.pid,
            report: moment.number,
            is_final: moment.is_final,
            interval_s: moment.interval.as_secs_f64(),
            process: moment.process,
            memory,
            totals,
            sampling: moment.sampling.map(|sampling| {
                let (bytes_error, allocations_error) = sampled.errors();
                Sampled {
                    mean_bytes: sampling.mean_bytes,
                    sampled_allocations: sampled.sampled,
                    bytes_error,
                    allocations_error,
                }
            }),
            counters: moment.counters,
            suppressed,
            callsites,
        }
    }

    /// The process's memory next to its heap of `heap_bytes`.
    fn memory(&mut self, moment: &Moment, heap_bytes: u64) -> Option<Memory> {
        let Some((rss_bytes, anon_rss_bytes)) = moment.rss else {
            return self.memory.clone();
        };
        let time_s = self.time_s(moment.now_ns);
        let sample = |bytes| Sample {
            time_s,
            bytes,
            allocations: 0,
            old_allocations: 0,
        };
        self.rss.push(sample(rss_bytes));
        self.heap.push(sample(heap_bytes));
        let old_after_s = (moment.interval * OLD_AFTER_INTERVALS).as_secs_f64();
        let rss = self.rss.trend(old_after_s, time_s);
        let heap = self.heap.trend(old_after_s, time_s);
        self.memory = Some(Memory {
            rss_bytes,
            anon_rss_bytes,
            rss_bytes_per_s: rss.bytes_per_s,
            heap_bytes_per_s: heap.bytes_per_s,
            heap_share: heap_bytes as f64 / rss_bytes.max(1) as f64,
            growth_elsewhere: trend::grows_apart(&self.rss, &self.heap),
        });
        self.memory.clone()
    }

    /// Seconds since this history's first report.
    fn time_s(&mut self, now_ns: u64) -> f64 {
        let started = *self.started_ns.get_or_insert(now_ns);
        Duration::from_nanos(now_ns.saturating_sub(started)).as_secs_f64()
    }
}

fn difference(now: u64, before: u64) -> i64 {
    i64::try_from(i128::from(now) - i128::from(before)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moment(number: u64, now_s: u64) -> Moment {
        Moment {
            pid: 42,
            number,
            is_final: false,
            interval: Duration::from_secs(1),
            timestamp: "2026-11-25T10:00:00Z".into(),
            now_ns: now_s * 1_000_000_000,
            counters: Counters::default(),
            process: ProcessFacts::default(),
            rss: None,
            sampling: None,
        }
    }

    fn site(stack_id: u64, bytes: u64, allocations: u64) -> SiteState {
        SiteState {
            stack_id,
            bytes,
            allocations,
            oldest_ns: 4_000_000_000,
            old_allocations: allocations,
            estimate: None,
        }
    }

    fn no_frames(_: u64) -> Arc<[Frame]> {
        Arc::from(Vec::new())
    }

    fn report(history: &mut History, number: u64, sites: Vec<SiteState>, top: usize) -> Snapshot {
        let moment = moment(number, 10 + number);
        let ranked = history.observe(sites, moment.now_ns, moment.interval, Sort::Bytes);
        history.snapshot(moment, ranked, top, &Suppressions::default(), no_frames)
    }

    #[test]
    fn ranks_by_bytes_limits_to_top_and_totals_everything() {
        let mut history = History::default();
        let report = report(
            &mut history,
            1,
            vec![site(1, 100, 1), site(2, 300, 3), site(3, 200, 4)],
            2,
        );
        let ids: Vec<u64> = report.callsites.iter().map(|c| c.stack_id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(report.callsites[1].rank, 2);
        assert_eq!(report.callsites[1].average_size, 50);
        assert_eq!(report.totals.outstanding_bytes, 600);
        assert_eq!(report.totals.outstanding_allocations, 8);
        assert_eq!(report.totals.callsites, 3);
        assert_eq!(report.callsites[0].oldest_age_s, 7.0);
    }

    #[test]
    fn growth_is_against_the_previous_report() {
        let mut history = History::default();
        report(&mut history, 1, vec![site(1, 100, 1), site(2, 50, 5)], 10);
        let report = report(&mut history, 2, vec![site(1, 40, 1), site(3, 7, 1)], 10);
        let growth: Vec<(u64, i64, i64)> = report
            .callsites
            .iter()
            .map(|c| (c.stack_id, c.growth_bytes, c.growth_allocations))
            .collect();
        assert_eq!(growth, [(1, -60, 0), (3, 7, 1)]);
    }

    #[test]
    fn a_steady_site_becomes_a_leak_and_sorts_first_by_growth() {
        let mut history = History::default();
        let mut last = None;
        for n in 1..=6 {
            let sites = vec![site(1, 1000 * n, 10 * n), site(2, 50_000, 5)];
            let moment = moment(n, 10 + n);
            let ranked = history.observe(sites, moment.now_ns, moment.interval, Sort::Growth);
            last = Some(history.snapshot(moment, ranked, 10, &Suppressions::default(), no_frames));
        }
        let report = last.unwrap();
        assert_eq!(report.callsites[0].stack_id, 1, "the growing site first");
        assert_eq!(report.callsites[0].trend.verdict, Verdict::Leak);
        assert!((report.callsites[0].trend.bytes_per_s - 1000.0).abs() < 1e-6);
        assert_eq!(report.callsites[1].trend.verdict, Verdict::NoLeak);
        assert_eq!(report.totals.leak_callsites, 1);
    }

    #[test]
    fn suppressed_sites_leave_the_totals_and_are_listed() {
        let mut history = History::default();
        let frames = |id: u64| -> Arc<[Frame]> {
            Arc::from([Frame {
                function: Some(if id == 1 { "known_leak" } else { "other" }.into()),
                ..Frame::default()
            }])
        };
        let suppressions = Suppressions::parse("leak:known_*").unwrap();
        let moment = moment(1, 11);
        let ranked = history.observe(
            vec![site(1, 500, 5), site(2, 70, 7)],
            moment.now_ns,
            moment.interval,
            Sort::Bytes,
        );
        let report = history.snapshot(moment, ranked, 10, &suppressions, frames);
        assert_eq!(report.totals.outstanding_bytes, 70);
        assert_eq!(report.callsites.len(), 1);
        assert_eq!(
            report.suppressed,
            [Suppressed {
                pattern: "known_*".into(),
                callsites: 1,
                bytes: 500,
                allocations: 5
            }]
        );
    }

    #[test]
    fn serializes_the_documented_fields() {
        let mut history = History::default();
        let report = report(&mut history, 1, vec![site(0x1f, 10, 2)], 10);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["schema_version"], SCHEMA_VERSION);
        assert_eq!(json["final"], false);
        assert_eq!(json["callsites"][0]["stack_id"], "0x1f");
        assert_eq!(json["callsites"][0]["average_size"], 5);
        assert_eq!(json["callsites"][0]["trend"]["verdict"], "no_leak");
        assert_eq!(json["counters"]["dropped_allocations"], 0);
        assert_eq!(json["counters"]["probe_errors"], 0);
        assert_eq!(json["counters"]["lost_events"], 0);
        assert_eq!(json["totals"]["outstanding_bytes"], 10);
        assert_eq!(json["memory"], serde_json::Value::Null);
    }
}
