//! Writes snapshots in the format asked for: each format is one [`Render`], fed
//! [`Snapshot`]s, writing to the run's sink (standard output, `--output`, or one file per
//! report or process when `--output` is a template).
//!
//! Two kinds of formats: streams (the table, JSON lines), where each report is appended
//! to what came before, and documents (pprof, folded stacks, SVG), where a report is a
//! whole file of its own. A document is written once per report with `{report}` (or its
//! short form `{n}`) in the file
//! name, else once, at the end: the final report of each process.

mod diff;
mod folded;
mod json;
pub mod metrics;
mod pprof;
mod svg;
mod table;

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, IsTerminal, Write},
    num::NonZeroU32,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

pub use self::{diff::diff_table, table::table};
use crate::snapshot::Snapshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people: one block per call site, its stack under it.
    Table,
    /// One JSON object per line (NDJSON), for log pipelines and `leakbpf report`.
    Json,
    /// A gzipped pprof heap profile (inuse_space, inuse_objects): go tool pprof,
    /// Pyroscope, Parca. Binary.
    Pprof,
    /// Folded stacks, `outer;…;inner BYTES`: flamegraph.pl, inferno, speedscope.
    Folded,
    /// A flame graph of the outstanding bytes, as SVG.
    Svg,
}

impl Format {
    /// The renderer; the table, pprof, folded stacks and the flame graph show allocation
    /// plumbing frames with `all_frames`.
    pub fn renderer(self, all_frames: bool) -> Box<dyn Render + Send> {
        match self {
            Format::Table => Box::new(table::Table { all_frames }),
            Format::Json => Box::new(json::Json),
            Format::Pprof => Box::new(pprof::Pprof { all_frames }),
            Format::Folded => Box::new(folded::Folded { all_frames }),
            Format::Svg => Box::new(svg::Svg { all_frames }),
        }
    }

    /// Each report is a whole document, not a part of a stream.
    pub fn is_document(self) -> bool {
        matches!(self, Format::Pprof | Format::Folded | Format::Svg)
    }

    fn is_binary(self) -> bool {
        self == Format::Pprof
    }

    fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Pprof => "pprof",
            Format::Folded => "folded",
            Format::Svg => "svg",
        }
    }
}

/// One output format.
pub trait Render {
    /// Writes `snapshot` to `out`.
    fn snapshot(&mut self, snapshot: &Snapshot, out: &mut dyn Write) -> io::Result<()>;

    /// Writes the snapshots of several processes as one document: one profile, one
    /// graph. Streams write each in turn.
    fn document(&mut self, snapshots: &[&Snapshot], out: &mut dyn Write) -> io::Result<()> {
        for snapshot in snapshots {
            self.snapshot(snapshot, out)?;
        }
        Ok(())
    }

    /// With `--all`, the processes reported on next, before their snapshots. Formats
    /// whose snapshots carry the same figures write nothing.
    fn summary(
        &mut self,
        _processes: &[ProcessSummary],
        _is_final: bool,
        _out: &mut dyn Write,
    ) -> io::Result<()> {
        Ok(())
    }
}

/// One process in the `--all` summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSummary {
    pub pid: NonZeroU32,
    /// Its command name, as the kernel had it; empty once it is gone.
    pub command: String,
    pub bytes: u64,
    pub allocations: u64,
    pub callsites: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot open output file {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write the report")]
    Write(#[from] io::Error),
    #[error(
        "--format {0} is binary: refusing to write it to a terminal (redirect standard \
         output, or use --output FILE)"
    )]
    BinaryToTerminal(&'static str),
    #[error(
        "--output {0}: with several processes, a file per report needs {{pid}} in its name \
         too (e.g. heap-{{pid}}-{{report}}.pb.gz)"
    )]
    TemplateWithoutPid(String),
}

/// `--output` with `{report}` (the report's number; `{n}` for short) or `{pid}` in the
/// file name. (`--help` cannot show `{n}`: clap turns it into a line break.)
struct Template {
    text: String,
    per_report: bool,
}

impl Template {
    const REPORT: [&str; 2] = ["{report}", "{n}"];
    const PID: &str = "{pid}";

    fn parse(path: &Path) -> Option<Self> {
        let text = path.to_str()?;
        let per_report = Self::REPORT.iter().any(|report| text.contains(report));
        (per_report || text.contains(Self::PID)).then(|| Self {
            text: text.to_owned(),
            per_report,
        })
    }

    fn path(&self, snapshot: &Snapshot) -> PathBuf {
        let number = snapshot.report.to_string();
        let text = Self::REPORT.iter().fold(self.text.clone(), |text, report| {
            text.replace(report, &number)
        });
        PathBuf::from(text.replace(Self::PID, &snapshot.pid.to_string()))
    }
}

enum Destination {
    Stdout,
    /// One file for the whole run: reports appended to it, or the final document.
    File {
        path: PathBuf,
        file: File,
    },
    Template(Template),
}

/// Where the run's reports go, and in which format.
pub struct Output {
    format: Format,
    renderer: Box<dyn Render + Send>,
    destination: Destination,
    /// Permissions of the files it creates.
    mode: u32,
    /// For documents written at the end: each process's latest snapshot.
    latest: BTreeMap<u32, Snapshot>,
}

