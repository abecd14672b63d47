//! The run after the first attach: reports every interval, and keeps up with the traced
//! processes' lives (the eBPF side's events, the started command's execs and exit, the
//! targets' exits) until the end.

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
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc::UnboundedReceiver,
    time::{Instant, MissedTickBehavior},
};

use super::{
    facts, fd,
    lifetime::{LifeEvent, Lifetime},
    registry::Registry,
};
use crate::{
    analyze::{self, Moment, OLD_AFTER_INTERVALS, Plumbing, Sort, Suppressions},
    attach::{self, Attacher, Image, ImageError, Scope},
    kernel::{self, KernelMaps, Mode, Sampling, Scan, SiteState},
    output::{Output, ProcessSummary},
    serve::Latest,
    snapshot::Snapshot,
    symbolize::{NamedStacks, StackRequest, SymbolizerHandle},
    unwind::{FileTable, Wait},
};

pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Reports of a process with not one allocation or free seen before leakbpf says so.
const SILENT_REPORTS: u64 = 3;

/// Stacks sent to the symbolizer in one request.
const SYMBOLIZE_AT_ONCE: usize = 256;

/// How long a final report waits for the debug files debuginfod is still fetching.
const DEBUGINFOD_PATIENCE: Duration = Duration::from_secs(10);

/// What the loop is told by the command line.
pub struct LoopSettings {
    pub mode: Mode,
    /// With `--all`: how many processes each interval reports on.
    pub top_processes: Option<usize>,
    /// Probes fire in every process (`--follow-forks`, `--all`), not one each.
    pub system_wide: bool,
    pub interval: Duration,
    pub top: usize,
    pub min_age: Option<Duration>,
    pub sampling: Option<Sampling>,
    pub count: Option<u64>,
    pub verbose: bool,
    pub sort: Sort,
    pub suppressions: Suppressions,
    pub plumbing: Plumbing,
}

/// What the final reports said, for the exit status of a CI gate.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Per process, the call sites whose verdict was leak at its final report.
    pub leaks: Vec<(u32, u64)>,
    /// Per process, the bytes outstanding at its final report (suppressed ones aside).
    pub outstanding: Vec<(u32, u64)>,
}

impl Verdicts {
    fn record(&mut self, snapshot: &Snapshot) {
        if snapshot.totals.leak_callsites > 0 {
            self.leaks
                .push((snapshot.pid, snapshot.totals.leak_callsites));
        }
        self.outstanding
            .push((snapshot.pid, snapshot.totals.outstanding_bytes));
    }
}

/// The signals that end a run: listened to from before the probes are attached, so one
/// that comes during the attach is not lost (nor kills the agent).
pub struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    /// Must run inside the runtime.
    pub fn listen() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }
}

pub struct EventLoop {
    pub settings: LoopSettings,
    pub registry: Registry,
    /// Owns every probe: they detach when the loop is dropped.
    pub attacher: Attacher,
    pub maps: KernelMaps,
    /// The unwind tables built on their own thread; taken by [`EventLoop::run`].
    pub tables: Option<UnboundedReceiver<FileTable>>,
    pub output: Output,
    /// With `--http`: where the latest reports are published for the server.
    pub latest: Option<Latest>,
    pub symbolizer: SymbolizerHandle,
    /// The command leakbpf started: its execs are held, and attached to, by ptrace.
    pub started: Option<NonZeroU32>,
    /// The same until its first exec: that exec is its start, not news.
    pub starting: Option<NonZeroU32>,
    /// Until the started command's first image is attached: it must be traceable.
    pub first_image: bool,
    pub verdicts: Verdicts,
}

