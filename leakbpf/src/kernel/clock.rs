//! The clock the eBPF side timestamps allocations with: CLOCK_BOOTTIME, written into a
//! map every [`CLOCK_TICK_MS`] by a thread of its own, because reading a clock in the
//! eBPF program costs more per allocation than the rest of recording it.

use std::{sync::mpsc, thread, time::Duration};

use aya::maps::{Array, MapData};
use leakbpf_common::CLOCK_TICK_MS;

/// Keeps the map's clock running until dropped.
pub struct Clock {
    _stop: mpsc::Sender<()>,
}

impl Clock {
    /// Writes the time now, then every tick from a thread, so a timestamp is at most a
    /// tick behind the allocation it dates.
    pub fn start(mut map: Array<MapData, u64>) -> std::io::Result<Self> {
        let _ = map.set(0, boot_time_ns(), 0);
        let (stop, stopped) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("leakbpf-clock".to_owned())
            .spawn(move || {
                // Ends when the sender is dropped: recv then fails instead of timing out.
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(CLOCK_TICK_MS))
                {
                    let _ = map.set(0, boot_time_ns(), 0);
                }
            })?;
        Ok(Self { _stop: stop })
    }
}

/// CLOCK_BOOTTIME, the clock of the allocation timestamps.
pub fn boot_time_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a live local; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}
