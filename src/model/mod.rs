//! LLaMA-family model: config, weights, forward pass over [`linear::Linear`].

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

pub mod act_linear;
pub mod config;
pub mod fastexp;
pub mod kv_cache;
pub mod layers;
pub mod linear;
pub mod llama;
pub mod load;
pub mod qlinear;
pub mod rope;

pub use config::LlamaConfig;
pub use llama::{Block, BlockHook, InputSite, LlamaModel, BLOCK_LINEARS};
