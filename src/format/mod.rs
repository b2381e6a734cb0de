//! What bytes mean, no algorithms: schemes, the quantized tensor, FP8 codes,
//! GGML block layouts and the on-disk checkpoint layouts.
pub mod activation;
pub mod awq;
pub mod compressed_tensors;
pub mod fp8;
pub mod ggml;
pub mod gptq;
pub mod kv_cache;
pub mod pack;
pub mod quantized;
pub mod rules;
pub mod scheme;

pub use quantized::{GgmlParams, QuantizedTensor};
pub use scheme::{Granularity, IntParams, NumberFormat, QuantScheme};
