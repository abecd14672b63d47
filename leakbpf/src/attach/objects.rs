//! Finds the object files a traced program runs, in the order the dynamic linker binds
//! symbols: the executable first, then its libraries.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

use super::elf::{Dependencies, ElfError, ElfObject};

/// An object file mapped (or about to be mapped) by the traced program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedObject {
    /// The path as the traced process sees it.
    pub path: PathBuf,
    /// The path this agent opens and attaches to: through `/proc/PID/root` for a process
    /// in another mount namespace, such as a container.
    pub host_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    #[error("cannot read the memory map of pid {pid}")]
    Maps { pid: u32, source: io::Error },
    #[error("cannot list the libraries of {exe} with its loader {loader}: {reason}")]
    Loader {
        exe: PathBuf,
        loader: PathBuf,
        reason: String,
    },
    #[error(transparent)]
    Elf(#[from] ElfError),
}

/// The objects process `pid` has mapped as code, executable first.
pub fn of_process(pid: u32) -> Result<Vec<MappedObject>, ObjectsError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let maps = std::fs::read_to_string(proc_dir.join("maps")).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ObjectsError::NoSuchProcess(pid)
        } else {
            ObjectsError::Maps { pid, source }
        }
    })?;
    let exe = std::fs::read_link(proc_dir.join("exe")).ok();
    let root = proc_dir.join("root");
    let mut paths: Vec<PathBuf> = exe.into_iter().collect();
    for path in maps.lines().filter_map(executable_mapping) {
        if !paths.iter().any(|known| known == path) {
            paths.push(path.to_owned());
        }
    }
    let mapped = paths
        .into_iter()
        .map(|path| MappedObject {
            host_path: under_root(&root, &path),
            path,
        })
        .collect();
    let mut preloads = std::fs::read(proc_dir.join("environ"))
        .map(|environ| preloaded(&environ))
        .unwrap_or_default();
    if let Ok(system) = std::fs::read_to_string(root.join("etc/ld.so.preload")) {
        preloads.extend(system.split_whitespace().map(str::to_owned));
    }
    Ok(binding_order(
        mapped,
        &preloads,
        |object| {
            ElfObject::open(&object.host_path)
                .and_then(|elf| elf.dependencies())
                .unwrap_or_default()
        },
        |path| file_identity(&under_root(&root, path)),
    ))
}

