//! Post-training quantization for large language models, on a plain CPU.
//!
//! Pipeline: GGUF or Hugging Face directory -> memory-mapped weights -> calibration
//! runner -> quantizer (RTN, FP8, GPTQ, AWQ) -> compressed safetensors checkpoint
//! (gptq, awq, compressed-tensors) -> evaluation against the baseline.
/// Defines an elementwise kernel compiled once per target (AVX-512, AVX2+FMA, NEON and the
/// baseline) and picked at run time, so its loops vectorize 16 or 8 wide instead of the
/// baseline x86-64's 4 (SSE2). Rust never fuses a multiply and an add on its own, so every
/// clone computes the same bits. The one place the target list is written.
macro_rules! simd_kernel {
    ($(#[$meta:meta])* $vis:vis fn $($rest:tt)*) => {
        $(#[$meta])*
        #[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma", "aarch64+neon"))]
        $vis fn $($rest)*
    };
}

pub mod calib;
pub mod cli;
pub mod convert;
pub mod error;
pub mod eval;
pub mod format;
pub mod generate;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod io;
pub mod model;
pub mod pipeline;
pub mod quant;

pub use error::{Error, Result};

/// Keep freed memory in the process instead of returning it to the kernel. The forward
/// pass allocates activation buffers of tens to hundreds of MB per stage; with glibc's
/// defaults each one above 32 MB is a fresh `mmap` whose pages the kernel zeroes again on
/// first touch (measured: 15% of a forward's time in `clear_page_erms`, 20% of the
/// calibration forward). `M_MMAP_MAX = 0` serves every allocation from the heap (glibc
/// refuses an `M_MMAP_THRESHOLD` above 32 MB), `M_TRIM_THRESHOLD` keeps up to 1 GiB of
/// freed top-of-heap. Call once, before any thread starts (the binary's `main` does).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // SAFETY: mallopt only tunes glibc's allocator; no other thread is running yet.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Give the freed memory of the heap back to the kernel (glibc `malloc_trim`: the top of
/// the heap and every free page inside it). With [`keep_freed_memory`] every allocation
/// comes from the heap, so at real widths (8B: a 1.6 GB f64 factorization, 0.8 GB
/// Hessians) the holes between live blocks would otherwise stay resident and the heap
/// would grow block after block. The driver calls it after each site of a wide model.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        // SAFETY: malloc_trim only returns free pages of glibc's heap to the kernel.
        libc::malloc_trim(0);
    }
}
