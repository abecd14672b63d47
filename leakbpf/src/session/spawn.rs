//! Starting a command held before it runs, so the probes are in place for its first
//! instruction.

use std::{
    ffi::{CString, OsString},
    io,
    num::NonZeroU32,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("an argument contains a NUL byte")]
    NulInArgument,
    #[error("cannot start the command")]
    Spawn(#[source] io::Error),
}

/// The executable `program` names: a path, or a name looked up in `PATH`.
pub fn resolve(program: &OsString) -> Result<PathBuf, SpawnError> {
    which::which(program).map_err(|_| SpawnError::NotFound(program.to_string_lossy().into()))
}

/// A started command, held before `exec` until [`PausedChild::release`], so the probes
/// are in place before it runs a single instruction of its own.
pub struct PausedChild {
    pub pid: NonZeroU32,
    go: OwnedFd,
}

/// Starts `exe` with `args` (`args[0]` is the program name it sees), paused.
///
/// Must run while this process has a single thread: the child runs plain code between
/// `fork` and `exec`, which is only sound when no other thread could hold a lock.
pub fn spawn_paused(exe: &Path, args: &[OsString]) -> Result<PausedChild, SpawnError> {
    let exe = CString::new(exe.as_os_str().as_bytes()).map_err(|_| SpawnError::NulInArgument)?;
    let args = args
        .iter()
        .map(|arg| CString::new(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SpawnError::NulInArgument)?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|arg| arg.as_ptr()).collect();
    argv.push(std::ptr::null());

    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Spawn(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors owned by nobody else.
    let (wait_end, go_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    // SAFETY: single-threaded (see above); the child only calls async-signal-safe
    // functions on memory prepared before the fork, then execs or exits.
    match unsafe { libc::fork() } {
        -1 => Err(SpawnError::Spawn(io::Error::last_os_error())),
        // SAFETY: this is the child just forked by this function.
        0 => unsafe { wait_then_exec(wait_end.as_raw_fd(), go_end.as_raw_fd(), &exe, &argv) },
        pid => {
            let pid = NonZeroU32::new(pid as u32).ok_or_else(|| {
                SpawnError::Spawn(io::Error::other("fork returned an invalid pid"))
            })?;
            drop(wait_end);
            Ok(PausedChild { pid, go: go_end })
        }
    }
}

/// The child's side: wait for the go byte, then exec. Never returns.
///
/// # Safety
/// Only in a child just forked by [`spawn_paused`].
unsafe fn wait_then_exec(
    wait_end: RawFd,
    go_end: RawFd,
    exe: &CString,
    argv: &[*const libc::c_char],
) -> ! {
    // SAFETY: all calls are async-signal-safe, on descriptors and memory that the fork
    // copied into this child.
    unsafe {
        libc::close(go_end);
        let mut byte = 0u8;
        loop {
            let read = libc::read(wait_end, (&raw mut byte).cast(), 1);
            if read == 1 {
                break;
            }
            if read == 0 || *libc::__errno_location() != libc::EINTR {
                // The agent is gone without attaching: do not run untraced.
                libc::_exit(126);
            }
        }
        libc::execv(exe.as_ptr(), argv.as_ptr());
        let message = b"leakbpf: error: cannot execute the command\n";
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(127)
    }
}

impl PausedChild {
    /// Lets the command run.
    pub fn release(self) -> io::Result<()> {
        let written = unsafe {
            // SAFETY: writes one byte from a live local to an open descriptor.
            libc::write(self.go.as_raw_fd(), [1u8].as_ptr().cast(), 1)
        };
        if written == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
