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
//! with a thread's heap. An idle tunnel is unaffected (nothing is allocated yet).
//!
//! The other side of that bargain is [`return_free_memory`]: when a connection has been
//! idle long enough to give its bulk buffers back (`copy::IDLE_RELEASE`), the free memory
//! of all heaps goes back to the kernel, so a tunnel that moved a lot and then idles
//! returns to about its starting size instead of keeping a MiB or more per thread.

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

/// Gives the free memory of every heap back to the kernel (glibc's `malloc_trim`). Cheap
/// enough for an idle moment (it walks the heaps once), far too dear for the data path.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases pages the allocator holds free; it takes the
    // allocator's own locks and a plain integer.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
