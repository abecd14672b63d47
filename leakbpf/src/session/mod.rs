//! The run: the targets found or started, the programs loaded and attached, then the
//! [`event_loop`] until a signal or `--count` ends it, or the targets are gone. Every
//! traced process gets a final report when it exits or the run ends. Processes come and
//! go: children with `--follow-forks`, any process with `--all`, and a process that
//! calls exec is resolved anew.

mod event_loop;
mod facts;
mod fd;
mod lifetime;
mod registry;
mod spawn;
mod supervisor;

use std::{ffi::OsString, net::SocketAddr, num::NonZeroU32, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};

pub use self::event_loop::Verdicts;
use self::{
    event_loop::{EventLoop, LoopSettings},
    lifetime::Lifetime,
    registry::Registry,
    spawn::PausedChild,
    supervisor::TracedChild,
};
use crate::{
    analyze::{Plumbing, Sort, Suppressions},
    attach::{self, Attacher, Image, Programs, Scope},
    kernel::{self, Capacity, KernelMaps, LoadSettings, Mode, Sampling},
    output::{Format, Output},
    serve::{self, Latest, Served},
    symbolize::SymbolizerHandle,
    unwind::{Unwinder, Wait},
};

pub enum Target {
    /// Running processes.
    Pids(Vec<NonZeroU32>),
    /// A command line: the program, then its arguments.
    Command(Vec<OsString>),
    /// Every process on the system; reports on the `top_processes` holding the most.
    All { top_processes: usize },
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
    /// `--http`: where to serve the latest reports.
    pub http: Option<SocketAddr>,
    pub capacity: Capacity,
    /// Frames walked at most per stack.
    pub stack_depth: u32,
    /// Only sampled allocations are recorded (`--sample-bytes`).
    pub sampling: Option<Sampling>,
    pub verbose: bool,
    /// Empty programs instead of the real ones: the benchmark's floor.
    pub floor: bool,
    /// A perf-event link per probe, never uprobe_multi links.
    pub perf_links: bool,
    /// Also probe the C allocation functions under this prefix.
    pub symbol_prefix: Option<String>,
    /// Also trace the processes the targets start.
    pub follow_forks: bool,
    pub sort: Sort,
    pub suppressions: Suppressions,
    pub plumbing: Plumbing,
    /// The table shows allocation plumbing frames too.
    pub show_alloc_frames: bool,
}

/// The unwind arrays' use, for `--verbose`.
fn unwind_usage(attacher: &mut Attacher, maps: &mut KernelMaps) -> String {
    let (used, capacity, bytes) = attacher.unwind_usage(maps);
    format!(
        "; {used} of {capacity} rows in use, {:.1} MiB of kernel memory",
        bytes as f64 / f64::from(1 << 20)
    )
}

