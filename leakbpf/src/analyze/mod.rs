//! From the call sites drained from the kernel to what a report shows: ranked by
//! outstanding bytes, the top ones with their growth since the previous report.

mod history;

pub use history::{History, Moment};

use crate::kernel::SiteState;

/// Orders call sites as reports show them: most outstanding bytes first.
pub fn rank(sites: &mut [SiteState]) {
    sites.sort_unstable_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.allocations.cmp(&a.allocations))
            .then(a.stack_id.cmp(&b.stack_id))
    });
}
