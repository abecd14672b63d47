//! Reads a whole BPF hash map with `BPF_MAP_LOOKUP_BATCH`: one system call per chunk of
//! entries, where walking it key by key (what aya offers) costs two per entry, and a
//! million outstanding allocations would cost seconds per report.
// TODO: use aya's batch API once it has one (aya-rs/aya issue 360).

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The batch member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `each` with every entry of the hash map `map`, `chunk` entries per system call.
/// Entries added or removed meanwhile may or may not be seen; none is seen twice.
pub fn for_each<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    chunk: usize,
    mut each: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut chunk = chunk.max(1);
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The kernel's position in the map: a bucket index for hash maps.
    let (mut position, mut next) = (0u64, 0u64);
    let mut started = false;
    loop {
        keys.resize_with(chunk, MaybeUninit::uninit);
        values.resize_with(chunk, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            in_batch: if started {
                (&raw const position) as u64
            } else {
                0
            },
            out_batch: (&raw mut next) as u64,
            map_fd: map.as_raw_fd() as u32,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `count` keys and values of the map's own
        // key and value sizes (the caller's K and V), and at the two position words; the
        // kernel writes no more than that, and `count` back into `attr`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        let filled = usize::try_from(attr.count).unwrap_or(0).min(chunk);
        for (key, value) in keys.iter().zip(&values).take(filled) {
            // SAFETY: the kernel filled the first `filled` slots.
            unsafe { each(key.assume_init_ref(), value.assume_init_ref()) };
        }
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            // The end of the map.
            Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more entries than a chunk: retry it with room for them.
            Some(libc::ENOSPC) if filled == 0 => {
                chunk *= 2;
                continue;
            }
            Some(_) => return Err(error.unwrap_or_else(|| io::Error::other("bpf"))),
        }
        position = next;
        started = true;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        os::fd::{AsFd, FromRawFd, OwnedFd},
    };

    use super::*;
    use crate::test_support;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_HASH: u32 = 1;

    fn bpf(command: libc::c_long, attr: &mut [u64; 8]) -> i64 {
        // SAFETY: `attr` is a zero-padded bpf_attr for `command`, whose pointers point
        // at live locals of the caller.
        unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), size_of_val(attr)) }
    }

    /// A kernel hash map of u64 → u64 holding `key → key * 3` for every key below
    /// `entries`; needs root, like every test that touches eBPF (checked by the tests).
    fn hash_map(entries: u64) -> OwnedFd {
        let mut attr = [0u64; 8];
        // map_type, key_size | value_size, max_entries
        attr[0] = u64::from(BPF_MAP_TYPE_HASH) | (8 << 32);
        attr[1] = 8 | (entries << 32);
        let fd = bpf(BPF_MAP_CREATE, &mut attr);
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: a new descriptor nobody else owns.
        let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for key in 0..entries {
            let value = key * 3;
            let mut attr = [0u64; 8];
            attr[0] = map.as_raw_fd() as u64;
            attr[1] = (&raw const key) as u64;
            attr[2] = (&raw const value) as u64;
            assert_eq!(
                bpf(BPF_MAP_UPDATE_ELEM, &mut attr),
                0,
                "{}",
                io::Error::last_os_error()
            );
        }
        map
    }

    #[test]
    fn reads_every_entry_once_across_chunks() {
        if !test_support::root("batch::reads_every_entry_once_across_chunks") {
            return;
        }
        let map = hash_map(10_000);
        for chunk in [1, 7, 4096, 100_000] {
            let mut seen = BTreeMap::new();
            for_each::<u64, u64>(map.as_fd(), chunk, |key, value| {
                assert!(seen.insert(*key, *value).is_none(), "key {key} seen twice");
            })
            .unwrap();
            assert_eq!(seen.len(), 10_000, "chunk {chunk}");
            assert!(seen.iter().all(|(key, value)| *value == key * 3));
        }
    }

    #[test]
    fn a_single_entry_is_read_once() {
        if !test_support::root("batch::a_single_entry_is_read_once") {
            return;
        }
        let map = hash_map(1);
        let mut count = 0;
        for_each::<u64, u64>(map.as_fd(), 16, |_, _| count += 1).unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn attr_layout_matches_the_kernel() {
        assert_eq!(size_of::<BatchAttr>(), 56);
    }
}
