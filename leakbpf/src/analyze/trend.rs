//! One call site over a run: its outstanding bytes and blocks at each report, in bounded
//! memory however long the run, and what they say: a growth rate fitted by least
//! squares, the pattern of the growth, and whether it is a leak.
//!
//! Leaked blocks are never freed: they grow old and keep accumulating. A cache or pool
//! grows, then holds while its blocks turn over; a burst of short-lived blocks is all
//! young. So the verdict weighs the shape of the growth and the age of the blocks.

use crate::snapshot::{Pattern, Trend, Verdict};

/// Samples kept per call site; when full, every other one of the older half is dropped,
/// so the samples span the whole run, densest in its recent part.
const MAX_SAMPLES: usize = 64;
/// Reports a verdict of leak needs: fewer leave a growing site suspect.
pub const MIN_SAMPLES: usize = 4;
/// Fit quality (R²) steady growth needs to be called a leak.
const LEAK_FIT: f64 = 0.9;
/// Share of its blocks a leaking site has old (see [`Sample::old_allocations`]), against
/// what a site that never frees would have: leaked blocks stay and age, a cache's turn
/// over.
const LEAK_OLD_SHARE: f64 = 0.5;
/// A change below this share of the outstanding bytes is no change (allocator noise).
const FLAT: f64 = 0.02;
/// What young blocks must add over the run, as a share of the peak, to be a cache
/// filling up rather than a churn.
const GREW: f64 = 0.1;
/// An interval that adds less than this share of the mean rise per interval is flat,
/// between the steps of a stepped growth.
const STEP: f64 = 0.25;

/// A site's figures at one report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub time_s: f64,
    pub bytes: u64,
    pub allocations: u64,
    /// Blocks older than a few intervals.
    pub old_allocations: u64,
}

/// A site's samples.
#[derive(Clone, Debug, Default)]
pub struct History {
    samples: Vec<Sample>,
}

