//! What the sampled blocks stand for (`--sample-bytes`): the eBPF side records a block
//! of `size` bytes with probability p = 1 − exp(−size/N), and each one recorded stands
//! for 1/p blocks and size/p bytes (the Horvitz–Thompson estimator: unbiased whatever
//! the sizes). Its variance, summed over the sampled blocks, gives the expected error.

use serde::{Deserialize, Serialize};

/// Sampling with a mean of `mean_bytes` between sample points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampling {
    pub mean_bytes: u64,
}

impl Sampling {
    /// The chance that a block of `size` bytes is recorded.
    pub fn probability(self, size: u64) -> f64 {
        -(-(size as f64) / self.mean_bytes as f64).exp_m1()
    }
}

/// Estimates of a set of blocks (a call site's, a process's) from those sampled.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    /// Blocks recorded.
    pub sampled: u64,
    pub bytes: f64,
    pub allocations: f64,
    /// Of them, the ones older than a scan's cutoff.
    pub old_allocations: f64,
    /// Unbiased estimates of the variances of `bytes` and `allocations`.
    pub bytes_variance: f64,
    pub allocations_variance: f64,
}

impl Estimate {
    /// Adds a recorded block of `size` bytes, recorded with chance `probability`.
    pub fn add(&mut self, size: u64, probability: f64, old: bool) {
        let weight = 1.0 / probability;
        // Var of the sum is Σ x²(1 − p)/p over all blocks; each sampled block's
        // x²(1 − p)/p², weighted by 1/p again, estimates it without bias.
        let spread = (1.0 - probability) * weight * weight;
        let size = size as f64;
        self.sampled += 1;
        self.bytes += size * weight;
        self.allocations += weight;
        if old {
            self.old_allocations += weight;
        }
        self.bytes_variance += size * size * spread;
        self.allocations_variance += spread;
    }

    /// Adds the blocks of `other`, sampled independently of these.
    pub fn merge(&mut self, other: &Estimate) {
        self.sampled += other.sampled;
        self.bytes += other.bytes;
        self.allocations += other.allocations;
        self.old_allocations += other.old_allocations;
        self.bytes_variance += other.bytes_variance;
        self.allocations_variance += other.allocations_variance;
    }

    /// One standard error of the bytes and allocations, rounded.
    pub fn errors(&self) -> (u64, u64) {
        (
            self.bytes_variance.sqrt().round() as u64,
            self.allocations_variance.sqrt().round() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_much_larger_than_the_mean_stand_for_themselves() {
        let sampling = Sampling { mean_bytes: 4096 };
        let mut estimate = Estimate::default();
        estimate.add(1 << 20, sampling.probability(1 << 20), true);
        assert_eq!(estimate.bytes.round() as u64, 1 << 20);
        assert_eq!(estimate.allocations.round() as u64, 1);
        assert_eq!(estimate.errors(), (0, 0));
    }

    #[test]
    fn small_blocks_stand_for_the_many_passed_over() {
        let sampling = Sampling {
            mean_bytes: 512 << 10,
        };
        let p = sampling.probability(64);
        assert!((p - 64.0 / (512 << 10) as f64).abs() < 1e-7, "{p}");
        let mut estimate = Estimate::default();
        for _ in 0..100 {
            estimate.add(64, p, false);
        }
        // Each stands for 1/p blocks of 64 bytes: about 8192 of them, 512 KiB.
        assert!((estimate.allocations / 100.0 - 8192.5).abs() < 1.0);
        assert!((estimate.bytes - 64.0 * estimate.allocations).abs() < 1e-6);
        // Poisson-like: the error of n sampled blocks' estimate is about 1/√n of it.
        let (bytes_error, _) = estimate.errors();
        let relative = bytes_error as f64 / estimate.bytes;
        assert!((relative - 0.1).abs() < 0.001, "{relative}");
    }
}