impl EventLoop {
    /// Runs until the end; returns what the final reports said.
    pub async fn run(
        mut self,
        mut lifetime: Lifetime,
        logger: Option<Logger>,
        stop: Stop,
    ) -> Result<Verdicts> {
        let interval = self.settings.interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let Stop {
            mut interrupt,
            mut terminate,
        } = stop;
        let mut events = match self.maps.take_events() {
            Some(ring) => Some(fd::poll(ring).context("cannot poll the event ring")?),
            None => None,
        };
        let mut logger = match logger {
            Some(logger) => Some(fd::poll(logger).context("cannot poll the eBPF log")?),
            None => None,
        };
        let mut tables = self.tables.take();
        // A running process has its libraries mapped already: cache its memory map now,
        // so its stacks can be named even if it exits before the agent gets to them.
        self.remember_maps().await?;
        let mut ticks = 0;
        while self.settings.mode == Mode::All || !self.registry.is_empty() {
            tokio::select! {
                _ = ticker.tick() => {
                    self.remember_maps().await?;
                    self.registry.refresh_facts();
                    ticks += 1;
                    if self.settings.count.is_some_and(|count| ticks >= count) {
                        break;
                    }
                    self.report_interval(false).await?;
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                event = lifetime.next() => match event {
                    LifeEvent::Exec(pid) => {
                        let attached = self.attach_exec(pid);
                        // Let it run either way: on an error it is killed, and the run ends.
                        lifetime.resume();
                        attached?;
                    }
                    LifeEvent::Exiting(pid) => {
                        self.registry.refresh_facts();
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
                    // Its main thread, at the dynamic linker's notice that it mapped
                    // objects: their tables before their code runs.
                    LifeEvent::Stopped(pid) => {
                        if self.maps.take_loader_hold(pid.get()) {
                            self.describe(pid, Wait::Yes);
                            lifetime.resume();
                        } else {
                            lifetime.deliver();
                        }
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
                Some(table) = next_table(&mut tables) => {
                    for pid in self.attacher.built(&mut self.maps, table) {
                        if let Some(pid) = NonZeroU32::new(pid) {
                            self.describe(pid, Wait::No);
                        }
                    }
                }
            }
        }
        if let Some(ring) = events.as_mut() {
            self.handle_events(ring.get_mut()).await?;
        }
        self.report_interval(true).await?;
        self.attacher.programs().detach_all();
        self.output.finish()?;
        Ok(self.verdicts)
    }

    /// Tells the stack walk what process `pid` maps now. A process gone meanwhile needs
    /// nothing; anything else is said, and its stacks are cut where the walk does not
    /// know its code.
    fn describe(&mut self, pid: NonZeroU32, wait: Wait) {
        match self.attacher.describe(&mut self.maps, pid.get(), wait) {
            Ok(described) if self.settings.verbose => eprintln!(
                "leakbpf: unwind tables for pid {pid}: {described}{}",
                super::unwind_usage(&mut self.attacher, &mut self.maps)
            ),
            Ok(_) => {}
            Err(_) if !facts::is_alive(pid.get()) => {}
            Err(err) => eprintln!(
                "leakbpf: warning: pid {pid}: {:#}",
                anyhow::Error::from(err)
            ),
        }
    }

    /// Process `pid` has another image: the stack walk forgets the old one's code.
    fn forget_code(&mut self, pid: NonZeroU32) {
        if let Err(err) = self.attacher.forget(&mut self.maps, pid.get()) {
            eprintln!(
                "leakbpf: warning: pid {pid}: {:#}",
                anyhow::Error::from(err)
            );
        }
    }

    /// Where the probes for process `pid` fire.
    fn scope(&self, pid: NonZeroU32) -> Scope {
        if self.settings.system_wide {
            Scope::System
        } else {
            Scope::Process(pid)
        }
    }

    /// The started command (or, with `--follow-forks`, a process it started), held at an
    /// exec: the new image's probes are attached before it runs. The first image must be
    /// traceable; a later one that is not is said.
    fn attach_exec(&mut self, pid: NonZeroU32) -> Result<()> {
        let first = std::mem::take(&mut self.first_image);
        if let Some(process) = self.registry.get_mut(pid) {
            process.facts = facts::facts(pid.get());
        }
        let scope = self.scope(pid);
        match self
            .attacher
            .attach_image(&mut self.maps, Image::Exec(pid), scope)
        {
            Ok(attachment) => {
                // The processes a build or a test runner starts come by the thousand:
                // their probes are said with --verbose only.
                if self.started == Some(pid) || self.settings.verbose {
                    let whom = match facts::facts(pid.get()).executable {
                        Some(exe) => format!("pid {pid} ({exe})"),
                        None => format!("pid {pid}"),
                    };
                    eprintln!("{}", attachment.describe(&whom, self.settings.verbose));
                }
                // The old image's mappings are gone; the new executable and its dynamic
                // linker are mapped, and the linker's notice brings the rest.
                self.forget_code(pid);
                self.describe(pid, Wait::Yes);
                Ok(())
            }
            Err(err) if first => {
                // It must not run untraced.
                // SAFETY: a signal to our own child, held by ptrace.
                unsafe { libc::kill(pid.get() as libc::pid_t, libc::SIGKILL) };
                let program = facts::facts(pid.get()).executable.unwrap_or_default();
                Err(err).with_context(|| format!("cannot trace {program}"))
            }
            Err(err) => {
                eprintln!(
                    "leakbpf: warning: pid {pid} exec'd a program leakbpf cannot trace, whose \
                     allocations are not seen: {:#}",
                    anyhow::Error::from(err)
                );
                Ok(())
            }
        }
    }

    /// Caches the memory map of every traced process, for symbolizing after its exit.
    async fn remember_maps(&self) -> Result<()> {
        for pid in self.registry.map_owners() {
            self.symbolizer.remember(pid).await?;
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
            let parent = u32::try_from(event.value).ok().and_then(NonZeroU32::new);
            match EventKind::from_u32(event.kind) {
                Some(EventKind::NewStack) => {
                    if self.settings.mode == Mode::All && !self.registry.contains(pid) {
                        self.discovered(pid).await;
                    }
                    new_stacks.entry(pid).or_default().push(event.value);
                }
                Some(EventKind::Fork) => {
                    eprintln!("leakbpf: following pid {pid} (from pid {})", event.value);
                    self.registry.add(pid, parent);
                }
                Some(EventKind::Spawned) => {
                    if let Some(parent) = parent.and_then(|parent| self.registry.get_mut(parent)) {
                        parent.untraced_children += 1;
                    }
                }
                Some(EventKind::Exec) if self.starting == Some(pid) => self.starting = None,
                Some(EventKind::Exec) if self.registry.contains(pid) => {
                    // The old image's stacks go with its blocks.
                    new_stacks.remove(&pid);
                    self.executed(pid, event.value);
                    self.symbolizer.remember(pid).await?;
                }
                Some(EventKind::Exit) => {
                    for (pid, ids) in new_stacks.drain() {
                        self.symbolize(pid, ids).await?;
                    }
                    self.exited(pid, None).await?;
                }
                // With --all, every process on the system would have its code tabled:
                // only those reported on are, before their report.
                Some(EventKind::UnwindMiss | EventKind::LoaderNotice)
                    if self.settings.mode == Mode::All && !self.registry.contains(pid) =>
                {
                    self.discovered(pid).await;
                }
                Some(EventKind::UnwindMiss | EventKind::LoaderNotice)
                    if self.settings.mode != Mode::All && self.registry.contains(pid) =>
                {
                    self.describe(pid, Wait::No);
                }
                _ => {}
            }
        }
        for (pid, ids) in new_stacks {
            self.symbolize(pid, ids).await?;
        }
        Ok(())
    }

    /// With `--all`, a process seen for the first time: its memory map is cached, and
    /// what its allocator needs besides the C library's probes is added.
    async fn discovered(&mut self, pid: NonZeroU32) {
        self.registry.add(pid, None);
        let _ = self.symbolizer.remember(pid).await;
        let attached =
            self.attacher
                .attach_image(&mut self.maps, Image::Running(pid), Scope::System);
        // Best effort: a process gone already, or one with nothing more to probe.
        if let Err(err) = attached
            && facts::is_alive(pid.get())
            && matches!(err, ImageError::Attach(_))
        {
            eprintln!(
                "leakbpf: warning: pid {pid}: {:#}",
                anyhow::Error::from(err)
            );
        }
    }

    /// Process `pid` called exec at `exec_ns`: the blocks of its old image are gone, its
    /// stacks mean other code from now on, and its new image may allocate elsewhere.
    /// (The started command's new images, and its descendants', are attached at their
    /// exec stop instead.)
    fn executed(&mut self, pid: NonZeroU32, exec_ns: u64) {
        self.registry.executed(pid, exec_ns);
        if self.settings.mode == Mode::All {
            return;
        }
        eprintln!("leakbpf: pid {pid} called exec: the blocks of its old image are dropped");
        if self.started.is_some() {
            return;
        }
        let scope = self.scope(pid);
        match self
            .attacher
            .attach_image(&mut self.maps, Image::Exec(pid), scope)
        {
            Ok(_) => {
                self.forget_code(pid);
                self.describe(pid, Wait::No);
            }
            // Gone already: nothing to follow.
            Err(_) if !facts::is_alive(pid.get()) => {}
            Err(err) => eprintln!(
                "leakbpf: warning: pid {pid} after exec: {:#}",
                anyhow::Error::from(err)
            ),
        }
    }

    /// Process `pid` is gone: its final report (not with `--all`, where processes come
    /// and go by the thousand), then what the kernel kept of it.
    async fn exited(&mut self, pid: NonZeroU32, status: Option<String>) -> Result<()> {
        if self.registry.contains(pid) && self.settings.mode != Mode::All {
            let status = status.unwrap_or_else(|| "exited".to_owned());
            eprintln!("leakbpf: pid {pid} {status}");
            let sites = self.drain()?.remove(&pid.get()).unwrap_or_default();
            if let (Some(snapshot), Some(latest)) =
                (self.report(pid, sites, true).await?, &self.latest)
            {
                latest.update(snapshot);
            }
        }
        // With one traced process, the kernel's counters are its own and outlive it.
        let forget = self.settings.mode != Mode::One(pid);
        self.registry.remove(pid, forget);
        self.attacher.forget(&mut self.maps, pid.get())?;
        Ok(())
    }

    /// Symbolizes the stacks of process `pid` among `ids` not symbolized yet.
    async fn symbolize(&mut self, pid: NonZeroU32, mut ids: Vec<u64>) -> Result<()> {
        let owner = self.registry.map_owner(pid);
        let Some(process) = self.registry.get_mut(pid) else {
            return Ok(());
        };
        ids.sort_unstable();
        ids.dedup();
        let mut requests: Vec<StackRequest> = Vec::new();
        for id in ids {
            if process.frames.contains_key(&id) {
                continue;
            }
            match self.maps.stack(id)? {
                Some(addresses) => requests.push((id, addresses)),
                None => {
                    process.frames.insert(id, Arc::from(Vec::new()));
                }
            }
        }
        // In slices: what blazesym returns for a burst of thousands of new stacks at
        // once would be the agent's peak memory.
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().saturating_sub(SYMBOLIZE_AT_ONCE));
            for (id, mut frames) in self.symbolizer.symbolize(owner, rest).await? {
                self.settings.plumbing.mark(&mut frames);
                process.frames.insert(id, Arc::from(frames));
            }
        }
        Ok(())
    }

    /// The call sites of every process, from one scan of the allocations, once the
    /// stale ones are dropped.
    fn drain(&mut self) -> Result<HashMap<u32, Vec<SiteState>>> {
        let stale = self.registry.take_stale();
        if !stale.is_empty() {
            self.maps.forget(&stale)?;
        }
        let now = kernel::boot_time_ns();
        let before =
            |age: Duration| now.saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
        Ok(self.maps.sites(Scan {
            allocated_before_ns: self.settings.min_age.map(before),
            old_before_ns: before(self.settings.interval * OLD_AFTER_INTERVALS),
            sampling: self.settings.sampling,
        })?)
    }

    /// A report on every traced process; with `--all`, on the processes holding the
    /// most, after a summary of them.
    async fn report_interval(&mut self, is_final: bool) -> Result<()> {
        let mut drained = self.drain()?;
        let pids: Vec<NonZeroU32> = match self.settings.top_processes {
            None => self.registry.pids(),
            Some(top) => {
                let mut summaries: Vec<ProcessSummary> = drained
                    .iter()
                    .filter_map(|(&pid, sites)| {
                        let pid = NonZeroU32::new(pid)?;
                        Some(ProcessSummary {
                            pid,
                            command: facts::facts(pid.get()).command.unwrap_or_default(),
                            bytes: sites.iter().map(|s| s.bytes).sum(),
                            allocations: sites.iter().map(|s| s.allocations).sum(),
                            callsites: sites.len(),
                        })
                    })
                    .collect();
                summaries.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.pid.cmp(&b.pid)));
                summaries.truncate(top);
                self.output.write_summary(&summaries, is_final)?;
                // Those reported on get their code tabled: their next stacks are whole.
                for summary in summaries.iter().filter(|_| !is_final) {
                    if !self.attacher.describes(summary.pid.get()) {
                        self.describe(summary.pid, Wait::No);
                    }
                }
                summaries.iter().map(|s| s.pid).collect()
            }
        };
        let mut round = Vec::new();
        for pid in pids {
            let sites = drained.remove(&pid.get()).unwrap_or_default();
            round.extend(self.report(pid, sites, is_final).await?);
        }
        if let Some(latest) = &self.latest {
            latest.replace(round);
        }
        Ok(())
    }