/// Traces the targets until the run ends; returns what the final reports said.
pub fn run(settings: Settings) -> Result<Verdicts> {
    attach::check_privileges()?;
    let several = match &settings.target {
        Target::Pids(pids) => pids.len() > 1 || settings.follow_forks,
        Target::Command(_) => settings.follow_forks,
        Target::All { .. } => true,
    };
    // Before anything is attached, so a bad path or a port in use costs nothing.
    let output = Output::open(
        settings.format,
        settings.output.as_deref(),
        settings.output_mode,
        several,
        settings.show_alloc_frames,
    )?;
    let listener = settings.http.map(serve::bind).transpose()?;
    if let Some(listener) = &listener {
        let address = listener.local_addr().context("--http")?;
        let paths = "/metrics, /debug/pprof/heap, /flamegraph.svg, /report.json";
        eprintln!("leakbpf: serving http://{address} ({paths})");
    }
    let prefix = settings.symbol_prefix.clone();
    // A started command is planned at its exec, when its new image is there to read;
    // running processes now, as the programs are loaded with what their plans say.
    let (images, child): (Vec<Image>, Option<PausedChild>) = match &settings.target {
        Target::Pids(pids) => (pids.iter().map(|&pid| Image::Running(pid)).collect(), None),
        Target::Command(command) => {
            let program = command.first().context("no command given")?;
            let exe = spawn::resolve(program)?;
            // Forks now, while this process is still single-threaded.
            (Vec::new(), Some(spawn::spawn_paused(&exe, command)?))
        }
        // The C library every dynamically linked process maps: the agent's own.
        Target::All { .. } => {
            let own = NonZeroU32::new(std::process::id()).context("no pid of its own")?;
            (vec![Image::Running(own)], None)
        }
    };
    let plans = images
        .iter()
        .map(|&image| {
            let probes = attach::plan(image, prefix.as_deref()).with_context(|| match image {
                Image::Running(pid) | Image::Exec(pid) => format!("pid {pid}"),
            })?;
            Ok((image.pid(), probes))
        })
        .collect::<Result<Vec<_>>>()?;
    attach::raise_memlock_limit();

    let started = child.as_ref().map(|child| child.pid);
    let pids: Vec<NonZeroU32> = match (&settings.target, started) {
        (Target::All { .. }, _) => Vec::new(),
        (_, Some(pid)) => vec![pid],
        _ => plans.iter().map(|(pid, _)| *pid).collect(),
    };
    let mode = match (&settings.target, &pids[..]) {
        (Target::All { .. }, _) => Mode::All,
        (_, [pid]) if !settings.follow_forks => Mode::One(*pid),
        _ => Mode::Set,
    };
    let system_wide = settings.follow_forks || mode == Mode::All;
    // Without tracefs, exec and exits are still seen through pidfds, but a process that
    // execs keeps its old probes only; following forks needs it.
    let fields = match attach::process_fields() {
        Ok(fields) => Some(fields),
        Err(err) if settings.follow_forks => {
            return Err(err).context("--follow-forks needs the process tracepoints");
        }
        Err(err) => {
            eprintln!(
                "leakbpf: warning: {:#}: a process that calls exec is not followed",
                anyhow::Error::from(err)
            );
            None
        }
    };
    let (ebpf, multi, mut maps) = kernel::load(&LoadSettings {
        capacity: settings.capacity,
        mode,
        follow_forks: settings.follow_forks,
        fields,
        stack_depth: settings.stack_depth,
        held: started,
        sampling: settings.sampling,
        multi_links: !settings.perf_links,
    })?;
    let (unwinder, tables) =
        Unwinder::new(&mut maps).context("cannot start the unwind tables' thread")?;
    let mut attacher = Attacher::new(Programs::new(ebpf, multi), unwinder, prefix, settings.floor);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the agent's runtime")?;
    // Before any probe is attached: a Ctrl-C from then on ends the run with its final
    // report instead of killing the agent.
    let stop = {
        let _entered = runtime.enter();
        event_loop::Stop::listen()?
    };
    let latest = match listener {
        Some(listener) => {
            let latest = Latest::default();
            let _entered = runtime.enter();
            serve::serve(
                listener,
                Served {
                    latest: latest.clone(),
                    interval: settings.interval,
                    all_frames: settings.show_alloc_frames,
                },
            )?;
            Some(latest)
        }
        None => None,
    };
    // Taken before attaching, so an exit during the attach is seen.
    let lifetime = match (&child, mode) {
        // Seized before it runs, so its first exec, and even an exit in its first
        // microseconds, is held.
        (Some(child), _) => Lifetime::Child(
            runtime
                .block_on(async { TracedChild::seize(child.pid, settings.follow_forks) })
                .context("cannot supervise the command")?,
        ),
        (None, Mode::All) => runtime.block_on(async { Lifetime::watch(&[]) })?,
        (None, _) => runtime.block_on(async { Lifetime::watch(&pids) })?,
    };
    if fields.is_some() {
        attacher.programs().attach_process_tracepoints()?;
    }
    let symbolizer = SymbolizerHandle::spawn().context("cannot start the symbolizer")?;
    if mode == Mode::Set {
        for pid in &pids {
            maps.trace(pid.get())?;
        }
    }
    for (pid, probes) in plans {
        let scope = if system_wide {
            Scope::System
        } else {
            Scope::Process(pid)
        };
        // Its code's tables before its probes: its first stacks are walked whole.
        if mode != Mode::All {
            let described = attacher
                .describe(&mut maps, pid.get(), Wait::Yes)
                .with_context(|| format!("pid {pid}"))?;
            if settings.verbose {
                eprintln!(
                    "leakbpf: unwind tables for pid {pid}: {described}{}",
                    unwind_usage(&mut attacher, &mut maps)
                );
            }
        }
        let attachment = match attacher.attach(&mut maps, probes, scope) {
            Ok(attachment) => attachment,
            Err(_) if !facts::is_alive(pid.get()) => {
                bail!("pid {pid} exited while leakbpf was attaching to it")
            }
            Err(err) => return Err(err.into()),
        };
        // Its memory map cached before it is said to be attached: it may do its work and
        // exit at once, before the event loop gets to it, and its stacks must still be
        // named.
        if child.is_none() && mode != Mode::All {
            runtime
                .block_on(symbolizer.remember(pid))
                .context("the symbolizer stopped")?;
        }
        let whom = match mode {
            Mode::All => "every process".to_owned(),
            _ => format!("pid {pid}"),
        };
        eprintln!("{}", attachment.describe(&whom, settings.verbose));
    }
    let logger = settings
        .verbose
        .then(|| attacher.programs().logger())
        .flatten();
    if let Some(child) = child {
        let pid = child.pid;
        child
            .release()
            .with_context(|| format!("cannot start the command (pid {pid})"))?;
    }
    let event_loop = EventLoop {
        settings: LoopSettings {
            mode,
            top_processes: match settings.target {
                Target::All { top_processes } => Some(top_processes),
                _ => None,
            },
            system_wide,
            interval: settings.interval,
            top: settings.top,
            min_age: settings.min_age,
            sampling: settings.sampling,
            count: settings.count,
            verbose: settings.verbose,
            sort: settings.sort,
            suppressions: settings.suppressions,
            plumbing: settings.plumbing,
        },
        registry: Registry::new(&pids),
        attacher,
        maps,
        tables: Some(tables),
        output,
        latest,
        symbolizer,
        started,
        starting: started,
        first_image: started.is_some(),
        verdicts: Verdicts::default(),
    };
    // Every probe detaches when the loop, which owns the attacher, is dropped.
    runtime.block_on(event_loop.run(lifetime, logger, stop))
}
