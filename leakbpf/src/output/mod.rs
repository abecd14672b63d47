//! Writes snapshots in the format asked for: each format is one [`Render`], fed
//! [`Snapshot`]s, writing to the run's sink (standard output or `--output`).

mod diff;
mod json;
mod table;

use std::{
    fs::OpenOptions,
    io::{self, Write},
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
}

impl Format {
    /// The renderer; a table shows allocation plumbing frames with `all_frames`.
    fn renderer(self, all_frames: bool) -> Box<dyn Render + Send> {
        match self {
            Format::Table => Box::new(table::Table { all_frames }),
            Format::Json => Box::new(json::Json),
        }
    }
}

/// One output format.
pub trait Render {
    /// Writes `snapshot` to `out`.
    fn snapshot(&mut self, snapshot: &Snapshot, out: &mut dyn Write) -> io::Result<()>;

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
}

/// Where the run's reports go, and in which format.
pub struct Output {
    renderer: Box<dyn Render + Send>,
    sink: Box<dyn Write + Send>,
}

impl Output {
    /// Reports in `format` to `path`, created with `mode` if new and appended to, or to
    /// stdout; a table shows allocation plumbing with `all_frames`.
    pub fn open(
        format: Format,
        path: Option<&Path>,
        mode: u32,
        all_frames: bool,
    ) -> Result<Self, OutputError> {
        let sink: Box<dyn Write + Send> = match path {
            Some(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(mode)
                    .open(path)
                    .map_err(|source| OutputError::Open {
                        path: path.to_owned(),
                        source,
                    })?,
            ),
            None => Box::new(io::stdout()),
        };
        Ok(Self {
            renderer: format.renderer(all_frames),
            sink,
        })
    }

    pub fn write(&mut self, snapshot: &Snapshot) -> Result<(), OutputError> {
        self.renderer.snapshot(snapshot, &mut self.sink)?;
        self.sink.flush()?;
        Ok(())
    }

    pub fn write_summary(
        &mut self,
        processes: &[ProcessSummary],
        is_final: bool,
    ) -> Result<(), OutputError> {
        self.renderer.summary(processes, is_final, &mut self.sink)?;
        self.sink.flush()?;
        Ok(())
    }
}
