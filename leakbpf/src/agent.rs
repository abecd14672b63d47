//! The agent: attaches to the target, then reports every interval until a signal, the
//! target's exit or `--count` ends the run with one final report.

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
    time::{Instant, MissedTickBehavior},
};

use crate::{
    child::{ChildEvent, TracedChild},
    fd,
    kernel_maps::KernelMaps,
    objects,
    output::{Format, Output},
    privileges,
    probes::{self, Probe},
    process::{self, ExitWatch, PausedChild},
    report::{self, Moment, ReportBuilder},
    symbolizer::{Frame, StackRequest, SymbolizerHandle},
    tracer::{Capacity, Tracer},
};

pub enum Target {
    Pid(NonZeroU32),
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
    let (pid, objects, child) = match &settings.target {
        Target::Pid(pid) => {
            let objects = objects::of_process(pid.get())?;
            (*pid, objects, None)
        }
        Target::Command(command) => {
            let program = command.first().context("no command given")?;
            let exe = process::resolve(program)?;
            let objects = objects::of_command(&exe)
                .with_context(|| format!("cannot inspect {}", exe.display()))?;
            // Forks now, while this process is still single-threaded.
            let child = process::spawn_paused(&exe, command)?;
            (child.pid, objects, Some(child))
        }
    };
    let probes = probes::plan(&objects, settings.symbol_prefix.as_deref())
        .with_context(|| format!("pid {pid}"))?;
    privileges::raise_memlock_limit();

    let (mut tracer, maps) = Tracer::load(settings.capacity, pid, &probes)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the agent's runtime")?;
    // The pidfd is taken before attaching, so an exit during the attach is seen.
    let lifetime = match &child {
        // Seized before it runs, so even an exit in its first microseconds is held.
        Some(child) => Lifetime::Child(
            runtime
                .block_on(async { TracedChild::seize(child.pid) })
                .context("cannot supervise the command")?,
        ),
        None => Lifetime::Pid(runtime.block_on(async { ExitWatch::new(pid.get()) })?),
    };
    let attached = match tracer.attach(&probes, pid, settings.floor) {
        Ok(attached) => attached,
        Err(_) if !process::is_alive(pid.get()) => {
            bail!("pid {pid} exited while leakbpf was attaching to it")
        }
        Err(err) => return Err(err.into()),
    };
    announce(pid, &probes, &attached, settings.verbose);
    let logger = settings.verbose.then(|| tracer.logger()).flatten();
    if let Some(child) = child {
        release(child)?;
    }
    let monitor = Monitor {
        pid,
        maps,
        output,
        builder: ReportBuilder::default(),
        frames: HashMap::new(),
        symbolizer: SymbolizerHandle::spawn().context("cannot start the symbolizer")?,
        reports: 0,
        interval: settings.interval,
        top: settings.top,
        min_age: settings.min_age,
    };
    let result = runtime.block_on(monitor.run(lifetime, settings.count, logger));
    // Every probe detaches here, whatever the result.
    drop(tracer);
    result
}

fn announce(
    pid: NonZeroU32,
    probes: &[Probe],
    attached: &[crate::tracer::Attached],
    verbose: bool,
) {
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
    }
}

fn release(child: PausedChild) -> Result<()> {
    let pid = child.pid;
    child
        .release()
        .with_context(|| format!("cannot start the command (pid {pid})"))
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// How the agent learns that the target ends.
enum Lifetime {
    /// A process it attached to: a pidfd.
    Pid(ExitWatch),
    /// A command it started: held at its exit (see [`TracedChild`]).
    Child(TracedChild),
}

impl Lifetime {
    async fn next(&mut self) -> Option<ChildEvent> {
        match self {
            Lifetime::Pid(watch) => {
                watch.exited().await;
                None
            }
            Lifetime::Child(child) => child.next().await,
        }
    }

    fn resume(&self) {
        if let Lifetime::Child(child) = self {
            child.resume();
        }
    }
}

struct Monitor {
    pid: NonZeroU32,
    maps: KernelMaps,
    output: Output,
    builder: ReportBuilder,
    /// Symbolized stacks by id: each is symbolized once.
    frames: HashMap<u64, Arc<[Frame]>>,
    symbolizer: SymbolizerHandle,
    reports: u64,
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
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if count.is_some_and(|count| self.reports + 1 >= count) {
                        break;
                    }
                    self.report(false).await?;
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                event = lifetime.next() => match event {
                    Some(ChildEvent::Exiting) => {
                        // Its memory map is still there: name every stack seen so far.
                        if let Some(ring) = new_stacks.as_mut() {
                            self.symbolize_new(ring.get_mut()).await?;
                        }
                        self.symbolizer.remember(self.pid).await?;
                        lifetime.resume();
                    }
                    Some(ChildEvent::Exited(status)) => {
                        eprintln!("leakbpf: pid {} {status}", self.pid);
                        break;
                    }
                    None => {
                        eprintln!("leakbpf: pid {} exited", self.pid);
                        break;
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
        self.report(true).await
    }

    /// Symbolizes the stacks announced since the last call, while their process runs.
    async fn symbolize_new(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        let mut ids = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<NewStack>() {
                // SAFETY: the eBPF side writes whole `NewStack`s; the read is unaligned-safe.
                let notice: NewStack = unsafe { item.as_ptr().cast::<NewStack>().read_unaligned() };
                if notice.tgid == self.pid.get() {
                    ids.push(notice.stack_id);
                }
            }
        }
        self.symbolize(ids).await
    }

    /// Symbolizes the stacks among `ids` not symbolized yet.
    async fn symbolize(&mut self, ids: Vec<u64>) -> Result<()> {
        let mut requests: Vec<StackRequest> = Vec::new();
        for id in ids {
            if self.frames.contains_key(&id) || requests.iter().any(|(known, _)| *known == id) {
                continue;
            }
            match self.maps.stack(id)? {
                Some(addresses) => requests.push((id, addresses)),
                None => {
                    self.frames.insert(id, Arc::from(Vec::new()));
                }
            }
        }
        if requests.is_empty() {
            return Ok(());
        }
        for (id, frames) in self.symbolizer.symbolize(self.pid, requests).await? {
            self.frames.insert(id, Arc::from(frames));
        }
        Ok(())
    }

    async fn report(&mut self, is_final: bool) -> Result<()> {
        self.reports += 1;
        let counters = self.maps.counters()?;
        let now_ns = boot_time_ns();
        let cutoff = self
            .min_age
            .map(|age| now_ns.saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX)));
        let mut sites = self.maps.sites(self.pid.get(), cutoff)?;
        report::rank(&mut sites);
        self.symbolize(sites.iter().take(self.top).map(|s| s.stack_id).collect())
            .await?;
        let moment = Moment {
            pid: self.pid.get(),
            number: self.reports,
            is_final,
            interval: self.interval,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            now_ns,
            counters,
        };
        let frames = &self.frames;
        let report = self.builder.build(moment, sites, self.top, |id| {
            frames
                .get(&id)
                .cloned()
                .unwrap_or_else(|| Arc::from(Vec::new()))
        });
        self.output.write(&report)?;
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

/// CLOCK_BOOTTIME, the clock of the allocation timestamps.
fn boot_time_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into a live local; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}