impl History {
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == MAX_SAMPLES {
            let recent = self.samples.split_off(MAX_SAMPLES / 2);
            self.samples = self
                .samples
                .iter()
                .copied()
                .step_by(2)
                .chain(recent)
                .collect();
        }
        self.samples.push(sample);
    }

    /// What the samples say; `old_after_s` is the age that makes a block old, and
    /// `oldest_s` the age of the site's oldest block.
    pub fn trend(&self, old_after_s: f64, oldest_s: f64) -> Trend {
        let bytes = fit(&self.samples, |s| s.bytes as f64);
        let allocations = fit(&self.samples, |s| s.allocations as f64);
        let pattern = self.pattern();
        let last = self.samples.last().copied();
        let old_allocations = last.map_or(0, |s| s.old_allocations);
        let old_share = last
            .filter(|s| s.allocations > 0)
            .map_or(0.0, |s| s.old_allocations as f64 / s.allocations as f64);
        // A site that grew at a steady rate since its oldest block and freed nothing has
        // this share of its blocks old.
        let never_freed = (oldest_s - old_after_s) / oldest_s.max(f64::MIN_POSITIVE);
        let growing = matches!(pattern, Pattern::SteadyGrowth | Pattern::SteppedGrowth);
        let verdict = if !growing {
            Verdict::NoLeak
        } else if self.samples.len() >= MIN_SAMPLES
            && never_freed > 0.0
            && old_share >= LEAK_OLD_SHARE * never_freed
            && (pattern == Pattern::SteppedGrowth || bytes.r2 >= LEAK_FIT)
        {
            Verdict::Leak
        } else {
            Verdict::Suspect
        };
        Trend {
            bytes_per_s: bytes.slope,
            allocations_per_s: allocations.slope,
            fit: bytes.r2,
            samples: self.samples.len(),
            pattern,
            old_allocations,
            old_after_s,
            verdict,
        }
    }

    fn pattern(&self) -> Pattern {
        let samples = &self.samples;
        let Some(last) = samples.last() else {
            return Pattern::Stable;
        };
        // No block outlives a few intervals: whatever the level, nothing accumulates.
        let young = last.old_allocations == 0 && last.allocations > 0;
        let first = samples[0];
        let peak = samples.iter().map(|s| s.bytes).max().unwrap_or(0);
        let flat = |a: u64, b: u64| a.abs_diff(b) as f64 <= FLAT * (peak.max(1) as f64);
        if samples.len() < 2 || flat(first.bytes, last.bytes) && flat(peak, last.bytes) {
            return if young {
                Pattern::Transient
            } else {
                Pattern::Stable
            };
        }
        if last.bytes < first.bytes || !flat(peak, last.bytes) {
            return if young {
                Pattern::Transient
            } else {
                Pattern::Shrinking
            };
        }
        // Young blocks that only fluctuate are a churn, not a cache filling up.
        if young && (last.bytes - first.bytes) as f64 <= GREW * peak as f64 {
            return Pattern::Transient;
        }
        // Flat over the recent half of the run (by time: the samples are denser there),
        // longer than the gap between the steps of a stepped leak.
        let half = first.time_s + (last.time_s - first.time_s) / 2.0;
        let recent = samples.iter().find(|s| s.time_s >= half).unwrap_or(last);
        if recent.time_s < last.time_s && flat(recent.bytes, last.bytes) {
            return Pattern::GrowsThenHolds;
        }
        // Growing with young blocks only is a young site, not yet a churn: the verdict
        // weighs the ages.
        // Steps: most intervals add (next to) nothing, a few add much. Against the
        // mean rise per interval, not the total, so a long steady run is no staircase.
        let mean_rise = (last.bytes - first.bytes) as f64 / (samples.len() - 1) as f64;
        let rises: Vec<bool> = samples
            .windows(2)
            .map(|pair| pair[1].bytes.abs_diff(pair[0].bytes) as f64 > STEP * mean_rise)
            .collect();
        let steps = rises.iter().filter(|&&rise| rise).count();
        if steps >= 2 && (rises.len() - steps) * 5 >= rises.len() * 2 {
            Pattern::SteppedGrowth
        } else {
            Pattern::SteadyGrowth
        }
    }
}

/// Whether `rss` grows and `heap` does not explain it: RSS up by at least 1 MiB along a
/// fitting line over enough reports, and the heap growing at less than a fifth of it.
pub fn grows_apart(rss: &History, heap: &History) -> bool {
    const MIN_GROWTH: f64 = (1 << 20) as f64;
    let (Some(first), Some(last)) = (rss.samples.first(), rss.samples.last()) else {
        return false;
    };
    let rss_fit = fit(&rss.samples, |s| s.bytes as f64);
    let heap_fit = fit(&heap.samples, |s| s.bytes as f64);
    rss.samples.len() >= MIN_SAMPLES
        && last.bytes as f64 - first.bytes as f64 >= MIN_GROWTH
        && rss_fit.r2 >= 0.8
        && heap_fit.slope < rss_fit.slope / 5.0
}

struct Fit {
    slope: f64,
    r2: f64,
}

