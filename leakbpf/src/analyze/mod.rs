//! From the call sites drained from the kernel to what a report shows: each site's
//! history and its trend (rate, pattern, verdict), ranked, the top ones with their growth
//! since the previous report; the process's memory next to its heap; suppressions; and
//! the diff of two saved runs.

pub mod diff;
mod history;
mod plumbing;
mod suppressions;
mod trend;

pub use self::{
    history::{History, Moment, OLD_AFTER_INTERVALS},
    plumbing::{Plumbing, fold, site_frame},
    suppressions::Suppressions,
};

/// How reports order their call sites (`--sort`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Most outstanding bytes first.
    #[default]
    Bytes,
    /// Fastest growing first (bytes per second over the run).
    Growth,
    /// Oldest outstanding block first.
    Age,
}
