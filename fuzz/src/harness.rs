//! What each fuzz target does with its input, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/*.rs`, nightly + cargo-fuzz) and the stable regression test
//! (`tests/fuzz_regressions.rs`, which replays every kept crash input through these).
//!
//! Each function must return (an error is fine) for any bytes: no panic, no abort, no
//! out-of-bounds read, memory bounded by the input's size. Inputs that must be files
//! are written into a per-thread scratch directory (in `/dev/shm` when there is one).

use quantize::calib::stats_file::CalibStats;
use quantize::convert::{convert_gguf, OutDType};
use quantize::format::ggml::dequantize;
use quantize::io::checkpoint::read_quantized_checkpoint;
use quantize::io::gguf::GgufFile;
use quantize::io::safetensors::SafetensorsStore;
use quantize::io::tokenizer::Tokenizer;
use quantize::io::tokenizer_build::GgufTokenizer;
use quantize::model::load::load_model;
use quantize::model::LlamaConfig;
use std::path::{Path, PathBuf};

/// Largest tensor (elements) a target dequantizes: bounds the work per input.
const MAX_ELEMENTS: usize = 1 << 18;

/// An empty scratch directory of this process and thread.
fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let id = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let dir = base.join(format!("quantize-fuzz-{}-{id}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("scratch file");
    p
}

/// Split `data` at the first `\0`: (first part, rest). Lets one input carry two files.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The GGUF reader, every small tensor dequantized, the tokenizer, and `convert`.
pub fn gguf(data: &[u8]) {
    let dir = scratch();
    let path = write(&dir, "in.gguf", data);
    let Ok(g) = GgufFile::open(&path) else { return };
    for t in g.tensors() {
        if t.n_elements() <= MAX_ELEMENTS {
            let _ = dequantize(t.ggml_type, g.tensor_data(t), t.n_elements());
        }
    }
    if let Ok(tok) = GgufTokenizer::from_gguf(&g) {
        let _ = tok.tokenizer_json();
    }
    drop(g);
    let _ = convert_gguf(&path, &dir.join("out"), OutDType::F16);
}

/// The safetensors store: every small floating-point tensor read.
pub fn safetensors(data: &[u8]) {
    let dir = scratch();
    let path = write(&dir, "model.safetensors", data);
    let Ok(store) = SafetensorsStore::open(&path) else { return };
    let names: Vec<String> = store.names().map(String::from).collect();
    for n in names {
        if let Ok(t) = store.raw(&n) {
            if t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_some_and(|e| e <= MAX_ELEMENTS) {
                let _ = store.f32(&n);
            }
        }
    }
}

/// `config.json` parsing.
pub fn config(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice(data) {
        let _ = LlamaConfig::from_json(v, Path::new("config.json"));
    }
}

/// A quantized checkpoint directory: `config.json` (before the first `\0`) and
/// `model.safetensors` (after it): read, every small tensor dequantized, the model
/// loaded and one short forward.
pub fn checkpoint(data: &[u8]) {
    let (cfg, st) = split(data);
    let dir = scratch();
    write(&dir, "config.json", cfg);
    write(&dir, "model.safetensors", st);
    if let Ok(ck) = read_quantized_checkpoint(&dir) {
        for q in ck.quantized.values() {
            if q.rows.checked_mul(q.cols).is_some_and(|e| e <= MAX_ELEMENTS) {
                let _ = q.dequantize();
            }
        }
    }
    if let Ok((model, _)) = load_model(&dir) {
        let c = &model.config;
        if c.vocab_size.saturating_mul(c.hidden_size) <= MAX_ELEMENTS * 4 {
            let _ = model.forward(&[0, c.vocab_size.saturating_sub(1) as u32], 1, 2);
        }
    }
}

/// `tokenizer.json`: load, encode, decode.
pub fn tokenizer(data: &[u8]) {
    let dir = scratch();
    let path = write(&dir, "tokenizer.json", data);
    if let Ok(t) = Tokenizer::from_file(&path) {
        if let Ok(ids) = t.encode("Hello world, 1234 caf\u{e9} <|im_start|>") {
            let _ = t.decode(&ids);
        }
    }
}

/// The calibration statistics file.
pub fn stats(data: &[u8]) {
    let dir = scratch();
    let path = write(&dir, "stats.safetensors", data);
    let _ = CalibStats::load(&path);
}

/// Every target by name (for the regression replay).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("config", config),
    ("checkpoint", checkpoint),
    ("tokenizer", tokenizer),
    ("stats", stats),
];
