//! LLaMA-family model: config, weights, forward pass over [`linear::Linear`].

pub mod act_linear;
pub mod config;
pub mod fastexp;
pub mod int8_dot;
pub mod kv_cache;
pub mod layers;
pub mod linear;
pub mod llama;
pub mod load;
pub mod qlinear;
pub mod rope;

pub use config::LlamaConfig;
pub use llama::{Block, BlockHook, InputSite, LlamaModel, BLOCK_LINEARS};
