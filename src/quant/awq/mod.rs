//! AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression
//! and Acceleration"): the pieces of the method, driven per block by the AWQ modifier
//! ([`crate::pipeline::modifiers::awq`]):
//!
//! - [`search`]: the grid search over alpha of each scale group's scales;
//! - [`weights`]: a block's weights in f32, the scales, and the fold that keeps the
//!   full-precision block's function unchanged;
//! - [`clip`]: the clipping search of the scaled weights.

pub mod clip;
pub mod search;
pub mod weights;
