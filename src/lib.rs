//! Post-training quantization for large language models, on a plain CPU.
//!
//! Pipeline: GGUF or Hugging Face directory -> memory-mapped weights -> calibration
//! runner -> quantizer (RTN, FP8, GPTQ, AWQ) -> compressed safetensors checkpoint
//! (gptq, awq, compressed-tensors) -> evaluation against the baseline.
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
