//! File formats in and out: safetensors (memory-mapped, sharded), GGUF, config.json,
//! tokenizer.json, atomic output directories.
pub mod assets;
pub mod atomic;
pub mod checkpoint;
pub mod gguf;
pub mod safetensors;
pub mod tokenizer;
pub mod tokenizer_build;
