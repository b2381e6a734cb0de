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
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod io;
pub mod model;
pub mod quant;

pub use error::{Error, Result};
