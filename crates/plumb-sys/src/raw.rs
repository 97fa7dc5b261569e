//! The calls into libc that socket2 does not cover. Every `unsafe` block of plumb
//! is in this file.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Marker for plain-old-data option values: any bit pattern, including all zeroes, is
/// a valid value, and the type has no padding the kernel could leave uninitialised in
/// a way that matters to Rust.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs of integers.
pub(crate) unsafe trait Pod: Copy {}

/// `getsockopt` into a zero-initialised `T`; returns the value and how many bytes the
/// kernel wrote (older kernels write a prefix of newer structs).
pub(crate) fn getsockopt<T: Pod>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `fd` is a live descriptor for the duration of the borrow; `value` points
    // to `len` writable bytes, and the kernel writes at most `len` bytes and updates
    // `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the value was zero-initialised and `T: Pod` makes every bit pattern,
    // including a partial write over zeroes, a valid `T`.
    let value = unsafe { value.assume_init() };
    Ok((value, len as usize))
}

/// `setsockopt` of one `c_int` value.
pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor for the duration of the borrow; the kernel
    // reads exactly `size_of::<c_int>()` bytes from `&value`, which lives across the
    // call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast::<libc::c_void>(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `killpg(pgid, sig)`.
pub(crate) fn killpg(pgid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: killpg takes two integers and touches no memory of this process.
    let rc = unsafe { libc::killpg(pgid, sig) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of descriptors the kernel just installed in this process
/// (received with `SCM_RIGHTS`).
pub(crate) fn adopt(fds: Vec<std::os::fd::RawFd>) -> Vec<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    fds.into_iter()
        // SAFETY: each descriptor was installed by the kernel for this message and is
        // owned by nothing else in this process; it is wrapped exactly once.
        .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// `malloc_trim(0)` where the C library has it (glibc): gives freed heap memory
/// back to the kernel.
pub(crate) fn malloc_trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes an integer and only touches the allocator's own
    // state, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// jemalloc's `arena.<all>.purge` (4096 is `MALLCTL_ARENAS_ALL`): every arena hands
/// its unused pages back to the kernel now, rather than after its decay time.
/// Harmless when jemalloc is linked but not the global allocator (it has nothing to
/// purge). Returns mallctl's result: 0, or an errno (ENOENT for a wrong name).
pub(crate) fn jemalloc_purge() -> i32 {
    let name = c"arena.4096.purge";
    // SAFETY: the name is a NUL-terminated string that outlives the call; this
    // control neither reads nor writes a value, so all value pointers are null and
    // the length is 0, as jemalloc's mallctl(3) documents for it.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    }
}

/// `recv` into the unfilled part of `buf`, without zeroing it first; marks what the
/// kernel wrote as filled and returns how many bytes that was (0: end of stream).
pub(crate) fn recv_into(fd: BorrowedFd<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: nothing below de-initialises bytes of `buf`: the kernel only writes.
    let unfilled = unsafe { buf.unfilled_mut() };
    // SAFETY: `fd` is a live descriptor for the duration of the borrow; the pointer
    // and length describe `unfilled`, which is writable and lives across the call,
    // and the kernel writes at most that many bytes.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            unfilled.as_mut_ptr().cast::<libc::c_void>(),
            unfilled.len(),
            0,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel wrote exactly `n` bytes at the start of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}
