//! Quantization algorithms, one per file: rtn, gptq, awq, activation; linalg helpers.
pub mod gptq;
pub mod pipeline;
pub mod linalg;
pub mod rtn;