    /// Names the frames of process `pid` that debug files debuginfod brought since its
    /// last report name. Its final report waits a little for the fetches under way.
    async fn rename(&mut self, pid: NonZeroU32, is_final: bool) -> Result<()> {
        let Some(arrived) = self.symbolizer.debug_files_arrived() else {
            return Ok(());
        };
        let Some(process) = self.registry.get_mut(pid) else {
            return Ok(());
        };
        if !is_final && process.debug_files_seen == arrived {
            return Ok(());
        }
        let unnamed: NamedStacks = process
            .frames
            .iter()
            .filter(|(_, frames)| {
                frames
                    .iter()
                    .any(|frame| frame.function.is_none() && frame.build_id.is_some())
            })
            .map(|(&id, frames)| (id, frames.to_vec()))
            .collect();
        if unnamed.is_empty() {
            process.debug_files_seen = arrived;
            return Ok(());
        }
        let settle = is_final.then_some(DEBUGINFOD_PATIENCE);
        let renamed = self.symbolizer.rename(unnamed, settle).await?;
        let arrived = self.symbolizer.debug_files_arrived().unwrap_or(arrived);
        let Some(process) = self.registry.get_mut(pid) else {
            return Ok(());
        };
        process.debug_files_seen = arrived;
        for (id, mut frames) in renamed {
            self.settings.plumbing.mark(&mut frames);
            process.frames.insert(id, Arc::from(frames));
        }
        Ok(())
    }

