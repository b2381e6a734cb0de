//! Quantization algorithms, one per file: rtn, gptq, awq, activation, rotation, budget (mixed precision); linalg helpers.
pub mod activation;
pub mod awq;
pub mod budget;
pub mod ggml;
pub mod gptq;
pub mod hqq;
pub mod linalg;
pub mod refit;
pub mod rotation;
pub mod rtn;
