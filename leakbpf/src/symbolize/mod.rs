//! Turns stacks of return addresses into named frames, with blazesym.
//!
//! blazesym's `Symbolizer` caches parsed ELF and DWARF data, so one lives for the whole
//! run; it is not `Send`, so it lives on a thread of its own, fed through a channel with
//! whole batches of stacks.

use std::{num::NonZeroU32, sync::mpsc, thread};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::snapshot::hex;

mod worker;

use worker::Worker;

/// One frame of a symbolized stack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The return address, as the process saw it.
    #[serde(with = "hex")]
    pub address: u64,
    /// Demangled function name.
    pub function: Option<String>,
    /// The object file the address is in.
    pub module: Option<String>,
    /// The address's offset in that file.
    #[serde(with = "hex::option")]
    pub offset: Option<u64>,
    /// The build id of that file (its `.note.gnu.build-id`), in hex, when it has one.
    pub build_id: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// A function inlined into the frame below it: it shares its address.
    pub inlined: bool,
    /// Allocation plumbing between the allocator and the call site (see
    /// `analyze::plumbing`), marked once the frames are named.
    pub allocator: bool,
}

/// A stack to symbolize: its id and return addresses, innermost first.
pub type StackRequest = (u64, Vec<u64>);

struct Request {
    pid: NonZeroU32,
    stacks: Vec<StackRequest>,
    reply: oneshot::Sender<Vec<(u64, Vec<Frame>)>>,
}

/// The handle to the symbolizing thread.
pub struct SymbolizerHandle {
    requests: mpsc::Sender<Request>,
}

#[derive(Debug, thiserror::Error)]
#[error("the symbolizer thread is gone")]
pub struct SymbolizerGone;

impl SymbolizerHandle {
    pub fn spawn() -> std::io::Result<Self> {
        let (requests, incoming) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("symbolizer".into())
            .spawn(move || {
                let worker = Worker::new();
                for request in incoming {
                    let frames = worker.symbolize(request.pid, request.stacks);
                    // The agent may have stopped waiting: nothing to do then.
                    let _ = request.reply.send(frames);
                }
            })?;
        Ok(Self { requests })
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
    ) -> Result<Vec<(u64, Vec<Frame>)>, SymbolizerGone> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { pid, stacks, reply })
            .map_err(|_| SymbolizerGone)?;
        answer.await.map_err(|_| SymbolizerGone)
    }
}
