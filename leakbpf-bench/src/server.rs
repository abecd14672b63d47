//! A real server under its own load generator: Debian's redis-server, driven by
//! redis-benchmark, alone and under each tool that attaches to a running pid. Debian's
//! redis-server is linked with jemalloc (libjemalloc.so.2), so its malloc is not libc's:
//! leakbpf finds it by itself, memleak is pointed at it.

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use devutil::{header, which};
use serde::Serialize;

use crate::{
    peers::{REDIS_BENCHMARK, REDIS_SERVER},
    process::{self, Proc},
    procinfo,
    results::{MAX_FAILED_RUNS, num},
    stats::Summary,
    tools::{self, Mode, Tool, Toolbox},
};

/// The load: 200,000 SETs then as many GETs of 64-byte values from 20 clients.
const LOAD: [&str; 9] = [
    "-t", "set,get", "-n", "200000", "-c", "20", "-d", "64", "--csv",
];
const START_LIMIT: Duration = Duration::from_secs(180);
const LOAD_LIMIT: Duration = Duration::from_secs(900);
const STOP_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize)]
pub struct ServerResult {
    /// The server's package and version.
    pub server: String,
    /// The load generator's command line (P is the server's port).
    pub load: String,
    pub tools: Vec<ServerTool>,
}

#[derive(Debug, Serialize)]
pub struct ServerTool {
    pub tool: String,
    pub command: String,
    /// Requests per second over both tests (all requests over the time of both).
    pub requests_per_s: Option<Summary>,
    /// Each test's requests per second, as redis-benchmark gives it.
    pub tests: BTreeMap<String, Summary>,
    /// median requests_per_s / the server's alone.
    pub ratio_to_alone: Option<f64>,
    /// The errors of failed runs, in run order (a tool that cannot attach, with its
    /// last lines); after [`MAX_FAILED_RUNS`] its runs stop.
    pub failed_runs: Vec<String>,
}

impl ServerResult {
    pub fn tool(&self, tool: Tool) -> Option<&ServerTool> {
        self.tools.iter().find(|t| t.tool == tool.name())
    }
}

/// Which of `tools` meet a running server: no tool, and those attaching to a pid (the
/// others start the program themselves; bpftrace's script probes libc's allocator, which
/// this server does not use).
pub fn tools_for(tools: &[Tool]) -> Vec<Tool> {
    tools
        .iter()
        .copied()
        .filter(|&t| t.mode() != Mode::Launch && t != Tool::Bpftrace)
        .collect()
}

/// `reps` repetitions of the load, interleaved over `tools`, their files in `dir`.
pub fn run(toolbox: &Toolbox, tools: &[Tool], reps: usize, dir: &Path) -> Result<ServerResult> {
    header("a real server: redis-server under redis-benchmark");
    for program in [REDIS_SERVER, REDIS_BENCHMARK] {
        if which(program).is_none() {
            bail!("{program} is not installed: run `cargo xtask bench setup-peers`");
        }
    }
    let mut samples: BTreeMap<Tool, Vec<BTreeMap<String, f64>>> = BTreeMap::new();
    let mut errors: BTreeMap<Tool, Vec<String>> = BTreeMap::new();
    for rep in 1..=reps {
        for &tool in tools {
            if errors.get(&tool).map_or(0, Vec::len) >= MAX_FAILED_RUNS {
                continue;
            }
            let run_dir = dir.join(format!("{rep}-{}", tool.name()));
            match measure(toolbox, tool, &run_dir) {
                Ok(rates) => {
                    let shown: Vec<String> = rates
                        .iter()
                        .map(|(t, r)| format!("{t} {}/s", num(*r)))
                        .collect();
                    println!("  {:<16} {}", tool.name(), shown.join(", "));
                    samples.entry(tool).or_default().push(rates);
                }
                Err(e) => {
                    let error = format!("{e:#}").replace('\n', " ");
                    println!("  {:<16} FAILED: {error}", tool.name());
                    errors.entry(tool).or_default().push(error);
                }
            }
        }
    }
    let alone = samples
        .get(&Tool::Baseline)
        .and_then(|s| Summary::of(&s.iter().map(overall).collect::<Vec<_>>()));
    let results = tools
        .iter()
        .map(|&tool| {
            let runs = samples.get(&tool).map_or(&[][..], Vec::as_slice);
            let requests_per_s = Summary::of(&runs.iter().map(overall).collect::<Vec<_>>());
            let mut tests: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for (test, rate) in runs.iter().flatten() {
                tests.entry(test.clone()).or_default().push(*rate);
            }
            ServerTool {
                tool: tool.name().to_owned(),
                command: match tool {
                    Tool::Memleak => format!("{} -O LIBJEMALLOC", tool.command_line()),
                    _ => tool.command_line().to_owned(),
                },
                ratio_to_alone: requests_per_s
                    .as_ref()
                    .zip(alone.as_ref())
                    .map(|(t, a)| t.median / a.median),
                requests_per_s,
                tests: tests
                    .into_iter()
                    .filter_map(|(test, rates)| Some((test, Summary::of(&rates)?)))
                    .collect(),
                failed_runs: errors.remove(&tool).unwrap_or_default(),
            }
        })
        .collect();
    Ok(ServerResult {
        server: tools::package_version("redis-server").unwrap_or_else(|| REDIS_SERVER.to_owned()),
        load: format!("{REDIS_BENCHMARK} -p P {}", LOAD.join(" ")),
        tools: results,
    })
}

