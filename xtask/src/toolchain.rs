//! Detecting and installing what the tests, the demo and the eBPF build need.
//!
//! The eBPF object is built for `bpfel-unknown-none` with `-Z build-std=core`, which needs
//! the standard library's sources and `bpf-linker`. Two routes:
//! - [`Route::Nightly`]: a rustup nightly with the `rust-src` component, and `bpf-linker`
//!   from `cargo install bpf-linker`. Preferred when present.
//! - [`Route::Debian`]: Debian 12's `rustc-web` 1.9x (with `rust-web-src`) under
//!   `RUSTC_BOOTSTRAP=1`, and `bpf-linker` built against Debian's LLVM 22.
//!
//! Each route's clippy checks the eBPF crate: rustup's `clippy` component of the nightly,
//! or Debian's `rust-web-clippy`, built with `rustc-web` (a clippy is a rustc driver, so
//! only one of the same compiler can check the crate).

use std::{
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use devutil::{clear_build_env, ensure_packages, is_debian, try_output, which};

/// What the tests and the demo need (Debian package names): the compilers, bpftool, the
/// allocators the allocator tests' targets link (jemalloc, tcmalloc, mimalloc), `file`
/// (which the dist test asks whether the static build is static), and the real readers
/// of leakbpf's outputs that the output tests run: `go tool pprof` (golang-go), a
/// Prometheus server and promtool (prometheus), headless Chromium for the flame graph;
/// a debuginfod server (debuginfod) serving a stripped target's debug file; musl's C
/// compiler (musl-tools) for the C in `cargo xtask dist`'s static build; valgrind, whose
/// stacks the unwinding tests compare with leakbpf's, and the real Debian programs they
/// trace (perl, python3.11: built without frame pointers, their allocations through
/// wrappers); GLib's headers (libglib2.0-dev, pkg-config) for a target that allocates
/// through Debian's libglib.
const BASE_PACKAGES: &[&str] = &[
    "g++",
    "make",
    "bpftool",
    "util-linux",
    "file",
    "libjemalloc-dev",
    "libtcmalloc-minimal4",
    "libmimalloc-dev",
    "golang-go",
    "prometheus",
    "chromium",
    "debuginfod",
    "musl-tools",
    "valgrind",
    "perl",
    "python3.11",
    "libglib2.0-dev",
    "pkg-config",
];
/// Commands standing for [`BASE_PACKAGES`] on machines without dpkg.
const BASE_COMMANDS: &[&str] = &[
    "g++",
    "make",
    "bpftool",
    "file",
    "go",
    "prometheus",
    "promtool",
    "chromium",
    "debuginfod",
    "musl-gcc",
    "valgrind",
    "perl",
    "python3.11",
    "pkg-config",
];
/// The Debian route's compiler, standard library sources, clippy and LLVM for `bpf-linker`.
const DEBIAN_EBPF_PACKAGES: &[&str] = &[
    "rustc-web",
    "rust-web-src",
    "cargo-web",
    "rust-web-clippy",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const DEBIAN_LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const DEBIAN_LLVM_FEATURE: &str = "llvm-22";
const DEBIAN_LIBLLVM: &str = "libLLVM.so.22";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
/// `rust-web-clippy`'s cargo subcommand, run directly: through `cargo clippy`, cargo would
/// find the first `cargo-clippy` in `PATH`, which may be rustup's for another compiler.
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";
const BPF_LINKER_VERSION: &str = "^0.13";

/// `cargo xtask setup [--ebpf]`.
pub fn setup(ebpf: bool) -> Result<()> {
    ensure_base_packages()?;
    ensure_rust_components()?;
    if ebpf {
        let toolchain = ensure_ebpf_toolchain()?;
        println!("eBPF toolchain: {toolchain}");
    }
    Ok(())
}

/// Installs the packages the tests and the demo need, when missing.
pub fn ensure_base_packages() -> Result<()> {
    if is_debian() {
        return ensure_packages(BASE_PACKAGES);
    }
    let missing: Vec<&str> = BASE_COMMANDS
        .iter()
        .copied()
        .filter(|cmd| which(cmd).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "not a Debian system, so xtask cannot install packages: install {} \
             (and util-linux) with your package manager",
            missing.join(", ")
        );
    }
    println!("found {}", BASE_COMMANDS.join(", "));
    Ok(())
}

/// The target of `cargo xtask dist`'s static build, and of the static Rust test program.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The C compiler for that target (musl-tools), and the variable that tells cc-rs so.
pub const MUSL_CC: &str = "musl-gcc";
pub const MUSL_CC_VARIABLE: &str = "CC_x86_64_unknown_linux_musl";
/// cargo-deb, which `cargo xtask dist` packages the static build with.
const CARGO_DEB_VERSION: &str = "^3";

/// Whether `cargo SUBCOMMAND --version` runs.
fn cargo_has(subcommand: &str) -> bool {
    try_output(Command::new("cargo").args([subcommand, "--version"])).is_some()
}

/// `cargo fmt` and `cargo clippy` for `cargo xtask test`, from rustup when missing; the
/// musl target; cargo-deb.
fn ensure_rust_components() -> Result<()> {
    if !(cargo_has("fmt") && cargo_has("clippy")) {
        if which("rustup").is_none() {
            bail!("`cargo fmt` or `cargo clippy` is missing, and there is no rustup to add them");
        }
        devutil::run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    }
    ensure_musl_target()?;
    ensure_cargo_deb()
}

/// The musl target's standard library, from rustup when missing (without rustup, the
/// build that needs it says what is missing).
pub fn ensure_musl_target() -> Result<()> {
    let installed = try_output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|targets| targets.lines().any(|t| t.trim() == MUSL_TARGET));
    if !installed && which("rustup").is_some() {
        devutil::run(Command::new("rustup").args(["target", "add", MUSL_TARGET])).context(
            "the musl target is needed by `cargo xtask dist` and the static Rust test \
             (tests/tests/rust_leaker.rs)",
        )?;
    }
    Ok(())
}