/// Device and inode of the file at `path`, links followed: a preload named by a symlink
/// (`libtcmalloc_minimal.so.4`) is the versioned file the process maps.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// The libraries `LD_PRELOAD` names in a process environment (`/proc/PID/environ`).
pub fn preloaded(environ: &[u8]) -> Vec<String> {
    environ
        .split(|&byte| byte == 0)
        .find_map(|variable| variable.strip_prefix(b"LD_PRELOAD="))
        .map(|value| {
            String::from_utf8_lossy(value)
                .split([' ', ':'])
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Orders `mapped` (executable first) as the dynamic linker searches objects for a
/// symbol: the executable, the preloaded libraries, then the libraries they need,
/// breadth first; objects reached no other way (`dlopen`ed) come last, in map order.
/// A preload given by path is the mapped object that is the same file (`identity`, as
/// the process sees the path), whatever the names.
fn binding_order(
    mapped: Vec<MappedObject>,
    preloads: &[String],
    dependencies: impl Fn(&MappedObject) -> Dependencies,
    identity: impl Fn(&Path) -> Option<(u64, u64)>,
) -> Vec<MappedObject> {
    let names: Vec<Dependencies> = mapped.iter().map(dependencies).collect();
    let files: Vec<Option<(u64, u64)>> = mapped.iter().map(|o| identity(&o.path)).collect();
    let find = |name: &str| {
        let file = name
            .contains('/')
            .then(|| identity(Path::new(name)))
            .flatten();
        mapped
            .iter()
            .zip(&names)
            .zip(&files)
            .position(|((object, deps), same)| {
                if name.contains('/') {
                    object.path == Path::new(name) || file.is_some() && file == *same
                } else {
                    deps.soname.as_deref() == Some(name)
                        || object.path.file_name().is_some_and(|file| file == name)
                }
            })
    };
    let mut queue: Vec<usize> = Vec::with_capacity(mapped.len());
    let enqueue = |queue: &mut Vec<usize>, index: Option<usize>| {
        if let Some(index) = index
            && !queue.contains(&index)
        {
            queue.push(index);
        }
    };
    if !mapped.is_empty() {
        enqueue(&mut queue, Some(0));
    }
    for preload in preloads {
        enqueue(&mut queue, find(preload));
    }
    let mut next = 0;
    while let Some(&index) = queue.get(next) {
        for needed in &names[index].needed {
            enqueue(&mut queue, find(needed));
        }
        next += 1;
    }
    for index in 0..mapped.len() {
        enqueue(&mut queue, Some(index));
    }
    queue
        .into_iter()
        .map(|index| mapped[index].clone())
        .collect()
}

/// Variables of a process environment that decide what its program interpreter loads.
const LOADER_VARIABLES: [&[u8]; 2] = [b"LD_PRELOAD=", b"LD_LIBRARY_PATH="];

/// The objects process `pid` maps once the exec it is stopped in (or has just made)
/// runs: its new executable, then what the executable's program interpreter lists for
/// it under the process's own `LD_PRELOAD` and `LD_LIBRARY_PATH` (not the agent's: a
/// launcher such as `env LD_PRELOAD=… prog` sets them for the program alone).
pub fn of_new_image(pid: u32) -> Result<Vec<MappedObject>, ObjectsError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    // Opened through the link, which reaches the file in any mount namespace.
    let exe = proc_dir.join("exe");
    let name = std::fs::read_link(&exe).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ObjectsError::NoSuchProcess(pid)
        } else {
            ObjectsError::Maps { pid, source }
        }
    })?;
    let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
    let variables = environ
        .split(|&byte| byte == 0)
        .filter(|variable| LOADER_VARIABLES.iter().any(|v| variable.starts_with(v)))
        .filter_map(|variable| {
            let text = std::str::from_utf8(variable).ok()?;
            text.split_once('=')
        });
    // The loader is given the program by its own path, where `$ORIGIN` in its run path
    // means what it means to the process (through its root: a container's own files);
    // a deleted program only by the link.
    let program = Some(under_root(&proc_dir.join("root"), &name))
        .filter(|path| path.exists())
        .unwrap_or_else(|| exe.clone());
    let mut objects = vec![MappedObject {
        path: name,
        host_path: exe.clone(),
    }];
    if let Some(loader) = ElfObject::open(&exe)?.interpreter()? {
        // `--list` loads the libraries without running any of their code.
        let output = Command::new(&loader)
            .env_clear()
            .envs(variables)
            .arg("--list")
            .arg(&program)
            .output()
            .map_err(|err| ObjectsError::Loader {
                exe: exe.clone(),
                loader: loader.clone(),
                reason: err.to_string(),
            })?;
        if !output.status.success() {
            return Err(ObjectsError::Loader {
                exe,
                loader,
                reason: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        let root = proc_dir.join("root");
        objects.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(listed_library)
                .map(|listed| {
                    let host_path = PathBuf::from(listed);
                    // Found through `$ORIGIN`, under the process's root: named as it
                    // names it.
                    let path = match host_path.strip_prefix(&root) {
                        Ok(inside) => Path::new("/").join(inside),
                        Err(_) => host_path.clone(),
                    };
                    MappedObject { path, host_path }
                }),
        );
    }
    Ok(objects)
}

/// The path of a file mapped executable, from a `/proc/PID/maps` line.
pub fn executable_mapping(line: &str) -> Option<&Path> {
    let mut fields = line.splitn(6, ' ');
    let permissions = fields.nth(1)?;
    let path = fields.nth(3)?.trim_start();
    (permissions.contains('x') && path.starts_with('/')).then(|| Path::new(path))
}

/// The resolved path from a loader `--list` line: `libc.so.6 => /lib/.../libc.so.6 (0x…)`
/// or, for the loader itself, `/lib64/ld-linux-x86-64.so.2 (0x…)`.
pub fn listed_library(line: &str) -> Option<&str> {
    let line = line.trim();
    let resolved = line.split_once(" => ").map_or(line, |(_, path)| path);
    let path = resolved
        .rsplit_once(" (")
        .map_or(resolved, |(path, _)| path);
    path.starts_with('/').then_some(path)
}

fn under_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_mappings_only() {
        let code = "7f00-7f10 r-xp 00028000 fe:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6";
        let data = "7f10-7f20 rw-p 00000000 00:00 0 ";
        let spaced = "7f20-7f30 r-xp 00001000 fe:01 99     /opt/my app/lib x.so";
        assert_eq!(
            executable_mapping(code),
            Some(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(executable_mapping(data), None);
        assert_eq!(
            executable_mapping(spaced),
            Some(Path::new("/opt/my app/lib x.so"))
        );
        assert_eq!(
            executable_mapping("7f00-7f10 r-xp 00000000 00:00 0   [vdso]"),
            None
        );
    }

    #[test]
    fn parses_loader_list_lines() {
        assert_eq!(
            listed_library("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)"),
            Some("/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            listed_library("\t/lib64/ld-linux-x86-64.so.2 (0x00007f)"),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(listed_library("\tlinux-vdso.so.1 (0x00007ffd)"), None);
    }

    fn object(path: &str) -> MappedObject {
        MappedObject {
            path: path.into(),
            host_path: path.into(),
        }
    }

    #[test]
    fn orders_objects_as_the_dynamic_linker_binds() {
        // Map order (by address) is not binding order.
        let mapped = vec![
            object("/bin/app"),
            object("/lib/libc.so.6"),
            object("/lib/libstdc++.so.6.0.30"),
            object("/lib/libjemalloc.so.2"),
            object("/lib/libplugin.so"),
            object("/lib/libpreload.so.1"),
        ];
        let deps = |o: &MappedObject| {
            let (soname, needed): (Option<&str>, &[&str]) = match o.path.to_str().unwrap() {
                "/bin/app" => (None, &["libstdc++.so.6", "libjemalloc.so.2"]),
                "/lib/libstdc++.so.6.0.30" => (Some("libstdc++.so.6"), &["libc.so.6"]),
                "/lib/libjemalloc.so.2" => (Some("libjemalloc.so.2"), &["libc.so.6"]),
                "/lib/libc.so.6" => (Some("libc.so.6"), &[]),
                _ => (None, &[]),
            };
            Dependencies {
                soname: soname.map(str::to_owned),
                needed: needed.iter().map(|n| n.to_string()).collect(),
            }
        };
        // By a link to a mapped file, the preload is still that file.
        let identity = |path: &Path| match path.to_str() {
            Some("/lib/libpreload.so" | "/lib/libpreload.so.1") => Some((1, 99)),
            _ => None,
        };
        let order: Vec<String> =
            binding_order(mapped, &["/lib/libpreload.so".into()], deps, identity)
                .iter()
                .map(|o| o.path.display().to_string())
                .collect();
        assert_eq!(
            order,
            [
                "/bin/app",
                "/lib/libpreload.so.1",
                "/lib/libstdc++.so.6.0.30",
                "/lib/libjemalloc.so.2",
                "/lib/libc.so.6",
                "/lib/libplugin.so",
            ]
        );
    }

    #[test]
    fn reads_ld_preload_from_an_environment() {
        let environ =
            b"HOME=/root\0LD_PRELOAD=/usr/lib/libjemalloc.so.2 libx.so:liby.so\0TERM=xterm\0";
        assert_eq!(
            preloaded(environ),
            ["/usr/lib/libjemalloc.so.2", "libx.so", "liby.so"]
        );
        assert!(preloaded(b"HOME=/root\0").is_empty());
    }

    #[test]
    fn own_process_maps_its_executable_first_and_libc() {
        let objects = of_process(std::process::id()).unwrap();
        assert_eq!(objects[0].path, std::env::current_exe().unwrap());
        assert!(
            objects
                .iter()
                .any(|o| o.path.to_string_lossy().contains("libc.so"))
        );
        let root = format!("/proc/{}/root/", std::process::id());
        assert!(objects[0].host_path.starts_with(&root));
    }

    #[test]
    fn a_new_image_is_listed_with_its_own_preloads() {
        let jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
        if !crate::test_support::file(
            "objects::a_new_image_is_listed_with_its_own_preloads",
            jemalloc,
            "Debian's libjemalloc2, which cargo xtask setup installs",
        ) {
            return;
        }
        let mut sleeper = Command::new("sleep")
            .arg("30")
            .env("LD_PRELOAD", jemalloc)
            .spawn()
            .unwrap();
        // `spawn` returns once exec closed its descriptors, a moment before the new
        // image's environment is in place (a held exec, as the agent reads it, is past
        // that).
        let environ = format!("/proc/{}/environ", sleeper.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(&environ).unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no environment");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let objects = of_new_image(sleeper.id());
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let paths: Vec<PathBuf> = objects.unwrap().into_iter().map(|o| o.path).collect();
        assert!(paths[0].ends_with("sleep"), "{paths:?}");
        let preload = paths.iter().position(|p| p == Path::new(jemalloc));
        let libc = paths
            .iter()
            .position(|p| p.to_string_lossy().contains("libc.so"));
        assert!(
            matches!((preload, libc), (Some(p), Some(c)) if p < c),
            "the preload binds before libc: {paths:?}"
        );
    }

    #[test]
    fn a_missing_process_is_named() {
        let err = of_process(u32::MAX - 7).unwrap_err();
        assert!(matches!(err, ObjectsError::NoSuchProcess(_)), "{err}");
    }
}
