//! Supervises a command leakbpf started, so its probes are in place before each program
//! it runs starts, and its stacks can be symbolized at its exit.
//!
//! The child is seized with ptrace for two events only:
//! - `PTRACE_EVENT_EXEC`: the new image is loaded and has not run an instruction. The
//!   started command's own exec is the first; a launcher (`env VAR=… prog`, `nice`,
//!   `timeout`, a `#!` script, a shell wrapper ending in `exec`) makes more. The agent
//!   plans and attaches the probes for the new image, then lets it run, so its first
//!   allocations are seen.
//! - `PTRACE_EVENT_EXIT`: the kernel holds an exiting process with its memory still
//!   mapped. A short-lived command may allocate and exit within microseconds, before the
//!   agent has read its memory map, and after exit the map is gone: the agent
//!   symbolizes what is pending, then the child goes on exiting.
//!
//! - A SIGSTOP on its way to it: the eBPF side stops its main thread with one at the
//!   dynamic linker's notice that it mapped objects, until the agent has read its new
//!   mappings; the agent says whether the signal was its own (dropped) or not
//!   (delivered).
//!
//! Every other stop (signals, group stops) is passed straight on.

use std::{io, num::NonZeroU32, sync::mpsc, thread, time::Duration};

use tokio::sync::mpsc as async_mpsc;

/// What happens to the supervised child.
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

/// What the agent tells a held child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// Go on, without the signal it is stopped with, if any.
    Continue,
    /// Go on, with the signal.
    Deliver,
}

pub struct TracedChild {
    pid: NonZeroU32,
    events: async_mpsc::UnboundedReceiver<ChildEvent>,
    resume: mpsc::Sender<Resume>,
}

/// How long a child is held at most, should the agent not answer.
const MAX_HOLD: Duration = Duration::from_secs(30);

impl TracedChild {
    /// Seizes `pid`, a child of this process that has not run the command yet. Returns
    /// once it is seized, so no exit can be missed.
    pub fn seize(pid: NonZeroU32) -> io::Result<Self> {
        let (events_tx, events) = async_mpsc::unbounded_channel();
        let (resume, resume_rx) = mpsc::channel();
        let (seized_tx, seized_rx) = mpsc::channel();
        // ptrace requests must come from the thread that seized: that thread also waits.
        thread::Builder::new().name("child".into()).spawn(move || {
            let pid = pid.get() as libc::pid_t;
            // SAFETY: seizes our own child; no pointers are passed.
            let seized = unsafe {
                libc::ptrace(
                    libc::PTRACE_SEIZE,
                    pid,
                    0,
                    (libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC) as libc::c_long,
                )
            };
            let ok = seized == 0;
            let _ = seized_tx.send(if ok {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            });
            if ok {
                supervise(pid, &events_tx, &resume_rx);
            }
        })?;
        seized_rx
            .recv()
            .map_err(|_| io::Error::other("the supervising thread ended"))??;
        Ok(Self {
            pid,
            events,
            resume,
        })
    }

    pub fn pid(&self) -> NonZeroU32 {
        self.pid
    }

    /// The next event; None once the child is gone and reported.
    pub async fn next(&mut self) -> Option<ChildEvent> {
        self.events.recv().await
    }

    /// Lets a child held at [`ChildEvent::Exec`] run, one held at
    /// [`ChildEvent::Exiting`] finish exiting, one held at [`ChildEvent::Stopped`] go on
    /// without the signal.
    pub fn resume(&self) {
        let _ = self.resume.send(Resume::Continue);
    }

    /// Lets a child held at [`ChildEvent::Stopped`] have its signal.
    pub fn deliver(&self) {
        let _ = self.resume.send(Resume::Deliver);
    }
}

fn supervise(
    pid: libc::pid_t,
    events: &async_mpsc::UnboundedSender<ChildEvent>,
    resume: &mpsc::Receiver<Resume>,
) {
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child into a live local.
        let waited = unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL) };
        if waited < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            let _ = events.send(ChildEvent::Exited("is gone".into()));
            return;
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            let _ = events.send(ChildEvent::Exited(describe(status)));
            return;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let event = status >> 16;
        let (request, signal) = if event == libc::PTRACE_EVENT_EXEC {
            let _ = events.send(ChildEvent::Exec);
            let _ = resume.recv_timeout(MAX_HOLD);
            (libc::PTRACE_CONT, 0)
        } else if event == libc::PTRACE_EVENT_EXIT {
            let _ = events.send(ChildEvent::Exiting);
            let _ = resume.recv_timeout(MAX_HOLD);
            (libc::PTRACE_DETACH, 0)
        } else if event == libc::PTRACE_EVENT_STOP {
            // A group stop (SIGSTOP and the like): stay stopped until SIGCONT.
            (libc::PTRACE_LISTEN, 0)
        } else if libc::WSTOPSIG(status) == libc::SIGSTOP {
            let _ = events.send(ChildEvent::Stopped);
            // Unanswered, it goes on: a lost SIGSTOP costs less than a target left
            // stopped by the agent.
            let signal = match resume.recv_timeout(MAX_HOLD) {
                Ok(Resume::Deliver) => libc::SIGSTOP,
                _ => 0,
            };
            (libc::PTRACE_CONT, signal)
        } else {
            // A signal on its way to the child: deliver it.
            (libc::PTRACE_CONT, libc::WSTOPSIG(status))
        };
        // SAFETY: a request on our own stopped tracee; no pointers are passed.
        unsafe { libc::ptrace(request, pid, 0, signal as libc::c_long) };
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