/// All the requests over the time of all the tests, per second.
fn overall(rates: &BTreeMap<String, f64>) -> f64 {
    rates.len() as f64 / rates.values().map(|r| 1.0 / r).sum::<f64>()
}

/// One run: the server started, `tool` attached, the load's rates per test.
fn measure(toolbox: &Toolbox, tool: Tool, dir: &Path) -> Result<BTreeMap<String, f64>> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let port = free_port()?;
    let port_arg = port.to_string();
    let server_log = dir.join("server.log");
    let tool_log = dir.join("tool.log");
    // No persistence: the run measures the server, not its disk.
    let mut server_cmd = Command::new(REDIS_SERVER);
    server_cmd
        .args(["--port", &port_arg, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .current_dir(dir);
    let mut server = process::spawn_logged(&mut server_cmd, &server_log, REDIS_SERVER)?;
    wait_listening(&mut server, port, &server_log)?;

    let mut agent = None;
    if let Mode::Attach { marker } = tool.mode() {
        let mut attach = toolbox.attach(tool, server.pid(), dir)?;
        if tool == Tool::Memleak {
            // Its default probes are libc's, which the server's allocations never reach.
            let jemalloc = procinfo::mapped_object(server.pid(), "jemalloc", &|n| {
                n.starts_with("libjemalloc.so")
            })?;
            attach.arg("-O").arg(jemalloc);
        }
        attach.current_dir(dir);
        let mut proc = process::spawn_logged(&mut attach, &tool_log, tool.name())?;
        if let Err(e) = process::wait_attached(&mut proc, &tool_log, marker, START_LIMIT) {
            still_running(&mut proc, tool, &tool_log)?;
            return Err(e.context("cannot attach"));
        }
        agent = Some(proc);
    }
    let mut load = Command::new(REDIS_BENCHMARK);
    load.args(["-p", &port_arg]).args(LOAD);
    let output = process::output_within(&mut load, &dir.join("load.log"), LOAD_LIMIT)?;
    let rates = parse_csv(&output)?;

    if let Some(mut proc) = agent {
        // memleak can fail to attach after its marker: then the load ran without it.
        still_running(&mut proc, tool, &tool_log)?;
        let status = proc.interrupt(STOP_LIMIT)?;
        if !status.success() {
            bail!(
                "{} exited with {status} when stopped{}",
                tool.name(),
                process::tail(&tool_log)
            );
        }
    }
    let status = server.interrupt(STOP_LIMIT)?;
    if !status.success() {
        bail!(
            "{REDIS_SERVER} exited with {status}{}",
            process::tail(&server_log)
        );
    }
    Ok(rates)
}

/// Fails if `tool` has exited: it could not attach, and its error is the last line it
/// wrote (memleak's Python exception).
fn still_running(proc: &mut Proc, tool: Tool, log: &Path) -> Result<()> {
    match proc.exited()? {
        Some(status) => bail!(
            "cannot attach: {} exited ({status}){}",
            tool.name(),
            process::tail_lines(log, 1)
        ),
        None => Ok(()),
    }
}

/// A port nobody listens on now: the kernel's pick for a listener closed at once.
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a local port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until the server accepts connections on `port`.
fn wait_listening(server: &mut Proc, port: u16, log: &Path) -> Result<()> {
    let start = Instant::now();
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if let Some(status) = server.exited()? {
            bail!("{REDIS_SERVER} exited ({status}){}", process::tail(log));
        }
        if start.elapsed() > START_LIMIT {
            bail!(
                "{REDIS_SERVER} did not listen on {port} within {START_LIMIT:?}{}",
                process::tail(log)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// redis-benchmark's `--csv` lines, `"SET","98039.22",...` under a header: requests per
/// second by test.
fn parse_csv(output: &str) -> Result<BTreeMap<String, f64>> {
    let rates: BTreeMap<String, f64> = output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(|f| f.trim().trim_matches('"'));
            let test = fields.next()?;
            let rate = fields.next()?.parse().ok()?;
            Some((test.to_owned(), rate))
        })
        .collect();
    if rates.is_empty() {
        bail!("no requests per second in redis-benchmark's output: {output:?}");
    }
    Ok(rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_gives_each_tests_rate_and_the_overall_rate_weighs_their_times() {
        let output = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\"\n\
                      \"SET\",\"100000.00\",\"0.150\",\"0.040\"\n\
                      \"GET\",\"50000.00\",\"0.120\",\"0.032\"\n";
        let rates = parse_csv(output).unwrap();
        assert_eq!(rates.len(), 2);
        assert_eq!(rates["SET"], 100_000.0);
        // As many requests of each: 2 in 1/100,000 + 1/50,000 s.
        assert!((overall(&rates) - 200_000.0 / 3.0).abs() < 1e-6);
        assert!(parse_csv("ERROR: connection refused\n").is_err());
    }

    #[test]
    fn the_server_meets_no_tool_and_the_tools_that_attach_to_a_pid_but_bpftrace() {
        assert_eq!(
            tools_for(&Tool::ALL),
            [
                Tool::Baseline,
                Tool::Leakbpf,
                Tool::LeakbpfSampled,
                Tool::Floor,
                Tool::Memleak
            ]
        );
    }
}
