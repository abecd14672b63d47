//! The run after attaching: reports every interval, and keeps up with the traced
//! processes' lives (the eBPF side's events, the targets' exits) until the end.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use leakbpf_common::{Event, EventKind};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    clock, fd,
    kernel_maps::{KernelMaps, SiteState},
    lifetime::{LifeEvent, Lifetime},
    objects,
    output::{Output, ProcessSummary},
    probes, process,
    report::{self, Moment, ReportBuilder},
    symbolizer::{Frame, StackRequest, SymbolizerHandle},
    tracer::{Mode, Scope, Tracer},
};

pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Stacks sent to the symbolizer in one request.
const SYMBOLIZE_AT_ONCE: usize = 256;

/// A traced process and its report history.
pub struct Process {
    pid: NonZeroU32,
    builder: ReportBuilder,
    reports: u64,
    /// Processes it created that are not traced (no `--follow-forks`).
    spawned: u64,
}

impl Process {
    pub fn new(pid: NonZeroU32) -> Self {
        Self {
            pid,
            builder: ReportBuilder::default(),
            reports: 0,
            spawned: 0,
        }
    }
}

pub struct Monitor {
    /// The processes reported on, each until it exits. With `--all`, those seen so far.
    pub processes: Vec<Process>,
    pub mode: Mode,
    /// With `--all`: how many processes each interval reports on.
    pub top_processes: Option<usize>,
    /// Probes fire in every process (`--follow-forks`, `--all`), not one each.
    pub system_wide: bool,
    /// The command leakbpf started, until its exec: that exec is its start, not news.
    pub starting: Option<NonZeroU32>,
    pub prefix: Option<String>,
    pub floor: bool,
    /// Owns every probe: they detach when the monitor is dropped.
    pub tracer: Tracer,
    pub maps: KernelMaps,
    pub output: Output,
    /// Symbolized stacks by process and stack id: each is symbolized once.
    pub frames: HashMap<(NonZeroU32, u64), Arc<[Frame]>>,
    /// Forked children that have not called exec → their parent, whose memory map
    /// theirs is a copy of: a child that exits at once is named with it. (A child that
    /// loads a library of its own before exec is named by its parent's map all the same.)
    pub map_of: HashMap<NonZeroU32, NonZeroU32>,
    pub symbolizer: SymbolizerHandle,
    /// Processes whose blocks are to be dropped before the next drain: all of them
    /// (None: it exited), or those older than its exec.
    pub stale: Vec<(u32, Option<u64>)>,
    pub ticks: u64,
    pub interval: Duration,
    pub top: usize,
    pub min_age: Option<Duration>,
}

