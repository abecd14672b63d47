//! The agent: attaches to the targets, then reports on each every interval until a
//! signal or `--count` ends the run, or a target exits; every report run ends with one
//! final report per process.

use std::{
    collections::HashMap,
    ffi::OsString,
    num::NonZeroU32,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, RingBuf};
use leakbpf_common::NewStack;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

use crate::{
    child::{ChildEvent, TracedChild},
    clock, fd,
    kernel_maps::KernelMaps,
    objects,
    output::{Format, Output},
    privileges,
    probes::{self, Probe},
    process::{self, ExitWatch, PausedChild},
    report::{self, Moment, ReportBuilder},
    symbolizer::{Frame, StackRequest, SymbolizerHandle},
    tracer::{Attached, Capacity, Tracer},
};

pub enum Target {
    /// Running processes.
    Pids(Vec<NonZeroU32>),
    /// A command line: the program, then its arguments.
    Command(Vec<OsString>),
}

pub struct Settings {
    pub target: Target,
    pub interval: Duration,
    pub top: usize,
    pub min_age: Option<Duration>,
    pub count: Option<u64>,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub output_mode: u32,
    pub capacity: Capacity,
    pub verbose: bool,
    /// Empty programs instead of the real ones: the benchmark's floor.
    pub floor: bool,
    /// Also probe the C allocation functions under this prefix.
    pub symbol_prefix: Option<String>,
}

pub fn run(settings: Settings) -> Result<()> {
    privileges::check()?;
    // Before anything is attached, so a bad path costs nothing.
    let output = Output::open(
        settings.format,
        settings.output.as_deref(),
        settings.output_mode,
    )?;
    let prefix = settings.symbol_prefix.as_deref();
    let mut child = None;
    let targets: Vec<(NonZeroU32, Vec<Probe>)> = match &settings.target {
        Target::Pids(pids) => pids
            .iter()
            .map(|&pid| {
                let objects = objects::of_process(pid.get())?;
                let probes =
                    probes::plan(&objects, prefix).with_context(|| format!("pid {pid}"))?;
                Ok((pid, probes))
            })
            .collect::<Result<_>>()?,
        Target::Command(command) => {
            let program = command.first().context("no command given")?;
            let exe = process::resolve(program)?;
            let objects = objects::of_command(&exe)
                .with_context(|| format!("cannot inspect {}", exe.display()))?;
            let probes = probes::plan(&objects, prefix)
                .with_context(|| format!("cannot trace {}", exe.display()))?;
            // Forks now, while this process is still single-threaded.
            let paused = process::spawn_paused(&exe, command)?;
            let pid = paused.pid;
            child = Some(paused);
            vec![(pid, probes)]
        }
    };
    privileges::raise_memlock_limit();

    let pids: Vec<NonZeroU32> = targets.iter().map(|(pid, _)| *pid).collect();
    let all_probes: Vec<Probe> = targets.iter().flat_map(|(_, p)| p.clone()).collect();
    let (mut tracer, mut maps) = Tracer::load(settings.capacity, &pids, &all_probes)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the agent's runtime")?;
    // Taken before attaching, so an exit during the attach is seen.
    let lifetime = match &child {
        // Seized before it runs, so even an exit in its first microseconds is held.
        Some(child) => Lifetime::Child(
            runtime
                .block_on(async { TracedChild::seize(child.pid) })
                .context("cannot supervise the command")?,
        ),
        None => runtime.block_on(async { Lifetime::watch(&pids) })?,
    };
    for (pid, probes) in &targets {
        maps.trace(pid.get())?;
        let attached = match tracer.attach(probes, *pid, settings.floor) {
            Ok(attached) => attached,
            Err(_) if !process::is_alive(pid.get()) => {
                bail!("pid {pid} exited while leakbpf was attaching to it")
            }
            Err(err) => return Err(err.into()),
        };
        announce(*pid, probes, &attached, settings.verbose);
    }
    let logger = settings.verbose.then(|| tracer.logger()).flatten();
    if let Some(child) = child {
        release(child)?;
    }
    let monitor = Monitor {
        processes: pids.iter().map(|&pid| Process::new(pid)).collect(),
        maps,
        output,
        frames: HashMap::new(),
        symbolizer: SymbolizerHandle::spawn().context("cannot start the symbolizer")?,
        ticks: 0,
        interval: settings.interval,
        top: settings.top,
        min_age: settings.min_age,
    };
    let result = runtime.block_on(monitor.run(lifetime, settings.count, logger));
    // Every probe detaches here, whatever the result.
    drop(tracer);
    result
}

