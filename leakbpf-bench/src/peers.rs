//! `cargo xtask bench setup-peers`: installs the peer tools, the allocators and the server
//! the bench runs, and prepares what the peers need on this machine (kernel headers for
//! BCC, tracefs).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use devutil::{as_root, header, try_output, which};

/// The peers' Debian packages; `linux-headers-amd64` is for BCC's compiler, g++ and make
/// for the bench's own workloads and the demo chat server; the libraries are the
/// allocators the malloc/free loop is preloaded with (crate::workloads::Allocator), and
/// redis the real server under its load generator (crate::server).
const PACKAGES: &[&str] = &[
    "g++",
    "make",
    "bpfcc-tools",
    "bpftrace",
    "heaptrack",
    "valgrind",
    "linux-headers-amd64",
    "libjemalloc2",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
    "redis-server",
    "redis-tools",
];
/// The commands the bench needs, for machines without apt.
const COMPILERS: &[&str] = &["gcc", "g++", "make"];
/// The peers' commands.
pub const MEMLEAK: &str = "memleak-bpfcc";
pub const BPFTRACE: &str = "bpftrace";
pub const HEAPTRACK: &str = "heaptrack";
pub const VALGRIND: &str = "valgrind";
/// The server and its load generator.
pub const REDIS_SERVER: &str = "redis-server";
pub const REDIS_BENCHMARK: &str = "redis-benchmark";
const TRACEFS: &str = "/sys/kernel/tracing";

/// Installs the packages, links the kernel headers and mounts tracefs.
pub fn setup() -> Result<()> {
    header("bench peers: packages");
    if devutil::is_debian() {
        devutil::ensure_packages(PACKAGES)?;
    } else {
        let missing: Vec<&str> = COMPILERS
            .iter()
            .copied()
            .chain([
                MEMLEAK,
                BPFTRACE,
                HEAPTRACK,
                VALGRIND,
                REDIS_SERVER,
                REDIS_BENCHMARK,
            ])
            .filter(|c| which(c).is_none())
            .collect();
        if !missing.is_empty() {
            bail!(
                "not a Debian system, so xtask cannot install the peers: install {}, \
                 the kernel headers, jemalloc, tcmalloc and mimalloc with your package \
                 manager",
                missing.join(", ")
            );
        }
    }
    header("bench peers: kernel headers for BCC");
    link_kernel_headers()?;
    header("bench peers: tracefs");
    mount_tracefs()?;
    header("bench peers: versions");
    for (program, arg) in [
        (MEMLEAK, "--help"),
        (BPFTRACE, "--version"),
        (HEAPTRACK, "--version"),
        (VALGRIND, "--version"),
        (REDIS_SERVER, "--version"),
        (REDIS_BENCHMARK, "--version"),
    ] {
        let found = try_output(Command::new(program).arg(arg))
            .map(|text| text.lines().next().unwrap_or_default().to_owned());
        match found {
            Some(line) => println!("{program}: {line}"),
            None => println!("{program}: does not run"),
        }
    }
    println!("peers ready: run `cargo xtask bench` as root");
    Ok(())
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> Result<String> {
    let text = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read /proc/sys/kernel/osrelease")?;
    Ok(text.trim().to_owned())
}

/// Points `/lib/modules/$(uname -r)/{build,source}` at the installed headers when the
/// running kernel has none of its own (BCC compiles its programs against them).
fn link_kernel_headers() -> Result<()> {
    let release = kernel_release()?;
    let modules = Path::new("/lib/modules").join(&release);
    let build = modules.join("build");
    if build.join("include").is_dir() {
        println!("{} exists", build.display());
        return Ok(());
    }
    let (headers, common) = installed_headers()?;
    println!(
        "kernel {release} has no headers package: linking {} to {}",
        modules.display(),
        headers.display()
    );
    root(
        Command::new("mkdir").arg("-p").arg(&modules),
        "creating /lib/modules",
    )?;
    for (link, to) in [(&build, &headers), (&modules.join("source"), &common)] {
        root(
            Command::new("ln").arg("-sfn").arg(to).arg(link),
            "linking the kernel headers",
        )?;
    }
    Ok(())
}

/// The newest `linux-headers-*-amd64` directory under /usr/src and its `-common` part.
fn installed_headers() -> Result<(PathBuf, PathBuf)> {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/src")
        .context("cannot list /usr/src")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-headers-") && !n.ends_with("-common"))
                && p.join("include").is_dir()
        })
        .collect();
    found.sort_by_key(|p| version_key(p));
    let headers = found
        .pop()
        .context("no kernel headers under /usr/src: install linux-headers-amd64")?;
    // Debian splits the headers: the arch part includes the -common part through `source`.
    let name = headers.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let common = name
        .rsplit_once('-')
        .map(|(base, _arch)| headers.with_file_name(format!("{base}-common")))
        .filter(|c| c.is_dir())
        .unwrap_or_else(|| headers.clone());
    Ok((headers, common))
}

/// The numbers in a headers directory's name, for sorting 6.1.0-9 before 6.1.0-41.
fn version_key(path: &Path) -> Vec<u64> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn mount_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("uprobe_events").exists() {
        println!("tracefs is mounted at {TRACEFS}");
        return Ok(());
    }
    println!("mounting tracefs at {TRACEFS}");
    root(
        Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]),
        "mounting tracefs",
    )
}

/// Runs `cmd` as root (through sudo when needed).
fn root(cmd: &Command, why: &str) -> Result<()> {
    let mut elevated = as_root(cmd.get_program(), false, why)?;
    elevated.args(cmd.get_args());
    devutil::run(&mut elevated)
}
