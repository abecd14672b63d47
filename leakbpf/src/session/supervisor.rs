//! Supervises a command leakbpf started, so its probes are in place before each program
//! it runs starts, and its stacks can be symbolized at its exit.
//!
//! The child is seized with ptrace for two events only (with `--follow-forks`, every
//! process it starts is too, from its fork on, so a child that execs and exits within
//! milliseconds is held like the command):
//! - `PTRACE_EVENT_EXEC`: the new image is loaded and has not run an instruction. The
//!   started command's own exec is the first; a launcher (`env VAR=… prog`, `nice`,
//!   `timeout`, a `#!` script, a shell wrapper ending in `exec`) makes more. The agent
//!   plans and attaches the probes for the new image, then lets it run, so its first
//!   allocations are seen.
//! - `PTRACE_EVENT_EXIT`: the kernel holds an exiting process with its memory still
//!   mapped. A short-lived command may allocate and exit within microseconds, before the
//!   agent has read its memory map, and after exit the map is gone: the agent
//!   symbolizes what is pending, then the child goes on exiting.
//! - A SIGSTOP on its way to it: the eBPF side stops its main thread with one at the
//!   dynamic linker's notice that it mapped objects, until the agent has read its new
//!   mappings; the agent says whether the signal was its own (dropped) or not
//!   (delivered).
//!
//! Every other stop (signals, group stops) is passed straight on.

use std::{io, num::NonZeroU32, sync::mpsc, thread, time::Duration};

use tokio::sync::mpsc as async_mpsc;

/// What happens to a supervised process.
#[derive(Debug)]
pub enum ChildEvent {
    /// Stopped after an exec, before the new image runs, until the agent calls
    /// [`TracedChild::resume`].
    Exec,
    /// Stopped at its exit with its memory still mapped, until the agent calls
    /// [`TracedChild::resume`].
    Exiting,
    /// Gone, with how it ended.
    Exited(String),
    /// Stopped with a SIGSTOP on its way, until the agent calls [`TracedChild::resume`]
    /// (the signal was the agent's own) or [`TracedChild::deliver`].
    Stopped,
}

/// What the agent tells a held process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// Go on, without the signal it is stopped with, if any.
    Continue,
    /// Go on, with the signal.
    Deliver,
}

pub struct TracedChild {
    events: async_mpsc::UnboundedReceiver<(NonZeroU32, ChildEvent)>,
    resume: mpsc::Sender<Resume>,
}

/// How long a child is held at most, should the agent not answer.
const MAX_HOLD: Duration = Duration::from_secs(30);

impl TracedChild {
    /// Seizes `pid`, a child of this process that has not run the command yet, and with
    /// `follow_forks` every process it starts. Returns once it is seized, so no exit can
    /// be missed.
    pub fn seize(pid: NonZeroU32, follow_forks: bool) -> io::Result<Self> {
        let (events_tx, events) = async_mpsc::unbounded_channel();
        let (resume, resume_rx) = mpsc::channel();
        let (seized_tx, seized_rx) = mpsc::channel();
        // ptrace requests must come from the thread that seized: that thread also waits.
        thread::Builder::new().name("child".into()).spawn(move || {
            let pid = pid.get() as libc::pid_t;
            let mut options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC;
            // A fork, vfork or posix_spawn; threads (PTRACE_O_TRACECLONE) stay untraced:
            // their exits are not the process's.
            if follow_forks {
                options |= libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACEVFORK;
            }
            // SAFETY: seizes our own child; no pointers are passed.
            let seized =
                unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, options as libc::c_long) };
            let ok = seized == 0;
            let _ = seized_tx.send(if ok {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            });
            if ok {
                supervise(&events_tx, &resume_rx);
            }
        })?;
        seized_rx
            .recv()
            .map_err(|_| io::Error::other("the supervising thread ended"))??;
        Ok(Self { events, resume })
    }

    /// The next event and whose it is; None once every supervised process is gone and
    /// reported.
    pub async fn next(&mut self) -> Option<(NonZeroU32, ChildEvent)> {
        self.events.recv().await
    }

    /// Lets the process held at [`ChildEvent::Exec`] run, the one held at
    /// [`ChildEvent::Exiting`] finish exiting, the one held at [`ChildEvent::Stopped`] go
    /// on without the signal (one is held at a time).
    pub fn resume(&self) {
        let _ = self.resume.send(Resume::Continue);
    }

    /// Lets the process held at [`ChildEvent::Stopped`] have its signal.
    pub fn deliver(&self) {
        let _ = self.resume.send(Resume::Deliver);
    }
}

fn supervise(
    events: &async_mpsc::UnboundedSender<(NonZeroU32, ChildEvent)>,
    resume: &mpsc::Receiver<Resume>,
) {
    loop {
        let mut status = 0;
        // SAFETY: waits for any of our tracees into a live local.
        let waited = unsafe { libc::waitpid(-1, &raw mut status, libc::__WALL) };
        if waited < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: every tracee is gone, each reported at its exit.
            return;
        }
        let Some(pid) = NonZeroU32::new(waited as u32) else {
            continue;
        };
        let send = |event| {
            let _ = events.send((pid, event));
        };
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            send(ChildEvent::Exited(describe(status)));
            continue;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let event = status >> 16;
        let (request, signal) = if event == libc::PTRACE_EVENT_EXEC {
            send(ChildEvent::Exec);
            let _ = resume.recv_timeout(MAX_HOLD);
            (libc::PTRACE_CONT, 0)
        } else if event == libc::PTRACE_EVENT_EXIT {
            send(ChildEvent::Exiting);
            let _ = resume.recv_timeout(MAX_HOLD);
            (libc::PTRACE_DETACH, 0)
        } else if event == libc::PTRACE_EVENT_STOP && libc::WSTOPSIG(status) != libc::SIGTRAP {
            // A group stop (SIGSTOP and the like): stay stopped until SIGCONT.
            (libc::PTRACE_LISTEN, 0)
        } else if event != 0 {
            // A new child's first stop (SIGTRAP), or its parent's at the fork: go on.
            (libc::PTRACE_CONT, 0)
        } else if libc::WSTOPSIG(status) == libc::SIGSTOP {
            send(ChildEvent::Stopped);
            // Unanswered, it goes on: a lost SIGSTOP costs less than a target left
            // stopped by the agent.
            let signal = match resume.recv_timeout(MAX_HOLD) {
                Ok(Resume::Deliver) => libc::SIGSTOP,
                _ => 0,
            };
            (libc::PTRACE_CONT, signal)
        } else {
            // A signal on its way to the tracee: deliver it.
            (libc::PTRACE_CONT, libc::WSTOPSIG(status))
        };
        // SAFETY: a request on our own stopped tracee; no pointers are passed.
        unsafe { libc::ptrace(request, pid.get() as libc::pid_t, 0, signal as libc::c_long) };
    }
}

/// How a wait status says a process ended.
pub fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status:#x}")
    }
}