fn announce(pid: NonZeroU32, probes: &[Probe], attached: &[Attached], verbose: bool) {
    let mut objects: Vec<String> = probes
        .iter()
        .map(|p| p.object.path.display().to_string())
        .collect();
    objects.dedup();
    eprintln!(
        "leakbpf: attached {} probes to pid {pid} in {}",
        attached.len(),
        objects.join(", ")
    );
    if verbose {
        for attached in attached {
            eprintln!("leakbpf:   {:<11} {}", attached.program, attached.probe);
        }
        for wrapper in probes.iter().filter(|p| !p.wrapper_calls.is_empty()) {
            eprintln!(
                "leakbpf:   stepped over {} ({} calls)",
                wrapper,
                wrapper.wrapper_calls.len()
            );
        }
    }
}

fn release(child: PausedChild) -> Result<()> {
    let pid = child.pid;
    child
        .release()
        .with_context(|| format!("cannot start the command (pid {pid})"))
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// What happens to the traced processes.
enum LifeEvent {
    /// The started command is held at its exit (see [`TracedChild`]).
    Exiting(NonZeroU32),
    /// A process is gone; how, when it was a command leakbpf started.
    Exited(NonZeroU32, Option<String>),
}

/// How the agent learns that targets end.
enum Lifetime {
    /// Processes it attached to: a pidfd each, watched by a task that reports the exit.
    Pids(mpsc::UnboundedReceiver<NonZeroU32>),
    /// A command it started.
    Child(TracedChild),
}

impl Lifetime {
    /// Watches `pids`; must run inside the runtime.
    fn watch(pids: &[NonZeroU32]) -> Result<Self> {
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
    async fn next(&mut self) -> LifeEvent {
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

    fn resume(&self) {
        if let Lifetime::Child(child) = self {
            child.resume();
        }
    }
}

/// A traced process and its report history.
struct Process {
    pid: NonZeroU32,
    builder: ReportBuilder,
    reports: u64,
}

impl Process {
    fn new(pid: NonZeroU32) -> Self {
        Self {
            pid,
            builder: ReportBuilder::default(),
            reports: 0,
        }
    }
}

struct Monitor {
    /// The processes still running, each reported on until it exits.
    processes: Vec<Process>,
    maps: KernelMaps,
    output: Output,
    /// Symbolized stacks by process and stack id: each is symbolized once.
    frames: HashMap<(NonZeroU32, u64), Arc<[Frame]>>,
    symbolizer: SymbolizerHandle,
    ticks: u64,
    interval: Duration,
    top: usize,
    min_age: Option<Duration>,
}

impl Monitor {
    async fn run(
        mut self,
        mut lifetime: Lifetime,
        count: Option<u64>,
        logger: Option<Logger>,
    ) -> Result<()> {
        let mut ticker = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut new_stacks = match self.maps.take_new_stacks() {
            Some(ring) => Some(fd::poll(ring).context("cannot poll the new-stack ring")?),
            None => None,
        };
        let mut logger = match logger {
            Some(logger) => Some(fd::poll(logger).context("cannot poll the eBPF log")?),
            None => None,
        };
        // A running process has its libraries mapped already: cache its memory map now,
        // so its stacks can be named even if it exits before the agent gets to them.
        self.remember_maps().await?;
        while !self.processes.is_empty() {
            tokio::select! {
                _ = ticker.tick() => {
                    self.remember_maps().await?;
                    self.ticks += 1;
                    let last = count.is_some_and(|count| self.ticks >= count);
                    if last {
                        break;
                    }
                    self.report(&self.pids(), false).await?;
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                event = lifetime.next() => match event {
                    LifeEvent::Exiting(pid) => {
                        // Its memory map is still there: name every stack seen so far.
                        if let Some(ring) = new_stacks.as_mut() {
                            self.symbolize_new(ring.get_mut()).await?;
                        }
                        self.symbolizer.remember(pid).await?;
                        lifetime.resume();
                    }
                    LifeEvent::Exited(pid, status) => {
                        let status = status.unwrap_or_else(|| "exited".to_owned());
                        eprintln!("leakbpf: pid {pid} {status}");
                        if let Some(ring) = new_stacks.as_mut() {
                            self.symbolize_new(ring.get_mut()).await?;
                        }
                        self.report(&[pid], true).await?;
                        self.processes.retain(|p| p.pid != pid);
                    }
                },
                ready = readable(&mut new_stacks) => {
                    let mut guard = ready?;
                    self.symbolize_new(guard.get_inner_mut()).await?;
                    guard.clear_ready();
                    // A notice written after the drain but before the readiness was
                    // cleared raised no new wake-up: read once more.
                    self.symbolize_new(guard.get_inner_mut()).await?;
                }
                ready = readable(&mut logger) => {
                    let mut guard = ready?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
        if let Some(ring) = new_stacks.as_mut() {
            self.symbolize_new(ring.get_mut()).await?;
        }
        self.report(&self.pids(), true).await?;
        Ok(())
    }

    /// Caches the memory map of every traced process, for symbolizing after its exit.
    async fn remember_maps(&self) -> Result<()> {
        for process in &self.processes {
            self.symbolizer.remember(process.pid).await?;
        }
        Ok(())
    }

    /// Symbolizes the stacks announced since the last call, while their process runs.
    async fn symbolize_new(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        let mut ids: HashMap<NonZeroU32, Vec<u64>> = HashMap::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<NewStack>() {
                // SAFETY: the eBPF side writes whole `NewStack`s; the read is unaligned-safe.
                let notice: NewStack = unsafe { item.as_ptr().cast::<NewStack>().read_unaligned() };
                if let Some(pid) = NonZeroU32::new(notice.tgid) {
                    ids.entry(pid).or_default().push(notice.stack_id);
                }
            }
        }
        for (pid, ids) in ids {
            self.symbolize(pid, ids).await?;
        }
        Ok(())
    }

    /// Symbolizes the stacks of process `pid` among `ids` not symbolized yet.
    async fn symbolize(&mut self, pid: NonZeroU32, ids: Vec<u64>) -> Result<()> {
        let mut requests: Vec<StackRequest> = Vec::new();
        for id in ids {
            if self.frames.contains_key(&(pid, id))
                || requests.iter().any(|(known, _)| *known == id)
            {
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
        for (id, frames) in self.symbolizer.symbolize(pid, requests).await? {
            self.frames.insert((pid, id), Arc::from(frames));
        }
        Ok(())
    }

    fn pids(&self) -> Vec<NonZeroU32> {
        self.processes.iter().map(|p| p.pid).collect()
    }

    /// Writes a report on each of the traced processes `pids`, from one drain.
    async fn report(&mut self, pids: &[NonZeroU32], is_final: bool) -> Result<()> {
        let counters = self.maps.counters()?;
        let now_ns = clock::boot_time_ns();
        let cutoff = self
            .min_age
            .map(|age| now_ns.saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX)));
        let mut drained = self.maps.sites(cutoff)?;
        for &pid in pids {
            let mut sites = drained.remove(&pid.get()).unwrap_or_default();
            report::rank(&mut sites);
            self.symbolize(
                pid,
                sites.iter().take(self.top).map(|s| s.stack_id).collect(),
            )
            .await?;
            let Some(process) = self.processes.iter_mut().find(|p| p.pid == pid) else {
                continue;
            };
            process.reports += 1;
            let moment = Moment {
                pid: pid.get(),
                number: process.reports,
                is_final,
                interval: self.interval,
                timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                now_ns,
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