/// `cargo deb`, installed with `cargo install --locked` when missing.
pub fn ensure_cargo_deb() -> Result<()> {
    if cargo_has("deb") {
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "--locked",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
    ]);
    println!("installing cargo-deb: {}", devutil::describe(&cmd));
    devutil::run(&mut cmd)
}

/// How the eBPF object gets built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Nightly,
    Debian,
}

/// A ready eBPF toolchain: commands for its cargo and rustc, and its `bpf-linker`.
pub struct EbpfToolchain {
    route: Route,
    bpf_linker: PathBuf,
}

impl fmt::Display for EbpfToolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = match self.route {
            Route::Nightly => "rustup nightly with rust-src",
            Route::Debian => "Debian rustc-web (RUSTC_BOOTSTRAP=1) with LLVM 22",
        };
        write!(f, "{route}, {}", self.bpf_linker.display())
    }
}

impl EbpfToolchain {
    /// A command with the calling cargo's build settings removed and `bpf-linker` in `PATH`.
    fn command(&self, program: impl Into<OsString>) -> Result<Command> {
        let mut cmd = Command::new(program.into());
        clear_build_env(&mut cmd);
        let linker_dir = self
            .bpf_linker
            .parent()
            .context("bpf-linker path has no parent")?;
        cmd.env("PATH", devutil::path_with(linker_dir)?);
        match self.route {
            Route::Nightly => {
                cmd.env("RUSTUP_TOOLCHAIN", "nightly");
            }
            Route::Debian => {
                cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            }
        }
        Ok(cmd)
    }

    /// This toolchain's cargo, ready for `-Z build-std`.
    pub fn cargo(&self) -> Result<Command> {
        match self.route {
            Route::Nightly => self.command("cargo"),
            Route::Debian => self.command(DEBIAN_CARGO),
        }
    }

    /// This toolchain's `cargo clippy`, ready for `-Z build-std`: arguments follow.
    pub fn cargo_clippy(&self) -> Result<Command> {
        match self.route {
            Route::Nightly => {
                let mut cmd = self.command("cargo")?;
                cmd.arg("clippy");
                Ok(cmd)
            }
            Route::Debian => {
                // As cargo runs a subcommand: named, and told which cargo to use.
                let mut cmd = self.command(DEBIAN_CARGO_CLIPPY)?;
                cmd.arg("clippy").env("CARGO", DEBIAN_CARGO);
                Ok(cmd)
            }
        }
    }

    /// This toolchain's rustc.
    pub fn rustc(&self) -> Result<Command> {
        match self.route {
            Route::Nightly => self.command("rustc"),
            Route::Debian => self.command(DEBIAN_RUSTC),
        }
    }

    /// `rustc --print sysroot`.
    pub fn sysroot(&self) -> Result<PathBuf> {
        let sysroot = devutil::output(self.rustc()?.args(["--print", "sysroot"]))?;
        Ok(PathBuf::from(sysroot))
    }

