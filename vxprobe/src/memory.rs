//! The allocator's side of vxprobe's memory bound. Each stats interval reads the whole flow
//! table into buffers of megabytes and frees them; glibc keeps what is freed unless told
//! otherwise, and the peak (what a pod's memory limit counts) grows with what it keeps.

/// Large blocks straight from the kernel and back to it when freed. glibc raises its mmap
/// threshold to the size of every mapped block freed (up to 32 MiB), after which the next
/// reads' buffers land in the heap between smaller allocations and stay there as fragments.
/// A threshold set once stops that adjustment.
pub fn return_large_blocks() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Gives the heap's free pages back to the kernel: after start-up (the kernel's BTF parsed,
/// programs loaded) and after each interval.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no arguments
    // that point anywhere.
    unsafe {
        libc::malloc_trim(0);
    }
}
