//! Whole traced runs: a target started, traced by pid or from spawn, its truth read, and
//! leakbpf's reports once it has exited.

use crate::{
    process::{Agent, Finished, Target},
    report::{Report, check_reports},
    truth::TargetOutput,
};

/// How a target is traced, which decides what else its reports may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traced {
    /// Attached to a `--wait` target stopped at `ready`: its start-up is over, so the
    /// report holds nothing but what it did after `go`.
    ByPid,
    /// From the first instruction, in spawn mode: the report also holds what the
    /// program's start-up keeps (stdio buffers, libstdc++'s emergency pool, an
    /// allocator's own state).
    FromSpawn,
}

/// A traced run that ended well (leakbpf exited 0).
pub struct Run {
    /// The traced process.
    pub pid: u32,
    pub truth: TargetOutput,
    pub finished: Finished,
    pub reports: Vec<Report>,
}

impl Run {
    /// The final report, after checking the whole run (see [`check_reports`]).
    pub fn final_report(&self) -> &Report {
        check_reports(&self.reports, self.pid)
    }
}

/// A `--wait` target under leakbpf, by pid or from spawn, driven step by step: told to
/// go, read up to its protocol's markers, its reports awaited in between.
pub struct Session {
    agent: Agent,
    /// Traced by pid; from spawn the target is the agent's child, its lines on the
    /// agent's stdout.
    target: Option<Target>,
    name: String,
    pid: u32,
    output: TargetOutput,
    /// Its output was read up to `done`.
    done: bool,
}

impl Session {
    /// Starts `program --wait args` traced as `traced` says, with `leakbpf --format json
    /// leakbpf_args`, and waits until the target is `ready` and leakbpf attached. `env`
    /// is added to the target's environment by pid, to leakbpf's (which the target
    /// inherits) from spawn.
    pub fn start(
        leakbpf: &str,
        traced: Traced,
        program: &str,
        args: &[&str],
        leakbpf_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let name = program.rsplit('/').next().unwrap_or(program).to_owned();
        let (agent, target, pid) = match traced {
            Traced::ByPid => {
                let target = Target::start_with_env(program, args, env);
                let pid = target.pid();
                (
                    Agent::attach(leakbpf, &[pid], leakbpf_args),
                    Some(target),
                    pid,
                )
            }
            Traced::FromSpawn => {
                let command: Vec<&str> = [program, "--wait"].iter().chain(args).copied().collect();
                let agent = Agent::start_command(leakbpf, leakbpf_args, &command, env);
                let pid = agent.wait_attached_to_command();
                agent.read_target_until("ready", &name);
                (agent, None, pid)
            }
        };
        Self {
            agent,
            target,
            name,
            pid,
            output: TargetOutput::default(),
            done: false,
        }
    }

    /// The traced process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the target go on: to work after `ready`, or past a `paused`.
    pub fn go(&mut self) {
        match &mut self.target {
            Some(target) => target.go(),
            None => self.agent.go(),
        }
    }

    /// Reads the target's output up to `marker`; returns all it printed so far.
    pub fn read_until(&mut self, marker: &str) -> &TargetOutput {
        let new = match &self.target {
            Some(target) => target.read_until(marker),
            None => self.agent.read_target_until(marker, &self.name),
        };
        self.output.extend(new);
        self.done |= marker == "done";
        &self.output
    }

    /// Waits for a report that satisfies `found` (see [`Agent::wait_for_report`]).
    pub fn wait_for_report(&self, what: &str, found: impl FnMut(&Report) -> bool) -> Report {
        self.agent.wait_for_report(what, found)
    }

    /// Reads the target's output up to `done` (unless read already), lets it exit, and
    /// waits for leakbpf's final report and exit, which must be 0.
    pub fn finish(mut self) -> Run {
        if !self.done {
            self.read_until("done");
        }
        match &mut self.target {
            Some(target) => target.finish(),
            None => self.agent.close_stdin(),
        }
        let finished = self.agent.wait();
        finished.assert_success();
        let reports = finished.reports();
        Run {
            pid: self.pid,
            truth: self.output,
            finished,
            reports,
        }
    }
}

/// Runs `program` under leakbpf (`--format json leakbpf_args`) from start to end, as
/// `traced` says:
/// - by pid: `program --wait args` is started, leakbpf attached to it, the target let
///   go and exit once done;
/// - from spawn: leakbpf starts `program args`, which runs to its end untouched (no
///   `--wait`: its first instants too are the program's own).
///
/// `env` is added to the target's environment by pid, to leakbpf's (which the command
/// inherits) from spawn. leakbpf must exit 0.
pub fn trace(
    leakbpf: &str,
    traced: Traced,
    program: &str,
    args: &[&str],
    leakbpf_args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    match traced {
        Traced::ByPid => {
            let mut session = Session::start(leakbpf, traced, program, args, leakbpf_args, env);
            session.go();
            session.finish()
        }
        Traced::FromSpawn => {
            let command: Vec<&str> = [program].iter().chain(args).copied().collect();
            let agent = Agent::start_command(leakbpf, leakbpf_args, &command, env);
            let name = program.rsplit('/').next().unwrap_or(program);
            let truth = agent.read_target_until_done(name);
            let pid = agent.wait_attached_to_command();
            let finished = agent.wait();
            finished.assert_success();
            let reports = finished.reports();
            Run {
                pid,
                truth,
                finished,
                reports,
            }
        }
    }
}

/// [`trace`] by pid, without added environment.
pub fn trace_pid(leakbpf: &str, program: &str, args: &[&str], leakbpf_args: &[&str]) -> Run {
    trace(leakbpf, Traced::ByPid, program, args, leakbpf_args, &[])
}

/// [`trace`] from spawn, without added environment.
pub fn trace_spawn(leakbpf: &str, program: &str, args: &[&str], leakbpf_args: &[&str]) -> Run {
    trace(leakbpf, Traced::FromSpawn, program, args, leakbpf_args, &[])
}
