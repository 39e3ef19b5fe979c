//! Small wrappers over system calls used outside the I/O backends.

#![allow(unsafe_code)]

/// A copy of `v` in memory the kernel is asked to back with transparent huge pages
/// (`MADV_HUGEPAGE`), so that random reads across a large table (the FIB's trie) miss the
/// TLB far less. Small vectors are returned as plain copies. The advice is a hint: where the
/// kernel has huge pages disabled it changes nothing.
pub fn huge_page_copy<T: Copy>(v: &[T]) -> Vec<T> {
    const HUGE: usize = 2 << 20;
    let bytes = std::mem::size_of_val(v);
    let mut out = Vec::with_capacity(v.len());
    if bytes >= HUGE {
        let start = out.as_ptr() as usize;
        let first = (start + HUGE - 1) & !(HUGE - 1);
        let end = (start + bytes) & !(HUGE - 1);
        if end > first {
            // SAFETY: [first, end) lies inside `out`'s allocation, which we own and have not
            // touched yet; MADV_HUGEPAGE only changes how the kernel backs it with pages.
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        }
    }
    out.extend_from_slice(v);
    out
}

/// Lower the calling thread's scheduling priority to `nice` (Linux keeps a nice value per
/// thread), so that under CPU contention the threads at the default priority win. Returns
/// whether it took effect.
pub fn lower_thread_priority(nice: i32) -> bool {
    // SAFETY: gettid(2) has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority(2) on our own thread id; it only changes the scheduler's weight.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0 }
}
