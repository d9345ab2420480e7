//! How the process's allocator treats freed memory. A training step allocates and frees
//! thousands of tensors of a few megabytes each. Left to itself, glibc's malloc gives the top of
//! its heap back to the kernel as soon as enough of it is free, and serves blocks above a
//! threshold it keeps adjusting with fresh `mmap`s, so a loop whose last tensors are freed at the
//! end of each iteration has the kernel fault in and zero the same pages again every time: single
//! ops at 64×16×32×32 ran forward and backward 2.5–3.7× slower than with the memory kept
//! (BENCHMARKS.md). [`keep_freed_memory`] keeps it. (mimalloc, used before, fixed the single ops
//! too, but made whole search steps 10–20 % slower and held 20 % more memory.)

/// Blocks up to this size come from malloc's heap instead of their own `mmap`: 32 MiB, the
/// largest threshold glibc accepts, above the activations of a search at paper sizes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Makes glibc's malloc keep freed memory for reuse (no trimming of the heap's top, no `mmap` for
/// tensor-sized blocks). Call once at start-up; a no-op with other C libraries.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only sets malloc's tuning parameters (under malloc's own lock); both values
    // are in the ranges glibc documents.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // Setting either also stops glibc's dynamic adjustment of both, which would otherwise
        // undo them.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
