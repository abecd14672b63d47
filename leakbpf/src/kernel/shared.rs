//! An eBPF array map (created `BPF_F_MMAPABLE`) that the agent writes in place, through
//! a shared memory mapping of its elements: an unwind table of 100,000 rows is one
//! copy, where map updates would be a system call per row.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::{Pod, maps::MapData};

pub struct SharedArray<T: Pod> {
    elements: NonNull<T>,
    len: usize,
    bytes: usize,
    /// Keeps the map alive as long as its memory is mapped.
    _map: MapData,
    _element: PhantomData<T>,
}

impl<T: Pod> SharedArray<T> {
    /// Maps the `len` elements of `map`, an array of `T` created memory-mappable, whose
    /// elements are 8-byte aligned (as the kernel lays out every array).
    pub fn new(map: MapData, len: u32) -> io::Result<Self> {
        debug_assert_eq!(size_of::<T>() % 8, 0, "array elements are 8-byte aligned");
        let len = len as usize;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (len * size_of::<T>()).div_ceil(page).max(1) * page;
        // SAFETY: maps the map's own memory, shared with the kernel; the result is
        // checked before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let elements = NonNull::new(address.cast::<T>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            elements,
            len,
            bytes,
            _map: map,
            _element: PhantomData,
        })
    }

    /// The elements. The eBPF programs read them at any time: whoever writes an
    /// element some other one refers to writes it before the one that refers to it.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: `len` elements of `T` (any bit pattern is one), mapped as long as
        // `self` lives; the kernel only reads them.
        unsafe { std::slice::from_raw_parts_mut(self.elements.as_ptr(), self.len) }
    }

    /// The kernel memory the array takes, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl<T: Pod> Drop for SharedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer referred to.
        unsafe { libc::munmap(self.elements.as_ptr().cast(), self.bytes) };
    }
}