impl Output {
    /// Reports in `format` to `path` (a file created with `mode` if new, or a template
    /// with `{report}` or `{pid}`), or to stdout. `several`: the run may report on more than
    /// one process. Allocation plumbing frames are shown with `all_frames`.
    pub fn open(
        format: Format,
        path: Option<&Path>,
        mode: u32,
        several: bool,
        all_frames: bool,
    ) -> Result<Self, OutputError> {
        let destination = match path {
            None if format.is_binary() && io::stdout().is_terminal() => {
                return Err(OutputError::BinaryToTerminal(format.name()));
            }
            None => Destination::Stdout,
            Some(path) => match Template::parse(path) {
                Some(template) => {
                    if template.per_report && several && !template.text.contains(Template::PID) {
                        return Err(OutputError::TemplateWithoutPid(template.text));
                    }
                    Destination::Template(template)
                }
                // Opened now, so a bad path fails before anything is attached; a document
                // replaces the file's content when written.
                None => Destination::File {
                    path: path.to_owned(),
                    file: create(path, mode, false)?,
                },
            },
        };
        Ok(Self {
            format,
            renderer: format.renderer(all_frames),
            destination,
            mode,
            latest: BTreeMap::new(),
        })
    }

    pub fn write(&mut self, snapshot: &Snapshot) -> Result<(), OutputError> {
        match &mut self.destination {
            Destination::Template(template) if template.per_report => {
                let path = template.path(snapshot);
                let mut file = create(&path, self.mode, true)?;
                self.renderer.snapshot(snapshot, &mut file)?;
            }
            _ if self.format.is_document() => {
                self.latest.insert(snapshot.pid, snapshot.clone());
            }
            Destination::Template(template) => {
                let path = template.path(snapshot);
                let mut file = create(&path, self.mode, false)?;
                self.renderer.snapshot(snapshot, &mut file)?;
            }
            Destination::File { file, .. } => {
                self.renderer.snapshot(snapshot, file)?;
                file.flush()?;
            }
            Destination::Stdout => {
                let mut out = io::stdout().lock();
                self.renderer.snapshot(snapshot, &mut out)?;
                out.flush()?;
            }
        }
        Ok(())
    }

    /// The `--all` summary, in formats that have one, where reports go to one stream.
    pub fn write_summary(
        &mut self,
        processes: &[ProcessSummary],
        is_final: bool,
    ) -> Result<(), OutputError> {
        match &mut self.destination {
            Destination::Stdout => {
                let mut out = io::stdout().lock();
                self.renderer.summary(processes, is_final, &mut out)?;
                out.flush()?;
            }
            Destination::File { file, .. } => {
                self.renderer.summary(processes, is_final, file)?;
                file.flush()?;
            }
            Destination::Template(_) => {}
        }
        Ok(())
    }

    /// At the end: a document format without `{report}` writes its one document, of the
    /// final report of each process (of each one's latest if none was final).
    pub fn finish(&mut self) -> Result<(), OutputError> {
        if !self.format.is_document() || self.latest.is_empty() {
            return Ok(());
        }
        let latest = std::mem::take(&mut self.latest);
        let any_final = latest.values().any(|s| s.is_final);
        let chosen: Vec<&Snapshot> = latest
            .values()
            .filter(|s| s.is_final || !any_final)
            .collect();
        match &self.destination {
            Destination::Stdout => {
                let mut out = io::stdout().lock();
                self.renderer.document(&chosen, &mut out)?;
                out.flush()?;
            }
            Destination::File { path, .. } => {
                let mut file = create(path, self.mode, true)?;
                self.renderer.document(&chosen, &mut file)?;
            }
            Destination::Template(template) => {
                for snapshot in chosen {
                    let mut file = create(&template.path(snapshot), self.mode, true)?;
                    self.renderer.snapshot(snapshot, &mut file)?;
                }
            }
        }
        Ok(())
    }
}

/// Opens `path` to write, created with `mode` if new: emptied (`truncate`) or appended to.
fn create(path: &Path, mode: u32, truncate: bool) -> Result<File, OutputError> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .append(!truncate)
        .truncate(truncate)
        .mode(mode)
        .open(path)
        .map_err(|source| OutputError::Open {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{example, read_run};

    fn snapshot(pid: u32, report: u64, is_final: bool) -> Snapshot {
        let mut snapshot = example();
        snapshot.pid = pid;
        snapshot.report = report;
        snapshot.is_final = is_final;
        snapshot
    }

    #[test]
    fn a_template_writes_a_file_per_report_and_process() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("heap-{pid}-{report}.ndjson");
        let mut output = Output::open(Format::Json, Some(&template), 0o600, true, false).unwrap();
        for (pid, report) in [(7, 1), (8, 1), (7, 2)] {
            output.write(&snapshot(pid, report, false)).unwrap();
        }
        output.finish().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["heap-7-1.ndjson", "heap-7-2.ndjson", "heap-8-1.ndjson"]
        );
        let read = read_run(&std::fs::read(dir.path().join("heap-7-2.ndjson")).unwrap()[..]);
        assert_eq!(read.unwrap(), [snapshot(7, 2, false)]);
    }

    #[test]
    fn a_document_without_a_report_number_holds_the_final_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stacks.folded");
        let mut output = Output::open(Format::Folded, Some(&path), 0o600, true, false).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"",
            "created, not written yet"
        );
        let mut earlier = snapshot(7, 1, false);
        earlier.callsites[0].bytes = 1;
        output.write(&earlier).unwrap();
        output.write(&snapshot(7, 2, true)).unwrap();
        let mut other = snapshot(8, 1, true);
        other.process.command = Some("other".into());
        output.write(&other).unwrap();
        output.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "chat_server (pid 7);EventManager::subscribe 368\n\
             other (pid 8);EventManager::subscribe 368\n"
        );
    }

    #[test]
    fn refuses_a_report_number_without_pid_for_several_processes() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("heap-{n}.pb.gz");
        let err = Output::open(Format::Pprof, Some(&template), 0o600, true, false)
            .err()
            .unwrap();
        assert!(matches!(err, OutputError::TemplateWithoutPid(_)), "{err}");
        assert!(Output::open(Format::Pprof, Some(&template), 0o600, false, false).is_ok());
    }
}
