//! The agent: attaches to the targets, then reports on each every interval until a
//! signal or `--count` ends the run, or the targets are gone; every traced process gets
//! a final report when it exits or the run ends. Processes come and go: children with
//! `--follow-forks`, any process with `--all`, and a process that calls exec is resolved
//! anew.

use std::{collections::HashMap, ffi::OsString, num::NonZeroU32, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    child::TracedChild,
    lifetime::Lifetime,
    monitor::{Monitor, Process},
    objects,
    output::{Format, Output},
    privileges,
    probes::{self, Probe},
    process::{self, PausedChild},
    symbolizer::SymbolizerHandle,
    tracefs,
    tracer::{Attached, Capacity, Mode, Scope, Tracer},
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
    pub capacity: Capacity,
    pub verbose: bool,
    /// Empty programs instead of the real ones: the benchmark's floor.
    pub floor: bool,
    /// Also probe the C allocation functions under this prefix.
    pub symbol_prefix: Option<String>,
    /// Also trace the processes the targets start.
    pub follow_forks: bool,
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
        Target::All { .. } => {
            // The C library every dynamically linked process maps: the agent's own.
            let own = NonZeroU32::new(std::process::id()).context("no pid of its own")?;
            let objects = objects::of_process(own.get())?;
            vec![(own, probes::plan(&objects, prefix)?)]
        }
    };
    privileges::raise_memlock_limit();

    let pids: Vec<NonZeroU32> = targets.iter().map(|(pid, _)| *pid).collect();
    let mode = match (&settings.target, &pids[..]) {
        (Target::All { .. }, _) => Mode::All,
        (_, [pid]) if !settings.follow_forks => Mode::One(*pid),
        _ => Mode::Set,
    };
    let system_wide = settings.follow_forks || mode == Mode::All;
    // Without tracefs, exec and exits are still seen through pidfds, but a process that
    // execs keeps its old probes only; following forks needs it.
    let fields = match tracefs::process_fields() {
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
    let (mut tracer, mut maps) =
        Tracer::load(settings.capacity, mode, settings.follow_forks, fields)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the agent's runtime")?;
    // Taken before attaching, so an exit during the attach is seen.
    let lifetime = match (&child, mode) {
        // Seized before it runs, so even an exit in its first microseconds is held.
        (Some(child), _) => Lifetime::Child(
            runtime
                .block_on(async { TracedChild::seize(child.pid) })
                .context("cannot supervise the command")?,
        ),
        (None, Mode::All) => runtime.block_on(async { Lifetime::watch(&[]) })?,
        (None, _) => runtime.block_on(async { Lifetime::watch(&pids) })?,
    };
    if fields.is_some() {
        tracer.attach_process_tracepoints()?;
    }
    for (pid, probes) in &targets {
        if mode == Mode::Set {
            maps.trace(pid.get())?;
        }
        let scope = if system_wide {
            Scope::System
        } else {
            Scope::Process(*pid)
        };
        let attached = match tracer.attach(probes, scope, settings.floor) {
            Ok(attached) => attached,
            Err(_) if !process::is_alive(pid.get()) => {
                bail!("pid {pid} exited while leakbpf was attaching to it")
            }
            Err(err) => return Err(err.into()),
        };
        let whom = match mode {
            Mode::All => "every process".to_owned(),
            _ => format!("pid {pid}"),
        };
        announce(&whom, probes, &attached, settings.verbose);
    }
    let logger = settings.verbose.then(|| tracer.logger()).flatten();
    let starting = child.as_ref().map(|child| child.pid);
    if let Some(child) = child {
        release(child)?;
    }
    let monitor = Monitor {
        processes: match mode {
            Mode::All => Vec::new(),
            _ => pids.iter().map(|&pid| Process::new(pid)).collect(),
        },
        mode,
        top_processes: match settings.target {
            Target::All { top_processes } => Some(top_processes),
            _ => None,
        },
        system_wide,
        starting,
        prefix: settings.symbol_prefix.clone(),
        floor: settings.floor,
        tracer,
        maps,
        output,
        frames: HashMap::new(),
        map_of: HashMap::new(),
        symbolizer: SymbolizerHandle::spawn().context("cannot start the symbolizer")?,
        stale: Vec::new(),
        ticks: 0,
        interval: settings.interval,
        top: settings.top,
        min_age: settings.min_age,
    };
    // Every probe detaches when the monitor, which owns the tracer, is dropped.
    runtime.block_on(monitor.run(lifetime, settings.count, logger))
}

fn announce(whom: &str, probes: &[Probe], attached: &[Attached], verbose: bool) {
    let mut objects: Vec<String> = probes
        .iter()
        .map(|p| p.object.path.display().to_string())
        .collect();
    objects.dedup();
    eprintln!(
        "leakbpf: attached {} probes to {whom} in {}",
        attached.len(),
        objects.join(", ")
    );
    if verbose {
        for attached in attached {
            eprintln!("leakbpf:   {:<12} {}", attached.program, attached.probe);
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