/// The least-squares line of `value` over time, and its R².
fn fit(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> Fit {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return Fit {
            slope: 0.0,
            r2: 0.0,
        };
    }
    let mean_t = samples.iter().map(|s| s.time_s).sum::<f64>() / n;
    let mean_v = samples.iter().map(&value).sum::<f64>() / n;
    let (mut stt, mut stv, mut svv) = (0.0, 0.0, 0.0);
    for sample in samples {
        let (dt, dv) = (sample.time_s - mean_t, value(sample) - mean_v);
        stt += dt * dt;
        stv += dt * dv;
        svv += dv * dv;
    }
    if stt == 0.0 {
        return Fit {
            slope: 0.0,
            r2: 0.0,
        };
    }
    let slope = stv / stt;
    let r2 = if svv == 0.0 {
        1.0
    } else {
        (stv * stv) / (stt * svv)
    };
    Fit { slope, r2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history of `bytes(i)` at one report a second, blocks of 100 bytes, the share
    /// `old` of them old.
    fn history(reports: usize, old: f64, bytes: impl Fn(usize) -> u64) -> History {
        let mut history = History::default();
        for i in 0..reports {
            let bytes = bytes(i);
            history.push(Sample {
                time_s: i as f64,
                bytes,
                allocations: bytes / 100,
                old_allocations: ((bytes / 100) as f64 * old) as u64,
            });
        }
        history
    }

    #[test]
    fn a_steady_leak_is_a_leak_at_its_rate() {
        let trend = history(10, 0.8, |i| 1000 + 5000 * i as u64).trend(3.0, 10.0);
        assert_eq!(trend.pattern, Pattern::SteadyGrowth);
        assert_eq!(trend.verdict, Verdict::Leak);
        assert!((trend.bytes_per_s - 5000.0).abs() < 1e-6);
        assert!((trend.allocations_per_s - 50.0).abs() < 1e-6);
        assert!(trend.fit > 0.999);
    }

    #[test]
    fn too_few_reports_or_young_blocks_leave_it_suspect() {
        let short = history(3, 0.8, |i| 1000 + 5000 * i as u64).trend(3.0, 10.0);
        assert_eq!(short.verdict, Verdict::Suspect);
        // Older blocks freed: fewer are old than a site that frees nothing would have.
        let young = history(10, 0.2, |i| 1000 + 5000 * i as u64).trend(3.0, 10.0);
        assert_eq!(young.verdict, Verdict::Suspect);
        // A run no longer than the age that makes a block old cannot tell.
        let early = history(10, 0.0, |i| 1000 + 5000 * i as u64).trend(3.0, 2.5);
        assert_eq!(early.verdict, Verdict::Suspect);
    }

    #[test]
    fn steps_are_stepped_growth_and_a_leak() {
        let trend = history(12, 0.9, |i| 10_000 * (1 + i as u64 / 3)).trend(3.0, 10.0);
        assert_eq!(trend.pattern, Pattern::SteppedGrowth);
        assert_eq!(trend.verdict, Verdict::Leak);
    }

    #[test]
    fn a_cache_that_fills_then_holds_is_no_leak() {
        for old in [0.0, 0.5] {
            let trend = history(12, old, |i| 10_000 * (i.min(4) as u64 + 1)).trend(3.0, 10.0);
            assert_eq!(trend.pattern, Pattern::GrowsThenHolds);
            assert_eq!(trend.verdict, Verdict::NoLeak);
        }
    }

    #[test]
    fn young_blocks_only_are_transient_and_falls_are_shrinking() {
        let churn = history(8, 0.0, |i| 5000 + (i as u64 % 2) * 300).trend(3.0, 10.0);
        assert_eq!(churn.pattern, Pattern::Transient);
        assert_eq!(churn.verdict, Verdict::NoLeak);
        let falls = history(8, 1.0, |i| 80_000 - 10_000 * i as u64).trend(3.0, 10.0);
        assert_eq!(falls.pattern, Pattern::Shrinking);
        let flat = history(8, 1.0, |_| 4096).trend(3.0, 10.0);
        assert_eq!(flat.pattern, Pattern::Stable);
    }

    #[test]
    fn memory_stays_bounded_and_spans_the_run() {
        let history = history(10_000, 1.0, |i| 100 * i as u64);
        assert!(history.samples.len() <= MAX_SAMPLES);
        assert_eq!(history.samples[0].time_s, 0.0);
        assert_eq!(history.samples.last().unwrap().time_s, 9999.0);
        let trend = history.trend(3.0, 10_000.0);
        assert!((trend.bytes_per_s - 100.0).abs() < 1e-6);
    }
}
