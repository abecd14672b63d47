//! The processes a run reports on, each with its report history, its symbolized
//! stacks and what is known of it; and what the kernel is to forget of those gone.

use std::{collections::HashMap, num::NonZeroU32, sync::Arc};

use indexmap::IndexMap;

use super::facts;
use crate::{analyze::History, kernel::Forget, snapshot::ProcessFacts, symbolize::Frame};

/// One traced process.
pub struct Traced {
    pub history: History,
    /// Reports written about it so far.
    pub reports: u64,
    /// Its symbolized stacks by stack id: each is symbolized once, and renamed when
    /// debuginfod brings a debug file that names more of it.
    pub frames: HashMap<u64, Arc<[Frame]>>,
    /// How many debug files debuginfod had brought when its stacks were last renamed.
    pub debug_files_seen: u64,
    /// A forked child that has not called exec: its memory map is a copy of its
    /// parent's, which names its stacks should it exit at once. (A child that loads a
    /// library of its own before exec is named by its parent's map all the same.)
    pub forked_from: Option<NonZeroU32>,
    /// Processes it created that are not traced (no `--follow-forks`).
    pub untraced_children: u64,
    /// The last facts read while it ran: a report after its exit still says what it was.
    pub facts: ProcessFacts,
}

impl Traced {
    fn new(pid: NonZeroU32, forked_from: Option<NonZeroU32>) -> Self {
        Self {
            history: History::default(),
            reports: 0,
            frames: HashMap::new(),
            debug_files_seen: 0,
            forked_from,
            untraced_children: 0,
            facts: facts::facts(pid.get()),
        }
    }
}

/// The traced processes, in the order they became known: reports follow it.
#[derive(Default)]
pub struct Registry {
    processes: IndexMap<NonZeroU32, Traced>,
    /// What the kernel is to drop before its next drain.
    stale: Vec<Forget>,
}

impl Registry {
    pub fn new(pids: &[NonZeroU32]) -> Self {
        let mut registry = Self::default();
        for &pid in pids {
            registry.add(pid, None);
        }
        registry
    }

    /// Adds `pid`, unless known already.
    pub fn add(&mut self, pid: NonZeroU32, forked_from: Option<NonZeroU32>) -> &mut Traced {
        self.processes
            .entry(pid)
            .or_insert_with(|| Traced::new(pid, forked_from))
    }

    pub fn get_mut(&mut self, pid: NonZeroU32) -> Option<&mut Traced> {
        self.processes.get_mut(&pid)
    }

    pub fn contains(&self, pid: NonZeroU32) -> bool {
        self.processes.contains_key(&pid)
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    pub fn pids(&self) -> Vec<NonZeroU32> {
        self.processes.keys().copied().collect()
    }

    /// The process whose memory map names the stacks of `pid`: its own, or for a child
    /// that has not called exec, its parent's (or theirs).
    pub fn map_owner(&self, pid: NonZeroU32) -> NonZeroU32 {
        let mut owner = pid;
        while let Some(parent) = self.processes.get(&owner).and_then(|p| p.forked_from) {
            owner = parent;
        }
        owner
    }

    /// The processes whose own memory map is theirs (not a forked copy).
    pub fn map_owners(&self) -> impl Iterator<Item = NonZeroU32> + '_ {
        self.processes
            .iter()
            .filter(|(_, process)| process.forked_from.is_none())
            .map(|(&pid, _)| pid)
    }

    /// `pid` called exec at `exec_ns`: its old image's blocks and stacks are gone, and
    /// its memory map is its own from now on.
    pub fn executed(&mut self, pid: NonZeroU32, exec_ns: u64) {
        self.stale.push(Forget::Before {
            pid: pid.get(),
            exec_ns,
        });
        if let Some(process) = self.processes.get_mut(&pid) {
            process.frames.clear();
            process.forked_from = None;
            process.facts = facts::facts(pid.get());
        }
    }

    /// `pid` is gone; with `forget`, the kernel drops all it kept of it.
    pub fn remove(&mut self, pid: NonZeroU32, forget: bool) -> Option<Traced> {
        if forget {
            self.stale.push(Forget::Process(pid.get()));
        }
        self.processes.shift_remove(&pid)
    }

    /// What the kernel is to drop, once.
    pub fn take_stale(&mut self) -> Vec<Forget> {
        std::mem::take(&mut self.stale)
    }

    /// Reads the facts of every running process again (a process may change its name).
    pub fn refresh_facts(&mut self) {
        for (pid, process) in &mut self.processes {
            let facts = facts::facts(pid.get());
            if facts.command.is_some() {
                process.facts = facts;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_forked_child_is_named_by_its_ancestor_until_it_execs() {
        let mut registry = Registry::new(&[pid(10)]);
        registry.add(pid(11), Some(pid(10)));
        registry.add(pid(12), Some(pid(11)));
        assert_eq!(registry.map_owner(pid(12)), pid(10));
        assert_eq!(registry.map_owners().collect::<Vec<_>>(), [pid(10)]);
        registry.executed(pid(11), 5);
        assert_eq!(registry.map_owner(pid(12)), pid(11));
        assert_eq!(
            registry.take_stale(),
            [Forget::Before {
                pid: 11,
                exec_ns: 5
            }]
        );
        assert!(registry.take_stale().is_empty());
    }

    #[test]
    fn keeps_the_order_processes_came_in() {
        let mut registry = Registry::new(&[pid(30), pid(20)]);
        registry.add(pid(25), None);
        registry.remove(pid(20), true);
        assert_eq!(registry.pids(), [pid(30), pid(25)]);
        assert_eq!(registry.take_stale(), [Forget::Process(20)]);
    }
}