    /// Writes a report on process `pid`, holding `sites`, and returns it (None when the
    /// process is not traced).
    async fn report(
        &mut self,
        pid: NonZeroU32,
        sites: Vec<SiteState>,
        is_final: bool,
    ) -> Result<Option<Snapshot>> {
        self.registry.add(pid, None);
        let now_ns = kernel::boot_time_ns();
        let (interval, top, sort) = (
            self.settings.interval,
            self.settings.top,
            self.settings.sort,
        );
        // Every site named: stacks that differ only inside allocation plumbing are one
        // site, and suppressions match any site's frames. (Most were named as they came.)
        self.symbolize(pid, sites.iter().map(|s| s.stack_id).collect())
            .await?;
        self.rename(pid, is_final).await?;
        let Some(process) = self.registry.get_mut(pid) else {
            return Ok(None);
        };
        let frames = &process.frames;
        let sites = analyze::fold(sites, |id| {
            frames
                .get(&id)
                .cloned()
                .unwrap_or_else(|| Arc::from(Vec::new()))
        });
        let ranked = process.history.observe(sites, now_ns, interval, sort);
        let counters = self
            .maps
            .counters(pid.get(), matches!(self.settings.mode, Mode::One(_)))?;
        let Some(process) = self.registry.get_mut(pid) else {
            return Ok(None);
        };
        process.reports += 1;
        let silent = counters.allocations + counters.frees + counters.unknown_frees == 0;
        if silent && process.reports == SILENT_REPORTS && self.settings.mode != Mode::All {
            // An allocator leakbpf does not probe must never pass for a quiet process.
            let providers = attach::malloc_providers(pid);
            eprintln!(
                "leakbpf: warning: pid {pid}: no allocation or free seen in {} reports: it \
                 does not allocate, or allocates through code leakbpf does not probe \
                 (malloc is defined in: {})",
                process.reports,
                if providers.is_empty() {
                    "no object it maps".to_owned()
                } else {
                    providers.join(", ")
                }
            );
        }
        let moment = Moment {
            pid: pid.get(),
            number: process.reports,
            is_final,
            interval,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            now_ns,
            counters,
            process: process.facts.clone(),
            rss: facts::rss(pid.get()),
            sampling: self.settings.sampling,
        };
        let frames = &process.frames;
        let snapshot =
            process
                .history
                .snapshot(moment, ranked, top, &self.settings.suppressions, |id| {
                    frames
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| Arc::from(Vec::new()))
                });
        if is_final {
            self.verdicts.record(&snapshot);
        }
        self.output.write(&snapshot)?;
        if is_final && process.untraced_children > 0 {
            eprintln!(
                "leakbpf: pid {pid} started {} processes that were not traced \
                 (--follow-forks traces them)",
                process.untraced_children
            );
        }
        Ok(Some(snapshot))
    }
}

/// The next table built on the unwinder's thread; never, once it is gone.
async fn next_table(tables: &mut Option<UnboundedReceiver<FileTable>>) -> Option<FileTable> {
    match tables {
        Some(tables) => tables.recv().await,
        None => std::future::pending().await,
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
