//! How the agent learns that the processes it attached to, or the command it started,
//! end, and (for the started command and, with `--follow-forks`, the processes it
//! starts) when they call exec.

use std::{
    io,
    num::NonZeroU32,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::{
    fd,
    supervisor::{ChildEvent, TracedChild},
};

/// What happens to the traced processes.
pub enum LifeEvent {
    /// The started command (or a program it exec'd into, or with `--follow-forks` a
    /// process it started) is held at its exec, before the new image runs, until
    /// [`Lifetime::resume`].
    Exec(NonZeroU32),
    /// One of those is held at its exit, its memory still mapped, until
    /// [`Lifetime::resume`].
    Exiting(NonZeroU32),
    /// A process is gone; how, when it was a command leakbpf started.
    Exited(NonZeroU32, Option<String>),
    /// One of those is held with a SIGSTOP on its way, until
    /// [`Lifetime::resume`] (the agent's own stop, dropped) or [`Lifetime::deliver`].
    Stopped(NonZeroU32),
}

/// How the agent learns that targets end.
pub enum Lifetime {
    /// Processes it attached to: a pidfd each, watched by a task that reports the exit.
    Pids(mpsc::UnboundedReceiver<NonZeroU32>),
    /// A command it started.
    Child(TracedChild),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("cannot watch pid {pid}")]
    Watch { pid: u32, source: io::Error },
}

impl Lifetime {
    /// Watches `pids`; must run inside the runtime.
    pub fn watch(pids: &[NonZeroU32]) -> Result<Self, WatchError> {
        let (exits, exited) = mpsc::unbounded_channel();
        for &pid in pids {
            let watch = ExitWatch::new(pid.get())?;
            let exits = exits.clone();
            tokio::spawn(async move {
                watch.exited().await;
                let _ = exits.send(pid);
            });
        }
        Ok(Lifetime::Pids(exited))
    }

    /// The next event; never returns once nothing is left to watch.
    pub async fn next(&mut self) -> LifeEvent {
        let event = match self {
            Lifetime::Pids(exited) => exited.recv().await.map(|pid| LifeEvent::Exited(pid, None)),
            Lifetime::Child(child) => child.next().await.map(|(pid, event)| match event {
                ChildEvent::Exec => LifeEvent::Exec(pid),
                ChildEvent::Exiting => LifeEvent::Exiting(pid),
                ChildEvent::Exited(status) => LifeEvent::Exited(pid, Some(status)),
                ChildEvent::Stopped => LifeEvent::Stopped(pid),
            }),
        };
        match event {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    /// Lets a held command go on.
    pub fn resume(&self) {
        if let Lifetime::Child(child) = self {
            child.resume();
        }
    }

    /// Lets a command held at [`LifeEvent::Stopped`] have its signal.
    pub fn deliver(&self) {
        if let Lifetime::Child(child) = self {
            child.deliver();
        }
    }
}

/// Becomes ready when a process exits, through a pidfd.
struct ExitWatch {
    fd: AsyncFd<OwnedFd>,
}

impl ExitWatch {
    fn new(pid: u32) -> Result<Self, WatchError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::ESRCH) {
                WatchError::NoSuchProcess(pid)
            } else {
                WatchError::Watch { pid, source: err }
            });
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let fd = fd::poll(fd).map_err(|source| WatchError::Watch { pid, source })?;
        Ok(Self { fd })
    }

    /// Waits for the exit.
    async fn exited(&self) {
        // A pidfd only ever becomes readable once, at exit, and stays so.
        let _ready = self.fd.readable().await;
    }
}
