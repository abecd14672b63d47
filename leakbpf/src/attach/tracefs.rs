//! tracefs, for the process tracepoints: where their records' fields are on this kernel
//! (layouts change between versions), mounting tracefs where nobody has.

use std::{fs, io, path::Path};

use leakbpf_common::NO_FIELD;

/// Where tracefs is mounted, by convention; aya looks here too.
const MOUNT_POINT: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("cannot mount tracefs at {MOUNT_POINT}")]
    Mount(#[source] io::Error),
    #[error("cannot read the format of tracepoint {0}")]
    Format(&'static str, #[source] io::Error),
    #[error("tracepoint {0} has no field {1} on this kernel")]
    Field(&'static str, &'static str),
}

/// The offsets the process tracepoints read, in their records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessFields {
    /// `task/task_newtask`: the new task's pid.
    pub newtask_pid: u32,
    /// `task/task_newtask`: its clone flags.
    pub newtask_flags: u32,
    /// `sched/sched_process_exit`: `group_dead`, or [`NO_FIELD`] before kernel 6.16.
    pub exit_group_dead: u32,
}

/// The process tracepoints' fields, mounting tracefs first if it is not.
pub fn process_fields() -> Result<ProcessFields, TracefsError> {
    mount()?;
    let newtask = format("task/task_newtask")?;
    let exit = format("sched/sched_process_exit")?;
    let field = |format: &str, tracepoint, name| {
        offset(format, name).ok_or(TracefsError::Field(tracepoint, name))
    };
    Ok(ProcessFields {
        newtask_pid: field(&newtask, "task/task_newtask", "pid")?,
        newtask_flags: field(&newtask, "task/task_newtask", "clone_flags")?,
        exit_group_dead: offset(&exit, "group_dead").unwrap_or(NO_FIELD),
    })
}

/// Mounts tracefs at its usual place unless it is there; the mount stays, as the one
/// systemd makes at boot would.
fn mount() -> Result<(), TracefsError> {
    if Path::new(MOUNT_POINT).join("events").is_dir() {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    debug_assert_eq!(target.to_bytes(), MOUNT_POINT.as_bytes());
    // SAFETY: valid C strings; no data argument.
    let status = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(TracefsError::Mount(io::Error::last_os_error()))
    }
}

fn format(tracepoint: &'static str) -> Result<String, TracefsError> {
    fs::read_to_string(
        Path::new(MOUNT_POINT)
            .join("events")
            .join(tracepoint)
            .join("format"),
    )
    .map_err(|source| TracefsError::Format(tracepoint, source))
}

/// The offset of field `name` in a tracepoint's `format` text, whose field lines read
/// `field:TYPE NAME[DIMENSION];`, then `offset:N;`, `size:N;`, `signed:N;`, tab-separated.
fn offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let field = declaration.rsplit(' ').next()?;
        let field = field.split('[').next()?;
        if field != name {
            return None;
        }
        parts
            .find_map(|part| part.strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEWTASK: &str = "name: task_newtask
ID: 205
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;
";

    #[test]
    fn finds_fields_by_name_not_by_prefix_or_type() {
        assert_eq!(offset(NEWTASK, "pid"), Some(8));
        assert_eq!(offset(NEWTASK, "comm"), Some(12));
        assert_eq!(offset(NEWTASK, "clone_flags"), Some(32));
        assert_eq!(offset(NEWTASK, "common_pid"), Some(4));
        assert_eq!(offset(NEWTASK, "flags"), None);
        assert_eq!(offset(NEWTASK, "u64"), None);
    }

    #[test]
    fn reads_this_kernels_process_tracepoints() {
        if !crate::test_support::root("tracefs::reads_this_kernels_process_tracepoints") {
            return;
        }
        let fields = process_fields().expect("tracefs, as root");
        assert_ne!(fields.newtask_pid, fields.newtask_flags);
    }
}
