//! An eBPF array map (created `BPF_F_MMAPABLE`) that the agent writes in place, through
//! a shared memory mapping of its elements: an unwind table of 100,000 rows is one
//! copy, where map updates would be a system call per row.
//!
//! The kernel maps every page of a mapping at once (the array's memory is allocated
//! whole at load), and each mapped page counts in the agent's resident set though it is
//! the kernel's memory: only the prefix in use is mapped, grown as writes need.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::{Pod, maps::MapData};

/// How much the mapped prefix grows by at least: a handful of remaps for a big table.
const GROWTH: usize = 1 << 20;

pub struct SharedArray<T: Pod> {
    /// The mapped prefix, if any.
    mapped: Option<(NonNull<T>, usize)>,
    /// Elements in the array.
    len: usize,
    page: usize,
    map: MapData,
    _element: PhantomData<T>,
}

impl<T: Pod> SharedArray<T> {
    /// The `len` elements of `map`, an array of `T` created memory-mappable, whose
    /// elements are 8-byte aligned (as the kernel lays out every array).
    pub fn new(map: MapData, len: u32) -> io::Result<Self> {
        debug_assert_eq!(size_of::<T>() % 8, 0, "array elements are 8-byte aligned");
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut array = Self {
            mapped: None,
            len: len as usize,
            page,
            map,
            _element: PhantomData,
        };
        // Fails here, not at the first write, if the map cannot be mapped at all.
        array.prefix_mut(1.min(array.len))?;
        Ok(array)
    }

    /// How many elements the array has.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The first `count` elements (at most the array's), mapped if they were not. The
    /// eBPF programs read them at any time: whoever writes an element some other one
    /// refers to writes it before the one that refers to it.
    pub fn prefix_mut(&mut self, count: usize) -> io::Result<&mut [T]> {
        let count = count.min(self.len);
        let wanted = count * size_of::<T>();
        let mapped_bytes = self.mapped.map_or(0, |(_, bytes)| bytes);
        if wanted > mapped_bytes || self.mapped.is_none() {
            let whole = (self.len * size_of::<T>()).div_ceil(self.page).max(1) * self.page;
            let bytes = wanted
                .max(mapped_bytes + GROWTH)
                .div_ceil(self.page)
                .max(1)
                .saturating_mul(self.page)
                .min(whole);
            self.unmap();
            // SAFETY: maps the map's own memory, shared with the kernel, from its start;
            // the result is checked before use.
            let address = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.map.fd().as_fd().as_raw_fd(),
                    0,
                )
            };
            if address == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let elements =
                NonNull::new(address.cast::<T>()).ok_or_else(io::Error::last_os_error)?;
            self.mapped = Some((elements, bytes));
        }
        let Some((elements, _)) = self.mapped else {
            return Ok(&mut []);
        };
        // SAFETY: `count` elements of `T` (any bit pattern is one) inside the mapping,
        // which lives as long as the borrow of `self`; the kernel only reads them.
        Ok(unsafe { std::slice::from_raw_parts_mut(elements.as_ptr(), count) })
    }

    /// The kernel memory the array takes, in bytes.
    pub fn bytes(&self) -> usize {
        (self.len * size_of::<T>()).div_ceil(self.page).max(1) * self.page
    }

    fn unmap(&mut self) {
        if let Some((elements, bytes)) = self.mapped.take() {
            // SAFETY: a mapping made by `prefix_mut`, no longer referred to (every
            // slice of it borrowed `self`).
            unsafe { libc::munmap(elements.as_ptr().cast(), bytes) };
        }
    }
}

impl<T: Pod> Drop for SharedArray<T> {
    fn drop(&mut self) {
        self.unmap();
    }
}