impl Monitor {
    pub async fn run(
        mut self,
        mut lifetime: Lifetime,
        count: Option<u64>,
        logger: Option<Logger>,
    ) -> Result<()> {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut events = match self.maps.take_events() {
            Some(ring) => Some(fd::poll(ring).context("cannot poll the event ring")?),
            None => None,
        };
        let mut logger = match logger {
            Some(logger) => Some(fd::poll(logger).context("cannot poll the eBPF log")?),
            None => None,
        };
        // A running process has its libraries mapped already: cache its memory map now,
        // so its stacks can be named even if it exits before the agent gets to them.
        self.remember_maps().await?;
        while self.mode == Mode::All || !self.processes.is_empty() {
            tokio::select! {
                _ = ticker.tick() => {
                    self.remember_maps().await?;
                    self.ticks += 1;
                    let last = count.is_some_and(|count| self.ticks >= count);
                    if last {
                        break;
                    }
                    self.report_interval(false).await?;
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                event = lifetime.next() => match event {
                    LifeEvent::Exiting(pid) => {
                        // Its memory map is still there: name every stack seen so far.
                        if let Some(ring) = events.as_mut() {
                            self.handle_events(ring.get_mut()).await?;
                        }
                        self.symbolizer.remember(pid).await?;
                        lifetime.resume();
                    }
                    LifeEvent::Exited(pid, status) => {
                        if let Some(ring) = events.as_mut() {
                            self.handle_events(ring.get_mut()).await?;
                        }
                        self.exited(pid, status).await?;
                    }
                },
                ready = readable(&mut events) => {
                    let mut guard = ready?;
                    self.handle_events(guard.get_inner_mut()).await?;
                    guard.clear_ready();
                    // An event written after the drain but before the readiness was
                    // cleared raised no new wake-up: read once more.
                    self.handle_events(guard.get_inner_mut()).await?;
                }
                ready = readable(&mut logger) => {
                    let mut guard = ready?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
        if let Some(ring) = events.as_mut() {
            self.handle_events(ring.get_mut()).await?;
        }
        self.report_interval(true).await?;
        Ok(())
    }

    /// Caches the memory map of every traced process, for symbolizing after its exit.
    async fn remember_maps(&self) -> Result<()> {
        for process in &self.processes {
            if !self.map_of.contains_key(&process.pid) {
                self.symbolizer.remember(process.pid).await?;
            }
        }
        Ok(())
    }

    /// Reads the events since the last call: names new stacks while their process runs
    /// (its memory map may be gone by the time a report shows them), and keeps up with
    /// forks, execs and exits.
    async fn handle_events(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        let mut new_stacks: HashMap<NonZeroU32, Vec<u64>> = HashMap::new();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the eBPF side writes whole `Event`s; the read is unaligned-safe.
            let event: Event = unsafe { item.as_ptr().cast::<Event>().read_unaligned() };
            let Some(pid) = NonZeroU32::new(event.tgid) else {
                continue;
            };
            match EventKind::from_u32(event.kind) {
                Some(EventKind::NewStack) => {
                    if self.mode == Mode::All && !self.is_known(pid) {
                        self.discovered(pid).await?;
                    }
                    new_stacks.entry(pid).or_default().push(event.value);
                }
                Some(EventKind::Fork) => {
                    eprintln!("leakbpf: following pid {pid} (from pid {})", event.value);
                    self.processes.push(Process::new(pid));
                    if let Some(parent) = u32::try_from(event.value).ok().and_then(NonZeroU32::new)
                    {
                        self.map_of.insert(pid, parent);
                    }
                }
                Some(EventKind::Spawned) => {
                    if let Some(parent) = self
                        .processes
                        .iter_mut()
                        .find(|p| u64::from(p.pid.get()) == event.value)
                    {
                        parent.spawned += 1;
                    }
                }
                Some(EventKind::Exec) if self.starting == Some(pid) => self.starting = None,
                Some(EventKind::Exec) if self.is_known(pid) => {
                    // The old image's stacks go with its blocks; the new one is probed
                    // first, as its code runs already, then its map is read while the
                    // executable is mapped at least.
                    new_stacks.remove(&pid);
                    self.map_of.remove(&pid);
                    self.executed(pid, event.value);
                    self.symbolizer.remember(pid).await?;
                }
                Some(EventKind::Exit) => {
                    for (pid, ids) in new_stacks.drain() {
                        self.symbolize(pid, ids).await?;
                    }
                    self.exited(pid, None).await?;
                }
                _ => {}
            }
        }
        for (pid, ids) in new_stacks {
            self.symbolize(pid, ids).await?;
        }
        Ok(())
    }

    fn is_known(&self, pid: NonZeroU32) -> bool {
        self.processes.iter().any(|p| p.pid == pid)
    }

    /// With `--all`, a process seen for the first time: its memory map is cached, and
    /// what its allocator needs besides the C library's probes is added.
    async fn discovered(&mut self, pid: NonZeroU32) -> Result<()> {
        self.processes.push(Process::new(pid));
        let _ = self.symbolizer.remember(pid).await;
        // Best effort: a process gone already, or one with nothing more to probe.
        if let Ok(objects) = objects::of_process(pid.get())
            && let Ok(probes) = probes::plan(&objects, self.prefix.as_deref())
            && let Err(err) = self.tracer.attach(&probes, Scope::System, self.floor)
            && process::is_alive(pid.get())
        {
            eprintln!(
                "leakbpf: warning: pid {pid}: {:#}",
                anyhow::Error::from(err)
            );
        }
        Ok(())
    }

    /// Process `pid` called exec at `exec_ns`: the blocks of its old image are gone, its
    /// stacks mean other code from now on, and its new image may allocate elsewhere.
    fn executed(&mut self, pid: NonZeroU32, exec_ns: u64) {
        self.stale.push((pid.get(), Some(exec_ns)));
        self.frames.retain(|(owner, _), _| *owner != pid);
        if self.mode != Mode::All {
            eprintln!("leakbpf: pid {pid} called exec: the blocks of its old image are dropped");
        }
        // Its libraries are not mapped yet: ask its program interpreter which it will map.
        let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
        let scope = if self.system_wide {
            Scope::System
        } else {
            Scope::Process(pid)
        };
        let attached = objects::of_command(&exe)
            .map_err(anyhow::Error::from)
            .and_then(|objects| Ok(probes::plan(&objects, self.prefix.as_deref())?))
            .and_then(|probes| Ok(self.tracer.attach(&probes, scope, self.floor)?));
        match attached {
            Ok(_) => {}
            // Gone already: nothing to follow.
            Err(_) if !process::is_alive(pid.get()) => {}
            Err(err) => eprintln!("leakbpf: warning: pid {pid} after exec: {err:#}"),
        }
    }

    /// Process `pid` is gone: its final report (not with `--all`, where processes come
    /// and go by the thousand), then what the kernel kept of it.
    async fn exited(&mut self, pid: NonZeroU32, status: Option<String>) -> Result<()> {
        let known = self.is_known(pid);
        if known && self.mode != Mode::All {
            let status = status.unwrap_or_else(|| "exited".to_owned());
            eprintln!("leakbpf: pid {pid} {status}");
            let sites = self.drain()?.remove(&pid.get()).unwrap_or_default();
            self.report(pid, sites, true).await?;
        }
        self.processes.retain(|p| p.pid != pid);
        self.frames.retain(|(owner, _), _| *owner != pid);
        self.map_of.remove(&pid);
        if self.mode != Mode::One(pid) {
            self.stale.push((pid.get(), None));
        }
        Ok(())
    }

    /// Symbolizes the stacks of process `pid` among `ids` not symbolized yet.
    async fn symbolize(&mut self, pid: NonZeroU32, mut ids: Vec<u64>) -> Result<()> {
        ids.sort_unstable();
        ids.dedup();
        let mut requests: Vec<StackRequest> = Vec::new();
        for id in ids {
            if self.frames.contains_key(&(pid, id)) {
                continue;
            }
            match self.maps.stack(id)? {
                Some(addresses) => requests.push((id, addresses)),
                None => {
                    self.frames.insert((pid, id), Arc::from(Vec::new()));
                }
            }
        }
        if requests.is_empty() {
            return Ok(());
        }
        let mut map = pid;
        while let Some(&parent) = self.map_of.get(&map) {
            map = parent;
        }
        // In slices: what blazesym returns for a burst of thousands of new stacks at
        // once would be the agent's peak memory.
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().saturating_sub(SYMBOLIZE_AT_ONCE));
            for (id, frames) in self.symbolizer.symbolize(map, rest).await? {
                self.frames.insert((pid, id), Arc::from(frames));
            }
        }
        Ok(())
    }

    /// The call sites of every process, from one scan of the allocations, once the
    /// stale ones are dropped.
    fn drain(&mut self) -> Result<HashMap<u32, Vec<SiteState>>> {
        if !self.stale.is_empty() {
            self.maps.forget(&self.stale)?;
            self.stale.clear();
        }
        let cutoff = self.min_age.map(|age| {
            clock::boot_time_ns().saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX))
        });
        Ok(self.maps.sites(cutoff)?)
    }

    /// A report on every traced process; with `--all`, on the processes holding the
    /// most, after a summary of them.
    async fn report_interval(&mut self, is_final: bool) -> Result<()> {
        let mut drained = self.drain()?;
        let pids: Vec<NonZeroU32> = match self.top_processes {
            None => self.processes.iter().map(|p| p.pid).collect(),
            Some(top) => {
                let mut summaries: Vec<ProcessSummary> = drained
                    .iter()
                    .filter_map(|(&pid, sites)| {
                        Some(ProcessSummary::of(NonZeroU32::new(pid)?, sites))
                    })
                    .collect();
                summaries.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.pid.cmp(&b.pid)));
                summaries.truncate(top);
                self.output.write_summary(&summaries, is_final)?;
                summaries.iter().map(|s| s.pid).collect()
            }
        };
        for pid in pids {
            let sites = drained.remove(&pid.get()).unwrap_or_default();
            self.report(pid, sites, is_final).await?;
        }
        Ok(())
    }

    /// Writes a report on process `pid`, holding `sites`.
    async fn report(
        &mut self,
        pid: NonZeroU32,
        mut sites: Vec<SiteState>,
        is_final: bool,
    ) -> Result<()> {
        report::rank(&mut sites);
        self.symbolize(
            pid,
            sites.iter().take(self.top).map(|s| s.stack_id).collect(),
        )
        .await?;
        let counters = self
            .maps
            .counters(pid.get(), matches!(self.mode, Mode::One(_)))?;
        if !self.is_known(pid) {
            self.processes.push(Process::new(pid));
        }
        let Some(process) = self.processes.iter_mut().find(|p| p.pid == pid) else {
            return Ok(());
        };
        process.reports += 1;
        let moment = Moment {
            pid: pid.get(),
            number: process.reports,
            is_final,
            interval: self.interval,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            now_ns: clock::boot_time_ns(),
            counters,
        };
        let frames = &self.frames;
        let report = process.builder.build(moment, sites, self.top, |id| {
            frames
                .get(&(pid, id))
                .cloned()
                .unwrap_or_else(|| Arc::from(Vec::new()))
        });
        self.output.write(&report)?;
        if is_final && process.spawned > 0 {
            eprintln!(
                "leakbpf: pid {pid} started {} processes that were not traced \
                 (--follow-forks traces them)",
                process.spawned
            );
        }
        Ok(())
    }
}

/// Waits until `fd` is readable; never, when there is none.
async fn readable<T: std::os::fd::AsRawFd>(
    fd: &mut Option<AsyncFd<T>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, T>> {
    match fd {
        Some(fd) => fd.readable_mut().await,
        None => std::future::pending().await,
    }
}
