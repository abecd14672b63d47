//! The machine a benchmark ran on, for the report.

use std::{fs, process::Command, thread};

use devutil::try_output;
use procfs::{CpuInfo, Current};
use serde::Serialize;

use crate::peers;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub os: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub glibc: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let os = fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let cpu = CpuInfo::current()
            .ok()
            .and_then(|info| info.model_name(0).map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        let glibc = try_output(Command::new("getconf").arg("GNU_LIBC_VERSION"))
            .map(|v| v.trim_start_matches("glibc ").to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Machine {
            os,
            kernel: peers::kernel_release().unwrap_or_else(|_| "unknown".to_owned()),
            cpu,
            cores: thread::available_parallelism().map_or(0, |n| n.get()),
            glibc,
        }
    }

    /// One line: `Debian GNU/Linux 12 (bookworm), kernel 6.18.44, AMD EPYC, 2 cores, glibc 2.36`.
    pub fn summary(&self) -> String {
        format!(
            "{}, kernel {}, {}, {} cores, glibc {}",
            self.os, self.kernel, self.cpu, self.cores, self.glibc
        )
    }
}
