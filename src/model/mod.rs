//! LLaMA-family model: config, weights, forward pass over [`linear::Linear`].
pub mod linear;