    /// What identifies the produced bytes: rustc, its LLVM and bpf-linker versions.
    pub fn identity(&self) -> Result<String> {
        let verbose = devutil::output(self.rustc()?.arg("-vV"))?;
        let rustc = verbose.lines().next().unwrap_or_default().to_owned();
        let llvm = verbose
            .lines()
            .find(|l| l.starts_with("LLVM version:"))
            .unwrap_or("LLVM version: unknown")
            .to_owned();
        let linker = devutil::output(Command::new(&self.bpf_linker).arg("--version"))?;
        Ok(format!("{rustc}\n{llvm}\n{linker}\n"))
    }
}

/// Picks the eBPF route and installs what it lacks.
pub fn ensure_ebpf_toolchain() -> Result<EbpfToolchain> {
    let route = if nightly_has("rust-src") {
        println!("using rustup nightly with rust-src");
        ensure_nightly_clippy()?;
        Route::Nightly
    } else if is_debian() {
        println!("no rustup nightly with rust-src: using Debian's rustc-web");
        ensure_packages(DEBIAN_EBPF_PACKAGES)?;
        Route::Debian
    } else if which("rustup").is_some() {
        println!("installing a rustup nightly with rust-src");
        devutil::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--component",
            "clippy",
        ]))?;
        Route::Nightly
    } else {
        bail!(
            "no eBPF toolchain: building for bpfel-unknown-none needs either rustup \
             (nightly with rust-src) or Debian 12 (rustc-web and llvm-22 packages)"
        );
    };
    let bpf_linker = ensure_bpf_linker(route)?;
    Ok(EbpfToolchain { route, bpf_linker })
}

/// Whether rustup's nightly has `component` installed.
fn nightly_has(component: &str) -> bool {
    if which("rustup").is_none() {
        return false;
    }
    try_output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|list| list.lines().any(|l| l.starts_with(component)))
}

/// The nightly's clippy, which checks the eBPF crate.
fn ensure_nightly_clippy() -> Result<()> {
    if nightly_has("clippy") {
        return Ok(());
    }
    devutil::run(Command::new("rustup").args([
        "component",
        "add",
        "clippy",
        "--toolchain",
        "nightly",
    ]))
}

/// The `bpf-linker` to use, installed with `cargo install` when missing or unfit.
fn ensure_bpf_linker(route: Route) -> Result<PathBuf> {
    let installed = devutil::cargo_home()?.join("bin").join("bpf-linker");
    let found = which("bpf-linker").or_else(|| installed.exists().then(|| installed.clone()));
    if let Some(path) = &found {
        match try_output(Command::new(path).arg("--version")) {
            Some(version) if route != Route::Debian || links_debian_llvm(path) => {
                println!("found {version} at {}", path.display());
                return Ok(path.clone());
            }
            Some(version) => println!(
                "{version} at {} is not built against {DEBIAN_LIBLLVM}: reinstalling",
                path.display()
            ),
            None => println!("{} does not run: reinstalling", path.display()),
        }
    }

    let mut cmd = Command::new("cargo");
    cmd.args(["install", "bpf-linker", "--locked"]);
    if found.is_some() {
        cmd.arg("--force");
    }
    if route == Route::Debian {
        let llvm_bin = Path::new(DEBIAN_LLVM_PREFIX).join("bin");
        cmd.args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
            .args(["--features", DEBIAN_LLVM_FEATURE])
            .env("LLVM_PREFIX", DEBIAN_LLVM_PREFIX)
            .env("PATH", devutil::path_with(&llvm_bin)?);
    }
    println!("installing bpf-linker: {}", devutil::describe(&cmd));
    devutil::run(&mut cmd)?;

    let version = devutil::output(Command::new(&installed).arg("--version"))
        .context("bpf-linker does not run after `cargo install`")?;
    println!("installed {version} at {}", installed.display());
    Ok(installed)
}

/// Whether `bpf-linker` uses Debian's LLVM 22 (which reads rustc-web's bitcode). A
/// statically linked one cannot be told apart and is accepted.
fn links_debian_llvm(path: &Path) -> bool {
    match try_output(Command::new("ldd").arg(path)) {
        Some(libs) if libs.contains("libLLVM") => libs
            .lines()
            .any(|l| l.contains(DEBIAN_LIBLLVM) && !l.contains("not found")),
        _ => true,
    }
}
