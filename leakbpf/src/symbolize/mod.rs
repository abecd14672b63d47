//! Turns stacks of return addresses into named frames, with blazesym.
//!
//! blazesym's `Symbolizer` caches parsed ELF and DWARF data, so one lives for the whole
//! run; it is not `Send`, so it lives on a thread of its own, fed through a channel with
//! whole batches of stacks.

use std::{
    collections::HashSet,
    num::NonZeroU32,
    sync::{Arc, mpsc},
    thread,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::snapshot::hex;

mod debuginfod;
mod worker;

use debuginfod::Debuginfod;
pub use debuginfod::DebuginfodError;
use worker::Worker;

/// One frame of a symbolized stack. Its names are shared (see [`Names`]): a run holds
/// frames by the hundred thousand, and a few hundred distinct names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The return address, as the process saw it.
    #[serde(with = "hex")]
    pub address: u64,
    /// Demangled function name.
    pub function: Option<Arc<str>>,
    /// The object file the address is in.
    pub module: Option<Arc<str>>,
    /// The address's offset in that file.
    #[serde(with = "hex::option")]
    pub offset: Option<u64>,
    /// The build id of that file (its `.note.gnu.build-id`), in hex, when it has one.
    pub build_id: Option<Arc<str>>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    /// A function inlined into the frame below it: it shares its address.
    pub inlined: bool,
    /// Allocation plumbing between the allocator and the call site (see
    /// `analyze::plumbing`), marked once the frames are named.
    pub allocator: bool,
}

/// The names frames share: each distinct one is stored once.
#[derive(Default)]
pub struct Names(HashSet<Arc<str>>);

impl Names {
    /// The shared copy of `name`.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(name) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(Arc::clone(&shared));
        shared
    }
}

/// A stack to symbolize: its id and return addresses, innermost first.
pub type StackRequest = (u64, Vec<u64>);

/// Stacks by id, as named so far.
pub type NamedStacks = Vec<(u64, Vec<Frame>)>;

enum Request {
    Symbolize {
        pid: NonZeroU32,
        stacks: Vec<StackRequest>,
        reply: oneshot::Sender<NamedStacks>,
    },
    /// Stacks with frames no local file named: those that debug files fetched since
    /// name, after waiting `settle` for fetches under way.
    Rename {
        stacks: NamedStacks,
        settle: Option<Duration>,
        reply: oneshot::Sender<NamedStacks>,
    },
}

/// The handle to the symbolizing thread.
pub struct SymbolizerHandle {
    requests: mpsc::Sender<Request>,
    debuginfod: Option<Debuginfod>,
}

#[derive(Debug, thiserror::Error)]
pub enum SymbolizerError {
    #[error("cannot start the symbolizer thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Debuginfod(#[from] DebuginfodError),
}

#[derive(Debug, thiserror::Error)]
#[error("the symbolizer thread is gone")]
pub struct SymbolizerGone;

impl SymbolizerHandle {
    pub fn spawn() -> Result<Self, SymbolizerError> {
        let debuginfod = Debuginfod::from_env()?;
        let (requests, incoming) = mpsc::channel::<Request>();
        let fetcher = debuginfod.clone();
        thread::Builder::new()
            .name("symbolizer".into())
            .spawn(move || {
                let worker = Worker::new(fetcher);
                for request in incoming {
                    // The agent may have stopped waiting: nothing to do then.
                    let _ = match request {
                        Request::Symbolize { pid, stacks, reply } => {
                            reply.send(worker.symbolize(pid, stacks))
                        }
                        Request::Rename {
                            stacks,
                            settle,
                            reply,
                        } => reply.send(worker.rename(stacks, settle)),
                    };
                }
            })
            .map_err(SymbolizerError::Thread)?;
        Ok(Self {
            requests,
            debuginfod,
        })
    }

    /// Caches the memory map of process `pid` while it exists, for stacks symbolized
    /// after it is gone.
    pub async fn remember(&self, pid: NonZeroU32) -> Result<(), SymbolizerGone> {
        self.symbolize(pid, Vec::new()).await.map(drop)
    }

    /// Symbolizes `stacks` of process `pid`; each comes back with its id.
    pub async fn symbolize(
        &self,
        pid: NonZeroU32,
        stacks: Vec<StackRequest>,
    ) -> Result<NamedStacks, SymbolizerGone> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Symbolize { pid, stacks, reply })
            .map_err(|_| SymbolizerGone)?;
        answer.await.map_err(|_| SymbolizerGone)
    }

    /// How many debug files debuginfod has brought so far; None without debuginfod.
    pub fn debug_files_arrived(&self) -> Option<u64> {
        self.debuginfod.as_ref().map(Debuginfod::arrived)
    }

    /// The stacks of `stacks` that debug files fetched since they were symbolized name
    /// better, after waiting up to `settle` for the fetches under way.
    pub async fn rename(
        &self,
        stacks: NamedStacks,
        settle: Option<Duration>,
    ) -> Result<NamedStacks, SymbolizerGone> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Rename {
                stacks,
                settle,
                reply,
            })
            .map_err(|_| SymbolizerGone)?;
        answer.await.map_err(|_| SymbolizerGone)
    }
}
