//! Registers owned descriptors with the tokio reactor.

use std::{io, os::fd::AsRawFd};

use tokio::io::unix::AsyncFd;

/// `inner` polled by the runtime; `inner` must own its descriptor (an `OwnedFd`, or a
/// type holding one, as aya's maps and logger do).
pub fn poll<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: every caller passes a value that owns its descriptor, which therefore stays
    // open and the same file for as long as the `AsyncFd` holds the value.
    unsafe { AsyncFd::register(inner) }.map_err(io::Error::from)
}
