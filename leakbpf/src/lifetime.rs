//! How the agent learns that the processes it attached to, or the command it started,
//! end.

use std::num::NonZeroU32;

use anyhow::Result;
use tokio::sync::mpsc;

use crate::{
    child::{ChildEvent, TracedChild},
    process::ExitWatch,
};

/// What happens to the traced processes.
pub enum LifeEvent {
    /// The started command is held at its exit (see [`TracedChild`]).
    Exiting(NonZeroU32),
    /// A process is gone; how, when it was a command leakbpf started.
    Exited(NonZeroU32, Option<String>),
}

/// How the agent learns that targets end.
pub enum Lifetime {
    /// Processes it attached to: a pidfd each, watched by a task that reports the exit.
    Pids(mpsc::UnboundedReceiver<NonZeroU32>),
    /// A command it started.
    Child(TracedChild),
}

impl Lifetime {
    /// Watches `pids`; must run inside the runtime.
    pub fn watch(pids: &[NonZeroU32]) -> Result<Self> {
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
            Lifetime::Child(child) => {
                let pid = child.pid();
                child.next().await.map(|event| match event {
                    ChildEvent::Exiting => LifeEvent::Exiting(pid),
                    ChildEvent::Exited(status) => LifeEvent::Exited(pid, Some(status)),
                })
            }
        };
        match event {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    pub fn resume(&self) {
        if let Lifetime::Child(child) = self {
            child.resume();
        }
    }
}
