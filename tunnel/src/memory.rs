//! The heap settings of a tunnel process.
//!
//! The data path frees and reallocates the same few hundred KiB over and over: rustls
//! allocates each outgoing 16 KiB record and frees it once written, in batches of up to
//! [`copy::BUF_MAX`](crate::copy::BUF_MAX). glibc's defaults give memory above 128 KiB at
//! the top of a thread's heap back to the kernel on every such free, so every batch
//! faulted its pages in again: measured on the benchmark, the first connection of a
//! tunnel (for a mount, the only one it ever has) spent about twice the CPU per GiB of
//! later ones, most of it in page faults and the TLB flushes of giving pages back. glibc
//! only raises its thresholds after the first large buffer is freed, which for an NFS
//! connection is when it closes. So the tunnel sets them itself, once, at start-up:
//! copy buffers come from the heap, and up to [`TRIM_THRESHOLD`] of free memory stays
//! with a thread's heap. An idle tunnel is unaffected (nothing is allocated yet); after
//! bulk traffic a tunnel keeps at most that much free memory per worker thread.

/// Allocations up to this size come from the heap rather than their own mapping.
const MMAP_THRESHOLD: i32 = 1024 * 1024;
/// Free memory at the top of a heap is given back to the kernel only beyond this.
const TRIM_THRESHOLD: i32 = 1024 * 1024;

/// Sets glibc's heap thresholds (see the module documentation). Call before any thread
/// starts. On other C libraries, or if glibc refuses a value, the defaults stay.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two tuning parameters of the allocator; it is called
    // before the runtime starts any thread, and takes plain integers.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
